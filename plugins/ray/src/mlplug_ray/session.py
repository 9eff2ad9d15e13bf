"""The Ray connection of a backend, and the pool of idle node actors it reuses."""

from __future__ import annotations

import os
import threading
from typing import Any

import ray

from mlplug_ray.cluster import init_local
from mlplug_ray.settings import ENV_ADDRESS

__all__ = ["POOL", "POOL_SIZE", "Pool", "RaySession"]

POOL_SIZE = 4
"""Idle node actors kept per cluster for the next backend."""


class RaySession:
    """The Ray connection of one backend: shut down with its last device if it started Ray."""

    def __init__(self) -> None:
        self.started = False
        self._open = 0
        self._lock = threading.Lock()
        if ray.is_initialized():
            return
        address = os.environ.get(ENV_ADDRESS, "").strip()
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            # A private single-machine cluster, on the loopback interface only.
            init_local(num_cpus=1)
        self.started = True

    def opened(self) -> None:
        """Count a device using the session."""
        with self._lock:
            self._open += 1

    def closed(self) -> None:
        """Uncount a device; the last one shuts Ray down if this session started it."""
        with self._lock:
            self._open -= 1
            last = self._open == 0
        if last and self.started and ray.is_initialized():
            POOL.clear()
            ray.shutdown()


class Pool:
    """Idle node actors of the current Ray cluster, by Ray node id."""

    def __init__(self) -> None:
        self._job = ""
        self._idle: dict[str, list[Any]] = {}
        self._lock = threading.Lock()

    def _current(self) -> None:
        job = ray.get_runtime_context().get_job_id()
        if job != self._job:  # a new Ray connection: the old handles are gone
            self._job, self._idle = job, {}

    def take(self, node: str) -> Any | None:
        """Return an idle actor on ``node``, or ``None``."""
        with self._lock:
            self._current()
            idle = self._idle.get(node)
            return idle.pop() if idle else None

    def give(self, node: str, actor: Any) -> bool:
        """Keep an idle actor; ``False`` when the pool is full (the caller ends it)."""
        with self._lock:
            self._current()
            if sum(len(v) for v in self._idle.values()) >= POOL_SIZE:
                return False
            self._idle.setdefault(node, []).append(actor)
            return True

    def idle(self) -> list[Any]:
        """Return the idle actors of the current connection."""
        with self._lock:
            self._current()
            return [actor for actors in self._idle.values() for actor in actors]

    def clear(self) -> None:
        """Forget every idle actor (Ray is shutting down)."""
        with self._lock:
            self._idle = {}


POOL = Pool()
"""The idle node actors of this process's Ray connection."""
