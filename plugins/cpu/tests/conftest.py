"""Fixtures: a CPU device and a small harness that runs single nodes on it (no engine)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pytest

from mlplug.device import OPS, DType, Meta, Node, TensorRef, contiguous_strides
from mlplug_cpu.device import CpuDevice
from mlplug_cpu.kernels import quant

Shape = Sequence[int]


def _full(ne: Shape) -> tuple[int, int, int, int]:
    padded = (*ne, 1, 1, 1, 1)[:4]
    return (padded[0], padded[1], padded[2], padded[3])


class Harness:
    """Build refs on a device buffer, run one op, read results back."""

    def __init__(self, device: CpuDevice) -> None:
        self.device = device

    def empty(self, dtype: DType, *ne: int) -> TensorRef:
        """A fresh contiguous ref (zero-element extents normalised as the core does)."""
        full = _full(ne)
        if 0 in full:
            full = (0, 1, 1, 1)
        nbytes = dtype.nbytes(full[0] * full[1] * full[2] * full[3])
        buf = self.device.alloc(nbytes)
        return TensorRef(buf, 0, full, contiguous_strides(full, dtype), dtype)

    def tensor(self, values: Any, *ne: int, dtype: DType = DType.F32) -> TensorRef:
        """A contiguous ref holding ``values`` (flat, dim 0 fastest), converted to ``dtype``."""
        ref = self.empty(dtype, *ne)
        flat = np.asarray(values).ravel()
        if dtype == DType.I32:
            quant.raw(ref)[...] = flat.reshape(quant.np_shape(ref))
        else:
            quant.store(ref, flat.astype(np.float32).reshape(quant.np_shape(ref)))
        return ref

    def raw_tensor(self, data: bytes, dtype: DType, *ne: int) -> TensorRef:
        """A contiguous ref whose buffer holds exactly ``data`` (stored form)."""
        ref = self.empty(dtype, *ne)
        assert ref.buffer is not None
        ref.buffer.write(0, data)
        return ref

    def out_for(
        self, op: str, srcs: Sequence[TensorRef | None], **params: Any
    ) -> tuple[TensorRef, dict[str, Any]]:
        """Infer the output with the ops table and allocate it (as the engine would)."""
        metas = [
            None
            if s is None
            else Meta(s.ne, s.nb, s.dtype, s.offset, s.buffer.nbytes if s.buffer else 0)
            for s in srcs
        ]
        result = OPS[op].infer(metas, dict(params))
        meta = result.meta
        buf = self.device.alloc(max(meta.storage, 0))
        return TensorRef(buf, 0, meta.ne, meta.nb, meta.dtype), dict(result.params)

    def run(self, op: str, *srcs: TensorRef | None, **params: Any) -> TensorRef:
        """Run ``op`` on ``srcs`` and return its output ref."""
        out, normalised = self.out_for(op, srcs, **params)
        self.device.execute([Node(op, out, tuple(srcs), normalised)])
        return out

    def values(self, ref: TensorRef) -> np.ndarray:
        """Logical values, flat in ggml order (F32, or int for I32)."""
        if ref.dtype == DType.I32:
            return quant.raw(ref).ravel().copy()
        return np.array(quant.load(ref), dtype=np.float32).ravel()

    def array(self, ref: TensorRef) -> np.ndarray:
        """Logical values in numpy order ``(ne3, ne2, ne1, ne0)``."""
        return self.values(ref).reshape(quant.np_shape(ref))

    @staticmethod
    def permuted(ref: TensorRef, *axes: int) -> TensorRef:
        """A permute view of ``ref`` (source axis i moves to position axes[i])."""
        ne, nb = [0] * 4, [0] * 4
        for i, p in enumerate(axes):
            ne[p], nb[p] = ref.ne[i], ref.nb[i]
        return TensorRef(ref.buffer, ref.offset, tuple(ne), tuple(nb), ref.dtype)  # type: ignore[arg-type]


@pytest.fixture
def device() -> Iterator[CpuDevice]:
    dev = CpuDevice()
    yield dev
    dev.close()


@pytest.fixture
def h(device: CpuDevice) -> Harness:
    return Harness(device)
