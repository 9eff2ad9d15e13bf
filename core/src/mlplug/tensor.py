"""``Tensor``: a lazy graph node or a buffer tensor (SEMANTICS §1, §2, §5).

Op methods (generated from the ops table into :mod:`mlplug._opcalls`) only record nodes: each
validates its operands at once through the ops table (:mod:`mlplug.ops`) and returns a new
``Tensor`` belonging to the context passed. Nothing is allocated or computed until
``Context.compute``. Reading (``bytes``/``floats``/``numpy``) follows the readability rules of
§2.4.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mlplug import _convert
from mlplug._opcalls import TensorOps
from mlplug.dtype import DType
from mlplug.ops import Meta

if TYPE_CHECKING:
    import numpy as np

    from mlplug.context import Family
    from mlplug.device import Buffer

__all__ = ["Storage", "Tensor"]


class Storage:
    """Where a buffer tensor's bytes live: a device index and a window of one of its buffers."""

    __slots__ = ("buffer", "device", "nbytes", "offset")

    def __init__(self, device: int, buffer: Buffer | None, offset: int, nbytes: int) -> None:
        self.device = device
        self.buffer = buffer
        self.offset = offset
        self.nbytes = nbytes


class Tensor(TensorOps):
    """A tensor of up to four dimensions in ggml order (dim 0 fastest).

    Buffer tensors (created by a context, or model weights) own storage; every other tensor is
    a node of its context family's graph, readable after a ``compute`` that lists it. The op
    methods (``add``, ``mulmat``, …) come from :class:`mlplug._opcalls.TensorOps`, generated
    from the ops table.
    """

    __slots__ = (
        "__weakref__",
        "_family",
        "_meta",
        "_op",
        "_params",
        "_readable",
        "_result",
        "_root",
        "_srcs",
        "_storage",
        "name",
    )

    def __init__(
        self,
        family: Family,
        meta: Meta,
        *,
        op: str | None = None,
        srcs: tuple[Tensor | None, ...] = (),
        params: dict[str, Any] | None = None,
        storage: Storage | None = None,
        root: Tensor | None = None,
        name: str = "",
    ) -> None:
        self._family = family
        self._meta = meta
        self._op = op
        self._srcs = srcs
        self._params = params or {}
        self._storage = storage
        self._root = root
        self._result: bytes | None = None
        self._readable = False
        self.name = name

    # -- introspection (§1.2) ----------------------------------------------------------------

    def dim(self, n: int) -> int:
        """Return ``ne[n]`` for ``n`` in 0..3."""
        if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n < 4:
            raise IndexError(f"dim: n must be in 0..3, got {n!r}")
        return self._meta.ne[n]

    def stride(self, n: int) -> int:
        """Return ``nb[n]`` in bytes for ``n`` in 0..3."""
        if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n < 4:
            raise IndexError(f"stride: n must be in 0..3, got {n!r}")
        return self._meta.nb[n]

    def shape(self) -> tuple[int, ...]:
        """Return the extents with trailing 1s dropped (at least one)."""
        ne = self._meta.ne
        if ne[0] == 0:
            return (0,)
        k = max((i for i in range(4) if ne[i] > 1), default=0) + 1
        return tuple(ne[:k])

    def dtype(self) -> DType:
        """Return the element type."""
        return self._meta.dtype

    def n_elements(self) -> int:
        """Return the number of elements."""
        return self._meta.n

    def is_contiguous(self) -> bool:
        """Whether the strides are the packed strides of the extents."""
        from mlplug.ops import is_contiguous

        return is_contiguous(self._meta.ne, self._meta.nb, self._meta.dtype)

    def __repr__(self) -> str:
        kind = self._op or ("weight" if self.name else "buffer")
        label = f" {self.name!r}" if self.name else ""
        return f"<Tensor{label} {kind} {self._meta.dtype.name} {list(self._meta.ne)}>"

    # -- reading (§2.4) -----------------------------------------------------------------------

    def bytes(self) -> bytes:
        """Return the values' bytes in logical order (block types: raw blocks)."""
        return self._family.executor.read_bytes(self)

    def floats(self) -> np.ndarray:
        """Return the values as a 1-D float32 array in logical order."""
        raw = self.bytes()
        if self._meta.n == 0:
            import numpy as np

            return np.zeros(0, dtype=np.float32)
        return _convert.to_f32(raw, self._meta.dtype)

    def numpy(self) -> np.ndarray:
        """Return a copy of the values in numpy order (shape ``reversed(shape())``)."""
        raw = self.bytes()
        shape = tuple(reversed(self.shape()))
        if self._meta.n == 0:
            import numpy as np

            return np.zeros((0,), dtype=_convert.to_numpy(b"", self._meta.dtype, (0,)).dtype)
        return _convert.to_numpy(raw, self._meta.dtype, shape)
