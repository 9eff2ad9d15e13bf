"""A private Ray cluster for the tests: one machine, loopback only, started and stopped here.

Every test that needs Ray takes the ``ray_cluster`` fixture; without Ray installed they skip
(``pytest.importorskip``). The cluster is started once per test session with one CPU (the node
actors reserve none), no dashboard, and the node address 127.0.0.1, and shut down at the end.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[Any]:
    ray = pytest.importorskip("ray", reason='ray is not installed (pip install "mlplug[ray]")')
    if not ray.is_initialized():
        ray.init(
            num_cpus=1,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            log_to_driver=False,
            configure_logging=False,
        )
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture
def two_nodes(ray_cluster: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Two node actors (``RAY0``, ``RAY1``), no caps."""
    monkeypatch.setenv("MLPLUG_RAY_NODES", "2")
    monkeypatch.setenv("MLPLUG_RAY_TIMEOUT", "120")
    for name in ("MLPLUG_RAY_MEMORY_LIMIT", "MLPLUG_CPU_MEMORY_LIMIT", "MLPLUG_CPU_SIMULATED_GPUS"):
        monkeypatch.delenv(name, raising=False)
    return ray_cluster
