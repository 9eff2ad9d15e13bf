"""Deliberately broken variants of the cpu plugin, which the conformance suite must catch.

Each mutant wraps the real cpu devices and changes exactly one thing:

* ``mutant_stride``: strided (non-contiguous) operands are read as if packed — wrong strides in
  every view (the bug of engines that ignore strides).
* ``mutant_broadcast``: binary ops repeat ``b`` element-wise (``b[i // r]``) instead of tiling it
  (``b[i % n]``) — numpy-minded broadcasting.
* ``mutant_transpose``: ``mulmat`` writes its F32 result transposed (column-major).
* ``mutant_nan``: every NaN in an F32 result becomes 0.
* ``mutant_ulp``: one element in 4096 of every F32 result is off by a relative 1e-3.
* ``mutant_gather``: ``rows`` with an out-of-range id returns zeros for every row instead of
  raising (as an engine that bails out of the gather without reporting it would).

``register_mutants()`` registers them with the global registry as backends of the same names.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np

import mlplug
from mlplug import DType
from mlplug.device import EnginePlugin, Node, TensorRef, contiguous_strides
from mlplug.engine import EngineFactory

MUTANTS = (
    "mutant_stride",
    "mutant_broadcast",
    "mutant_transpose",
    "mutant_nan",
    "mutant_ulp",
    "mutant_gather",
)


def _f32_out(ref: TensorRef) -> np.ndarray | None:
    """Read a contiguous F32 output window, or ``None`` when the mutation does not apply."""
    if ref.dtype is not DType.F32 or not ref.contiguous or ref.n == 0 or ref.buffer is None:
        return None
    return np.frombuffer(ref.buffer.read(ref.offset, ref.nbytes), dtype="<f4").copy()


def _write(ref: TensorRef, values: np.ndarray) -> None:
    assert ref.buffer is not None
    ref.buffer.write(ref.offset, values.astype("<f4").tobytes())


def _read_logical(ref: TensorRef) -> np.ndarray:
    from mlplug import _convert

    assert ref.buffer is not None
    start, stop = ref.span()
    raw = _convert.gather(
        ref.buffer.read(start, stop - start), ref.offset - start, ref.ne, ref.nb, ref.dtype
    )
    return _convert.to_f32(raw, ref.dtype).astype(np.float64).reshape(tuple(reversed(ref.ne)))


class _Mutant:
    """A device that delegates to a real one and breaks one behaviour."""

    def __init__(self, inner: object, mutate: Callable[[object, Node], bool]) -> None:
        self._inner = inner
        self._mutate = mutate
        for attr in ("name", "id", "kind", "alignment"):
            setattr(self, attr, getattr(inner, attr))

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    def execute(self, nodes: Sequence[Node]) -> None:
        for node in nodes:
            if not self._mutate(self._inner, node):
                self._inner.execute([node])  # type: ignore[attr-defined]


def _stride(inner: object, node: Node) -> bool:
    srcs = []
    changed = False
    for s in node.srcs:
        packed = None if s is None else contiguous_strides(s.ne, s.dtype)
        start, stop = (0, 0) if s is None else s.span()
        if s is not None and not s.contiguous and s.nbytes <= stop - start:
            srcs.append(replace(s, nb=packed))
            changed = True
        else:
            srcs.append(s)
    if not changed:
        return False
    inner.execute([Node(node.op, node.out, tuple(srcs), node.params)])  # type: ignore[attr-defined]
    return True


_BINARY = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide}


def _broadcast(inner: object, node: Node) -> bool:
    if node.op not in _BINARY or node.out.dtype is not DType.F32:
        return False
    a_ref, b_ref = node.srcs
    assert a_ref is not None and b_ref is not None
    if all(x == y or y == 1 for x, y in zip(a_ref.ne, b_ref.ne, strict=True)):
        return False
    a, b = _read_logical(a_ref), _read_logical(b_ref)
    for axis in range(4):
        if b.shape[axis] not in (1, a.shape[axis]) and b.shape[axis]:
            b = np.repeat(b, a.shape[axis] // b.shape[axis], axis=axis)
    with np.errstate(all="ignore"):
        _write(node.out, _BINARY[node.op](a, np.broadcast_to(b, a.shape)).reshape(-1))
    return True


def _transpose(inner: object, node: Node) -> bool:
    inner.execute([node])  # type: ignore[attr-defined]
    if node.op not in ("mulmat", "mulmat_full_prec"):
        return True
    out = _f32_out(node.out)
    if out is not None and node.out.ne[0] > 1 and node.out.ne[1] > 1:
        m, n = node.out.ne[0], node.out.ne[1]
        batches = out.reshape(-1, n, m)
        _write(node.out, batches.reshape(-1, m, n).swapaxes(1, 2).reshape(-1))
    return True


def _nan(inner: object, node: Node) -> bool:
    inner.execute([node])  # type: ignore[attr-defined]
    out = _f32_out(node.out)
    if out is not None and np.isnan(out).any():
        _write(node.out, np.nan_to_num(out, nan=0.0, posinf=np.inf, neginf=-np.inf))
    return True


def _ulp(inner: object, node: Node) -> bool:
    inner.execute([node])  # type: ignore[attr-defined]
    out = _f32_out(node.out)
    if out is not None and out.size >= 64:
        picked = out[::4096]
        out[::4096] = np.where(picked == 0, 1e-3, picked * np.float32(1.001))
        _write(node.out, out)
    return True


def _gather(inner: object, node: Node) -> bool:
    if node.op != "rows" or node.out.dtype is not DType.F32:
        return False
    table, ids_ref = node.srcs
    assert table is not None and ids_ref is not None and ids_ref.buffer is not None
    start, stop = ids_ref.span()
    ids = np.frombuffer(ids_ref.buffer.read(start, stop - start), dtype="<i4")
    if ((ids >= 0) & (ids < table.ne[1])).all():
        return False
    _write(node.out, np.zeros(node.out.n))
    return True


_MUTATIONS: dict[str, Callable[[object, Node], bool]] = {
    "mutant_stride": _stride,
    "mutant_broadcast": _broadcast,
    "mutant_transpose": _transpose,
    "mutant_nan": _nan,
    "mutant_ulp": _ulp,
    "mutant_gather": _gather,
}


def _plugin(name: str) -> EnginePlugin:
    from mlplug_cpu.plugin import PLUGIN as CPU

    def load(params: mlplug.BackendParams) -> list[object]:
        return [_Mutant(d, _MUTATIONS[name]) for d in CPU.load(params)]

    return EnginePlugin(name=name, load=load)  # type: ignore[arg-type]


_PLUGINS: dict[str, EnginePlugin] = {}


def register_mutants() -> None:
    """Register every mutant with the global registry (idempotent)."""
    for name in MUTANTS:
        plugin = _PLUGINS.setdefault(name, _plugin(name))
        mlplug.register_backend(name, EngineFactory(plugin), priority=-1000)
