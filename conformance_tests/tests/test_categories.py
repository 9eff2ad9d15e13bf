"""Every element-wise op is handled by its category, with nothing written for it by name.

This is what makes "adding an op" (docs/plugin-authors.md) need only the table row, a kernel per
plugin and a reference function: the cases, the public call and the perf cases of a ``unary`` or
``binary`` op all come from its category.
"""

from __future__ import annotations

import numpy as np
import pytest

import mlplug
from mlplug.dtype import DType
from mlplug.ops import OPS, category
from mlplug_conformance.cases import all_cases
from mlplug_conformance.cases.elementwise import unary_params
from mlplug_conformance.cases.program import build_inputs, build_steps, evaluate_reference
from mlplug_conformance.perf import perf_cases
from mlplug_conformance.reference import KERNELS

_UNARY_SHAPES = {"n1", "n7x3", "n33x5x2", "n31x2x3x2", "permuted-5x7", "view-rows", "empty"}
_BINARY_SHAPES = {
    "same-7x3",
    "tile-6x2-3",
    "bcast-6x2-1x2",
    "row-bias-33x5-33",
    "tile4d-6x4x3x2-3x2x1x2",
    "scalar-5x4-1",
    "empty",
    "noncontig",
}


def _labels(op: str, dtype: DType) -> set[str]:
    return {c.id.split("/", 2)[2] for c in all_cases() if c.op == op and c.dtype is dtype}


@pytest.mark.parametrize("op", category("unary"))
def test_every_unary_op_gets_the_generic_cases(op: str) -> None:
    first = unary_params(op)[0][0]
    tag = f"-{first}" if first else ""
    for dtype in OPS[op].dtypes & {DType.F32, DType.F16, DType.BF16}:
        assert {f"{s}{tag}" for s in _UNARY_SHAPES} <= _labels(op, dtype), (op, dtype)
    assert op in KERNELS
    assert any(c.op == op for c in perf_cases())


@pytest.mark.parametrize("op", category("binary"))
def test_every_binary_op_gets_the_generic_cases(op: str) -> None:
    for dtype in OPS[op].dtypes & {DType.F32, DType.F16, DType.BF16}:
        assert _labels(op, dtype) >= _BINARY_SHAPES, (op, dtype)
    assert op in KERNELS
    assert any(c.op == op for c in perf_cases())


@pytest.mark.parametrize("op", [*category("unary"), *category("binary")])
def test_every_elementwise_op_records_through_its_generated_method(op: str) -> None:
    # The case's program goes through the public method the table generated (Tensor.<op>) on
    # the reference backend, and matches the reference evaluated directly.
    case = next(c for c in all_cases() if c.op == op and c.dtype is DType.F32)
    values = case.values()
    backend = mlplug.new_backend(None, mlplug.BackendParams(), backend="reference")
    try:
        prep, tensors, problems = build_inputs(backend, case, values)
        assert problems == []
        ctx = backend.new_context()
        out = build_steps(ctx, case, tensors, permuted_v=False)
        ctx.forward(out).compute(out)
        want = evaluate_reference(case, values, permuted_v=False).result.exact
        np.testing.assert_allclose(out.floats(), want.reshape(-1), rtol=1e-6, atol=1e-6)
        ctx.close()
        prep.close()
    finally:
        backend.close()
