"""The mlplug error hierarchy (SEMANTICS §12).

Every error derives from :class:`MlplugError` and also from the builtin exception a caller
would naturally catch (``ShapeError`` is a ``ValueError``, ``ErrNoMem`` a ``MemoryError``…).
Messages start with the op or component that raised them, e.g. ``"mulmat: a.ne0 (4) != b.ne0 (3)"``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlplug.memory import BackendMemory

__all__ = [
    "BackendNotFoundError",
    "BackendUnavailableError",
    "CacheFullError",
    "ConcurrentUseError",
    "ContextError",
    "DTypeError",
    "DuplicateBackendError",
    "ErrNoMem",
    "GGUFError",
    "LoadCancelledError",
    "MlplugError",
    "ModelFileError",
    "ModelNotInstalledError",
    "NotComputedError",
    "RequestError",
    "ShapeError",
    "TokenizerError",
    "UnsupportedModelError",
    "UnsupportedOpError",
]


class MlplugError(Exception):
    """Base class of every error mlplug raises on purpose."""


class ShapeError(MlplugError, ValueError):
    """Extents, strides, offsets, dims or element counts violate an op's rule."""


class DTypeError(MlplugError, TypeError):
    """An operand dtype outside what an op accepts, or a non-creatable dtype."""


class NotComputedError(MlplugError, RuntimeError):
    """Reading a tensor that is not readable, or computing with unloaded weights."""


class ContextError(MlplugError, RuntimeError):
    """A closed context or backend, a root-context creation, or capacity exceeded."""


class ConcurrentUseError(ContextError):
    """Two threads entered compute/reserve/load/close on one backend at once."""


class UnsupportedOpError(MlplugError, NotImplementedError):
    """No device of the backend can execute a node (not even the CPU device)."""


class ErrNoMem(MlplugError, MemoryError):
    """An allocation failed; ``memory`` is the bookkeeping snapshot at the failure.

    ``failed`` says which allocation failed (device, what, bytes asked and free). When the
    failed allocation has no entry in the report (an ``input()`` tensor, §7.2), it is appended
    to the message, so the error never shows an empty report alone.
    """

    def __init__(self, memory: BackendMemory, failed: str = "", in_report: bool = True) -> None:
        self.memory = memory
        self.failed = failed
        self.in_report = in_report
        message = f"insufficient memory - required allocations: {memory}"
        if failed and not in_report:
            message += f" (failed: {failed})"
        super().__init__(message)

    def __reduce__(self) -> tuple[type[ErrNoMem], tuple[BackendMemory, str, bool]]:
        return (type(self), (self.memory, self.failed, self.in_report))


class BackendNotFoundError(MlplugError, LookupError):
    """An unknown backend name, or no backend available at all."""


class BackendUnavailableError(BackendNotFoundError):
    """A registered backend that cannot run here; carries the probe's reason and pip extra."""

    def __init__(self, message: str, *, reason: str = "", install_hint: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.install_hint = install_hint


class DuplicateBackendError(MlplugError, ValueError):
    """A backend name registered with two different factories."""


class GGUFError(MlplugError, ValueError):
    """A malformed, truncated or unsupported model file."""


class ModelFileError(MlplugError, ValueError):
    """A model file a model of ``mlplug.models`` cannot run: a required metadata key missing or
    inconsistent, a required tensor missing, or a tensor of the wrong shape. The message names
    the file and the key or tensor."""


class TokenizerError(ModelFileError):
    """The file's tokenizer metadata is missing or inconsistent, or the ``tokenizers`` library
    rejects it (its bare ``Exception`` is wrapped, chained as the cause)."""


class UnsupportedModelError(ModelFileError):
    """``general.architecture`` names no model of ``mlplug.models`` (the message lists them)."""


class ModelNotInstalledError(MlplugError, LookupError):
    """A model asked for by name whose package is not installed (the message gives the pip
    command)."""


class LoadCancelledError(MlplugError):
    """``Backend.load`` was cancelled."""


class CacheFullError(MlplugError):
    """No room for a batch in the KV cache, even after defragmentation."""


class RequestError(MlplugError, ValueError):
    """A request to ``mlplug serve`` that cannot be served as sent.

    Attributes:
        status: The HTTP status to answer with (4xx).
        param: The request field at fault, or ``None``.
        code: An OpenAI-style error code (``"context_length_exceeded"``…), or ``None``.
        kind: The OpenAI error type (``"invalid_request_error"``…).
    """

    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.param = param
        self.code = code
        self.kind = kind
