"""The ops table's schema: named fields, parameter checks, categories, and what derives from it."""

from __future__ import annotations

import inspect

import pytest

from mlplug import Context, DType, DTypeError, ShapeError, Tensor, _opgen
from mlplug.dtype import FLOAT
from mlplug.ops import CATEGORIES, OPS, Meta, OpDef, Param, Tolerance, category

F32 = Meta.fresh(DType.F32, (4, 3))
I32 = Meta.fresh(DType.I32, (4, 3))


def test_the_generated_methods_match_the_table() -> None:
    assert _opgen.TARGET.read_text(encoding="utf-8") == _opgen.render(), (
        "mlplug/_opcalls.py is stale: run python -m mlplug._opgen"
    )
    assert _opgen.main(["--check"]) == 0


@pytest.mark.parametrize("name", sorted(OPS))
def test_every_method_takes_the_arguments_the_schema_declares(name: str) -> None:
    op = OPS[name]
    method = getattr(Context if op.receiver_is_context else Tensor, name)
    params = list(inspect.signature(method).parameters)
    first = ["self"] if op.receiver_is_context else ["self", "ctx"]
    assert params == [*first, *op.arguments]
    assert inspect.getdoc(method) == inspect.cleandoc(op.doc)


def test_opdef_takes_keywords_only() -> None:
    with pytest.raises(TypeError):
        OpDef("neg", "unary", "Return -x.")  # type: ignore[misc]


def test_every_op_has_a_known_category_and_every_category_an_op() -> None:
    assert {op.category for op in OPS.values()} == set(CATEGORIES)
    assert sum(len(category(c)) for c in CATEGORIES) == len(OPS)
    with pytest.raises(KeyError, match="elementwise"):
        category("elementwise")


def test_unary_and_binary_ops_share_their_category_rule() -> None:
    # Every op of the category gets its operands, dtypes and validation from the category.
    for name in category("unary"):
        op = OPS[name]
        assert op.operands == ("a",) and op.dtypes == FLOAT, name
        params = {p.name: 0.5 for p in op.params}
        assert op.infer([F32], params).meta == Meta.fresh(DType.F32, (4, 3)), name
        with pytest.raises(DTypeError, match=rf"^{name}: receiver dtype I32"):
            op.infer([I32], params)
    for name in category("binary"):
        op = OPS[name]
        assert op.operands == ("a", "b") and op.dtypes == FLOAT, name
        assert op.infer([F32, Meta.fresh(DType.F16, (4,))], {}).meta.ne == (4, 3, 1, 1)
        with pytest.raises(ShapeError, match=rf"^{name}: a.ne0 \(4\) must be a multiple"):
            op.infer([F32, Meta.fresh(DType.F32, (3,))], {})


def test_a_unary_row_alone_gives_a_checked_op_and_its_method(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The "adding an op" walk-through of docs/plugin-authors.md: the row is all core needs.
    cube = OpDef(
        name="cube",
        category="unary",
        doc="Return ``x * x * x`` element-wise.",
        tolerance=Tolerance(eps_mult=4.0, abs_eps=4.0),
    )
    assert cube.operands == ("a",) and cube.dtypes == FLOAT and cube.arguments == ()
    assert cube.infer([F32], {}).meta.dtype is DType.F32
    with pytest.raises(DTypeError, match=r"^cube: "):
        cube.infer([I32], {})
    with pytest.raises(ValueError, match=r"^cube: unexpected parameters \['s'\]"):
        cube.infer([F32], {"s": 1.0})
    monkeypatch.setattr(_opgen, "OPS", {**OPS, "cube": cube})
    text = _opgen.render()
    assert '    def cube(self, ctx: Context) -> Tensor:\n        """Return ``x * x * x``' in text
    assert 'return self._op_call(ctx, "cube", (), {})' in text


def test_param_schema_converts_and_checks() -> None:
    s = OPS["scale"].param("s")
    assert s.check("scale", 0.1) == float.fromhex("0x1.99999a0000000p-4")  # narrowed to F32
    with pytest.raises(ValueError, match=r"^scale: s must be a number, got bool"):
        s.check("scale", True)
    dim = OPS["concat"].param("dim")
    assert dim.check("concat", 3) == 3
    with pytest.raises(ShapeError, match=r"^concat: dim must be in 0..3, got 4"):
        dim.check("concat", 4)
    with pytest.raises(ShapeError, match=r"^concat: dim must be an integer, got float"):
        dim.check("concat", 1.0)
    mode = OPS["rope"].param("mode")
    with pytest.raises(ValueError, match=r"^rope: mode must be 0 or 2 \(0 normal, 2 neox\)"):
        mode.check("rope", 1)
    dtype = OPS["arange"].param("dtype")
    with pytest.raises(DTypeError, match=r"^arange: dtype must be F32 or I32, got"):
        dtype.check("arange", DType.F16)
    with pytest.raises(DTypeError, match=r"^arange: dtype must be a DType"):
        dtype.check("arange", "F32")
    eps = OPS["rms_norm"].param("eps")
    with pytest.raises(ValueError, match=r"^rms_norm: eps must be >= 0.0"):
        eps.check("rms_norm", -1e-6)
    with pytest.raises(ValueError, match=r"^rms_norm: eps must be finite"):
        eps.check("rms_norm", float("inf"))
    assert OPS["conv_2d"].param("p0").check("conv_2d", 0) == 0
    with pytest.raises(ShapeError, match=r"^conv_2d: s0 must be >= 1, got 0"):
        OPS["conv_2d"].param("s0").check("conv_2d", 0)


def test_missing_and_defaulted_params() -> None:
    with pytest.raises(TypeError, match=r"^clamp: missing parameter 'hi'"):
        OPS["clamp"].check_params({"lo": 0.0})
    soft = OpDef(
        name="soft",
        category="unary",
        doc="Return x.",
        params=(Param(name="t", type=float, default=1.0),),
    )
    assert soft.check_params({}) == {"t": 1.0}
    assert soft.arguments == ("t",)


def test_declarations_are_checked_when_the_table_is_built() -> None:
    with pytest.raises(ValueError, match=r"^\[ops\] x: unknown category"):
        OpDef(name="x", category="elementwise", doc="Return x.")
    with pytest.raises(ValueError, match=r"^\[ops\] x: needs a rule"):
        OpDef(name="x", category="sort", doc="Return x.", operands=("a",))
    with pytest.raises(ValueError, match=r"^\[ops\] x: call \('dim',\) must name every"):
        OpDef(
            name="x",
            category="binary",
            doc="Return x.",
            params=(Param(name="dim", type=int),),
            call=("dim",),
        )
