"""The ops table holds the ops SEMANTICS §4.3 and §5 name plus declared optional fused ops."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from mlplug import Context, Tensor
from mlplug.dtype import FLOAT
from mlplug.ops import OPS

SEMANTICS = Path(__file__).resolve().parents[2] / "docs" / "semantics.md"


def _spec_ops() -> list[str]:
    """Return the ops SEMANTICS names: the §5.1 summary table's first column and §4.3's arange."""
    text = SEMANTICS.read_text(encoding="utf-8")
    section = text[text.index("### 5.1 Summary") : text.index("### 5.2")]
    names = []
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        first = line.split("|")[1]
        for chunk in re.findall(r"`([^`]*)`", first):
            names += chunk.split("(")[0].split()
    return [*names, "arange"]


SPEC_OPS = _spec_ops()
OPTIONAL_OPS = {name for name, op in OPS.items() if op.optional}


def test_the_table_holds_exactly_the_spec_ops_and_the_optional_fused_ops() -> None:
    assert len(SPEC_OPS) == len(set(SPEC_OPS)) >= 45
    assert "rope" in OPTIONAL_OPS
    assert set(OPS) == set(SPEC_OPS) | OPTIONAL_OPS
    assert not set(SPEC_OPS) & OPTIONAL_OPS


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
