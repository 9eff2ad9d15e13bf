"""Which device holds each layer and each weight (SEMANTICS §6.2-6.5).

Pure functions, no device code: the engine asks :func:`normalized_splits` and
:func:`layer_devices` where each layer goes and :func:`place_tensors` which layer each file
tensor (or copy of one) belongs to, then allocates. Layer indexes run ``0 … blocks``; ``blocks``
itself is the output layer. A device is a GPU index, or ``None`` for the CPU.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from mlplug.dtype import round_f32 as _f32  # §6.4 computes splits and fractions in float32

__all__ = [
    "Placement",
    "layer_devices",
    "normalized_splits",
    "place_tensors",
    "validate_params",
]

# §6.5 rule 1: always on the CPU, counted in input_weights.
_INPUT_PARTS = frozenset({"position_embd", "token_embd", "token_norm_embd", "token_types"})
# §6.5 rule 2: the output layer.
_OUTPUT_PARTS = frozenset(
    {
        "cls",
        "output",
        "output_norm",
        "altup_proj",
        "altup_unembd_proj",
        "per_layer_token_embd",
        "per_layer_model_proj",
        "per_layer_proj_norm",
    }
)
# §6.5 rule 3: vision tower and projector, with the output layer.
_OUTPUT_PREFIXES = ("v.", "mm.")
# §6.5 rule 4: one copy per repeating layer.
_PER_LAYER_PARTS = frozenset({"rope_freqs", "rope_factors_long", "rope_factors_short"})
_DIGITS = re.compile(r"[0-9]+")
_F32_MAX = 3.4028234663852886e38


def validate_params(n_gpus: int, main_gpu: int, tensor_split: Sequence[float]) -> None:
    """Check ``main_gpu`` and ``tensor_split`` against the devices (§6.2).

    Args:
        n_gpus: Number of GPUs of the backend.
        main_gpu: Index of the main GPU; with no GPU only 0 is valid.
        tensor_split: Relative share per GPU; empty, or one finite entry ≥ 0 per GPU.

    Raises:
        ValueError: An invalid index, a length that differs from ``n_gpus``, or an entry that
            is negative or not finite.
    """
    if not 0 <= main_gpu < max(n_gpus, 1):
        valid = "0" if n_gpus <= 1 else f"0..{n_gpus - 1}"
        raise ValueError(f"[placement] main_gpu={main_gpu} is not a valid GPU index ({valid})")
    if tensor_split and len(tensor_split) != n_gpus:
        raise ValueError(
            f"[placement] tensor_split has {len(tensor_split)} entries for {n_gpus} GPU(s)"
        )
    for x in tensor_split:
        if not math.isfinite(x) or x < 0:
            raise ValueError(f"[placement] tensor_split entries must be finite and >= 0, got {x}")
    if math.fsum(tensor_split) > _F32_MAX:  # rule 1 sums the splits in float32
        raise ValueError("[placement] tensor_split entries sum past the float32 range")


def normalized_splits(
    tensor_split: Sequence[float], free_memory_per_gpu: Sequence[int]
) -> list[float]:
    """Return the cumulative split distribution ``c_j`` of §6.4 rule 1, in float32.

    Args:
        tensor_split: ``BackendParams.tensor_split``; empty or all zeros means "by free memory".
        free_memory_per_gpu: Each GPU's free memory in bytes at construction, in index order
            (its length is the number of GPUs).

    Returns:
        One value per GPU, non-decreasing, the last 1.0 (``[1, 1]`` → ``[0.5, 1.0]``); empty
        when there is no GPU.

    Raises:
        ValueError: ``tensor_split`` fails :func:`validate_params`.
    """
    n = len(free_memory_per_gpu)
    validate_params(n, 0, tensor_split)
    shares = [_f32(s) for s in tensor_split]
    if not any(shares):
        shares = [_f32(m) for m in free_memory_per_gpu]
    if not any(shares):
        shares = [1.0] * n
    cumulative: list[float] = []
    total = 0.0
    for s in shares:
        total = _f32(total + s)
        cumulative.append(total)
    return [_f32(c / total) for c in cumulative]


def layer_devices(
    blocks: int, num_gpu_layers: int, n_gpus: int, main_gpu: int, splits: Sequence[float]
) -> list[int | None]:
    """Return the device of every layer ``0 … blocks`` (§6.4 rules 2-4).

    Args:
        blocks: The model's ``block_count``; index ``blocks`` is the output layer.
        num_gpu_layers: Layers to offload, the last repeating blocks first; ≤ 0 means none.
        n_gpus: Number of GPUs.
        main_gpu: GPU of the output layer when it is offloaded.
        splits: The cumulative distribution from :func:`normalized_splits`, one per GPU.

    Returns:
        ``blocks + 1`` entries: a GPU index, or ``None`` for the CPU.

    Raises:
        ValueError: ``main_gpu`` is not a valid index, or ``splits`` does not have one entry
            per GPU.
    """
    validate_params(n_gpus, main_gpu, ())
    if len(splits) != n_gpus:
        raise ValueError(f"[placement] {len(splits)} splits for {n_gpus} GPU(s)")
    devices: list[int | None] = [None] * (blocks + 1)
    n = num_gpu_layers
    if n <= 0 or n_gpus == 0:
        return devices
    start = max(0, blocks - n)
    stop = min(start + n, blocks + 1)
    span = _f32(stop - start)
    for i in range(start, stop):
        if i == blocks:
            devices[i] = main_gpu
            continue
        f = _f32(_f32(i - start) / span)
        # c_last is 1.0 and f < 1, so a GPU is always found; the CPU fallback mirrors ggml.
        devices[i] = next((j for j, c in enumerate(splits) if f < c), None)
    return devices


@dataclass(frozen=True, slots=True)
class Placement:
    """Where one weight goes (§6.5).

    Attributes:
        name: The name ``Backend.get`` knows it by.
        source: The file tensor whose bytes it holds (differs from ``name`` for the tied
            ``output.weight`` and the per-layer rope copies).
        layer: Its layer, ``0 … blocks`` (``blocks`` is the output layer), or ``None`` for an
            input weight (always on the CPU, counted in ``input_weights``).
    """

    name: str
    source: str
    layer: int | None


def place_tensors(names: Sequence[str], blocks: int) -> list[Placement]:
    """Assign every file tensor, and the copies §6.5 adds, to a layer.

    The first matching rule wins: input embeddings → input weights (plus a tied ``output.weight``
    copy of ``token_embd.weight`` when the file has no ``output.*`` tensor); output-layer names
    and ``v.``/``mm.`` prefixes → the output layer; ``rope_freqs``/``rope_factors_*`` → one copy
    ``blk.<i>.<name>`` per repeating layer (the original is not placed); otherwise the first run
    of decimal digits is the layer (``conv1d.weight`` → 1), and a name without digits or with an
    index ≥ ``blocks`` is an input weight.

    Args:
        names: The file's tensor names, in file order.
        blocks: The model's ``block_count``.

    Returns:
        The placements in file order, each copy right after the placement of its source. For
        unique file names the placement names are unique too: a copy's name never equals a file
        name, because a file tensor named like a copy would itself be copied.
    """
    tied = not any(name.startswith("output.") for name in names)
    out: list[Placement] = []
    for name in names:
        parts = name.split(".")
        if any(p in _INPUT_PARTS for p in parts):
            out.append(Placement(name, name, None))
            if tied and name == "token_embd.weight":
                out.append(Placement("output.weight", name, blocks))
        elif any(p in _OUTPUT_PARTS for p in parts) or name.startswith(_OUTPUT_PREFIXES):
            out.append(Placement(name, name, blocks))
        elif any(p in _PER_LAYER_PARTS for p in parts):
            out.extend(Placement(f"blk.{i}.{name}", name, i) for i in range(blocks))
        else:
            match = _DIGITS.search(name)
            index = int(match.group()) if match else None
            out.append(
                Placement(name, name, index if index is not None and index < blocks else None)
            )
    return out
