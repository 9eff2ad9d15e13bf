"""Cases for ``scaled_dot_product_attention`` (SEMANTICS §8.7).

The query is F32; key and value come in every CACHE dtype, the mask in F32, F16 or absent. The
value layout is the backend's (``cache_config().permuted_v``): values are created in the standard
layout ``[Dv, Hkv, L]`` and, on a permuted-V backend, turned into ``[L, Dv, Hkv]`` with
``permute(1, 2, 0, 3).contiguous()`` — what ``mlplug.nn.attention`` feeds it. Quantised values
exist only in the standard layout (§8.2), so those cases ask for ``flash_attention=True`` and
apply only where that gives the standard layout.
"""

from __future__ import annotations

import math

from mlplug.dtype import DType

from .dsl import case, inp, step
from .model import Case, Fill, normal, specials

__all__ = ["generate"]

_CACHE = (DType.F32, DType.F16, DType.BF16, DType.Q8_0, DType.Q4_0)


def _mask_fill(length: int) -> Fill:
    # Additive values with some -inf, never a whole row of them (that output is unspecified).
    return specials(normal(0.5), [-math.inf], 3) if length > 2 else normal(0.5)


def _attention_case(
    kv: DType,
    label: str,
    *,
    dk: int,
    dv: int,
    heads: int,
    kv_heads: int,
    length: int,
    tokens: int,
    mask: DType | None,
    mask_rows: int | None = None,
    flash: bool = False,
    views: bool = False,
) -> Case:
    f32 = DType.F32
    cells = length + 5 if views else length
    inputs = [
        inp("q", f32, dk, tokens, heads) if views else inp("q", f32, dk, heads, tokens),
        inp("k", kv, dk, kv_heads, cells),
        inp("v", kv, dv, kv_heads, cells),
    ]
    steps = []
    if views:
        kb = kv.type_size * (dk // kv.block_size)
        vb = kv.type_size * (dv // kv.block_size)
        steps += [
            step("qt", "permute", "q", axes=(0, 2, 1, 3)),
            step(
                "kc",
                "view",
                "k",
                offset=3 * kb * kv_heads,
                args=(dk, kb, kv_heads, kb * kv_heads, length),
            ),
            step(
                "vc",
                "view",
                "v",
                offset=3 * vb * kv_heads,
                args=(dv, vb, kv_heads, vb * kv_heads, length),
            ),
        ]
    q, k, v = ("qt", "kc", "vc") if views else ("q", "k", "v")
    args_mask: str | None = None
    if mask is not None:
        inputs.append(inp("m", mask, length, mask_rows or tokens, fill=_mask_fill(length)))
        args_mask = "m"
    scale = 1.0 / math.sqrt(dk)
    op = "scaled_dot_product_attention"
    if kv.is_block:
        steps.append(step("y", op, q, k, v, args_mask, scale=scale))
        layout = "standard_v"
        flash = True
    else:
        steps += [
            step("vp", "permute", v, axes=(1, 2, 0, 3), when="permuted_v"),
            step("vpc", "contiguous", "vp", when="permuted_v"),
            step("y", op, q, k, "vpc", args_mask, scale=scale, when="permuted_v"),
            step("y", op, q, k, v, args_mask, scale=scale, when="standard_v"),
        ]
        layout = None
    tag = f"kv-{kv.name}-{label}-mask-{mask.name if mask else 'none'}" + ("-fa" if flash else "")
    return case(op, f32, tag, inputs, steps, flash_attention=flash, layout=layout)


def generate() -> list[Case]:
    """Return the cases of this family."""
    out = []
    for kv in _CACHE:
        for flash in (False, True) if not kv.is_block else (True,):
            out.append(
                _attention_case(
                    kv,
                    "h4-hkv2-l7-t3",
                    heads=4,
                    kv_heads=2,
                    length=7,
                    tokens=3,
                    mask=DType.F32,
                    flash=flash,
                    dk=32,
                    dv=32,
                )
            )
        out.append(
            _attention_case(
                kv,
                "h2-hkv2-l1-t1",
                heads=2,
                kv_heads=2,
                length=1,
                tokens=1,
                mask=None,
                dk=32,
                dv=32,
            )
        )
        out.append(
            _attention_case(
                kv,
                "dv64-h8-hkv1-l40-t5",
                dk=32,
                dv=64,
                heads=8,
                kv_heads=1,
                length=40,
                tokens=5,
                mask=DType.F16,
            )
        )
        out.append(
            _attention_case(
                kv,
                "padded-mask-rows-h2-hkv1-l9-t3",
                heads=2,
                kv_heads=1,
                length=9,
                tokens=3,
                mask=DType.F32,
                mask_rows=8,
                dk=32,
                dv=32,
            )
        )
        out.append(
            _attention_case(
                kv,
                "views-h4-hkv2-l6-t2",
                heads=4,
                kv_heads=2,
                length=6,
                tokens=2,
                mask=DType.F32,
                views=True,
                dk=32,
                dv=32,
            )
        )
    return out
