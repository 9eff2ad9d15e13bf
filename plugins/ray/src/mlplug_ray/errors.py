"""The ray plugin's exceptions."""

from __future__ import annotations

__all__ = ["RayNodeError"]


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
