"""A private single-machine Ray cluster that listens on 127.0.0.1 only.

Ray (2.60) binds its servers (GCS, raylet, object manager, every worker's gRPC server, the
runtime-env and dashboard agents) to loopback only when the node address is exactly
``127.0.0.1``; for any other node address they listen on every interface. But on Linux
``ray.init(_node_ip_address="127.0.0.1")`` replaces a loopback node address with the machine's
network address (``ray._private.services.resolve_ip_for_localhost``) while Ray's *cluster mode*
is on, its default there. Cluster mode is read once, when Ray is imported, from
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER``; with it off the node address stays ``127.0.0.1``.

:func:`init_local` therefore starts Ray with cluster mode off (the environment variable for the
processes it spawns, and Ray's module constant when Ray was imported earlier in this process),
usage statistics off (no report is ever sent), no dashboard, and checks the result: every node
of the new cluster must have the address ``127.0.0.1``. ``plugins/ray/tests/test_loopback.py``
lists the sockets of every process of the cluster and fails on any address that is not loopback.

This module imports Ray only inside :func:`init_local`.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["LOOPBACK", "LOOPBACK_ENV", "init_local"]

LOOPBACK = "127.0.0.1"

LOOPBACK_ENV = {
    # Cluster mode off: Ray keeps the node address 127.0.0.1 instead of swapping in the
    # machine's network address, and then binds its servers to loopback.
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    # No usage report to Ray's servers (the only outbound connection Ray would make).
    "RAY_USAGE_STATS_ENABLED": "0",
}
"""Environment of the processes a private cluster starts."""


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def _cluster_mode_off() -> Iterator[None]:
    """Turn Ray's cluster mode off in this process while a local cluster starts.

    Ray reads ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` into a module constant when it is imported;
    when Ray was imported before (the variable unset), the constant is still on: it is
    switched off for the duration of ``ray.init`` and restored after. It is a private
    attribute of Ray: when a Ray version lacks it, the address check in :func:`init_local`
    still refuses a cluster that is not on loopback.
    """
    constants: Any = importlib.import_module("ray._private.ray_constants")
    had = hasattr(constants, "ENABLE_RAY_CLUSTER")
    saved = getattr(constants, "ENABLE_RAY_CLUSTER", None)
    if had:
        constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        if had:
            constants.ENABLE_RAY_CLUSTER = saved


def init_local(num_cpus: int = 1) -> Any:
    """Start a private Ray cluster on this machine, bound to 127.0.0.1 only; return ``ray``.

    The driver, the GCS, the raylet and every worker the cluster starts listen on loopback;
    there is no dashboard and no usage report. ``ray.shutdown()`` stops it.

    Args:
        num_cpus: CPUs the node offers to tasks (the mlplug node actors reserve none).

    Raises:
        RuntimeError: Ray is already initialised in this process, or the cluster it started
            has a node on another address (it is shut down first).
    """
    with _environment(LOOPBACK_ENV):
        import ray

        if ray.is_initialized():
            raise RuntimeError("[ray] Ray is already initialised in this process")
        with _cluster_mode_off():
            ray.init(
                num_cpus=num_cpus,
                include_dashboard=False,
                _node_ip_address=LOOPBACK,
                log_to_driver=False,
                configure_logging=False,
            )
    addresses = sorted(
        {str(n.get("NodeManagerAddress")) for n in ray.nodes()}  # type: ignore[no-untyped-call, unused-ignore]
    )
    if addresses != [LOOPBACK]:
        ray.shutdown()
        raise RuntimeError(
            f"[ray] the local cluster came up on {addresses}, not on {LOOPBACK} only "
            "(this Ray version does not honour RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0)"
        )
    return ray
