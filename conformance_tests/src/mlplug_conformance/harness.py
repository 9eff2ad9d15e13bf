"""Run single nodes on a device, without the engine: the kernel test harness for plugin tests.

A plugin's own tests build operands on its device, run one op and read the result back, in
logical order, through nothing but the device API (``alloc``, ``Buffer.write``/``read``,
``execute``, ``synchronize``)::

    from mlplug_conformance.harness import Harness

    @pytest.fixture
    def h(device):
        return Harness(device)

    def test_add_tiles_b(h):
        out = h.run("add", h.tensor(range(12), 6, 2), h.tensor([100, 200, 300], 3))
        assert h.values(out).tolist() == [100, 201, 302, 103, ...]

Values are written and read with this package's independent conversions
(:mod:`mlplug_conformance.convert`; other block types through ``gguf``), so a test checks the
device's kernels, not the device's own conversions. Output layouts and normalised parameters
come from the ops table, as the engine would give them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mlplug.device import OPS, Device, DType, Meta, Node, TensorRef, contiguous_strides
from mlplug.ops import Result
from mlplug_conformance import convert

__all__ = ["Harness", "decode", "encode", "full_ne"]

Shape = Sequence[int]


def full_ne(ne: Shape) -> tuple[int, int, int, int]:
    """Pad to four extents; a zero anywhere gives the normalised ``[0, 1, 1, 1]``."""
    padded = (*ne, 1, 1, 1, 1)[:4]
    if 0 in padded:
        return (0, 1, 1, 1)
    return (padded[0], padded[1], padded[2], padded[3])


def encode(values: Any, dtype: DType) -> bytes:
    """Return values (flat, logical order) in ``dtype``'s stored form.

    F32/F16/BF16, integers, Q8_0 and Q4_0 follow SEMANTICS §3.2 (:func:`convert.encode`); other
    block types are quantised by ``gguf``.
    """
    flat = np.asarray(values).reshape(-1)
    if dtype in convert.ENCODABLE:
        return convert.encode(flat, dtype)
    import gguf

    kind = gguf.GGMLQuantizationType(dtype.ggml_type)
    return bytes(gguf.quants.quantize(flat.astype(np.float32).reshape(1, -1), kind).tobytes())


def decode(data: bytes, dtype: DType) -> np.ndarray:
    """Return stored bytes as values: F32 for float and block dtypes, the integer type's own."""
    values = convert.decode(data, dtype)
    if dtype in convert.INT_DTYPES:
        return values.astype(convert.INT_DTYPES[dtype])
    return values.astype(np.float32)


class Harness:
    """Build refs on a device's buffers, run one op, read results back in logical order."""

    def __init__(self, device: Device) -> None:
        self.device = device

    def empty(self, dtype: DType, *ne: int) -> TensorRef:
        """Return a fresh contiguous (zeroed) ref."""
        full = full_ne(ne)
        nbytes = dtype.nbytes(full[0] * full[1] * full[2] * full[3])
        buf = self.device.alloc(max(nbytes, 1))
        return TensorRef(buf, 0, full, contiguous_strides(full, dtype), dtype)

    def tensor(self, values: Any, *ne: int, dtype: DType = DType.F32) -> TensorRef:
        """Return a contiguous ref holding ``values`` (flat, dim 0 fastest) in ``dtype``."""
        return self.raw_tensor(encode(np.asarray(values), dtype), dtype, *ne)

    def raw_tensor(self, data: bytes, dtype: DType, *ne: int) -> TensorRef:
        """Return a contiguous ref whose buffer holds exactly ``data`` (stored form)."""
        ref = self.empty(dtype, *ne)
        if data:
            assert ref.buffer is not None
            ref.buffer.write(0, data)
        return ref

    @staticmethod
    def _infer(op: str, srcs: Sequence[TensorRef | None], params: dict[str, Any]) -> Result:
        metas = [
            None
            if s is None
            else Meta(s.ne, s.nb, s.dtype, s.offset, s.buffer.nbytes if s.buffer else 0)
            for s in srcs
        ]
        return OPS[op].infer(metas, params)

    def out_for(
        self, op: str, srcs: Sequence[TensorRef | None], **params: Any
    ) -> tuple[TensorRef, dict[str, Any]]:
        """Infer the output with the ops table and allocate it (as the engine would)."""
        result = self._infer(op, srcs, params)
        meta = result.meta
        buf = self.device.alloc(max(meta.storage, 1))
        return TensorRef(buf, 0, meta.ne, meta.nb, meta.dtype), dict(result.params)

    def run(self, op: str, *srcs: TensorRef | None, **params: Any) -> TensorRef:
        """Run ``op`` on ``srcs`` with ``params`` and return its output ref (synchronised).

        A ``copy`` writes into its destination ``srcs[1]`` (a window of an existing buffer), as
        the engine runs it; every other op gets a fresh output buffer.
        """
        if OPS[op].kind == "copy":
            dst = srcs[1]
            if dst is None:
                raise ValueError("[harness] copy needs a destination ref")
            out, normalised = dst, dict(self._infer(op, srcs, params).params)
        else:
            out, normalised = self.out_for(op, srcs, **params)
        self.device.execute([Node(op, out, tuple(srcs), normalised)])
        self.device.synchronize()
        return out

    def bytes(self, ref: TensorRef) -> bytes:
        """Return the window's stored bytes in logical order (block types: whole blocks)."""
        if ref.n == 0:
            return b""
        assert ref.buffer is not None
        lo, hi = ref.span()
        span = np.frombuffer(ref.buffer.read(lo, hi - lo), np.uint8)
        size, blocks = ref.dtype.type_size, ref.ne[0] // ref.dtype.block_size
        view = np.lib.stride_tricks.as_strided(
            span,
            (ref.ne[3], ref.ne[2], ref.ne[1], blocks, size),
            (ref.nb[3], ref.nb[2], ref.nb[1], ref.nb[0], 1),
            writeable=False,
        )
        return np.ascontiguousarray(view).tobytes()

    def values(self, ref: TensorRef) -> np.ndarray:
        """Return the logical values, flat in ggml order (see :func:`decode`)."""
        return decode(self.bytes(ref), ref.dtype)

    def array(self, ref: TensorRef) -> np.ndarray:
        """Return the logical values in numpy order ``(ne3, ne2, ne1, ne0)``."""
        return self.values(ref).reshape(ref.ne[3], ref.ne[2], ref.ne[1], ref.ne[0])

    @staticmethod
    def permuted(ref: TensorRef, *axes: int) -> TensorRef:
        """Return a permute view of ``ref`` (source axis ``i`` moves to position ``axes[i]``)."""
        ne, nb = [0] * 4, [0] * 4
        for i, p in enumerate(axes):
            ne[p], nb[p] = ref.ne[i], ref.nb[i]
        return TensorRef(
            ref.buffer,
            ref.offset,
            (ne[0], ne[1], ne[2], ne[3]),
            (nb[0], nb[1], nb[2], nb[3]),
            ref.dtype,
        )

    @staticmethod
    def view(ref: TensorRef, offset: int, ne: Shape, nb: Shape) -> TensorRef:
        """Return a view as ``Tensor.view`` makes it (``nb`` includes nb0; the rest packed)."""
        fne, fnb = [*ne, 1, 1, 1][:4], list(nb)
        while len(fnb) < 4:
            fnb.append(fnb[-1] * fne[len(fnb) - 1])
        return TensorRef(
            ref.buffer,
            ref.offset + offset,
            (fne[0], fne[1], fne[2], fne[3]),
            (fnb[0], fnb[1], fnb[2], fnb[3]),
            ref.dtype,
        )
