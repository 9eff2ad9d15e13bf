"""Tensor element types (SEMANTICS §3.1).

``DType`` is an ``IntEnum`` whose values are mlplug's own; ``ggml_type`` is the GGUF/ggml type
id. Block types store ``block_size`` elements in ``type_size`` bytes. The dtype *sets* of §3.1
(FLOAT, CACHE, INT, WEIGHT, ANY, CREATE) live here too, as frozensets, because the ops table and
every plugin use them.
"""

from __future__ import annotations

import math
import struct
from enum import IntEnum

__all__ = ["ANY", "CACHE", "CREATE", "FLOAT", "INT", "WEIGHT", "DType", "round_f32"]

# value: (name, ggml id, block size, bytes per block). OTHER has no ggml id (-1).
_TABLE: dict[int, tuple[int, int, int]] = {
    0: (-1, 0, 0),
    1: (0, 1, 4),
    2: (1, 1, 2),
    3: (8, 32, 34),
    4: (2, 32, 18),
    5: (26, 1, 4),
    6: (39, 32, 17),
    7: (30, 1, 2),
    8: (3, 32, 20),
    9: (6, 32, 22),
    10: (7, 32, 24),
    11: (10, 256, 84),
    12: (11, 256, 110),
    13: (12, 256, 144),
    14: (13, 256, 176),
    15: (14, 256, 210),
    16: (15, 256, 292),
    17: (16, 256, 66),
    18: (17, 256, 74),
    19: (18, 256, 98),
    20: (19, 256, 50),
    21: (20, 32, 18),
    22: (21, 256, 110),
    23: (22, 256, 82),
    24: (23, 256, 136),
    25: (24, 1, 1),
    26: (25, 1, 2),
    27: (27, 1, 8),
    28: (28, 1, 8),
    29: (29, 256, 56),
    30: (34, 256, 54),
    31: (35, 256, 66),
}


class DType(IntEnum):
    """An element type; see the table of SEMANTICS §3.1."""

    OTHER = 0
    F32 = 1
    F16 = 2
    Q8_0 = 3
    Q4_0 = 4
    I32 = 5
    MXFP4 = 6
    BF16 = 7
    Q4_1 = 8
    Q5_0 = 9
    Q5_1 = 10
    Q2_K = 11
    Q3_K = 12
    Q4_K = 13
    Q5_K = 14
    Q6_K = 15
    Q8_K = 16
    IQ2_XXS = 17
    IQ2_XS = 18
    IQ3_XXS = 19
    IQ1_S = 20
    IQ4_NL = 21
    IQ3_S = 22
    IQ2_S = 23
    IQ4_XS = 24
    I8 = 25
    I16 = 26
    I64 = 27
    F64 = 28
    IQ1_M = 29
    TQ1_0 = 30
    TQ2_0 = 31

    # Set once per member after the class is made (see the end of the module): plain attributes
    # rather than properties, because the graph builder reads them for every node.
    ggml_type: int
    """The GGUF/ggml type id (-1 for ``OTHER``)."""
    block_size: int
    """Elements per block ``B`` (1 for non-block types, 0 for ``OTHER``)."""
    type_size: int
    """Bytes per block ``S`` (the element size for non-block types)."""
    is_block: bool
    """Whether elements are stored in blocks of more than one (quantised types)."""

    def nbytes(self, n: int) -> int:
        """Return the packed size in bytes of ``n`` elements: ``n // B * S``."""
        if self is DType.OTHER:
            raise ValueError("DType.OTHER has no size")
        return n // self.block_size * self.type_size

    @classmethod
    def from_ggml(cls, ggml_type: int) -> DType:
        """Return the member with this ggml type id; unknown ids raise ``ValueError``."""
        try:
            return _BY_GGML[int(ggml_type)]
        except KeyError:
            raise ValueError(f"unknown ggml type id {ggml_type}") from None


for _member in DType:
    _member.ggml_type, _member.block_size, _member.type_size = _TABLE[_member.value]
    _member.is_block = _member.block_size > 1

_BY_GGML: dict[int, DType] = {d.ggml_type: d for d in DType if d is not DType.OTHER}

FLOAT: frozenset[DType] = frozenset({DType.F32, DType.F16, DType.BF16})
CACHE: frozenset[DType] = FLOAT | {DType.Q8_0, DType.Q4_0}
INT: frozenset[DType] = frozenset({DType.I8, DType.I16, DType.I32, DType.I64})
ANY: frozenset[DType] = frozenset(DType) - {DType.OTHER}
WEIGHT: frozenset[DType] = ANY - INT
CREATE: frozenset[DType] = frozenset(
    {DType.F32, DType.F16, DType.BF16, DType.I32, DType.Q8_0, DType.Q4_0}
)


def round_f32(value: float) -> float:
    """Round a Python float to the nearest F32 value, ties to even (overflow gives ±inf).

    Used where the semantics compute in float32 without numpy: ``scale``'s factor (§5.3),
    placement fractions (§6.4) and ``dump``'s values (§9).
    """
    try:
        return float(struct.unpack("<f", struct.pack("<f", value))[0])
    except OverflowError:  # rounds past the largest F32
        return math.copysign(math.inf, value)
