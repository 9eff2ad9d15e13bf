"""The ray backend's descriptor: light to import, unavailable with the install hint without Ray."""

from __future__ import annotations

import importlib.util

import pytest

plugin = pytest.importorskip(
    "mlplug_ray.plugin", reason="mlplug-ray is not installed (pip install -e ./plugins/ray)"
)


def test_probe_without_ray_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def no_ray(name: str, *args: object) -> object:
        return None if name == "ray" else real(name, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(importlib.util, "find_spec", no_ray)
    ok, reason = plugin.probe()
    assert not ok
    assert 'pip install "mlplug[ray]"' in reason


def test_memory_settings_start_one_actor_per_gpu() -> None:
    env = plugin.mlplug_memory_settings(backend="ray", gpus=2, gpu_memory=1000, cpu_memory=None)
    assert env == {
        "MLPLUG_RAY_NODES": "2",
        "MLPLUG_RAY_MEMORY_LIMIT": "1000",
        "MLPLUG_CPU_MEMORY_LIMIT": "",
    }
    assert (
        plugin.mlplug_memory_settings(backend="cpu", gpus=2, gpu_memory=None, cpu_memory=None)
        is None
    )
