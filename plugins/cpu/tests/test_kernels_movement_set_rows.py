"""``set_rows`` on the cpu plugin through the public API: the scatter, and ids out of range."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

import mlplug


@pytest.fixture
def backend() -> Iterator[mlplug.Backend]:
    b = mlplug.new_backend(None, mlplug.BackendParams(), backend="cpu")
    yield b
    b.close()


def test_rows_land_in_the_cells_named_and_the_rest_keep_their_values(
    backend: mlplug.Backend,
) -> None:
    ctx = backend.new_context()
    dst = ctx.layer(0).from_float_slice([9.0] * 8, 2, 4)
    a = ctx.input().from_float_slice([1, 2, 3, 4, 5, 6], 2, 3)
    y = a.set_rows(ctx, dst, ctx.input().from_int_slice([1, 1, 2], 3))
    ctx.forward(y).compute(y)
    assert dst.floats().tolist() == [9, 9, 3, 4, 5, 6, 9, 9]


def test_an_id_out_of_range_raises_and_writes_nothing_outside(backend: mlplug.Backend) -> None:
    ctx = backend.new_context()
    buf = ctx.layer(0).zeros(mlplug.DType.F16, 4, 6)
    dst = buf.view(ctx, 8, 4, 8, 4)  # rows 1..4 of the buffer
    a = ctx.input().from_float_slice(np.ones(8, np.float32), 4, 2)
    y = a.set_rows(ctx, dst, ctx.input().from_int_slice([0, 4], 2))
    ctx.forward(y)
    with pytest.raises(IndexError, match=r"\[set_rows\] index 4 out of range 0..3"):
        ctx.compute(y)
    assert not buf.floats().any()
