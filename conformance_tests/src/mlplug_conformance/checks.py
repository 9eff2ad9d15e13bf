"""The checks a result must pass, in order (DESIGN §6).

1. **shape and dtype** exactly as the semantics say;
2. **NaN/Inf** at exactly the positions (and with the signs) of the reference rounded to the
   result dtype;
3. **per-element bound**: ``|got − ref| ≤ bound`` on the finite elements (bounds come from
   :mod:`.bounds`; exact ops have bound 0 against the rounded reference; ``copy`` into Q8_0/Q4_0
   must land within one quantisation step ``|d|`` of each input value, §3.2);
4. **NMSE cap** over the finite elements;
5. for ``argsort``/``topk``, a **tie-tolerant** rule instead of 3–4: the indices of a row are
   distinct and in range (a permutation for ``argsort``), the values at them are sorted, and
   for ``topk`` they are the ``k`` largest values as a multiset.

Every function here is usable standalone (mutant backends and tests call them directly); each
returns ``None`` or a :class:`Failure` whose message gives the measured error, the bound and,
when given, the one-line command that reruns just that case.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mlplug.dtype import DType
from mlplug_conformance import convert

__all__ = [
    "Expected",
    "Failure",
    "check_bound",
    "check_nmse",
    "check_nonfinite",
    "check_shape_dtype",
    "check_sorted",
    "quant_step_bound",
    "rerun_command",
    "verify",
]


@dataclass(frozen=True, slots=True)
class Failure:
    """A failed check.

    Attributes:
        check: ``shape``, ``dtype``, ``nonfinite``, ``bound``, ``nmse`` or ``sort``.
        message: One line: what was measured against what (the rerun command is appended by
            :func:`verify`).
        error: The measured error (NaN when not numeric).
        bound: The bound it exceeded (NaN when not numeric).
    """

    check: str
    message: str
    error: float = float("nan")
    bound: float = float("nan")


@dataclass(frozen=True, slots=True)
class Expected:
    """What a correct result looks like.

    Attributes:
        ne: The four extents (ggml order; ``[0, 1, 1, 1]`` for zero elements).
        dtype: The result dtype.
        exact: The reference result before rounding (numpy order, shaped by ``ne``).
        bound: Per-element absolute bound (broadcastable to ``exact``); 0 for exact ops.
        nmse: NMSE cap (``inf`` to skip).
        sort: ``"argsort"`` or ``"topk"`` for index results checked by the tie-tolerant rule;
            then ``keys`` holds the receiver's values.
        keys: The values that were sorted (numpy order).
        quantised_step: For a Q8_0/Q4_0 result: compare with one quantisation step ``|d|`` per
            element instead of ``bound``.
    """

    ne: tuple[int, int, int, int]
    dtype: DType
    exact: np.ndarray
    bound: np.ndarray | float = 0.0
    nmse: float = float("inf")
    sort: str | None = None
    keys: np.ndarray | None = None
    quantised_step: bool = False


def rerun_command(backend: str, case_id: str) -> str:
    """Return the command line that reruns one case."""
    return f"mlplug conformance --backend {backend} --case {case_id}"


def _ggml_index(shape: tuple[int, ...], flat: int) -> tuple[int, ...]:
    return tuple(int(i) for i in reversed(np.unravel_index(flat, shape)))


def check_shape_dtype(
    got_ne: Sequence[int], got_dtype: DType, want_ne: Sequence[int], want_dtype: DType
) -> Failure | None:
    """Check that extents and dtype are exactly the expected ones."""
    if tuple(got_ne) != tuple(want_ne):
        return Failure("shape", f"shape {list(got_ne)} != expected {list(want_ne)}")
    if got_dtype != want_dtype:
        return Failure("dtype", f"dtype {got_dtype.name} != expected {want_dtype.name}")
    return None


def check_nonfinite(got: np.ndarray, want: np.ndarray) -> Failure | None:
    """Check that NaNs and ±infs sit exactly where (and with the sign) the reference has them.

    ``want`` is the reference rounded to the result dtype.
    """
    if got.dtype.kind in "iu" and want.dtype.kind in "iu":
        return None
    g, w = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    for label, gm, wm in (
        ("NaN", np.isnan(g), np.isnan(w)),
        ("+inf", np.isposinf(g), np.isposinf(w)),
        ("-inf", np.isneginf(g), np.isneginf(w)),
    ):
        wrong = np.flatnonzero((gm != wm).reshape(-1))
        if wrong.size:
            i = int(wrong[0])
            where = _ggml_index(g.shape, i)
            return Failure(
                "nonfinite",
                f"{label} positions differ at {wrong.size} element(s); first at {where} "
                f"(ggml order): got {float(g.reshape(-1)[i])!r}, "
                f"expected {float(w.reshape(-1)[i])!r}",
                error=float(wrong.size),
                bound=0.0,
            )
    return None


def check_bound(got: np.ndarray, want: np.ndarray, bound: np.ndarray | float) -> Failure | None:
    """Check ``|got − want| ≤ bound`` element by element (finite elements only)."""
    g, w = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    b = np.broadcast_to(np.asarray(bound, dtype=np.float64), w.shape)
    finite = np.isfinite(g) & np.isfinite(w)
    err = np.zeros(w.shape)
    err[finite] = np.abs(g[finite] - w[finite])
    excess = err - b
    if not finite.any() or excess.max(initial=-np.inf) <= 0:
        return None
    bad = excess > 0
    # Report the element that exceeds its bound by the largest factor.
    with np.errstate(over="ignore"):  # a huge ratio is fine: it only picks what to report
        ratio = np.where(bad, err / np.maximum(b, np.finfo(np.float64).tiny), 0.0)
    i = int(np.argmax(ratio.reshape(-1)))
    where = _ggml_index(w.shape, i)
    e, lim = float(err.reshape(-1)[i]), float(b.reshape(-1)[i])
    return Failure(
        "bound",
        f"|error| {e:.4g} > bound {lim:.4g} at {where} (ggml order; {int(bad.sum())} of "
        f"{w.size} elements over): got {float(g.reshape(-1)[i])!r}, "
        f"expected {float(w.reshape(-1)[i])!r}",
        error=e,
        bound=lim,
    )


def check_nmse(got: np.ndarray, want: np.ndarray, cap: float) -> Failure | None:
    """Check the normalised mean squared error ``Σ(got − want)² / Σ want²`` against ``cap``."""
    if not np.isfinite(cap):
        return None
    g, w = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    finite = np.isfinite(g) & np.isfinite(w)
    g, w = g[finite], w[finite]
    power = float(np.sum(w * w))
    if power == 0.0:
        return None
    nmse = float(np.sum((g - w) ** 2)) / power
    if nmse <= cap:
        return None
    return Failure("nmse", f"NMSE {nmse:.4g} > cap {cap:.4g}", error=nmse, bound=cap)


def check_sorted(got: np.ndarray, keys: np.ndarray, kind: str) -> Failure | None:
    """Check argsort/topk indices with a tie-tolerant rule (see the module docstring).

    Args:
        got: The returned indices, numpy order ``(…, n)`` with ``n = ne0`` for argsort, ``k``
            for topk.
        keys: The receiver's values, numpy order ``(…, ne0)``.
        kind: ``"argsort"`` (ascending permutation) or ``"topk"`` (k largest, descending).
    """
    idx = np.asarray(got, dtype=np.int64)
    x = np.asarray(keys, dtype=np.float64)
    width = x.shape[-1]
    rows_idx = idx.reshape(-1, idx.shape[-1]) if idx.size else idx.reshape(0, 0)
    rows_x = x.reshape(-1, width) if x.size else x.reshape(0, 0)
    for r, (ids, row) in enumerate(zip(rows_idx, rows_x, strict=True)):
        if ids.min(initial=0) < 0 or ids.max(initial=-1) >= width:
            return Failure("sort", f"row {r}: index out of range 0..{width - 1}: {ids.tolist()}")
        if np.unique(ids).size != ids.size:
            return Failure("sort", f"row {r}: repeated indices {ids.tolist()}")
        if kind == "argsort" and ids.size != width:
            return Failure("sort", f"row {r}: {ids.size} indices for {width} values")
        picked = row[ids]
        steps = np.diff(picked)
        order_ok = (steps >= 0).all() if kind == "argsort" else (steps <= 0).all()
        if not order_ok:
            return Failure(
                "sort",
                f"row {r}: values at the indices are not sorted "
                f"{'ascending' if kind == 'argsort' else 'descending'}: "
                f"{picked.tolist()[:16]}",
            )
        if kind == "topk":
            largest = np.sort(row)[::-1][: ids.size]
            if not np.array_equal(picked, largest):
                return Failure(
                    "sort",
                    f"row {r}: values {picked.tolist()[:16]} are not the "
                    f"{ids.size} largest {largest.tolist()[:16]}",
                )
    return None


def quant_step_bound(exact: np.ndarray, dtype: DType) -> np.ndarray:
    """Return ``|d|`` of each element's block when ``exact`` is quantised to Q8_0/Q4_0 (§3.2)."""
    blocks = convert.encode(exact, dtype)
    raw = np.frombuffer(blocks, dtype=np.uint8).reshape(-1, dtype.type_size)
    d = np.abs(raw[:, :2].copy().view("<f2").astype(np.float64))
    # Values exactly between two steps may go either way: one step, plus F32 rounding slack.
    step = np.repeat(d.reshape(-1), dtype.block_size) * (1 + 2.0**-10)
    return step.reshape(exact.shape)


