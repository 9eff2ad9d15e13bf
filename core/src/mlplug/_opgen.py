"""Generate :mod:`mlplug._opcalls`, the op recording methods, from the ops table.

``python -m mlplug._opgen`` rewrites ``_opcalls.py`` next to this module; ``--check`` exits 1
when the file differs from what the table gives (a core test does the same). Each op becomes one
typed method whose signature follows the op's operands and parameter schema
(``OpDef.arguments``) and whose docstring is ``OpDef.doc``; its body records the op with the
context. The methods are written out rather than attached at import time so that type checkers
and editors see them.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mlplug.ops import OPS, REQUIRED, OpDef, Param

__all__ = ["TARGET", "main", "render"]

TARGET = Path(__file__).with_name("_opcalls.py")
"""The generated module."""

_WIDTH = 100
_HEADER = '''"""Op recording methods, generated from the ops table (:mod:`mlplug.ops`): do not edit.

Regenerate with ``python -m mlplug._opgen`` after changing the table; a test fails while this
file differs from what the table gives. ``Tensor`` inherits :class:`TensorOps` and ``Context``
:class:`ContextOps` (ops without a tensor operand).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from mlplug.context import Context
    from mlplug.dtype import DType
    from mlplug.tensor import Tensor

__all__ = ["ContextOps", "TensorOps"]

'''


_TENSOR_HOOK = '''    def _op_call(
        self,
        ctx: Context,
        op: str,
        srcs: tuple[Tensor | None, ...],
        params: dict[str, Any],
    ) -> Tensor:
        """Record ``op`` on ``ctx`` with this tensor as the receiver."""
        return ctx._record(op, (cast("Tensor", self), *srcs), params)'''
_CONTEXT_HOOK = (
    "    def _record(self, op: str, srcs: tuple[Tensor | None, ...], params: dict[str, Any])"
    " -> Tensor:\n"
    '''        """Record ``op`` in this context's graph (``Context`` implements it)."""
        raise NotImplementedError'''
)


def _annotation(param: Param) -> str:
    return param.type.__name__


def _signature(op: OpDef) -> list[str]:
    """Return the method's parameters after ``self`` and ``ctx`` as source fragments."""
    roles = {r.strip("*?"): r for r in op.operands}
    params = {p.name: p for p in op.params}
    out = []
    for name in op.arguments:
        if name in roles:
            role = roles[name]
            if role.startswith("*"):
                out.append(f"*{name}: Tensor")
            elif role.endswith("?"):
                out.append(f"{name}: Tensor | None")
            else:
                out.append(f"{name}: Tensor")
        else:
            p = params[name]
            star = "*" if p.variadic else ""
            default = "" if p.default is REQUIRED else f" = {p.default!r}"
            out.append(f"{star}{name}: {_annotation(p)}{default}")
    return out


def _record_args(op: OpDef, ctx: str) -> list[str]:
    """Return the arguments of the recording call after ``ctx`` as source fragments."""
    roles = op.operands if op.receiver_is_context else op.operands[1:]
    srcs = [f"*{r.strip('*?')}" if r.startswith("*") else r.strip("*?") for r in roles]
    tup = f"({srcs[0]},)" if len(srcs) == 1 else f"({', '.join(srcs)})"
    items = []
    for p in op.params:
        value = f"{ctx}.{p.from_backend}()" if p.from_backend else p.name
        items.append(f'"{p.name}": {value}')
    return [f'"{op.name}"', tup, "{" + ", ".join(items) + "}"]


def _wrap(indent: int, head: str, parts: list[str], tail: str) -> list[str]:
    """Lay out ``head(parts)tail`` the way ``ruff format`` does."""
    pad = " " * indent
    one = f"{pad}{head}{', '.join(parts)}{tail}"
    if len(one) <= _WIDTH:
        return [one]
    inner = f"{pad}    {', '.join(parts)}"
    if len(inner) <= _WIDTH:
        return [f"{pad}{head}", inner, f"{pad}{tail}"]
    lines = [f"{pad}{head}"]
    lines += [f"{pad}    {part}," for part in parts]
    return [*lines, f"{pad}{tail}"]


def _docstring(doc: str) -> list[str]:
    lines = doc.split("\n")
    if len(lines) == 1:
        return [f'        """{doc}"""']
    out = [f'        """{lines[0]}']
    out += [f"        {line}" if line else "" for line in lines[1:]]
    return [*out, '        """']


def _method(op: OpDef) -> list[str]:
    if op.receiver_is_context:
        sig, call, ctx, first = ["self"], "self._record(", "self", []
    else:
        sig, call, ctx, first = ["self", "ctx: Context"], "self._op_call(", "ctx", ["ctx"]
    sig += _signature(op)
    lines = _wrap(4, f"def {op.name}(", sig, ") -> Tensor:")
    lines += _docstring(op.doc)
    lines += _wrap(8, f"return {call}", first + _record_args(op, ctx), ")")
    return lines


def _class(name: str, doc: str, hook: str, ops: list[OpDef]) -> list[str]:
    lines = [f"class {name}:", f'    """{doc}"""', "", "    __slots__ = ()", "", hook]
    for op in ops:
        lines += ["", *_method(op)]
    return lines


def render() -> str:
    """Return the source of :mod:`mlplug._opcalls` for the current table."""
    tensor_ops = [op for op in OPS.values() if not op.receiver_is_context]
    context_ops = [op for op in OPS.values() if op.receiver_is_context]
    lines = [_HEADER]
    lines += _class("TensorOps", "The ops recorded on a tensor receiver.", _TENSOR_HOOK, tensor_ops)
    lines += ["", ""]
    doc = "The ops recorded on a context (no tensor operand)."
    lines += _class("ContextOps", doc, _CONTEXT_HOOK, context_ops)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write (or with ``--check`` compare) the generated module; return the exit status."""
    args = sys.argv[1:] if argv is None else argv
    text = render()
    current = TARGET.read_text(encoding="utf-8") if TARGET.exists() else ""
    if "--check" in args:
        if current != text:
            print(f"{TARGET} is stale: run python -m mlplug._opgen", file=sys.stderr)
            return 1
        return 0
    if current != text:
        TARGET.write_text(text, encoding="utf-8")
        print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
