"""MlxBuffer: a byte-addressed buffer made of immutable MLX arrays."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from mlplug.device import Buffer

mx = pytest.importorskip(
    "mlx.core", reason="MLX is not installed (pip install 'mlx[cpu]')", exc_type=ImportError
)


def _segments(buf: Any) -> list[tuple[int, int]]:
    return [(s.start, s.stop) for s in buf._segments]


def test_protocol_zeroed_and_bounds(metal: Any) -> None:
    buf = metal.alloc(64)
    assert isinstance(buf, Buffer) and buf.nbytes == 64
    assert buf.read(0, 64) == bytes(64)
    with pytest.raises(ValueError, match="outside"):
        buf.write(60, b"12345")
    with pytest.raises(ValueError, match="outside"):
        buf.read(-1, 2)


def test_writes_replace_and_keep_neighbours(metal: Any) -> None:
    buf = metal.alloc(32)
    model = bytearray(32)
    for offset, data in [(4, b"abcdefgh"), (8, b"XY"), (2, b"0123"), (20, b"tail"), (6, b"-" * 16)]:
        buf.write(offset, data)
        model[offset : offset + len(data)] = data
        assert buf.read(0, 32) == bytes(model)
    assert buf.read(5, 7) == bytes(model[5:12])
    # Reading across several pieces joins them into one (same bytes).
    assert len(_segments(buf)) == 1 and buf.read(0, 32) == bytes(model)


def test_a_whole_buffer_array_is_updated_in_place(metal: Any) -> None:
    buf = metal.alloc(16)
    buf.write(0, bytes(range(16)))
    buf.write(4, b"\xff\xfe")
    assert _segments(buf) == [(0, 16)]
    assert buf.read(0, 8) == bytes([0, 1, 2, 3, 255, 254, 6, 7])


def test_free_returns_the_budget_and_is_idempotent(metal: Any) -> None:
    buf = metal.alloc(1000)
    assert metal.allocated == 1000
    buf.free()
    buf.free()
    assert metal.allocated == 0
    with pytest.raises(ValueError, match="after free"):
        buf.read(0, 1)
    dropped = metal.alloc(100)
    del dropped  # collected without free(): the bytes come back too
    assert metal.allocated == 0


def test_typed_windows_at_odd_offsets(h: Any) -> None:
    # An F32 view starting 4 bytes into a buffer, with a row stride of 12 bytes.
    base = h.tensor(np.arange(12, dtype=np.float32), 12)
    view = h.view(base, 4, (2, 3), (4, 12))
    assert h.values(h.run("contiguous", view)).tolist() == [1, 2, 4, 5, 7, 8]