def verify(
    expected: Expected, got_ne: Sequence[int], got_dtype: DType, got: np.ndarray, rerun: str = ""
) -> Failure | None:
    """Run every check in order; return the first failure (with the rerun command) or None.

    Args:
        expected: What a correct result looks like.
        got_ne: The result's four extents.
        got_dtype: The result's dtype.
        got: The result's logical values (numpy order, shaped by ``got_ne``; float64, or int64
            for integer dtypes).
        rerun: Command line appended to the message.
    """
    failure = _verify(expected, got_ne, got_dtype, got)
    if failure is None or not rerun:
        return failure
    return Failure(
        failure.check, f"{failure.message}\n    rerun: {rerun}", failure.error, failure.bound
    )


def _verify(
    expected: Expected, got_ne: Sequence[int], got_dtype: DType, got: np.ndarray
) -> Failure | None:
    failure = check_shape_dtype(got_ne, got_dtype, expected.ne, expected.dtype)
    if failure is not None:
        return failure
    got = np.asarray(got).reshape(expected.exact.shape)
    if expected.sort is not None:
        assert expected.keys is not None
        return check_sorted(got, expected.keys, expected.sort)
    if expected.exact.size == 0:
        return None
    want: np.ndarray
    bound: np.ndarray | float
    if expected.quantised_step:
        want, bound = expected.exact, quant_step_bound(expected.exact, expected.dtype)
    else:
        want, bound = convert.round_to(expected.exact, expected.dtype), expected.bound
    return (
        check_nonfinite(got, want)
        or check_bound(got, want, bound)
        or check_nmse(got, want, expected.nmse)
    )
