"""The ray plugin's exceptions."""

from __future__ import annotations

from mlplug.errors import ModelFileError

__all__ = ["ModelFileMismatch", "RayNodeError"]


class RayNodeError(RuntimeError):
    """A Ray node actor died, did not start in time, or failed a call.

    The message names the device (``RAY0``…), the Ray node id and the actor's process, and
    says what the coordinator was doing. After it the backend can still be closed; the device
    refuses every further call with the same message.

    Attributes:
        device: The device's name.
        node: The Ray node id the actor ran on ("" when unknown).
    """

    def __init__(self, message: str, *, device: str, node: str = "") -> None:
        super().__init__(message)
        self.device = device
        self.node = node

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (str(self), self.device, self.node))


def _rebuild(message: str, device: str, node: str) -> RayNodeError:
    return RayNodeError(message, device=device, node=node)


class ModelFileMismatch(ModelFileError):
    """A node's copy of the model file is missing, or differs in size or SHA-256 from the
    coordinator's; the message names the node device and the file. Nothing was loaded."""
