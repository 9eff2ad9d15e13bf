"""The ``Backend`` protocol: what ``new_backend`` returns (SEMANTICS §6.1).

The core engine's :class:`mlplug.engine.GraphBackend` implements it; a plugin may also implement
it directly (wrapping a foreign engine) and is held to the same contract by the conformance
suite.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from mlplug.config import Config
    from mlplug.context import Context
    from mlplug.memory import BackendMemory
    from mlplug.tensor import Tensor

__all__ = ["Backend"]


@runtime_checkable
class Backend(Protocol):
    """A model (or none) on a set of devices, ready to build and run graphs."""

    def load(self, progress: Callable[[float], None] | None = None, cancel: Any = None) -> None:
        """Read all tensor data from the model file into the weight storage."""
        ...

    def backend_memory(self) -> BackendMemory:
        """Return an immutable snapshot of the memory bookkeeping."""
        ...

    def config(self) -> Config:
        """Return the model file's key/value metadata."""
        ...

    def get(self, name: str) -> Tensor | None:
        """Return the weight named ``name``, or ``None``."""
        ...

    def new_context(self) -> Context:
        """Return a new root context with the default node capacity."""
        ...

    def new_context_size(self, n: int) -> Context:
        """Return a new root context of capacity ``n``."""
        ...

    def close(self) -> None:
        """Close every context and free all memory. Idempotent."""
        ...

    def __enter__(self) -> Backend:
        """Return the backend (``with backend:`` closes it on exit)."""
        ...

    def __exit__(self, *exc: object) -> None:
        """Close the backend."""
        ...
