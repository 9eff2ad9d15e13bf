"""Copies, conversions, set/pad/concat/stack/repeat/rows/arange (SEMANTICS §3.2, §4.3, §5.6-7)."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

from mlplug.device import DType, Node, TensorRef
from mlplug_cpu.kernels import quant

RNG = np.random.default_rng(2)


def _view(ref: TensorRef, offset: int, ne: tuple[int, ...], nb: tuple[int, ...]) -> TensorRef:
    """A view as ``Tensor.view`` makes it: ``nb`` includes nb0; missing strides continue packed."""
    full_ne, full_nb = [*ne, 1, 1, 1][:4], list(nb)
    while len(full_nb) < 4:
        full_nb.append(full_nb[-1] * full_ne[len(full_nb) - 1])
    return TensorRef(ref.buffer, ref.offset + offset, tuple(full_ne), tuple(full_nb), ref.dtype)  # type: ignore[arg-type]


def _copy(h, src: TensorRef, dst: TensorRef) -> None:
    h.device.execute([Node("copy", dst, (src, dst), {})])


# -- contiguous and copy --------------------------------------------------------------------------


def test_contiguous_of_a_permuted_view(h) -> None:
    src = h.tensor(np.arange(30), 2, 3, 5)
    out = h.run("contiguous", h.permuted(src, 2, 0, 1, 3))  # [3, 5, 2]
    values = h.values(out)
    assert out.ne == (3, 5, 2, 1) and out.contiguous
    assert values[:6].tolist() == [0, 2, 4, 6, 8, 10] and values[15:18].tolist() == [1, 3, 5]


@pytest.mark.parametrize(
    "offset,ne,nb,expected",
    [
        (16, (4,), (4,), [4, 5, 6, 7]),
        (4, (2, 3), (4, 16), [1, 2, 5, 6, 9, 10]),
        (0, (2, 2, 3), (4, 8, 16), list(range(12))),
        (8, (2, 3), (4, 0), [2, 3, 2, 3, 2, 3]),  # a zero stride repeats the row
    ],
)
def test_contiguous_of_view_examples(h, offset, ne, nb, expected) -> None:
    x = h.tensor(np.arange(12), 4, 3)
    out = h.run("contiguous", _view(x, offset, ne, nb))
    assert h.values(out).tolist() == expected


def test_transpose_example(h) -> None:
    out = h.run("duplicate", h.permuted(h.tensor(np.arange(6), 3, 2), 1, 0, 2, 3))
    assert h.values(out).tolist() == [0, 3, 1, 4, 2, 5]


def test_copy_into_a_strided_kv_cache_view(h) -> None:
    # F16 cache [Dk=4, Hkv=2, N=8]; a batch of 3 keys goes into cells 2..4.
    cache = h.tensor(np.full(64, -1.0), 4, 2, 8, dtype=DType.F16)
    keys = RNG.standard_normal((3, 2, 4)).astype(np.float32)
    dst = _view(cache, cache.nb[2] * 2, (4, 2, 3), (2, cache.nb[1], cache.nb[2]))
    _copy(h, h.tensor(keys, 4, 2, 3), dst)
    got = h.array(cache)[0]
    np.testing.assert_array_equal(got[2:5], keys.astype(np.float16).astype(np.float32))
    assert (got[:2] == -1).all() and (got[5:] == -1).all()


def test_copy_of_permuted_values_into_rows_of_a_permuted_cache(h) -> None:
    # The permuted-V layout: cache [N=8, Dv=3, Hkv=2]; value [Dv, Hkv, B=2].permute(1, 2, 0, 3)
    # → [B, Dv, Hkv] copied into the 2-D view at cell 5: B per row, row stride N·S.
    n, dv, hkv, b = 8, 3, 2, 2
    cache = h.tensor(np.zeros(n * dv * hkv), n, dv, hkv)
    value = RNG.standard_normal((b, hkv, dv)).astype(np.float32)  # ggml [Dv, Hkv, B]
    src = h.permuted(h.tensor(value, dv, hkv, b), 1, 2, 0, 3)
    dst = _view(cache, 4 * 5, (b, dv * hkv), (4, n * 4))
    _copy(h, src, dst)
    got = h.array(cache)[0]  # (Hkv, Dv, N)
    np.testing.assert_array_equal(got[:, :, 5:7], value.transpose(1, 2, 0))
    assert not got[:, :, :5].any() and not got[:, :, 7:].any()


def test_copy_between_shapes_uses_logical_order(h) -> None:
    dst = h.empty(DType.F32, 3, 2)
    _copy(h, h.permuted(h.tensor(np.arange(6), 2, 3), 1, 0, 2, 3), dst)
    assert h.values(dst).tolist() == [0, 2, 4, 1, 3, 5]


@pytest.mark.parametrize("dtype", [DType.Q8_0, DType.Q4_0])
def test_quantising_copy_is_bit_exact_with_gguf(h, dtype) -> None:
    x = (RNG.standard_normal((3, 64)) * 5).astype(np.float32)
    x[1, :32] = 0.0  # an all-zero block (d = 0)
    dst = h.empty(dtype, 64, 3)
    _copy(h, h.tensor(x, 64, 3), dst)
    expected = gguf.quants.quantize(x, Q(dtype.ggml_type))
    assert dst.buffer is not None
    assert dst.buffer.read(0, dst.nbytes) == expected.tobytes()
    back = h.empty(DType.F32, 64, 3)
    _copy(h, dst, back)
    np.testing.assert_array_equal(
        h.array(back)[0, 0], gguf.quants.dequantize(expected, Q(dtype.ggml_type))
    )


def test_quantised_copy_through_strided_views(h) -> None:
    # Rows of a Q8_0 cache [64, 4] written from the columns of a transposed F16 source.
    x = RNG.standard_normal((64, 2)).astype(np.float32)  # ggml [2, 64]
    src = h.permuted(h.tensor(x, 2, 64, dtype=DType.F16), 1, 0, 2, 3)  # [64, 2]
    cache = h.empty(DType.Q8_0, 64, 4)
    dst = _view(cache, cache.nb[1] * 1, (64, 2), (34, cache.nb[1] * 2))  # rows 1 and 3
    _copy(h, src, dst)
    x16 = x.T.astype(np.float16).astype(np.float32)
    raw = np.frombuffer(cache.buffer.read(0, cache.nbytes), np.uint8).reshape(4, 68)
    assert raw[[1, 3]].tobytes() == gguf.quants.quantize(x16, Q.Q8_0).tobytes()
    assert not raw[[0, 2]].any()


def test_f16_and_bf16_round_trips(h) -> None:
    x = np.array(
        [
            1.0,
            -2.5,
            65504.0,
            1e6,
            -1e-8,
            np.inf,
            -np.inf,
            np.nan,
            1 + 2**-8,
            1 + 3 * 2**-8,
            -0.0,
            3.0e38,
        ],
        np.float32,
    )
    f16 = h.empty(DType.F16, 12)
    _copy(h, h.tensor(x, 12), f16)
    with np.errstate(over="ignore"):
        x16 = x.astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(h.values(f16), x16)
    bf16 = h.empty(DType.BF16, 12)
    _copy(h, h.tensor(x, 12), bf16)
    expected = gguf.quants.quantize(x.reshape(1, -1), Q.BF16).view(np.uint16).ravel()
    assert np.frombuffer(bf16.buffer.read(0, 24), np.uint16).tolist() == expected.tolist()
    got = h.values(bf16)
    assert got[8] == 1.0 and got[9] == 1 + 2**-6  # ties to even
    assert np.isnan(got[7]) and np.signbit(got[10])
    back = h.empty(DType.F16, 12)
    _copy(h, bf16, back)  # BF16 → F16 through exact F32 values
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(h.values(back), got.astype(np.float16).astype(np.float32))


def test_bf16_keeps_nan_payloads_nan() -> None:
    bits = np.array([0x7F800001, 0xFF800001, 0x7FC00000], np.uint32)
    out = quant.encode(bits.view(np.float32), DType.BF16)
    assert np.isnan(quant.decode(out, DType.BF16)).all()


@pytest.mark.parametrize("dtype", [DType.Q4_K, DType.I64, DType.F64, DType.I8])
def test_same_dtype_copy_is_raw(h, dtype) -> None:
    data = RNG.integers(0, 256, dtype.nbytes(512), dtype=np.uint8).tobytes()
    src = h.raw_tensor(data, dtype, 256, 2)
    dst = h.empty(dtype, 512)
    _copy(h, src, dst)
    assert dst.buffer.read(0, len(data)) == data
    out = h.run("contiguous", src)
    assert out.buffer.read(0, len(data)) == data


# -- assembling ops --------------------------------------------------------------------------------


def test_set_examples(h) -> None:
    zeros = h.tensor(np.zeros(12), 4, 3)
    out = h.run("set", zeros, h.tensor([1, 2, 3, 4], 2, 2), offset=4, strides=(16,))
    assert h.values(out).tolist() == [0, 1, 2, 0, 0, 3, 4, 0, 0, 0, 0, 0]
    out = h.run("set", zeros, h.tensor([7, 8, 9], 3), offset=8, strides=())
    assert h.values(out).tolist() == [0, 0, 7, 8, 9, 0, 0, 0, 0, 0, 0, 0]
    assert h.values(zeros).tolist() == [0] * 12  # the receiver is unchanged


def test_set_into_a_non_packed_output(h) -> None:
    a = h.tensor(np.arange(6), 3, 2, dtype=DType.I32)
    out, params = h.out_for("set", (a, h.tensor([7, 8], 2, dtype=DType.I32)), offset=4, strides=())
    wide = h.empty(DType.I32, 3, 4)  # out as rows 0 and 2 of a wider buffer
    out = TensorRef(wide.buffer, 0, out.ne, (4, 24, 48, 48), DType.I32)
    h.device.execute([Node("set", out, (a, h.tensor([7, 8], 2, dtype=DType.I32)), params)])
    assert h.values(wide).tolist() == [0, 7, 8, 0, 0, 0, 3, 4, 5, 0, 0, 0]


def test_pad_examples(h) -> None:
    t = h.tensor(np.arange(6), 2, 3)
    out = h.run("pad", t, pads=(1, 2, 0, 0))
    assert out.ne == (3, 5, 1, 1)
    assert h.values(out).tolist() == [0, 1, 0, 2, 3, 0, 4, 5, 0, 0, 0, 0, 0, 0, 0]
    out = h.run("pad", t, pads=(0, 0, 0, 1))
    assert out.ne == (2, 3, 1, 2) and h.values(out).tolist() == [*range(6), *[0] * 6]


def test_concat_examples(h) -> None:
    t = h.tensor(np.arange(6), 2, 3)
    assert h.values(h.run("concat", t, h.tensor([10, 11], 2, 1), dim=1)).tolist() == [
        0,
        1,
        2,
        3,
        4,
        5,
        10,
        11,
    ]
    assert h.values(h.run("concat", t, h.tensor([20, 21, 22], 1, 3), dim=0)).tolist() == [
        0,
        1,
        20,
        2,
        3,
        21,
        4,
        5,
        22,
    ]


def test_concat_strided_bf16(h) -> None:
    x = RNG.standard_normal((4, 3)).astype(np.float32)  # ggml [3, 4]
    a = h.permuted(h.tensor(x, 3, 4, dtype=DType.BF16), 1, 0, 2, 3)  # [4, 3]
    out = h.run("concat", a, a, dim=2)
    got = h.array(out)[0]
    ref = h.array(h.tensor(x, 3, 4, dtype=DType.BF16))[0, 0].T
    np.testing.assert_array_equal(got, np.stack([ref, ref]))


def test_stack_examples(h) -> None:
    vs = [h.tensor(v, 3) for v in ([1, 2, 3], [4, 5, 6], [7, 8, 9])]
    out = h.run("stack", *vs, dim=1)
    assert out.ne == (3, 3, 1, 1) and h.values(out).tolist() == list(range(1, 10))
    out = h.run("stack", *vs, dim=0)
    assert out.ne == (9, 1, 1, 1) and h.values(out).tolist() == list(range(1, 10))
    assert h.values(h.run("stack", vs[0], dim=2)).tolist() == [1, 2, 3]


def test_repeat_examples(h) -> None:
    t = h.tensor(np.arange(6), 2, 3)
    assert h.values(h.run("repeat", t, dim=0, n=2)).tolist() == [0, 1, 0, 1, 2, 3, 2, 3, 4, 5, 4, 5]
    assert h.values(h.run("repeat", t, dim=1, n=2)).tolist() == [*range(6), *range(6)]
    assert h.run("repeat", t, dim=3, n=0).n == 0


# -- rows ------------------------------------------------------------------------------------------


def test_rows_examples(h) -> None:
    ids = h.tensor([2, 0, 2], 3, dtype=DType.I32)
    out = h.run("rows", h.tensor(np.arange(12), 3, 4), ids)
    assert out.dtype == DType.F32 and h.values(out).tolist() == [6, 7, 8, 0, 1, 2, 6, 7, 8]
    ids = h.tensor([3, 0, 1, 1, 1, 2], 3, 2, dtype=DType.I32)
    out = h.run("rows", h.tensor(np.arange(16), 2, 4, 2), ids)
    assert out.ne == (2, 3, 2, 1)
    assert h.values(out).tolist() == [6, 7, 0, 1, 2, 3, 10, 11, 10, 11, 12, 13]


def test_rows_of_i32_stay_i32(h) -> None:
    table = h.tensor(np.arange(12) - 2**31 + 5, 3, 4, dtype=DType.I32)
    out = h.run("rows", table, h.tensor([3, 1], 2, dtype=DType.I32))
    assert out.dtype == DType.I32
    assert h.values(out).tolist() == [v - 2**31 + 5 for v in (9, 10, 11, 3, 4, 5)]


@pytest.mark.parametrize("dtype", [DType.Q4_0, DType.Q6_K, DType.F16, DType.BF16, DType.I8])
def test_rows_of_stored_dtypes_dequantise_the_gathered_rows(h, dtype) -> None:
    k = 256
    if dtype in (DType.F16, DType.BF16):
        data = h.tensor(RNG.standard_normal(k * 5), k, 5, dtype=dtype)
        table = quant.load(data).reshape(5, k)
    else:
        raw = RNG.integers(0, 256, dtype.nbytes(k * 5), dtype=np.uint8)
        if dtype == DType.Q4_0:
            raw.reshape(-1, 18)[:, :2] = np.frombuffer(np.float16(0.25).tobytes(), np.uint8)
        if dtype == DType.Q6_K:
            raw.reshape(-1, 210)[:, 208:] = np.frombuffer(np.float16(0.01).tobytes(), np.uint8)
        data = h.raw_tensor(raw.tobytes(), dtype, k, 5)
        if dtype == DType.I8:
            table = raw.view(np.int8).astype(np.float32).reshape(5, k)
        else:
            table = gguf.quants.dequantize(raw.reshape(5, -1), Q(dtype.ggml_type))
    out = h.run("rows", data, h.tensor([4, 0, 4, 2], 4, dtype=DType.I32))
    np.testing.assert_array_equal(h.array(out)[0, 0], table[[4, 0, 4, 2]])


@pytest.mark.parametrize("bad", [4, -1])
def test_rows_out_of_range_raises_index_error(h, bad) -> None:
    table = h.tensor(np.arange(12), 3, 4)
    with pytest.raises(IndexError):
        h.run("rows", table, h.tensor([0, bad], 2, dtype=DType.I32))


# -- arange ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args,expected",
    [
        ((0, 5, 2, DType.F32), [0, 2, 4]),
        ((0, 1, 0.25, DType.I32), [0, 0, 0, 0]),
        ((5, 0, -2, DType.F32), [5, 3, 1]),
        ((0, 1, 0.3, DType.F32), list(np.float32([0, 0.3, 0.6, 0.9]))),
        ((3, 3, 1, DType.I32), []),
        ((-3.5, 0, 1, DType.I32), [-3, -2, -1, 0]),
    ],
)
def test_arange_examples(h, args, expected) -> None:
    start, stop, step, dtype = args
    out = h.run("arange", start=start, stop=stop, step=step, dtype=dtype)
    assert out.dtype == dtype
    got = h.values(out).tolist()
    assert got == (
        list(np.float32(np.arange(start, stop, step))) if dtype == DType.F32 else expected
    )
    assert got == expected
