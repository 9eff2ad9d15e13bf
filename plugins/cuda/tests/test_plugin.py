"""The light descriptor: import cost, each probe answer with its reason, `mlplug backends`."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from typing import Any

import pytest

from mlplug_cuda import plugin


def test_importing_the_descriptor_imports_neither_cupy_nor_numpy() -> None:
    code = (
        "import sys, mlplug_cuda.plugin as p\n"
        "p.probe()\n"
        "heavy = {'cupy', 'numpy'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "MLPLUG_CUDA_EMULATE"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_descriptor_fields() -> None:
    p = plugin.PLUGIN
    assert (p.name, p.priority) == ("cuda", 100)
    assert "mlplug[cuda]" in (p.install_hint or "") and "mlplug[cuda13]" in (p.install_hint or "")


class _Driver:
    """A stand-in for libcuda: cuInit status, device count and driver version."""

    def __init__(self, status: int, count: int, version: int) -> None:
        self.status, self.count, self.version = status, count, version

    def cuInit(self, flags: int) -> int:
        return self.status

    def cuDeviceGetCount(self, out: Any) -> int:
        out._obj.value = self.count
        return 0

    def cuDriverGetVersion(self, out: Any) -> int:
        out._obj.value = self.version
        return 0


@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """A machine with cupy-cuda12x, a CUDA 12.4 driver, one GPU and NVRTC (each test breaks one)."""
    monkeypatch.delenv("MLPLUG_CUDA_EMULATE", raising=False)
    monkeypatch.setattr(plugin, "_cupy_installed", lambda: True)
    monkeypatch.setattr(plugin, "_cupy_cuda_major", lambda: 12)
    monkeypatch.setattr(plugin, "_load_driver", lambda: _Driver(0, 1, 12040))
    monkeypatch.setattr(plugin, "find_nvrtc", lambda: "libnvrtc.so.12")
    return monkeypatch


def test_probe_ok_when_everything_is_there(machine: pytest.MonkeyPatch) -> None:
    assert plugin.probe() == (True, "")


def test_probe_without_cupy(machine: pytest.MonkeyPatch) -> None:
    machine.setattr(plugin, "_cupy_installed", lambda: False)
    ok, reason = plugin.probe()
    assert not ok
    assert reason.startswith('cupy is not installed (pip install "mlplug[cuda]"')


def test_probe_without_driver(machine: pytest.MonkeyPatch) -> None:
    machine.setattr(plugin, "_load_driver", lambda: None)
    ok, reason = plugin.probe()
    assert not ok and reason.startswith("no NVIDIA driver: libcuda.so.1 cannot be loaded")


def test_load_driver_finds_nothing_on_this_machine_without_raising(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(name: str) -> ctypes.CDLL:
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(plugin.ctypes, "CDLL", refuse)
    assert plugin._load_driver() is None


@pytest.mark.parametrize(("status", "count"), [(100, 0), (0, 0)])
def test_probe_without_device(machine: pytest.MonkeyPatch, status: int, count: int) -> None:
    machine.setattr(plugin, "_load_driver", lambda: _Driver(status, count, 12040))
    assert plugin.probe() == (False, "no CUDA device: the NVIDIA driver reports no GPU")


def test_probe_driver_failure(machine: pytest.MonkeyPatch) -> None:
    machine.setattr(plugin, "_load_driver", lambda: _Driver(999, 0, 12040))
    assert plugin.probe() == (False, "the CUDA driver failed to initialise (cuInit error 999)")


def test_probe_driver_too_old(machine: pytest.MonkeyPatch) -> None:
    machine.setattr(plugin, "_cupy_cuda_major", lambda: 13)
    ok, reason = plugin.probe()
    assert not ok
    assert reason.startswith(
        "the NVIDIA driver is too old: it supports CUDA 12.4, the installed cupy needs CUDA 13"
    )


def test_probe_without_nvrtc(machine: pytest.MonkeyPatch) -> None:
    machine.setattr(plugin, "find_nvrtc", lambda: None)
    ok, reason = plugin.probe()
    assert not ok and reason.startswith("NVRTC (libnvrtc) not found")


@pytest.mark.parametrize(("value", "ok"), [("2", True), ("0", True), ("two", False)])
def test_probe_under_emulation(monkeypatch: pytest.MonkeyPatch, value: str, ok: bool) -> None:
    monkeypatch.setenv("MLPLUG_CUDA_EMULATE", value)
    monkeypatch.setattr(plugin, "_cupy_installed", lambda: False)
    got, reason = plugin.probe()
    assert got is ok
    assert ok or "expected a GPU count" in reason


def test_mlplug_backends_lists_cuda_with_the_reason_on_this_machine() -> None:
    env = {k: v for k, v in os.environ.items() if k != "MLPLUG_CUDA_EMULATE"}
    out = subprocess.run(
        [sys.executable, "-m", "mlplug.cli", "backends"], capture_output=True, text=True, env=env
    )
    line = next(x for x in out.stdout.splitlines() if x.startswith("cuda "))
    ok, reason = plugin.probe()
    if ok:
        assert "available" in line
    else:
        assert "unavailable" in line and reason in line


def test_memory_settings_present_real_gpus_when_there_are_enough(
    machine: pytest.MonkeyPatch,
) -> None:
    one = plugin.mlplug_memory_settings("cuda", 1, None, None)
    two = plugin.mlplug_memory_settings("cuda", 2, None, None)
    assert one is not None and one["MLPLUG_CUDA_EMULATE"] == ""  # the machine's one GPU
    assert two is not None and two["MLPLUG_CUDA_EMULATE"] == "2"


def test_memory_settings_present_emulated_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plugin, "_cupy_installed", lambda: False)
    settings = plugin.mlplug_memory_settings("cuda", 2, 1 << 20, None)
    assert settings == {
        "MLPLUG_CUDA_EMULATE": "2",
        "MLPLUG_CUDA_MEMORY_LIMIT": str(1 << 20),
        "MLPLUG_CPU_MEMORY_LIMIT": "",
    }
    assert plugin.mlplug_memory_settings("cpu", 2, None, None) is None


def test_a_broken_cupy_gives_a_clear_error_and_backends_still_lists(tmp_path: Any) -> None:
    fake = tmp_path / "cupy"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('libcudart.so.12: cannot open')\n")
    code = (
        "import mlplug\n"
        "from mlplug_cuda.device import load\n"
        "try:\n"
        "    load(mlplug.BackendParams())\n"
        "except RuntimeError as err:\n"
        "    print(err)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "MLPLUG_CUDA_EMULATE"}
    env["PYTHONPATH"] = str(tmp_path)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert "[cuda] cupy is installed but cannot be imported: libcudart.so.12" in out.stdout, (
        out.stdout + out.stderr
    )
    # `import mlplug` and `mlplug backends` are unaffected (the probe does not import cupy).
    listed = subprocess.run(
        [sys.executable, "-m", "mlplug.cli", "backends"], capture_output=True, text=True, env=env
    )
    assert listed.returncode == 0 and "cuda " in listed.stdout
