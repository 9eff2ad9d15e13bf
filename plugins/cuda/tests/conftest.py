"""Fixtures: emulated CUDA devices (numpy standing in for cupy, ``MLPLUG_CUDA_EMULATE``).

CI has no GPU: every test here except ``test_gpu.py`` runs the plugin's code under emulation.
``test_gpu.py`` skips, with the reason, where the probe finds no usable GPU.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import gguf
import numpy as np
import pytest

import mlplug
from mlplug.device import DType


@pytest.fixture
def emulate(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """Two emulated GPUs, no caps, no CUDA graphs (tests change what they need)."""
    monkeypatch.setenv("MLPLUG_CUDA_EMULATE", "2")
    for name in (
        "MLPLUG_CUDA_MEMORY_LIMIT",
        "MLPLUG_CPU_MEMORY_LIMIT",
        "MLPLUG_CPU_SIMULATED_GPUS",
        "MLPLUG_CUDA_GRAPHS",
    ):
        monkeypatch.delenv(name, raising=False)
    yield monkeypatch


def new_backend(**params: object) -> mlplug.Backend:
    """A model-less cuda backend (layer 0 on ``main_gpu`` when ``num_gpu_layers`` > 0)."""
    return mlplug.new_backend(None, mlplug.BackendParams(**params), backend="cuda")  # type: ignore[arg-type]


def _random_blocks(dtype: DType, rows: int, k: int, seed: int) -> np.ndarray:
    """Packed blocks ``(rows, k / B, S)`` of random data (random bytes for types gguf cannot
    quantise: every code and scale pattern occurs)."""
    rng = np.random.default_rng(seed)
    kind = gguf.GGMLQuantizationType(dtype.ggml_type)
    try:
        packed = gguf.quants.quantize(rng.standard_normal((rows, k)).astype(np.float32), kind)
    except NotImplementedError:
        packed = rng.integers(0, 256, (rows, k // dtype.block_size * dtype.type_size), np.uint8)
        if dtype is not DType.Q8_K:
            # Keep F16 scales finite: clear the exponent's top bit of every 2-byte field.
            packed[:, 1::2] &= 0x3F
        else:
            packed.reshape(-1, dtype.type_size)[:, :4] = np.frombuffer(
                np.float32(0.01).tobytes(), np.uint8
            )
    return packed.reshape(rows, k // dtype.block_size, dtype.type_size)


@pytest.fixture
def random_blocks() -> Callable[[DType, int, int, int], np.ndarray]:
    """``random_blocks(dtype, rows, k, seed)``: packed blocks ``(rows, k / B, S)``."""
    return _random_blocks
