"""The light descriptor: import cost, probe answers with their reasons, `mlplug backends`.

These tests need no MLX: they check what a machine without it (or without a Metal GPU) sees.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest

plugin = pytest.importorskip("mlplug_metal.plugin", reason="mlplug-metal is not installed")


def test_importing_the_descriptor_imports_neither_mlx_nor_numpy() -> None:
    code = (
        "import sys, mlplug_metal.plugin as p\n"
        "p.probe()\n"
        "heavy = {'mlx.core', 'numpy'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_descriptor_fields() -> None:
    p = plugin.PLUGIN
    assert (p.name, p.priority, p.install_hint) == ("metal", 90, 'pip install "mlplug[metal]"')


def test_hook_registers_the_metal_backend() -> None:
    calls: list[Any] = []

    class Registry:
        def register_engine_plugin(self, p: Any) -> None:
            calls.append(p)

    plugin.mlplug_register_backends(Registry())  # type: ignore[arg-type]
    [p] = calls
    assert p is plugin.PLUGIN and p.name == "metal"
    assert p.priority == 90


@pytest.mark.parametrize(
    ("apple", "mlx", "env", "ok", "words"),
    [
        (True, True, "", True, ""),
        (True, False, "", False, 'mlx package is not installed (pip install "mlplug[metal]")'),
        (False, True, "", False, "no Metal GPU"),
        (False, False, "", False, "no Metal GPU"),
        (False, True, "cpu", True, ""),
        (False, False, "cpu", False, '"mlx[cpu]"'),
        (False, True, "tpu", False, "expected 'gpu' or 'cpu'"),
    ],
)
def test_probe(
    monkeypatch: pytest.MonkeyPatch, apple: bool, mlx: bool, env: str, ok: bool, words: str
) -> None:
    monkeypatch.setattr(plugin, "_apple_silicon", lambda: apple)
    monkeypatch.setattr(plugin, "_mlx_installed", lambda: mlx)
    monkeypatch.setenv(plugin.ENV_DEVICE, env)
    available, reason = plugin.probe()
    assert available is ok and words in reason
    if not ok and env != "tpu":
        assert "pip install" in reason


def test_memory_settings_hook() -> None:
    assert (
        plugin.mlplug_memory_settings(backend="cpu", gpus=1, gpu_memory=1, cpu_memory=None) is None
    )
    assert (
        plugin.mlplug_memory_settings(backend="metal", gpus=2, gpu_memory=1, cpu_memory=None)
        is None
    )
    assert plugin.mlplug_memory_settings(
        backend="metal", gpus=1, gpu_memory=4096, cpu_memory=None
    ) == {"MLPLUG_METAL_MEMORY_LIMIT": "4096", "MLPLUG_CPU_MEMORY_LIMIT": ""}


@pytest.mark.skipif(sys.platform == "darwin", reason="a Mac may have a Metal GPU")
def test_backends_command_lists_metal_unavailable_with_reason_and_extra() -> None:
    env = {k: v for k, v in os.environ.items() if k != plugin.ENV_DEVICE}
    cli = os.path.join(os.path.dirname(sys.executable), "mlplug")
    result = subprocess.run([cli, "backends"], env=env, capture_output=True, text=True, check=True)
    line = next(x for x in result.stdout.splitlines() if x.startswith("metal"))
    assert "unavailable: no Metal GPU" in line
    assert 'install: pip install "mlplug[metal]"' in result.stdout
