"""Every worked example of SEMANTICS §4–§5, end to end through the public API on ``cpu``.

Each runs once on the CPU device and once with its operands on a simulated GPU (the engine
then schedules the nodes there), and must give the same exact values.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pytest

import mlplug
from mlplug import Context, DType, Tensor

F32, I32 = DType.F32, DType.I32


@pytest.fixture(params=["cpu", "sim"])
def ctx(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Context]:
    if request.param == "sim":
        monkeypatch.setenv("MLPLUG_CPU_SIMULATED_GPUS", "1:64MiB")
        params = mlplug.BackendParams(num_gpu_layers=1)
    else:
        monkeypatch.delenv("MLPLUG_CPU_SIMULATED_GPUS", raising=False)
        params = mlplug.BackendParams()
    backend = mlplug.new_backend(None, params, backend="cpu")
    c = backend.new_context()
    _PLACED[id(c)] = c.layer(0)  # on SIM0 in the "sim" case
    yield c
    del _PLACED[id(c)]
    backend.close()


_PLACED: dict[int, Context] = {}


def w(ctx: Context) -> Context:
    """Return the context whose buffers live on the device under test."""
    return _PLACED[id(ctx)]


def f(ctx: Context, values: object, *shape: int) -> Tensor:
    return w(ctx).from_float_slice(values, *shape)


def i(ctx: Context, values: object, *shape: int) -> Tensor:
    return w(ctx).from_int_slice(values, *shape)


def run(ctx: Context, t: Tensor) -> list[float]:
    ctx.forward(t).compute(t)
    return t.numpy().reshape(-1).tolist()


EXAMPLES: dict[str, tuple[Callable[[Context], Tensor], list[float], tuple[int, ...]]] = {
    # §4.3 arange
    "arange f32": (lambda c: c.arange(0, 5, 2, F32), [0, 2, 4], (3,)),
    "arange i32 trunc": (lambda c: c.arange(0, 1, 0.25, I32), [0, 0, 0, 0], (4,)),
    "arange negative step": (lambda c: c.arange(5, 0, -2, F32), [5, 3, 1], (3,)),
    "arange 0.3": (
        lambda c: c.arange(0, 1, 0.3, F32),
        np.float32([0, 0.3, 0.6, 0.9]).tolist(),
        (4,),
    ),
    # §5.2 binary ops tile b
    "add tile [3]": (
        lambda c: f(c, range(12), 6, 2).add(c, f(c, [100, 200, 300], 3)),
        [100, 201, 302, 103, 204, 305, 106, 207, 308, 109, 210, 311],
        (6, 2),
    ),
    "add tile [1,2]": (
        lambda c: f(c, range(12), 6, 2).add(c, f(c, [100, 200], 1, 2)),
        [*range(100, 106), *range(206, 212)],
        (6, 2),
    ),
    # §5.4 products
    "mulmat dot": (lambda c: f(c, [0, 1, 2], 3).mulmat(c, f(c, [0, 1, 2], 3)), [5], (1,)),
    "mulmat vec": (
        lambda c: f(c, range(4), 4).mulmat(c, f(c, range(12), 4, 3)),
        [14, 38, 62],
        (1, 3),
    ),
    "mulmat batch": (
        lambda c: f(c, range(20), 4, 5).mulmat(c, f(c, range(120), 4, 3, 10)),
        None,
        (5, 3, 10),
    ),  # first ten values checked below
    "mulmat_id": (
        lambda c: f(c, range(60), 4, 3, 5).mulmat_id(
            c, f(c, [1, 0, 0, 0, 0, 1, 0, 0], 4, 1, 2), i(c, [4, 1, 0, 4], 2, 2)
        ),
        [48, 52, 56, 12, 16, 20, 1, 5, 9, 49, 53, 57],
        (3, 2, 2),
    ),
    # §5.5 rows
    "softmax": (lambda c: f(c, [1, 2, 3], 3).softmax(c), None, (3,)),
    "mean": (lambda c: f(c, [1, 2, 3, 4, 6, 8], 3, 2).mean(c), [2, 6], (1, 2)),
    "sum_rows": (lambda c: f(c, [1, 2, 3, 4, 6, 8], 3, 2).sum_rows(c), [6, 18], (1, 2)),
    # §5.6 views (operand must stay a buffer of the placed context)
    "view row": (lambda c: f(c, range(12), 4, 3).view(c, 16, 4), [4, 5, 6, 7], (4,)),
    "view cols": (
        lambda c: f(c, range(12), 4, 3).view(c, 4, 2, 16, 3),
        [1, 2, 5, 6, 9, 10],
        (2, 3),
    ),
    "view split": (
        lambda c: f(c, range(12), 4, 3).view(c, 0, 2, 8, 2, 16, 3),
        list(range(12)),
        (2, 2, 3),
    ),
    "permute 2d": (
        lambda c: f(c, range(6), 3, 2).permute(c, 1, 0, 2, 3),
        [0, 3, 1, 4, 2, 5],
        (2, 3),
    ),
    # §5.7 assembling
    "set stride": (
        lambda c: w(c).zeros(F32, 4, 3).set(c, f(c, [1, 2, 3, 4], 2, 2), 4, 16),
        [0, 1, 2, 0, 0, 3, 4, 0, 0, 0, 0, 0],
        (4, 3),
    ),
    "set wrap": (
        lambda c: w(c).zeros(F32, 4, 3).set(c, f(c, [7, 8, 9], 3), 8),
        [0, 0, 7, 8, 9, 0, 0, 0, 0, 0, 0, 0],
        (4, 3),
    ),
    "pad": (
        lambda c: f(c, range(6), 2, 3).pad(c, 1, 2, 0, 0),
        [0, 1, 0, 2, 3, 0, 4, 5, 0, 0, 0, 0, 0, 0, 0],
        (3, 5),
    ),
    "pad p3": (
        lambda c: f(c, range(6), 2, 3).pad(c, 0, 0, 0, 1),
        [*range(6), *[0] * 6],
        (2, 3, 1, 2),
    ),
    "concat dim1": (
        lambda c: f(c, range(6), 2, 3).concat(c, f(c, [10, 11], 2, 1), 1),
        [*range(6), 10, 11],
        (2, 4),
    ),
    "concat dim0": (
        lambda c: f(c, range(6), 2, 3).concat(c, f(c, [20, 21, 22], 1, 3), 0),
        [0, 1, 20, 2, 3, 21, 4, 5, 22],
        (3, 3),
    ),
    "stack dim1": (
        lambda c: f(c, [1, 2, 3], 3).stack(c, 1, f(c, [4, 5, 6], 3), f(c, [7, 8, 9], 3)),
        list(range(1, 10)),
        (3, 3),
    ),
    "stack dim0": (
        lambda c: f(c, [1, 2, 3], 3).stack(c, 0, f(c, [4, 5, 6], 3), f(c, [7, 8, 9], 3)),
        list(range(1, 10)),
        (9,),
    ),
    "repeat dim0": (
        lambda c: f(c, range(6), 2, 3).repeat(c, 0, 2),
        [0, 1, 0, 1, 2, 3, 2, 3, 4, 5, 4, 5],
        (4, 3),
    ),
    "repeat dim1": (lambda c: f(c, range(6), 2, 3).repeat(c, 1, 2), [*range(6), *range(6)], (2, 6)),
    "rows embedding": (
        lambda c: f(c, range(12), 3, 4).rows(c, i(c, [2, 0, 2], 3)),
        [6, 7, 8, 0, 1, 2, 6, 7, 8],
        (3, 3),
    ),
    "rows batched": (
        lambda c: f(c, range(16), 2, 4, 2).rows(c, i(c, [3, 0, 1, 1, 1, 2], 3, 2)),
        [6, 7, 0, 1, 2, 3, 10, 11, 10, 11, 12, 13],
        (2, 3, 2),
    ),
    # §5.8
    "topk": (
        lambda c: f(c, [0.1, 0.9, 0.5, 0.3, 4, 3, 2, 1], 4, 2).topk(c, 2),
        [1, 2, 0, 1],
        (2, 2),
    ),
}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_worked_example(ctx: Context, name: str) -> None:
    build, expected, shape = EXAMPLES[name]
    t = build(ctx)
    got = run(ctx, t)
    assert t.shape() == shape
    if name == "mulmat batch":
        assert got[:10] == [14, 38, 62, 86, 110, 38, 126, 214, 302, 390]
    elif name == "softmax":
        assert np.allclose(got, [0.0900, 0.2447, 0.6652], atol=1e-4)
    else:
        assert got == expected


def test_reductions_and_norms(ctx: Context) -> None:
    x = f(ctx, [1, 2, 3, 4, 6, 8], 3, 2)
    var, std = x.variance(ctx), x.stddev(ctx)
    rms = f(ctx, [1, 2, 3, 4], 4).rms_norm(ctx, None, 1e-6)
    ln = f(ctx, [1, 2, 3, 4], 4).layer_norm(ctx, None, None, 1e-5)
    ctx.forward(var, std, rms, ln).compute(var, std, rms, ln)
    assert np.allclose(var.floats(), [0.6667, 2.6667], atol=1e-4)
    assert np.allclose(std.floats(), [0.8165, 1.6330], atol=1e-4)
    assert np.allclose(rms.floats(), [0.3651, 0.7303, 1.0954, 1.4606], atol=1e-4)
    assert np.allclose(ln.floats(), [-1.3416, -0.4472, 0.4472, 1.3416], atol=1e-4)


def test_gqa_mulmat_uses_block_repeat(ctx: Context) -> None:
    rng = np.random.default_rng(0)
    k_np = rng.standard_normal((2, 5, 2)).astype(np.float32)  # numpy order of ggml [2, 5, 2]
    q_np = rng.standard_normal((4, 3, 2)).astype(np.float32)  # ggml [2, 3, 4]
    out = f(ctx, k_np, 2, 5, 2).mulmat(ctx, f(ctx, q_np, 2, 3, 4))
    got = np.array(run(ctx, out)).reshape(4, 3, 5)
    for head in range(4):
        assert np.allclose(got[head], q_np[head] @ k_np[head // 2].T, atol=1e-6)


def test_argsort_and_permute_3d(ctx: Context) -> None:
    order = run(ctx, f(ctx, [3, 1, 4, 1, 5], 5).argsort(ctx))
    assert order in ([1, 3, 0, 2, 4], [3, 1, 0, 2, 4])
    p = run(ctx, f(ctx, range(30), 2, 3, 5).permute(ctx, 2, 0, 1, 3))
    assert p[:6] == [0, 2, 4, 6, 8, 10] and p[15:18] == [1, 3, 5]


def test_conv_and_im2col_shapes(ctx: Context) -> None:
    inp = w(ctx).zeros(F32, 32, 24, 3, 1)
    kernel = w(ctx).zeros(F32, 3, 3, 3, 16)
    assert [kernel.conv_2d(ctx, inp, 1, 1, 1, 1, 1, 1).dim(d) for d in range(4)] == [32, 24, 16, 1]
    assert [kernel.im2col(ctx, inp, 1, 1, 1, 1, 1, 1).dim(d) for d in range(4)] == [27, 32, 24, 1]


def test_copy_into_kv_cache_view(ctx: Context) -> None:
    cache = w(ctx).zeros(DType.F16, 128, 8, 16)
    assert [cache.stride(d) for d in range(3)] == [2, 256, 2048]
    lo, n = 5, 3
    cells = cache.view(ctx, 2048 * lo, 128, 256, 8, 2048, n)
    src = f(ctx, np.arange(128 * 8 * n) % 7, 128, 8, n)
    cp = src.copy(ctx, cells)
    ctx.forward(cp).compute(cp)
    full = cache.numpy()
    assert np.array_equal(full[lo : lo + n].reshape(-1), (np.arange(128 * 8 * n) % 7))
    assert not full[:lo].any() and not full[lo + n :].any()
