"""The ops table holds the ops SEMANTICS §4.3 and §5 name plus declared optional fused ops."""

from __future__ import annotations

import inspect

from mlplug import Context, Tensor
from mlplug.dtype import FLOAT
from mlplug.ops import OPS

# SEMANTICS §5.1 (every op of the summary table) and §4.3 (arange, a Context op).
SPEC_OPS = [
    "neg",
    "sin",
    "cos",
    "tanh",
    "gelu",
    "silu",
    "relu",
    "sigmoid",
    "sqr",
    "sqrt",
    "scale",
    "clamp",
    "add",
    "sub",
    "mul",
    "div",
    "mulmat",
    "mulmat_full_prec",
    "mulmat_id",
    "softmax",
    "layer_norm",
    "rms_norm",
    "sum_rows",
    "mean",
    "variance",
    "stddev",
    "reshape",
    "view",
    "permute",
    "contiguous",
    "duplicate",
    "copy",
    "set",
    "pad",
    "concat",
    "stack",
    "repeat",
    "rows",
    "argsort",
    "topk",
    "conv_2d",
    "im2col",
    "avg_pool_2d",
    "scaled_dot_product_attention",
    "arange",
]

# Optional fused ops the table declares beyond the spec (every first-party plugin implements them).
OPTIONAL_OPS = {"rope"}


def test_the_table_holds_exactly_the_spec_ops_and_the_optional_fused_ops() -> None:
    assert len(SPEC_OPS) == len(set(SPEC_OPS)) == 45
    assert set(OPS) == set(SPEC_OPS) | OPTIONAL_OPS


def test_every_op_is_a_method_with_the_context_first() -> None:
    for name in [*SPEC_OPS, *sorted(OPTIONAL_OPS)]:
        owner = Context if name == "arange" else Tensor
        method = getattr(owner, name)
        params = list(inspect.signature(method).parameters)
        if owner is Tensor:
            assert params[:2] == ["self", "ctx"], name


def test_declarations_are_complete() -> None:
    for op in OPS.values():
        assert op.kind in ("compute", "view", "copy")
        assert op.dtypes, op.name
        assert op.doc, op.name
        if op.name in ("neg", "softmax", "rms_norm", "argsort"):
            assert op.dtypes == FLOAT
