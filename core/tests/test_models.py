"""``mlplug.models``: Gemma 3 and Qwen 3 against a float64 numpy forward pass, model selection,
and the checks that refuse a file before anything is allocated.

The random-weight files are written with ``mlplug_conformance.synth``; the reference reads them
back with ``gguf`` (dequantising with ``gguf.quants``) and computes every layer in float64 with
its own RMSNorm, neox RoPE, windowed causal attention, GELU(tanh)/SiLU and sandwich norms. The
quantised variants use the tensor types of the real Q4_K_M files (Gemma 3 270M: Q8_0 embeddings,
Q5_0, Q4_K, Q6_K and Q8_0 matrices, F32 norms).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader, GGUFValueType
from gguf import quants as gq

import mlplug
from mlplug.dtype import DType
from mlplug.errors import ModelFileError, UnsupportedModelError

synth = pytest.importorskip("mlplug_conformance.synth")
pytest.importorskip("mlplug_cpu")

from mlplug.models import check_file, from_backend  # noqa: E402
from mlplug.models.gemma3 import Gemma3  # noqa: E402
from mlplug.models.qwen3 import Qwen3  # noqa: E402
from mlplug.nn import Batch, LayerCaches  # noqa: E402

# Head size 64 != n_embd / n_head = 32 (attention.key_length is what counts); n_head * 64 and
# n_ff are multiples of 256 for the K-quants.
N_EMBD, N_HEAD, N_HEAD_KV, HEAD_DIM, N_FF, N_VOCAB = 128, 4, 2, 64, 256, 67
GEMMA_LAYERS = 7  # local 0-4, global 5, local 6
QWEN_LAYERS = 2
WINDOW = 4  # attention.sliding_window: a local token sees itself and the 3 before
SEQ_A = [5, 17, 3, 42, 8, 33, 21, 60, 11, 2]
SEQ_B = [9, 1, 50, 27, 12, 40, 7]

F32_TYPES = dict.fromkeys(("embd", "q", "k", "v", "o", "gate", "up", "down"), DType.F32)
Q4_K_M_TYPES = {
    "embd": DType.Q8_0,
    "q": DType.Q5_0,
    "k": DType.Q5_0,
    "v": DType.Q8_0,
    "o": DType.Q4_K,
    "gate": DType.Q5_0,
    "up": DType.Q5_0,
    "down": DType.Q6_K,
}


# -- files ----------------------------------------------------------------------------------------


def write_model(
    path: Path, arch: str, types: dict[str, DType], *, extra_metadata=None, drop=(), seed=3
) -> Path:
    n_layers = GEMMA_LAYERS if arch == "gemma3" else QWEN_LAYERS
    rng = np.random.default_rng(seed)

    def matrix(name: str, kind: str, n_out: int, n_in: int) -> synth.SynthTensor:
        scale = 1.0 if kind == "embd" else n_in**-0.5
        return (name, synth.random_weight(rng, (n_out, n_in), types[kind], scale), types[kind])

    def norm(name: str, n: int) -> synth.SynthTensor:
        return (name, (1.0 + 0.2 * rng.standard_normal(n)).astype(np.float32), DType.F32)

    q, kv = N_HEAD * HEAD_DIM, N_HEAD_KV * HEAD_DIM
    tensors = [matrix("token_embd.weight", "embd", N_VOCAB, N_EMBD)]
    for i in range(n_layers):
        p = f"blk.{i}."
        tensors += [
            norm(p + "attn_norm.weight", N_EMBD),
            matrix(p + "attn_q.weight", "q", q, N_EMBD),
            matrix(p + "attn_k.weight", "k", kv, N_EMBD),
            matrix(p + "attn_v.weight", "v", kv, N_EMBD),
            norm(p + "attn_q_norm.weight", HEAD_DIM),
            norm(p + "attn_k_norm.weight", HEAD_DIM),
            matrix(p + "attn_output.weight", "o", N_EMBD, q),
            norm(p + "ffn_norm.weight", N_EMBD),
            matrix(p + "ffn_gate.weight", "gate", N_FF, N_EMBD),
            matrix(p + "ffn_up.weight", "up", N_FF, N_EMBD),
            matrix(p + "ffn_down.weight", "down", N_EMBD, N_FF),
        ]
        if arch == "gemma3":
            tensors += [
                norm(p + "post_attention_norm.weight", N_EMBD),
                norm(p + "post_ffw_norm.weight", N_EMBD),
            ]
    tensors.append(norm("output_norm.weight", N_EMBD))
    if arch == "qwen3":  # Gemma ties the output to the embeddings
        tensors.append(matrix("output.weight", "embd", N_VOCAB, N_EMBD))
    tensors = [t for t in tensors if t[0] not in drop]
    u32, f32 = GGUFValueType.UINT32, GGUFValueType.FLOAT32
    meta = {
        f"{arch}.block_count": (u32, n_layers),
        f"{arch}.context_length": (u32, 4096),
        f"{arch}.embedding_length": (u32, N_EMBD),
        f"{arch}.feed_forward_length": (u32, N_FF),
        f"{arch}.attention.head_count": (u32, N_HEAD),
        f"{arch}.attention.head_count_kv": (u32, N_HEAD_KV),
        f"{arch}.attention.key_length": (u32, HEAD_DIM),
        f"{arch}.attention.value_length": (u32, HEAD_DIM),
        f"{arch}.attention.layer_norm_rms_epsilon": (f32, 1e-6),
        f"{arch}.rope.freq_base": (f32, 1e6),
    }
    if arch == "gemma3":
        meta[f"{arch}.attention.sliding_window"] = (u32, WINDOW)
    meta.update(extra_metadata or {})
    meta = {k: v for k, v in meta.items() if k not in drop}
    return synth.write_gguf(path, tensors, arch=arch, metadata=meta)


# -- the reference --------------------------------------------------------------------------------


def _weights(path: Path) -> dict[str, np.ndarray]:
    out = {}
    for t in GGUFReader(path).tensors:
        values = gq.dequantize(t.data, t.tensor_type)
        shape = tuple(int(n) for n in reversed(t.shape.tolist()))
        out[t.name] = np.asarray(values, dtype=np.float64).reshape(shape)
    out.setdefault("output.weight", out["token_embd.weight"])
    return out


def _rms(x: np.ndarray, w: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def _rope_neox(x: np.ndarray, pos: np.ndarray, base: float, freq_scale: float) -> np.ndarray:
    """Rotate (T, H, D) by position, pairs (i, i + D/2)."""
    d = x.shape[-1]
    half = d // 2
    theta = pos[:, None] * freq_scale * base ** (-2.0 * np.arange(half) / d)  # (T, D/2)
    c, s = np.cos(theta)[:, None, :], np.sin(theta)[:, None, :]
    a, b = x[..., :half], x[..., half:]
    return np.concatenate([a * c - b * s, a * s + b * c], axis=-1)


def _gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def reference_logits(
    w: dict[str, np.ndarray], tokens: list[int], arch: str, global_freq_scale: float = 1.0
) -> np.ndarray:
    """Logits (T, n_vocab) of one sequence, in float64."""
    gemma = arch == "gemma3"
    n_layers = GEMMA_LAYERS if gemma else QWEN_LAYERS
    t = len(tokens)
    pos = np.arange(t, dtype=np.float64)
    x = w["token_embd.weight"][tokens] * (math.sqrt(N_EMBD) if gemma else 1.0)
    i, j = np.arange(t)[:, None], np.arange(t)[None, :]
    causal = np.where(j <= i, 0.0, -np.inf)
    windowed = np.where((j <= i) & (i - j < WINDOW), 0.0, -np.inf)
    for il in range(n_layers):
        p = f"blk.{il}."
        local = gemma and il % 6 < 5
        base, fscale = (10000.0, 1.0) if local else (1e6, global_freq_scale)
        mask = windowed if local else causal
        h = _rms(x, w[p + "attn_norm.weight"])
        q = (h @ w[p + "attn_q.weight"].T).reshape(t, N_HEAD, HEAD_DIM)
        k = (h @ w[p + "attn_k.weight"].T).reshape(t, N_HEAD_KV, HEAD_DIM)
        v = (h @ w[p + "attn_v.weight"].T).reshape(t, N_HEAD_KV, HEAD_DIM)
        q = _rope_neox(_rms(q, w[p + "attn_q_norm.weight"]), pos, base, fscale)
        k = _rope_neox(_rms(k, w[p + "attn_k_norm.weight"]), pos, base, fscale)
        o = np.empty_like(q)
        for hd in range(N_HEAD):
            kv = hd // (N_HEAD // N_HEAD_KV)
            s = q[:, hd] @ k[:, kv].T / math.sqrt(HEAD_DIM) + mask
            e = np.exp(s - s.max(axis=-1, keepdims=True))
            o[:, hd] = (e / e.sum(axis=-1, keepdims=True)) @ v[:, kv]
        a = o.reshape(t, N_HEAD * HEAD_DIM) @ w[p + "attn_output.weight"].T
        if gemma:
            a = _rms(a, w[p + "post_attention_norm.weight"])
        x = x + a
        h = _rms(x, w[p + "ffn_norm.weight"])
        g = h @ w[p + "ffn_gate.weight"].T
        g = _gelu_tanh(g) if gemma else g / (1.0 + np.exp(-g))
        f = (g * (h @ w[p + "ffn_up.weight"].T)) @ w[p + "ffn_down.weight"].T
        if gemma:
            f = _rms(f, w[p + "post_ffw_norm.weight"])
        x = x + f
    return _rms(x, w["output_norm.weight"]) @ w["output.weight"].T


# -- the check ------------------------------------------------------------------------------------


def check_model(path: Path, arch: str, rtol: float, global_freq_scale: float = 1.0, **params):
    """Prompt batch of two sequences, then decode both; then one sequence token by token."""
    w = _weights(path)
    ref_a = reference_logits(w, SEQ_A, arch, global_freq_scale)
    ref_b = reference_logits(w, SEQ_B, arch, global_freq_scale)
    scale = max(float(np.abs(ref_a).max()), float(np.abs(ref_b).max()))
    worst = 0.0

    def close(got: np.ndarray, want: np.ndarray, what: str) -> None:
        nonlocal worst
        err = float(np.abs(got - want).max()) / scale
        worst = max(worst, err)
        assert err <= rtol, f"{what}: max error {err:.3g} of the logit scale > {rtol}"

    backend = mlplug.new_backend(str(path), mlplug.BackendParams(**params), backend="cpu")
    try:
        backend.load()
        model = from_backend(backend)
        assert type(model) is {"gemma3": Gemma3, "qwen3": Qwen3}[arch]
        assert model.n_vocab == N_VOCAB
        na, nb = len(SEQ_A) - 1, len(SEQ_B) - 1
        cache = model.new_cache(capacity=16, max_sequences=2, max_batch=na + nb, dtype=DType.F32)
        try:
            assert isinstance(cache, LayerCaches) == (arch == "gemma3")
            batch = Batch(
                tokens=SEQ_A[:na] + SEQ_B[:nb],
                positions=list(range(na)) + list(range(nb)),
                sequences=[0] * na + [1] * nb,
                outputs=list(range(na + nb)),
            )
            logits = model.forward(cache, batch)
            close(logits[:na], ref_a[:na], "prompt batch, sequence 0")
            close(logits[na:], ref_b[:nb], "prompt batch, sequence 1")
            step = model.forward(cache, Batch([SEQ_A[na], SEQ_B[nb]], [na, nb], [0, 1], [1, 0]))
            close(step[0], ref_b[nb], "decode step, sequence 1")
            close(step[1], ref_a[na], "decode step, sequence 0")
        finally:
            cache.close()
        # Token by token past the window: the local layers' cache drops old cells.
        cache = model.new_cache(capacity=len(SEQ_A), max_batch=3, dtype=DType.F32)
        try:
            first = model.forward(cache, Batch.single(SEQ_A[:3]))
            close(first[0], ref_a[2], "prompt batch, last logits only")
            for i in range(3, len(SEQ_A)):
                out = model.forward(cache, Batch.single([SEQ_A[i]], start=i))
                close(out[0], ref_a[i], f"decode step {i}")
        finally:
            cache.close()
    finally:
        backend.close()
    return worst


F32_RTOL = 1e-5
"""F32 weights and cache: only F32 rounding separates model and reference (measured ≤ 5e-7 of
the logit scale)."""

QUANT_RTOL = 3e-2
"""Quantised weights: the reference multiplies the dequantised weights in float64; the cpu
plugin's native products quantise the activations (Q8_0/Q8_K) as ggml does, which moves these
logits by about 1% of their scale (as in test_llama's QUANT_RTOL)."""


@pytest.mark.parametrize("arch", ["gemma3", "qwen3"])
@pytest.mark.parametrize("flash", [False, True], ids=["no_fa", "fa"])
def test_f32_model_matches_reference(tmp_path: Path, arch: str, flash: bool) -> None:
    path = write_model(tmp_path / "m.gguf", arch, F32_TYPES)
    check_model(path, arch, F32_RTOL, flash_attention=flash)


@pytest.mark.parametrize("arch", ["gemma3", "qwen3"])
def test_q4_k_m_tensor_types_match_reference(tmp_path: Path, arch: str) -> None:
    path = write_model(tmp_path / "m.gguf", arch, Q4_K_M_TYPES)
    err = check_model(path, arch, QUANT_RTOL)
    assert err > 0


def test_gemma3_global_layers_use_the_rope_scaling(tmp_path: Path) -> None:
    meta = {
        "gemma3.rope.scaling.type": (GGUFValueType.STRING, "linear"),
        "gemma3.rope.scaling.factor": (GGUFValueType.FLOAT32, 8.0),
    }
    path = write_model(tmp_path / "m.gguf", "gemma3", F32_TYPES, extra_metadata=meta)
    check_model(path, "gemma3", F32_RTOL, global_freq_scale=1 / 8)


def test_gemma3_window_matters(tmp_path: Path) -> None:
    # The reference without the window disagrees, so the windowed test above is not vacuous.
    path = write_model(tmp_path / "m.gguf", "gemma3", F32_TYPES)
    w = _weights(path)
    global WINDOW
    saved, WINDOW = WINDOW, 10**6
    try:
        unwindowed = reference_logits(w, SEQ_A, "gemma3")
    finally:
        WINDOW = saved
    windowed = reference_logits(w, SEQ_A, "gemma3")
    assert np.abs(windowed[:WINDOW] - unwindowed[:WINDOW]).max() == 0
    assert np.abs(windowed[WINDOW:] - unwindowed[WINDOW:]).max() > 1e-3


# -- selection and refusals -----------------------------------------------------------------------


def test_check_file_reads_the_hyperparameters(tmp_path: Path) -> None:
    cfg = check_file(write_model(tmp_path / "m.gguf", "gemma3", F32_TYPES))
    assert (cfg.architecture, cfg.n_layer, cfg.head_dim_k, cfg.sliding_window) == (
        "gemma3",
        GEMMA_LAYERS,
        HEAD_DIM,
        WINDOW,
    )


def test_unsupported_architecture_lists_the_supported_ones(tmp_path: Path) -> None:
    path = synth.write_llama_gguf(
        tmp_path / "m.gguf", n_layers=1, n_embd=32, n_head=2, n_head_kv=2, n_ff=32, n_vocab=8,
        arch="gpt2",
    )  # fmt: skip
    with pytest.raises(UnsupportedModelError) as info:
        check_file(path)
    message = str(info.value)
    assert str(path) in message and "'gpt2'" in message
    for arch in ("llama", "qwen2", "qwen3", "gemma3"):
        assert arch in message
    backend = mlplug.new_backend(str(path), mlplug.BackendParams(), backend="cpu")
    try:
        with pytest.raises(UnsupportedModelError, match="gpt2"):
            from_backend(backend)
    finally:
        backend.close()


@pytest.mark.parametrize(
    ("drop", "named"),
    [
        (("blk.3.post_ffw_norm.weight",), "'blk.3.post_ffw_norm.weight'"),
        (("blk.0.attn_q_norm.weight",), "'blk.0.attn_q_norm.weight'"),
        (("gemma3.attention.sliding_window",), "gemma3.attention.sliding_window"),
        (("gemma3.attention.head_count",), "gemma3.attention.head_count"),
    ],
)
def test_missing_tensor_or_key_is_named(tmp_path: Path, drop: tuple[str, ...], named: str) -> None:
    path = write_model(tmp_path / "m.gguf", "gemma3", F32_TYPES, drop=drop)
    with pytest.raises(ModelFileError) as info:
        check_file(path)
    assert named in str(info.value) and str(path) in str(info.value)


def test_wrong_shape_is_named(tmp_path: Path) -> None:
    # key_length says 64 per head; a file whose q norm has 32 values is refused by name.
    path = write_model(tmp_path / "m.gguf", "qwen3", F32_TYPES)
    bad = write_model(
        tmp_path / "bad.gguf",
        "qwen3",
        F32_TYPES,
        extra_metadata={"qwen3.attention.key_length": (GGUFValueType.UINT32, 32)},
    )
    check_file(path)
    with pytest.raises(ModelFileError, match=r"'blk.0.attn_q.weight' has shape \[128, 256\]"):
        check_file(bad)
    backend = mlplug.new_backend(str(bad), mlplug.BackendParams(), backend="cpu")
    try:
        with pytest.raises(ModelFileError, match=str(bad)):
            from_backend(backend)
    finally:
        backend.close()


def test_tied_output_shares_the_embedding_storage_on_the_cpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SEMANTICS §6.5 rule 1: counted once (in input_weights), one storage; on a GPU a copy.
    path = write_model(tmp_path / "m.gguf", "gemma3", Q4_K_M_TYPES)
    embd = DType.Q8_0.nbytes(N_EMBD * N_VOCAB)
    backend = mlplug.new_backend(str(path), mlplug.BackendParams(), backend="cpu")
    try:
        mem = backend.backend_memory()
        assert embd <= mem.input_weights.size < embd + 64
        assert mem.cpu.weights[GEMMA_LAYERS].size < N_EMBD * 4 + 64  # output_norm only
        out, emb = backend.get("output.weight"), backend.get("token_embd.weight")
        assert out is not None and emb is not None
        assert out._storage is not None and emb._storage is not None
        assert (out._storage.buffer, out._storage.offset) == (
            emb._storage.buffer,
            emb._storage.offset,
        )
        backend.load()
        assert np.array_equal(out.floats(), emb.floats())
    finally:
        backend.close()
    monkeypatch.setenv("MLPLUG_CPU_SIMULATED_GPUS", "1:64MiB")
    backend = mlplug.new_backend(
        str(path), mlplug.BackendParams(num_gpu_layers=GEMMA_LAYERS + 1), backend="cpu"
    )
    try:
        mem = backend.backend_memory()
        assert mem.gpus[0].weights[GEMMA_LAYERS].size >= embd  # the copy lives on the GPU
        assert embd <= mem.input_weights.size < embd + 64
    finally:
        backend.close()
