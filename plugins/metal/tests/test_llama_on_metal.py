"""The llama model runs on the metal backend (MLX's CPU device on Linux) as on cpu."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mlx.core")

import mlplug
from mlplug.models.llama import Batch, Llama


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
def test_demo_model_logits_match_cpu(monkeypatch: pytest.MonkeyPatch, flash: bool) -> None:
    monkeypatch.setenv("MLPLUG_METAL_DEVICE", "cpu")
    monkeypatch.delenv("MLPLUG_CPU_SIMULATED_GPUS", raising=False)
    path = Path(str(resources.files("mlplug") / "data" / "demo.gguf"))
    metal = logits_on("metal", path, flash)
    cpu = logits_on("cpu", path, flash)
    for m, c in zip(metal, cpu, strict=True):
        # Q8_0 weights: held quantised on MLX (affine 8-bit) and dequantised on cpu; both exact
        # representations of the same values, so only summation order differs (cpu's native
        # kernels sum in 32 lanes; the model amplifies F32 rounding to ~1e-4 of the logit range).
        scale = np.abs(c).max()
        assert np.abs(m - c).max() <= 5e-4 * scale
        assert m.argmax(-1).tolist() == c.argmax(-1).tolist()
