"""Fixtures: MLX and CPU devices and a harness that runs single nodes on either (no engine).

Every test module that needs MLX starts with ``pytest.importorskip("mlx.core")``, so the suite
skips cleanly (with the reason) where MLX is not installed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import gguf
import numpy as np
import pytest

from mlplug.device import OPS, Device, DType, Meta, Node, TensorRef, contiguous_strides

Shape = Sequence[int]
NEED_MLX = "MLX is not installed (pip install 'mlx[cpu]' on Linux, 'mlplug[metal]' on a Mac)"

_NUMPY = {
    DType.F32: np.float32,
    DType.F16: np.float16,
    DType.F64: np.float64,
    DType.I8: np.int8,
    DType.I16: np.int16,
    DType.I32: np.int32,
    DType.I64: np.int64,
}


def full_ne(ne: Shape) -> tuple[int, int, int, int]:
    """Pad to four extents; a zero anywhere gives the normalised ``[0, 1, 1, 1]``."""
    padded = (*ne, 1, 1, 1, 1)[:4]
    if 0 in padded:
        return (0, 1, 1, 1)
    return (padded[0], padded[1], padded[2], padded[3])


def encode(values: np.ndarray, dtype: DType) -> bytes:
    """Return float ``values`` (flat, logical order) in ``dtype``'s stored form (gguf-exact)."""
    flat = np.asarray(values).reshape(-1)
    if dtype == DType.BF16:
        bits = flat.astype(np.float32).view(np.uint32)
        rounded = (bits + (0x7FFF + ((bits >> 16) & 1))) >> 16
        return np.where(np.isnan(flat), (bits >> 16) | 0x40, rounded).astype(np.uint16).tobytes()
    if dtype.is_block:
        kind = gguf.GGMLQuantizationType(dtype.ggml_type)
        return gguf.quants.quantize(flat.astype(np.float32).reshape(1, -1), kind).tobytes()
    return flat.astype(_NUMPY[dtype]).tobytes()


def decode(data: bytes, dtype: DType) -> np.ndarray:
    """Return stored bytes as values (ints for integer dtypes, F32 otherwise)."""
    raw = np.frombuffer(data, np.uint8)
    if dtype == DType.BF16:
        return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    if dtype.is_block:
        kind = gguf.GGMLQuantizationType(dtype.ggml_type)
        return gguf.quants.dequantize(raw.reshape(1, -1), kind).reshape(-1).astype(np.float32)
    values = raw.view(_NUMPY[dtype])
    return (
        values
        if dtype in (DType.I8, DType.I16, DType.I32, DType.I64)
        else values.astype(np.float32)
    )


class Harness:
    """Build refs on a device's buffers, run one op, read results back in logical order."""

    def __init__(self, device: Device) -> None:
        self.device = device

    def empty(self, dtype: DType, *ne: int) -> TensorRef:
        """A fresh contiguous ref (zeroed)."""
        full = full_ne(ne)
        nbytes = dtype.nbytes(full[0] * full[1] * full[2] * full[3])
        buf = self.device.alloc(max(nbytes, 1))
        return TensorRef(buf, 0, full, contiguous_strides(full, dtype), dtype)

    def tensor(self, values: Any, *ne: int, dtype: DType = DType.F32) -> TensorRef:
        """A contiguous ref holding ``values`` (flat, dim 0 fastest), converted to ``dtype``."""
        return self.raw_tensor(encode(np.asarray(values), dtype), dtype, *ne)

    def raw_tensor(self, data: bytes, dtype: DType, *ne: int) -> TensorRef:
        """A contiguous ref whose buffer holds exactly ``data``."""
        ref = self.empty(dtype, *ne)
        if data:
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
        buf = self.device.alloc(max(meta.storage, 1))
        return TensorRef(buf, 0, meta.ne, meta.nb, meta.dtype), dict(result.params)

    def run(self, op: str, *srcs: TensorRef | None, **params: Any) -> TensorRef:
        """Run ``op`` on ``srcs`` and return its output ref."""
        out, normalised = self.out_for(op, srcs, **params)
        self.device.execute([Node(op, out, tuple(srcs), normalised)])
        self.device.synchronize()
        return out

    def bytes(self, ref: TensorRef) -> bytes:
        """The window's stored bytes in logical order."""
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
        """Logical values, flat in ggml order."""
        return decode(self.bytes(ref), ref.dtype)

    def array(self, ref: TensorRef) -> np.ndarray:
        """Logical values in numpy order ``(ne3, ne2, ne1, ne0)``."""
        return self.values(ref).reshape(ref.ne[3], ref.ne[2], ref.ne[1], ref.ne[0])

    @staticmethod
    def permuted(ref: TensorRef, *axes: int) -> TensorRef:
        """A permute view of ``ref`` (source axis i moves to position axes[i])."""
        ne, nb = [0] * 4, [0] * 4
        for i, p in enumerate(axes):
            ne[p], nb[p] = ref.ne[i], ref.nb[i]
        return TensorRef(ref.buffer, ref.offset, tuple(ne), tuple(nb), ref.dtype)  # type: ignore[arg-type]

    @staticmethod
    def view(ref: TensorRef, offset: int, ne: Shape, nb: Shape) -> TensorRef:
        """A view as ``Tensor.view`` makes it (``nb`` includes nb0; the rest continue packed)."""
        fne, fnb = [*ne, 1, 1, 1][:4], list(nb)
        while len(fnb) < 4:
            fnb.append(fnb[-1] * fne[len(fnb) - 1])
        return TensorRef(ref.buffer, ref.offset + offset, tuple(fne), tuple(fnb), ref.dtype)  # type: ignore[arg-type]


@pytest.fixture
def metal() -> Iterator[Any]:
    """An MLX device on MLX's CPU (the device MLX has everywhere)."""
    mx = pytest.importorskip("mlx.core", reason=NEED_MLX, exc_type=ImportError)
    device = pytest.importorskip("mlplug_metal.device", reason="mlplug-metal is not installed")
    dev = device.MlxDevice(mx.cpu)
    yield dev
    dev.close()


@pytest.fixture
def h(metal: Any) -> Harness:
    return Harness(metal)


@pytest.fixture
def cpu_h() -> Iterator[Harness]:
    from mlplug_cpu.device import CpuDevice

    dev = CpuDevice()
    yield Harness(dev)
    dev.close()


@pytest.fixture(autouse=True)
def exact_cpu_products(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Make the cpu plugin, used here as the reference, multiply weights exactly in F32.

    Its native kernels multiply quantised weights against 8-bit quantised activations (the
    vec-dot format SEMANTICS §5 allows, tested in plugins/cpu); comparing MLX with that would
    measure the cpu plugin's rounding, not MLX's correctness.
    """
    monkeypatch.setenv("MLPLUG_CPU_NATIVE", "0")
    try:
        from mlplug_cpu.kernels import native
    except ImportError:  # no cpu plugin installed: nothing to switch
        yield
        return
    native.configure_from_env()
    yield
    monkeypatch.delenv("MLPLUG_CPU_NATIVE")
    native.configure_from_env()
