"""Run cases against a backend through the public API and judge them (test and support modes).

Unsupported ops are detected through the public API: the engine raises
``mlplug.UnsupportedOpError`` at compute when no device of the backend can execute a node. The
suite builds its backends with ``BackendParams(cpu_fallback=False)``, so a node that the GPU
under test declines raises too (instead of silently running on the CPU device): a declined op is
reported "unsupported" with the device's reason, never as a pass.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

import mlplug
from mlplug.device import Meta
from mlplug_conformance import convert
from mlplug_conformance.bounds import buffer_expectation, expectation
from mlplug_conformance.cases import Case, Input
from mlplug_conformance.cases.program import (
    bad_id_mask,
    build_inputs,
    build_steps,
    evaluate_reference,
)
from mlplug_conformance.checks import Expected, Failure, rerun_command, verify
from mlplug_conformance.expectations import Expectations
from mlplug_conformance.reference import numpy_shape

if TYPE_CHECKING:
    from mlplug import Backend, Tensor

__all__ = ["FAILING", "RAN", "STATUSES", "CaseResult", "Session", "run_case"]

STATUSES = ("pass", "FAIL", "xfail", "xpass", "unsupported", "skip")
RAN = frozenset({"pass", "FAIL", "xfail", "xpass"})
"""Statuses of a case that executed and was judged."""
FAILING = frozenset({"FAIL"})
_QUANT = (mlplug.DType.Q8_0, mlplug.DType.Q4_0)


@dataclass(slots=True)
class CaseResult:
    """The outcome of one case.

    Attributes:
        id: Case id.
        op: Op under test.
        dtype: Receiver dtype name (the support table's column).
        status: One of :data:`STATUSES`.
        message: Why it failed, was unsupported, expected to fail or skipped.
        error: Measured error of the failed check (NaN if none).
        bound: Bound it exceeded (NaN if none).
        seconds: Wall time of the case.
    """

    id: str
    op: str
    dtype: str
    status: str
    message: str = ""
    error: float = float("nan")
    bound: float = float("nan")
    seconds: float = 0.0


def _read(t: Tensor) -> tuple[tuple[int, int, int, int], mlplug.DType, np.ndarray]:
    ne = (t.dim(0), t.dim(1), t.dim(2), t.dim(3))
    dtype = t.dtype()
    raw = t.bytes()
    n = ne[0] * ne[1] * ne[2] * ne[3]
    if len(raw) != dtype.nbytes(n):
        raise ValueError(f"bytes() returned {len(raw)} bytes for {n} {dtype.name} elements")
    return ne, dtype, convert.decode(raw, dtype).reshape(numpy_shape(ne))


def run_case(
    backend: Backend,
    backend_name: str,
    case: Case,
    permuted_v: bool,
    weights: Mapping[str, Tensor] | None = None,
) -> CaseResult:
    """Run one case on ``backend`` and check it; never raises for the backend's errors.

    ``weights`` holds the case's weight-only inputs, loaded by ``backend`` from a GGUF file.
    """
    start = time.perf_counter()
    result = CaseResult(case.id, case.op, case.dtype.name, "pass")
    rerun = rerun_command(backend_name, case.id)
    values = case.values()
    bad = bad_id_mask(case, values)
    ref = evaluate_reference(case, values, permuted_v)
    prep = None
    try:
        prep, tensors, problems = build_inputs(backend, case, values, weights)
        if problems:
            result.status, result.message = "FAIL", "; ".join(problems) + f"\n    rerun: {rerun}"
            return result
        ctx = backend.new_context()
        try:
            out = build_steps(ctx, case, tensors, permuted_v)
            try:
                ctx.forward(out).compute(out)
            except IndexError as err:
                if bad is None:
                    raise
                result.message = f"out-of-range ids raised IndexError, as §5.4 allows: {err}"
                return result
            ne, dtype, got = _read(out)
            want = expectation(ref.result)
            if bad is not None:
                want = _unspecified_columns(want, bad, got)
            failure = verify(want, ne, dtype, got, rerun)
            for name in case.extra if failure is None else ():
                buf_ne, buf_dtype, buf = _read(tensors[name])
                quantised = case.op == "copy" and buf_dtype in _QUANT
                want = buffer_expectation(
                    ref.buffers[name],
                    Meta.fresh(buf_dtype, buf_ne),
                    buf_dtype if quantised else None,
                )
                failure = verify(want, buf_ne, buf_dtype, buf, rerun)
                if failure is not None:
                    failure = Failure(
                        failure.check,
                        f"buffer {name!r} after the op: {failure.message}",
                        failure.error,
                        failure.bound,
                    )
                    break
        finally:
            ctx.close()
        if failure is not None:
            result.status, result.message = "FAIL", failure.message
            result.error, result.bound = failure.error, failure.bound
    except mlplug.UnsupportedOpError as err:
        result.status, result.message = "unsupported", str(err)
    except Exception as err:
        result.status = "FAIL"
        result.message = f"raised {type(err).__name__}: {err}\n    rerun: {rerun}"
    finally:
        if prep is not None:
            prep.close()
        result.seconds = time.perf_counter() - start
    return result


def _unspecified_columns(want: Expected, bad: np.ndarray, got: np.ndarray) -> Expected:
    """Return ``want`` with the output columns of out-of-range ids set to what the device gave.

    Both gathers produce one output column (numpy's last axis) per id, in the ids' order.
    """
    if got.shape != want.exact.shape:
        return want  # the shape check reports it
    exact = want.exact.copy().reshape(-1, want.exact.shape[-1])
    mask = bad.reshape(-1)
    exact[mask] = got.reshape(-1, got.shape[-1])[mask]
    return replace(want, exact=exact.reshape(want.exact.shape))


class WeightFile:
    """A synthetic GGUF model holding the weight-only inputs of a batch of cases, loaded."""

    __slots__ = ("backend", "error", "folder", "names")

    def __init__(self, backend_name: str, cases: Sequence[Case]) -> None:
        from gguf import GGUFValueType

        from mlplug_conformance import synth

        self.folder = tempfile.TemporaryDirectory(prefix="mlplug-conformance-")
        self.names: dict[tuple[str, str], str] = {}
        self.backend: Backend | None = None
        self.error = ""
        tensors: list[synth.SynthTensor] = []
        for case in cases:
            _, raw = case.materialize()
            for inp in case.inputs:
                if inp.from_file:
                    name = f"blk.0.t{len(tensors)}"  # layer 0: on the device under test
                    tensors.append((name, _file_array(raw[inp.name], inp), inp.dtype))
                    self.names[(case.id, inp.name)] = name
        path = Path(self.folder.name) / "weights.gguf"
        synth.write_gguf(path, tensors, metadata={"llama.block_count": (GGUFValueType.UINT32, 1)})
        try:
            params = mlplug.BackendParams(num_gpu_layers=1, cpu_fallback=False)
            self.backend = mlplug.new_backend(str(path), params, backend=backend_name)
            self.backend.load()
        except Exception as err:
            self.error = f"loading the synthetic weights file raised {type(err).__name__}: {err}"

    def weights(self, case: Case) -> dict[str, Tensor]:
        """Return the case's weight-only inputs by input name."""
        assert self.backend is not None
        out = {}
        for inp in case.inputs:
            if inp.from_file:
                t = self.backend.get(self.names[(case.id, inp.name)])
                assert t is not None
                out[inp.name] = t
        return out

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()
        self.folder.cleanup()


def _file_array(raw: bytes, inp: Input) -> np.ndarray:
    """Return the array ``synth.write_gguf`` takes: native values, or packed block bytes."""
    shape = numpy_shape(inp.full_ne)
    if inp.dtype.is_block:
        row = inp.full_ne[0] // inp.dtype.block_size * inp.dtype.type_size
        return np.frombuffer(raw, dtype=np.uint8).reshape((*shape[:-1], row))
    native = {
        mlplug.DType.F64: np.float64,
        mlplug.DType.I8: np.int8,
        mlplug.DType.I16: np.int16,
        mlplug.DType.I64: np.int64,
    }[inp.dtype]
    return np.frombuffer(raw, dtype=native).reshape(shape)


@dataclass(slots=True)
class Session:
    """Runs cases on one backend name.

    It makes one backend per ``flash_attention`` setting for the cases built on ``ctx.layer(0)``
    and, for cases with weight-only inputs, one more from a synthetic GGUF file holding all of
    them (written with :mod:`.synth`, loaded with ``load()``), so those dtypes reach the device
    the way model weights do.
    """

    backend_name: str
    expectations: Expectations = field(default_factory=Expectations)
    _backends: dict[bool, Backend] = field(default_factory=dict)
    _files: list[WeightFile] = field(default_factory=list)

    def backend(self, flash_attention: bool) -> Backend:
        """Return (creating once) the backend for this attention flavour."""
        if flash_attention not in self._backends:
            params = mlplug.BackendParams(
                num_gpu_layers=1, flash_attention=flash_attention, cpu_fallback=False
            )
            self._backends[flash_attention] = mlplug.new_backend(
                None, params, backend=self.backend_name
            )
        return self._backends[flash_attention]

    def permuted_v(self, flash_attention: bool) -> bool:
        """Return the value layout the backend's attention takes."""
        backend = self.backend(flash_attention)
        if isinstance(backend, mlplug.BackendCacheConfig):
            return backend.cache_config().permuted_v
        return False

    def run(
        self, cases: Iterable[Case], on_result: Callable[[CaseResult], None] | None = None
    ) -> list[CaseResult]:
        """Run cases in order (applying the expectations file); return their results."""
        cases = list(cases)
        needs_file = [c for c in cases if c.needs_file and not self._declared_unsupported(c)]
        weights = WeightFile(self.backend_name, needs_file) if needs_file else None
        if weights is not None:
            self._files.append(weights)
        results = []
        for case in cases:
            result = self._run_one(case, weights)
            results.append(result)
            if on_result is not None:
                on_result(result)
        if weights is not None:
            weights.close()
            self._files.remove(weights)
        return results

    def _declared_unsupported(self, case: Case) -> bool:
        rule = self.expectations.match(case.id)
        return rule is not None and rule.status == "unsupported"

    def _run_one(self, case: Case, weights: WeightFile | None) -> CaseResult:
        rule = self.expectations.match(case.id)
        if rule is not None and rule.status == "unsupported":
            return CaseResult(
                case.id,
                case.op,
                case.dtype.name,
                "unsupported",
                f"declared in the expectations file: {rule.reason}",
            )
        if case.needs_file:
            assert weights is not None
            if weights.backend is None:
                return CaseResult(case.id, case.op, case.dtype.name, "FAIL", weights.error)
            result = run_case(
                weights.backend, self.backend_name, case, False, weights.weights(case)
            )
        else:
            permuted_v = self.permuted_v(case.flash_attention)
            if not case.applies(permuted_v):
                return CaseResult(
                    case.id,
                    case.op,
                    case.dtype.name,
                    "skip",
                    f"needs the {case.layout} value layout; the backend uses "
                    f"{'permuted_v' if permuted_v else 'standard_v'}",
                )
            result = run_case(
                self.backend(case.flash_attention), self.backend_name, case, permuted_v
            )
        if rule is not None and rule.status == "xfail" and result.status in ("pass", "FAIL"):
            was_fail = result.status == "FAIL"
            result.status = "xfail" if was_fail else "xpass"
            note = f"expected to fail: {rule.reason}"
            result.message = f"{note}; {result.message}" if was_fail else note
        return result

    def close(self) -> None:
        """Close every backend made."""
        for backend in self._backends.values():
            backend.close()
        self._backends.clear()
        for weights in self._files:
            weights.close()
        self._files.clear()
