"""Random, well-formed tensors of the weight-only dtypes (SEMANTICS §3.1), for GGUF-fed cases.

A context cannot create these dtypes; they only come from model files. The suite therefore
writes them into a synthetic GGUF (:mod:`.synth`) and reads them back as weights. ``gguf`` has
no quantiser for most of them, so blocks are random bytes whose scale fields are then set to
finite values of a sane magnitude (every other bit pattern is a valid code). The reference reads
the values back with :func:`mlplug_conformance.convert.decode`, so they are exactly what a
device must see.

Scale fields, by block layout (ggml's structs; byte offsets inside one block):

===========  =================================================================
Q4_1, Q5_1  fp16 ``d`` at 0 and ``m`` at 2
Q5_0, IQ*   fp16 ``d`` at 0 (IQ2_XXS, IQ2_XS, IQ3_XXS, IQ1_S, IQ4_NL, IQ3_S, IQ2_S, IQ4_XS)
Q4_K, Q5_K  fp16 ``d`` at 0 and ``dmin`` at 2
Q2_K        fp16 ``d`` at 80 and ``dmin`` at 82
Q3_K        fp16 ``d`` at 108
Q6_K        fp16 ``d`` at 208
TQ1_0       fp16 ``d`` at 52;  TQ2_0: fp16 ``d`` at 64
Q8_K        F32 ``d`` at 0, then 256 int8 ``q`` and 16 int16 sums of 16 ``q`` each
MXFP4       E8M0 exponent byte at 0
IQ1_M       fp16 ``d`` split over the top nibbles of the four uint16 scale words at 48
===========  =================================================================
"""

from __future__ import annotations

import numpy as np

from mlplug.dtype import CREATE, DType
from mlplug_conformance import convert

__all__ = ["WEIGHT_ONLY", "random_weight_bytes"]

WEIGHT_ONLY: frozenset[DType] = frozenset(DType) - CREATE - {DType.OTHER}
"""Dtypes that only come from GGUF files."""

_F16_FIELDS: dict[DType, tuple[int, ...]] = {
    DType.Q4_1: (0, 2),
    DType.Q5_1: (0, 2),
    DType.Q5_0: (0,),
    DType.Q4_K: (0, 2),
    DType.Q5_K: (0, 2),
    DType.Q2_K: (80, 82),
    DType.Q3_K: (108,),
    DType.Q6_K: (208,),
    DType.TQ1_0: (52,),
    DType.TQ2_0: (64,),
    DType.IQ2_XXS: (0,),
    DType.IQ2_XS: (0,),
    DType.IQ3_XXS: (0,),
    DType.IQ1_S: (0,),
    DType.IQ4_NL: (0,),
    DType.IQ3_S: (0,),
    DType.IQ2_S: (0,),
    DType.IQ4_XS: (0,),
}
_INTS = {DType.I8: np.int8, DType.I16: np.int16, DType.I64: np.int64}


def _scales(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.uniform(0.005, 0.05, n).astype(np.float16)


def random_weight_bytes(rng: np.random.Generator, dtype: DType, n: int) -> bytes:
    """Return ``n`` elements of ``dtype`` as packed bytes with finite, moderate values.

    Raises:
        ValueError: ``dtype`` is creatable (make those with a context) or ``n`` is not a whole
            number of blocks.
    """
    if dtype not in WEIGHT_ONLY:
        raise ValueError(f"{dtype.name} is not a weight-only dtype")
    if dtype is DType.F64:
        return rng.normal(0.0, 1.0, n).astype("<f8").tobytes()
    if dtype in _INTS:
        return rng.integers(-100, 100, n).astype(_INTS[dtype]).tobytes()
    if n % dtype.block_size:
        raise ValueError(f"{n} elements are not whole {dtype.name} blocks")
    blocks = n // dtype.block_size
    raw = rng.integers(0, 256, (blocks, dtype.type_size), dtype=np.uint8)
    if dtype in _F16_FIELDS:
        for offset in _F16_FIELDS[dtype]:
            raw[:, offset : offset + 2] = _scales(rng, blocks).view(np.uint8).reshape(blocks, 2)
    elif dtype is DType.Q8_K:
        d = rng.uniform(0.005, 0.05, blocks).astype("<f4")
        raw[:, 0:4] = d.view(np.uint8).reshape(blocks, 4)
        q = raw[:, 4:260].copy().view(np.int8).astype(np.int16).reshape(blocks, 16, 16)
        raw[:, 260:292] = q.sum(axis=2).astype("<i2").view(np.uint8).reshape(blocks, 32)
    elif dtype is DType.MXFP4:
        raw[:, 0] = rng.integers(118, 124, blocks, dtype=np.uint8)  # 2^-9 .. 2^-4
    elif dtype is DType.IQ1_M:
        bits = _scales(rng, blocks).view(np.uint16).astype(np.uint16)
        words = raw[:, 48:56].copy().view("<u2") & np.uint16(0x0FFF)
        for i in range(4):
            words[:, i] |= ((bits >> np.uint16(4 * i)) & np.uint16(0xF)) << np.uint16(12)
        raw[:, 48:56] = words.astype("<u2").view(np.uint8)
    else:
        raise ValueError(f"no block generator for {dtype.name}")
    data = raw.tobytes()
    values = convert.decode(data, dtype)
    if not np.isfinite(values).all():
        raise AssertionError(f"[conformance] random {dtype.name} blocks decode to non-finite")
    return data
