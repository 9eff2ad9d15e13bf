"""Weights held in MLX form: exact affine repack of Q4_0/Q8_0, F16 for other types, and the
bytes the memory report shows (DESIGN §5, SupportsWeightUpload)."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest

import mlplug
from mlplug.device import DType, SupportsWeightUpload, TensorRef, contiguous_strides

mx = pytest.importorskip(
    "mlx.core", reason="MLX is not installed (pip install 'mlx[cpu]')", exc_type=ImportError
)

quant = pytest.importorskip("mlplug_metal.kernels.quant", reason="mlplug-metal is not installed")
AffineWeight, DenseWeight = quant.AffineWeight, quant.DenseWeight

RNG = np.random.default_rng(5)


def _blocks(dtype: DType, n_blocks: int) -> bytes:
    """Random GGUF blocks with awkward scales: negative, zero, subnormal, large."""
    raw = RNG.integers(0, 256, (n_blocks, dtype.type_size), dtype=np.uint8)
    d = (RNG.standard_normal(n_blocks) * 0.05).astype(np.float16)
    special = [0.0, -0.0, 6e-8, -500.0 if dtype == DType.Q8_0 else -8000.0]
    d[: min(4, n_blocks)] = np.array(special[:n_blocks], np.float16)
    raw[:, :2] = d.view(np.uint8).reshape(-1, 2)
    return raw.tobytes()


def _gguf_values(data: bytes, dtype: DType) -> np.ndarray:
    kind = gguf.GGMLQuantizationType(dtype.ggml_type)
    return gguf.quants.dequantize(np.frombuffer(data, np.uint8).reshape(1, -1), kind).reshape(-1)


def _upload(h: Any, data: bytes, dtype: DType, *ne: int) -> TensorRef:
    full = (*ne, 1, 1, 1)[:4]
    dev = h.device
    assert isinstance(dev, SupportsWeightUpload)
    buf = dev.alloc(dev.weight_nbytes(dtype, full) + 64)
    ref = TensorRef(buf, 32, full, contiguous_strides(full, dtype), dtype)
    dev.upload_weight(ref, memoryview(data))
    return ref


@pytest.mark.parametrize("chunk", [5, 1 << 16])
@pytest.mark.parametrize("dtype", [DType.Q4_0, DType.Q8_0])
def test_affine_repack_is_exact_and_reversible(
    monkeypatch: pytest.MonkeyPatch, dtype: DType, chunk: int
) -> None:
    monkeypatch.setattr(quant, "_CHUNK_BLOCKS", chunk)  # repacked in pieces on the host
    data = _blocks(dtype, 3 * 4)
    weight = AffineWeight.repack(dtype, (128, 3, 1, 1), memoryview(data))
    assert weight is not None and weight.wq.dtype == mx.uint32
    got = np.array(weight.values()).reshape(-1)
    # Equal values (bit-exact except the sign of zero: d·n + (-8d) is +0 where (n - 8)·d is -0).
    assert np.array_equal(got, _gguf_values(data, dtype))
    assert np.asarray(weight.gguf_bytes()).tobytes() == data


@pytest.mark.parametrize("dtype", [DType.Q4_0, DType.Q8_0])
def test_a_scale_whose_bias_overflows_f16_keeps_the_gguf_bytes(h: Any, dtype: DType) -> None:
    raw = np.frombuffer(_blocks(dtype, 2), np.uint8).copy().reshape(2, -1)
    raw[1, :2] = np.array([60000.0], np.float16).view(np.uint8)  # -8d / -128d overflow F16
    assert AffineWeight.repack(dtype, (64, 1, 1, 1), memoryview(raw.tobytes())) is None
    ref = _upload(h, raw.tobytes(), dtype, 64)
    assert h.bytes(ref) == raw.tobytes()
    x = np.ones(64, np.float32)
    out = h.run("mulmat", ref, h.tensor(x, 64))
    assert h.values(out)[0] == pytest.approx(float(_gguf_values(raw.tobytes(), dtype).sum()))


@pytest.mark.parametrize("dtype", [DType.Q4_0, DType.Q8_0])
def test_held_weight_products_match_dequantised_values(h: Any, dtype: DType) -> None:
    k, m, n = 256, 48, 5
    data = gguf.quants.quantize(
        RNG.standard_normal((m, k)).astype(np.float32), gguf.GGMLQuantizationType(dtype.ggml_type)
    ).tobytes()
    w = _upload(h, data, dtype, k, m)
    x = RNG.standard_normal((n, k)).astype(np.float32)
    out = h.array(h.run("mulmat", w, h.tensor(x, k, n)))[0, 0]
    dense = _gguf_values(data, dtype).reshape(m, k).astype(np.float64)
    np.testing.assert_allclose(out, x @ dense.T, rtol=1e-5, atol=1e-4)
    # The weight stays quantised: it is an AffineWeight, and a raw read gives the GGUF bytes.
    assert h.bytes(w) == data
    # Views of it (a row range, a single row) and gathers read the same values.
    rows = h.view(
        w, 5 * k // 32 * dtype.type_size, (k, 3), (dtype.type_size, k // 32 * dtype.type_size)
    )
    np.testing.assert_array_equal(h.array(h.run("duplicate", rows))[0, 0], dense[5:8])
    picked = h.run("rows", w, h.tensor([7, 0], 2, dtype=DType.I32))
    np.testing.assert_array_equal(h.array(picked)[0, 0], dense[[7, 0]])


def test_held_expert_weights_in_mulmat_id(h: Any) -> None:
    k, rows, experts, tokens = 64, 6, 4, 3
    values = RNG.standard_normal((experts, rows, k)).astype(np.float32)
    data = gguf.quants.quantize(values.reshape(-1, k), gguf.GGMLQuantizationType.Q4_0).tobytes()
    w = _upload(h, data, DType.Q4_0, k, rows, experts)
    b = RNG.standard_normal((tokens, 1, k)).astype(np.float32)
    ids = np.array([[3, 1], [0, 0], [2, 3]], np.int32)  # (T, n_used)
    out = h.array(
        h.run("mulmat_id", w, h.tensor(b, k, 1, tokens), h.tensor(ids, 2, tokens, dtype=DType.I32))
    )[0]
    dense = _gguf_values(data, DType.Q4_0).reshape(experts, rows, k)
    want = np.stack([[dense[e] @ b[t, 0] for e in ids[t]] for t in range(tokens)])
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-4)


def test_other_quantised_types_keep_their_bytes_and_multiply_in_f16(
    h: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    synth = pytest.importorskip("mlplug_conformance.synth")
    monkeypatch.setattr(quant, "_CHUNK_BLOCKS", 3)  # dequantised in pieces on the host
    data = synth.random_weight(RNG, (4, 256), DType.Q4_K).tobytes()
    w = _upload(h, data, DType.Q4_K, 256, 4)
    exact = _gguf_values(data, DType.Q4_K).reshape(4, 256)
    held = DenseWeight.dequantize(DType.Q4_K, (256, 4, 1, 1), memoryview(data))
    assert held.data.dtype == mx.float16
    x = RNG.standard_normal((2, 256)).astype(np.float32)
    out = h.array(h.run("mulmat", w, h.tensor(x, 256, 2)))[0, 0]
    f16 = exact.astype(np.float16).astype(np.float64)
    np.testing.assert_allclose(out, x @ f16.T, rtol=1e-5, atol=1e-4)
    # Everything else is exact: the GGUF bytes, copies and gathers.
    assert h.bytes(w) == data
    assert h.bytes(h.run("contiguous", w)) == data
    picked = h.run("rows", w, h.tensor([3, 1], 2, dtype=DType.I32))
    np.testing.assert_array_equal(h.array(picked)[0, 0], exact[[3, 1]])


def test_weight_nbytes_are_the_bytes_held(metal: Any) -> None:
    ne = (4096, 11008, 1, 1)
    n = 4096 * 11008
    assert metal.weight_nbytes(DType.Q4_0, ne) == n // 2 + n // 32 * 4  # codes + F16 scale, bias
    assert metal.weight_nbytes(DType.Q8_0, ne) == n + n // 32 * 4
    assert metal.weight_nbytes(DType.Q4_K, ne) == n // 256 * 144 + 2 * n  # GGUF + F16 copy
    assert metal.weight_nbytes(DType.F16, ne) == 2 * n
    assert metal.weight_nbytes(DType.F32, ne) == 4 * n


@pytest.fixture
def metal_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLPLUG_METAL_DEVICE", "cpu")
    monkeypatch.delenv("MLPLUG_METAL_MEMORY_LIMIT", raising=False)


@pytest.mark.parametrize("dtype", [DType.Q4_0, DType.Q8_0, DType.Q4_K])
def test_model_weights_stay_quantised_end_to_end(
    tmp_path: Path, metal_env: None, dtype: DType
) -> None:
    synth = pytest.importorskip("mlplug_conformance.synth")
    n_embd = 256 if dtype == DType.Q4_K else 64
    path = synth.write_llama_gguf(
        tmp_path / "m.gguf",
        n_layers=2,
        n_embd=n_embd,
        n_head=4,
        n_head_kv=2,
        n_ff=2 * n_embd,
        n_vocab=32,
        weight_type=dtype,
        seed=3,
    )
    params = mlplug.BackendParams(num_gpu_layers=3)
    with (
        mlplug.new_backend(str(path), params, backend="metal") as be,
        mlplug.new_backend(str(path), params, backend="cpu") as ref,
    ):
        be.load()
        ref.load()
        mem = be.backend_memory()
        metal = mem.gpus[0]
        assert metal.name == "Metal"
        assert metal.weights[0].status == mlplug.AllocationStatus.ALLOCATED
        reader = gguf.GGUFReader(path)
        held = 0
        for t in reader.tensors:
            if t.name.startswith("blk.0."):
                ne = (*(int(x) for x in t.shape), 1, 1, 1)[:4]
                kind = DType.from_ggml(int(t.tensor_type))
                held += -(-be.devices[1].weight_nbytes(kind, ne) // 32) * 32  # type: ignore[attr-defined]
        assert metal.weights[0].size == held
        # Values read back bit-exact (Q8_0/Q4_0 from the MLX form, Q4_K from its GGUF bytes).
        w = be.get("blk.1.attn_q.weight")
        assert w is not None and np.array_equal(w.floats(), ref.get("blk.1.attn_q.weight").floats())
        results = []
        for backend in (be, ref):
            ctx = backend.new_context()
            x_np = np.linspace(-1, 1, n_embd * 3, dtype=np.float32)
            x = ctx.input().from_float_slice(x_np, n_embd, 3)
            y = backend.get("blk.1.ffn_up.weight").mulmat(ctx, x)
            ctx.forward(y).compute(y)
            results.append(y.numpy())
            ctx.close()
        # Q4_K multiplies with its F16 copy: within F16 rounding of the weights.
        tol = 2e-3 if dtype == DType.Q4_K else 1e-5
        np.testing.assert_allclose(results[0], results[1], rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [DType.Q4_0, DType.Q8_0])
def test_memory_report_matches_what_mlx_holds(
    tmp_path: Path, metal_env: None, dtype: DType
) -> None:
    synth = pytest.importorskip("mlplug_conformance.synth")
    path = synth.write_llama_gguf(
        tmp_path / "m.gguf",
        n_layers=2,
        n_embd=256,
        n_head=4,
        n_head_kv=2,
        n_ff=512,
        n_vocab=64,
        weight_type=dtype,
        seed=4,
    )
    gc.collect()  # nothing left over from earlier tests is freed while measuring
    before = mx.get_active_memory()
    with mlplug.new_backend(
        str(path), mlplug.BackendParams(num_gpu_layers=3), backend="metal"
    ) as be:
        be.load()
        accounted = sum(m.size for m in be.backend_memory().gpus[0].weights)
        held = mx.get_active_memory() - before
        # The weights stay quantised: what MLX holds is what the report says (and far below F32).
        assert held == pytest.approx(accounted, rel=0.05)
        assert accounted < path.stat().st_size * 1.2
