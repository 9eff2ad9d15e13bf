"""Fixtures: MLX and CPU devices and the conformance suite's kernel harness on either.

Every test module that needs MLX starts with ``pytest.importorskip("mlx.core")``, so the suite
skips cleanly (with the reason) where MLX is not installed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from mlplug_conformance.harness import Harness

NEED_MLX = "MLX is not installed (pip install 'mlx[cpu]' on Linux, 'mlplug[metal]' on a Mac)"


@pytest.fixture
def metal() -> Iterator[Any]:
    """An MLX device on MLX's CPU (the device MLX has everywhere)."""
    mx = pytest.importorskip("mlx.core", reason=NEED_MLX, exc_type=ImportError)
    device = pytest.importorskip("mlplug_metal.device", reason="mlplug-metal is not installed")
    dev = device.MlxDevice(mx.cpu)
    yield dev
    dev.close()


@pytest.fixture
def h(metal: Any) -> Harness:
    return Harness(metal)


@pytest.fixture
def cpu_h() -> Iterator[Harness]:
    from mlplug_cpu.device import CpuDevice

    dev = CpuDevice()
    yield Harness(dev)
    dev.close()


@pytest.fixture(autouse=True)
def exact_cpu_products(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Make the cpu plugin, used here as the reference, multiply weights exactly in F32.

    Its native kernels multiply quantised weights against 8-bit quantised activations (the
    vec-dot format SEMANTICS §5 allows, tested in plugins/cpu); comparing MLX with that would
    measure the cpu plugin's rounding, not MLX's correctness.
    """
    monkeypatch.setenv("MLPLUG_CPU_NATIVE", "0")
    try:
        from mlplug_cpu.kernels import native
    except ImportError:  # no cpu plugin installed: nothing to switch
        yield
        return
    native.configure_from_env()
    yield
    monkeypatch.delenv("MLPLUG_CPU_NATIVE")
    native.configure_from_env()
