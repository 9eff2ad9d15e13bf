"""A private Ray cluster for the tests: one machine, loopback only, started and stopped here.

Every test that needs Ray takes the ``ray_cluster`` fixture; without Ray installed they skip
(``pytest.importorskip``). The cluster is started once per test session by
:func:`mlplug_ray.cluster.init_local` (one CPU, the node actors reserve none; no dashboard; every
server on 127.0.0.1, which ``test_loopback.py`` checks) and shut down at the end.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[Any]:
    pytest.importorskip("ray", reason='ray is not installed (pip install "mlplug[ray]")')
    from mlplug_ray.cluster import init_local

    ray = init_local(num_cpus=1)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture
def two_nodes(ray_cluster: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Two node actors (``RAY0``, ``RAY1``), no caps."""
    monkeypatch.setenv("MLPLUG_RAY_NODES", "2")
    monkeypatch.setenv("MLPLUG_RAY_TIMEOUT", "120")
    for name in (
        "MLPLUG_RAY_MEMORY_LIMIT",
        "MLPLUG_RAY_MODEL_PATHS",
        "MLPLUG_CPU_MEMORY_LIMIT",
        "MLPLUG_CPU_SIMULATED_GPUS",
    ):
        monkeypatch.delenv(name, raising=False)
    return ray_cluster
