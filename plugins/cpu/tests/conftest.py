"""Fixtures: a CPU device and the conformance suite's kernel harness on it (no engine)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mlplug_conformance.harness import Harness
from mlplug_cpu.device import CpuDevice


@pytest.fixture
def device() -> Iterator[CpuDevice]:
    dev = CpuDevice()
    yield dev
    dev.close()


@pytest.fixture
def h(device: CpuDevice) -> Harness:
    return Harness(device)
