"""Layer placement and tensor-to-device rules (SEMANTICS §6.2-6.5)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from mlplug.dtype import DType
from mlplug.gguf import GGUFFile
from mlplug.placement import (
    Placement,
    layer_devices,
    normalized_splits,
    place_tensors,
    validate_params,
)
from mlplug_conformance import synth


def spans(devices: list[int | None], blocks: int) -> dict[str, str]:
    """Render a placement like the §6.4 table: device -> "a-b, output"."""
    groups: dict[str, list[str]] = {}
    run_start = 0
    for i in range(blocks + 1):
        if i == blocks or devices[i] != devices[i + 1]:
            label = "CPU" if devices[i] is None else f"GPU{devices[i]}"
            if i == blocks:
                if run_start < i:
                    groups.setdefault(label, []).append(f"{run_start}-{i - 1}")
                groups.setdefault(label, []).append("output")
            else:
                groups.setdefault(label, []).append(f"{run_start}-{i}")
            run_start = i + 1
    return {k: ", ".join(v) for k, v in groups.items()}


def place(blocks: int, n: int, split: tuple[float, ...], main_gpu: int = 0) -> dict[str, str]:
    splits = normalized_splits(split, [0] * len(split))
    return spans(layer_devices(blocks, n, len(split), main_gpu, splits), blocks)


# -- §6.4 worked example --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "main_gpu", "expected"),
    [
        (0, 0, {"CPU": "0-31, output"}),
        (10, 0, {"CPU": "0-21, output", "GPU0": "22-26", "GPU1": "27-31"}),
        (32, 0, {"GPU0": "0-15", "GPU1": "16-31", "CPU": "output"}),
        (33, 0, {"GPU0": "0-16, output", "GPU1": "17-31"}),
        (33, 1, {"GPU0": "0-16", "GPU1": "17-31, output"}),
    ],
)
def test_worked_example_split_1_1(n: int, main_gpu: int, expected: dict[str, str]) -> None:
    assert place(32, n, (1, 1), main_gpu) == expected


def test_worked_example_split_3_1() -> None:
    assert place(32, 20, (3, 1)) == {"CPU": "0-11, output", "GPU0": "12-26", "GPU1": "27-31"}


def test_layer_devices_returns_one_entry_per_layer_and_the_output() -> None:
    # The GPU range 0..4 includes the output layer, so f = i / 5 and layer 2 (f = 0.4) is on GPU0.
    devices = layer_devices(4, 5, 2, 1, [0.5, 1.0])
    assert devices == [0, 0, 0, 1, 1]


def test_more_layers_than_the_model_has() -> None:
    assert place(4, 100, (1,)) == {"GPU0": "0-3, output"}


@pytest.mark.parametrize("n", [0, -1, -100])
def test_no_offload(n: int) -> None:
    assert layer_devices(8, n, 2, 0, [0.5, 1.0]) == [None] * 9


def test_no_gpu_means_cpu() -> None:
    assert layer_devices(8, 9, 0, 0, []) == [None] * 9


def test_model_without_blocks_puts_layer_0_on_main_gpu() -> None:
    # §6.7: blocks = 0; layer 0 is the output layer.
    assert layer_devices(0, 1, 2, 1, [0.5, 1.0]) == [1]
    assert layer_devices(0, 0, 2, 1, [0.5, 1.0]) == [None]
    assert layer_devices(0, 1, 0, 0, []) == [None]


def test_fractions_and_splits_are_float32() -> None:
    # In float64, 0.1 + 0.2 = 0.30000000000000004 and c_1 = 0.7500000000000001 > 15/20, which
    # would put layer 15 on GPU1; in float32 c_1 is exactly 0.75, so layer 15 goes to GPU2.
    splits = normalized_splits((0.1, 0.2, 0.1), [0, 0, 0])
    assert splits == [0.25, 0.75, 1.0]
    assert place(20, 20, (0.1, 0.2, 0.1)) == {
        "GPU0": "0-4",
        "GPU1": "5-14",
        "GPU2": "15-19",
        "CPU": "output",
    }


def test_a_gpu_with_a_zero_split_gets_no_layer() -> None:
    assert place(8, 8, (0, 1)) == {"GPU1": "0-7", "CPU": "output"}
    assert place(8, 8, (1, 0)) == {"GPU0": "0-7", "CPU": "output"}


# -- splits (rule 1) -------------------------------------------------------------------------


def test_normalized_splits_examples() -> None:
    assert normalized_splits((1, 1), [0, 0]) == [0.5, 1.0]
    c0, c1 = normalized_splits((20, 13), [0, 0])
    assert c0 == pytest.approx(0.606, abs=5e-4)
    assert c0 == 0.6060606241226196  # 20/33 rounded to float32
    assert c1 == 1.0


def test_splits_follow_free_memory_when_empty_or_all_zero() -> None:
    free = [3 * 2**30, 1 * 2**30]
    assert normalized_splits((), free) == [0.75, 1.0]
    assert normalized_splits((0, 0), free) == [0.75, 1.0]
    assert normalized_splits((1, 3), free) == [0.25, 1.0]  # explicit split wins


def test_equal_splits_when_no_free_memory_is_reported() -> None:
    assert normalized_splits((), [0, 0, 0, 0]) == [0.25, 0.5, 0.75, 1.0]


def test_no_gpus_no_splits() -> None:
    assert normalized_splits((), []) == []


# -- parameter validation (§6.2) -------------------------------------------------------------


@pytest.mark.parametrize(
    ("n_gpus", "main_gpu", "split", "message"),
    [
        (2, 2, (), "main_gpu=2"),
        (2, -1, (), "main_gpu=-1"),
        (0, 1, (), "main_gpu=1"),
        (2, 0, (1.0,), "1 entries for 2 GPU"),
        (0, 0, (1.0,), "1 entries for 0 GPU"),
        (2, 0, (1.0, -1.0), "finite and >= 0"),
        (2, 0, (1.0, math.nan), "finite and >= 0"),
        (2, 0, (math.inf, 1.0), "finite and >= 0"),
        (2, 0, (1e39, 1.0), "float32 range"),
        (2, 0, (3e38, 3e38), "float32 range"),
    ],
)
def test_invalid_params(n_gpus: int, main_gpu: int, split: tuple[float, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_params(n_gpus, main_gpu, split)


def test_valid_params() -> None:
    validate_params(0, 0, ())
    validate_params(2, 1, (0.0, 0.0))
    validate_params(3, 2, (1, 2, 3))


def test_layer_devices_and_splits_validate() -> None:
    with pytest.raises(ValueError, match="main_gpu=2"):
        layer_devices(4, 5, 2, 2, [0.5, 1.0])
    with pytest.raises(ValueError, match="1 splits for 2 GPU"):
        layer_devices(4, 5, 2, 0, [1.0])
    with pytest.raises(ValueError, match="3 entries for 2 GPU"):
        normalized_splits((1, 1, 1), [0, 0])


# -- tensor to device (§6.5) -----------------------------------------------------------------


def by_name(placements: list[Placement]) -> dict[str, tuple[str, int | None]]:
    return {p.name: (p.source, p.layer) for p in placements}


def test_llama_names() -> None:
    names = [
        "token_embd.weight",
        "blk.0.attn_q.weight",
        "blk.1.ffn_down.weight",
        "output_norm.weight",
        "output.weight",
    ]
    assert place_tensors(names, 2) == [
        Placement("token_embd.weight", "token_embd.weight", None),
        Placement("blk.0.attn_q.weight", "blk.0.attn_q.weight", 0),
        Placement("blk.1.ffn_down.weight", "blk.1.ffn_down.weight", 1),
        Placement("output_norm.weight", "output_norm.weight", 2),
        Placement("output.weight", "output.weight", 2),
    ]


def test_tied_output_copy() -> None:
    placements = place_tensors(["token_embd.weight", "blk.0.x", "output_norm.weight"], 1)
    assert placements == [
        Placement("token_embd.weight", "token_embd.weight", None),
        Placement("output.weight", "token_embd.weight", 1),
        Placement("blk.0.x", "blk.0.x", 0),
        Placement("output_norm.weight", "output_norm.weight", 1),
    ]


def test_no_tied_copy_when_any_output_tensor_exists() -> None:
    placements = place_tensors(["token_embd.weight", "output.bias"], 4)
    assert by_name(placements) == {
        "token_embd.weight": ("token_embd.weight", None),
        "output.bias": ("output.bias", 4),
    }


def test_input_weights() -> None:
    names = [
        "position_embd.weight",
        "token_types.weight",
        "token_norm_embd.bias",
        "enc.token_embd.weight",  # a part, not only the first
        "blk.3.token_embd.weight",  # rule 1 wins over the digits
    ]
    assert {p.layer for p in place_tensors([*names, "output.weight"], 8)} == {None, 8}
    assert all(by_name(place_tensors([*names, "output.weight"], 8))[n][1] is None for n in names)


def test_output_layer_names_and_prefixes() -> None:
    names = [
        "cls.weight",
        "cls.output.bias",
        "altup_proj.weight",
        "altup_unembd_proj.weight",
        "per_layer_token_embd.weight",
        "per_layer_model_proj.weight",
        "per_layer_proj_norm.weight",
        "v.blk.3.attn_q.weight",  # vision tower: output layer despite the digits
        "mm.0.weight",
        "output.weight",
    ]
    assert all(p.layer == 6 for p in place_tensors(names, 6))


def test_rope_copies_per_layer() -> None:
    names = ["rope_freqs.weight", "rope_factors_long.weight", "blk.0.a", "output.weight"]
    placements = place_tensors(names, 3)
    assert placements[:6] == [
        Placement("blk.0.rope_freqs.weight", "rope_freqs.weight", 0),
        Placement("blk.1.rope_freqs.weight", "rope_freqs.weight", 1),
        Placement("blk.2.rope_freqs.weight", "rope_freqs.weight", 2),
        Placement("blk.0.rope_factors_long.weight", "rope_factors_long.weight", 0),
        Placement("blk.1.rope_factors_long.weight", "rope_factors_long.weight", 1),
        Placement("blk.2.rope_factors_long.weight", "rope_factors_long.weight", 2),
    ]
    names_known = {p.name for p in placements}
    assert "rope_freqs.weight" not in names_known  # the original is not retrievable
    assert by_name(place_tensors(["rope_factors_short.weight", "output.weight"], 1)) == {
        "blk.0.rope_factors_short.weight": ("rope_factors_short.weight", 0),
        "output.weight": ("output.weight", 1),
    }


def test_first_run_of_digits_is_the_layer() -> None:
    names = ["conv1d.weight", "blk.12.attn_q.weight", "enc.007.x", "a2b3.w", "output.weight"]
    assert by_name(place_tensors(names, 13)) == {
        "conv1d.weight": ("conv1d.weight", 1),
        "blk.12.attn_q.weight": ("blk.12.attn_q.weight", 12),
        "enc.007.x": ("enc.007.x", 7),
        "a2b3.w": ("a2b3.w", 2),
        "output.weight": ("output.weight", 13),
    }


def test_no_digits_or_index_at_least_blocks_is_an_input_weight() -> None:
    names = ["norm.weight", "blk.4.attn_q.weight", "blk.40.x", "output.weight"]
    assert by_name(place_tensors(names, 4)) == {
        "norm.weight": ("norm.weight", None),
        "blk.4.attn_q.weight": ("blk.4.attn_q.weight", None),
        "blk.40.x": ("blk.40.x", None),
        "output.weight": ("output.weight", 4),
    }


def test_placing_a_synthetic_tied_llama_file(tmp_path: Path) -> None:
    path = synth.write_llama_gguf(
        tmp_path / "t.gguf",
        n_layers=3, n_embd=32, n_head=2, n_head_kv=1, n_ff=64, n_vocab=10, tied_output=True,
        extra_tensors=[("rope_freqs.weight", np.ones(8, np.float32), DType.F32)],
    )  # fmt: skip
    with GGUFFile.open(path) as f:
        sizes = {t.name: t.nbytes for t in f.tensors}
    placements = place_tensors(list(sizes), 3)
    per_layer: dict[int | None, int] = {}
    for p in placements:
        per_layer[p.layer] = per_layer.get(p.layer, 0) + sizes[p.source]
    embd = 32 * 10 * 4
    layer = (2 * 32 + 2 * 32 * 32 + 2 * 32 * 16 + 3 * 32 * 64 + 8) * 4
    assert per_layer == {None: embd, 0: layer, 1: layer, 2: layer, 3: embd + 32 * 4}
