"""The llama demo model runs through the cuda plugin's code (emulated GPU) as on cpu.

Decode steps go through the mmvq twin (Q8_0 weights, 8-bit activations) and, with flash
attention, the flash-decoding twin over the F16 cache.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import pytest

import mlplug
from mlplug.device import TensorRef
from mlplug.models.llama import Batch, Llama
from mlplug_cpu.kernels import native
from mlplug_cuda.kernels import mmvq


def logits_on(backend_name: str, path: Path, flash: bool) -> list[np.ndarray]:
    params = mlplug.BackendParams(num_gpu_layers=99, flash_attention=flash)
    with mlplug.new_backend(str(path), params, backend=backend_name) as backend:
        backend.load()
        model = Llama(backend)
        cache = model.new_cache(capacity=64)
        prompt = [1, 17, 42, 99, 7]
        out = [model.forward(cache, Batch.single(prompt))]
        for i, token in enumerate((11, 23, 5)):  # decode through the cache
            out.append(model.forward(cache, Batch.single([token], start=len(prompt) + i)))
        cache.close()
    return out


@pytest.mark.parametrize("flash", [False, True])
def test_demo_model_logits_match_cpu(emulate: pytest.MonkeyPatch, flash: bool) -> None:
    """Every kernel but mmvq: F16 GEMMs for the products (cuBLAS's precision), flash twin."""
    emulate.setenv("MLPLUG_CUDA_EMULATE", "1")
    emulate.setenv("MLPLUG_CPU_NATIVE", "0")  # the reference: the cpu plugin's exact products
    emulate.setattr(mmvq, "usable", lambda a, b: False)
    path = Path(str(resources.files("mlplug") / "data" / "demo.gguf"))
    cuda = logits_on("cuda", path, flash)
    # The reference: the cpu plugin's exact F32 products (its native kernels multiply with
    # 8-bit activations, which would measure the cpu plugin's rounding instead).
    emulate.setenv("MLPLUG_CPU_NATIVE", "0")  # read by the cpu plugin's load()
    try:
        cpu = logits_on("cpu", path, flash)
    finally:
        emulate.delenv("MLPLUG_CPU_NATIVE")
        native.configure_from_env()
    for g, c in zip(cuda, cpu, strict=True):
        # Measured: 0.9-1.1e-3 of the logit range (F16 rounding of activations in the GEMMs).
        assert np.abs(g - c).max() <= 3e-3 * np.abs(c).max()
        top2 = np.argsort(-g, axis=-1)[:, :2]  # random weights: near-ties in the top logits
        assert all(best in row for best, row in zip(c.argmax(-1), top2, strict=True))


def test_decode_through_mmvq_stays_close_to_cpu(emulate: pytest.MonkeyPatch) -> None:
    """With mmvq (8-bit activations, as llama.cpp's CUDA build): near, not equal."""
    emulate.setenv("MLPLUG_CUDA_EMULATE", "1")
    emulate.setenv("MLPLUG_CPU_NATIVE", "0")  # the reference: the cpu plugin's exact products
    calls: list[str] = []
    usable = mmvq.usable

    def counted(a: TensorRef, b: TensorRef) -> bool:
        ok = usable(a, b)
        if ok:
            calls.append(a.dtype.name)
        return ok

    emulate.setattr(mmvq, "usable", counted)
    path = Path(str(resources.files("mlplug") / "data" / "demo.gguf"))
    cuda = logits_on("cuda", path, True)
    assert calls and set(calls) == {"Q8_0"}
    cpu = logits_on("cpu", path, True)
    for g, c in zip(cuda, cpu, strict=True):
        # Measured: 1.4-2.0e-2 of the logit range on this random-weight model.
        assert np.abs(g - c).max() <= 3e-2 * np.abs(c).max()
        top3 = np.argsort(-g, axis=-1)[:, :3]
        assert all(best in row for best, row in zip(c.argmax(-1), top3, strict=True))
