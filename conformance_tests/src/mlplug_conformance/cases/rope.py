"""Cases for the optional fused ``rope`` op (declared in the ops table, see ``mlplug.nn.rope``).

The receiver is F32 ``[D, H, T]``; ``cos``/``sin`` are F32 tables ``[n_rot/2, T]`` (any values:
the op rotates by what the tables hold). Both modes (0 normal, 2 neox), ``n_rot`` equal to and
smaller than ``D``, odd token counts, and a strided receiver made by ``permute``.
"""

from __future__ import annotations

from mlplug.dtype import DType

from .dsl import case, inp, step
from .model import Case, uniform

__all__ = ["generate"]


def _rope_case(mode: int, d: int, heads: int, tokens: int, n_rot: int, permuted: bool) -> Case:
    f32 = DType.F32
    half = n_rot // 2
    tables = [
        inp("c", f32, half, tokens, fill=uniform(-1, 1)),
        inp("s", f32, half, tokens, fill=uniform(-1, 1)),
    ]
    if permuted:
        # x is [D, T, H] in memory; the receiver is its [D, H, T] permutation (strided).
        inputs = [inp("x", f32, d, tokens, heads), *tables]
        steps = [
            step("xp", "permute", "x", axes=(0, 2, 1, 3)),
            step("y", "rope", "xp", "c", "s", mode=mode),
        ]
    else:
        inputs = [inp("x", f32, d, heads, tokens), *tables]
        steps = [step("y", "rope", "x", "c", "s", mode=mode)]
    label = f"mode{mode}-d{d}-h{heads}-t{tokens}-nrot{n_rot}" + ("-permuted" if permuted else "")
    return case("rope", f32, label, inputs, steps)


def generate() -> list[Case]:
    """Return the cases of this family."""
    out = []
    for mode in (0, 2):
        out.append(_rope_case(mode, 8, 3, 5, 8, False))
        out.append(_rope_case(mode, 16, 2, 3, 10, False))
        out.append(_rope_case(mode, 12, 4, 1, 12, False))
        out.append(_rope_case(mode, 8, 2, 7, 6, True))
        out.append(_rope_case(mode, 64, 4, 3, 64, True))
    return out
