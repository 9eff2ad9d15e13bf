"""Weights come from each node's own copy of the GGUF file, checked by size and SHA-256;
``MLPLUG_RAY_WEIGHTS=push`` sends them from the coordinator instead."""

from __future__ import annotations

import shutil
from collections import Counter
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip(
    "mlplug_ray", reason="mlplug-ray is not installed (pip install -e ./plugins/ray)"
)
pytest.importorskip("ray", reason='ray is not installed (pip install "mlplug[ray]")')

import mlplug
from mlplug.models.llama import Batch, Llama
from mlplug_ray.device import RayDevice
from mlplug_ray.errors import ModelFileMismatch

DEMO = Path(str(resources.files("mlplug") / "data" / "demo.gguf"))
PROMPT = [1, 17, 42, 99, 7]


def _run() -> tuple[np.ndarray, list[tuple[Counter[str], Counter[str]]]]:
    """Return the logits of the prompt and each node's (calls, ops) made by ``load()``."""
    params = mlplug.BackendParams(num_gpu_layers=99)
    with mlplug.new_backend(str(DEMO), params, backend="ray") as backend:
        backend.load()
        nodes = [
            (d.calls.copy(), d.ops.copy()) for d in backend.devices if isinstance(d, RayDevice)
        ]
        model = Llama(backend)
        cache = model.new_cache(capacity=16)
        logits = model.forward(cache, Batch.single(PROMPT))
        cache.close()
    return logits, nodes


def test_each_node_reads_its_weights_from_its_own_file(
    two_nodes: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from_files, nodes = _run()
    assert len(nodes) == 2
    for calls, ops in nodes:
        # one call per node; no weight bytes travelled from the coordinator
        assert calls["load_weights"] == 1, calls
        assert ops["upload"] == 0 and ops["write"] == 0, ops
    monkeypatch.setenv("MLPLUG_RAY_WEIGHTS", "push")
    pushed, nodes = _run()
    for calls, ops in nodes:
        assert calls["load_weights"] == 0 and ops["upload"] > 0, (calls, ops)
    assert np.array_equal(from_files, pushed)


def test_a_node_copy_that_differs_is_refused_naming_node_and_file(
    two_nodes: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    bad = tmp_path / "demo-copy.gguf"
    shutil.copyfile(DEMO, bad)
    data = bytearray(bad.read_bytes())
    data[-1] ^= 0xFF  # same size, different bytes (in the last tensor's data)
    bad.write_bytes(bytes(data))
    monkeypatch.setenv("MLPLUG_RAY_MODEL_PATHS", f"RAY1={bad}")
    params = mlplug.BackendParams(num_gpu_layers=99)
    backend = mlplug.new_backend(str(DEMO), params, backend="ray")
    try:
        with pytest.raises(ModelFileMismatch, match=r"\[RAY1\].*demo-copy\.gguf.*sha256"):
            backend.load()
    finally:
        backend.close()
    monkeypatch.setenv("MLPLUG_RAY_MODEL_PATHS", str(tmp_path / "missing.gguf"))
    backend = mlplug.new_backend(str(DEMO), params, backend="ray")
    try:
        with pytest.raises(ModelFileMismatch, match=r"\[RAY0\].*missing\.gguf"):
            backend.load()
    finally:
        backend.close()


def test_model_paths_setting_is_checked(two_nodes: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLPLUG_RAY_MODEL_PATHS", "RAY7=/x.gguf")
    with pytest.raises(ValueError, match=r"MLPLUG_RAY_MODEL_PATHS.*RAY7"):
        mlplug.new_backend(str(DEMO), mlplug.BackendParams(), backend="ray")
    monkeypatch.setenv("MLPLUG_RAY_MODEL_PATHS", "")
    monkeypatch.setenv("MLPLUG_RAY_WEIGHTS", "rsync")
    with pytest.raises(ValueError, match=r"MLPLUG_RAY_WEIGHTS='rsync'"):
        mlplug.new_backend(str(DEMO), mlplug.BackendParams(), backend="ray")
