"""GGUF models on devices: placement, books, allocation, load (SEMANTICS §6, §7)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader
from gguf.quants import dequantize

import mlplug
from mlplug import (
    AllocationStatus,
    BackendParams,
    DType,
    ErrNoMem,
    GGUFError,
    LoadCancelledError,
    Memory,
    NotComputedError,
)
from mlplug.engine import EngineFactory
from mlplug_conformance import synth
from toy_device import toy_plugin

A, F, U = AllocationStatus.ALLOCATED, AllocationStatus.FAILED, AllocationStatus.UNALLOCATED


def backend(path: Path | None, n_gpus: int = 0, gpu_cap: int = 1 << 30, **params: object):
    plugin, devices = toy_plugin(n_gpus, gpu_cap=gpu_cap)
    return EngineFactory(plugin)(
        None if path is None else str(path), BackendParams(**params)
    ), devices


def layers_of(be: mlplug.Backend) -> list[str]:
    """Device name of every layer, from where ``blk.N.attn_q.weight`` / ``output.weight`` live."""
    names = [d.name for d in be.devices]
    out = []
    for i in range(be.blocks):
        out.append(names[be.get(f"blk.{i}.attn_q.weight")._storage.device])
    out.append(names[be.get("output.weight")._storage.device])
    return out


@pytest.mark.parametrize(
    "dtype", [DType.F32, DType.F16, DType.BF16, DType.Q8_0, DType.Q4_0, DType.Q4_K, DType.Q6_K]
)
def test_weights_load_with_gguf_values(tmp_path: Path, dtype: DType) -> None:
    path = synth.write_llama_gguf(
        tmp_path / "m.gguf",
        n_layers=2,
        n_embd=256,
        n_head=4,
        n_head_kv=2,
        n_ff=512,
        n_vocab=64,
        weight_type=dtype,
        seed=3,
    )
    be, _ = backend(path)
    be.load()
    reader = GGUFReader(path)
    for t in reader.tensors:
        expected = dequantize(t.data, t.tensor_type).astype(np.float32).reshape(-1)
        w = be.get(t.name)
        assert w.dtype() is (DType.F32 if "norm" in t.name else dtype)
        assert np.array_equal(w.floats(), expected), t.name
    be.close()


def placement_model(tmp_path: Path, blocks: int = 32) -> Path:
    return synth.write_llama_gguf(
        tmp_path / "p.gguf",
        n_layers=blocks,
        n_embd=32,
        n_head=2,
        n_head_kv=1,
        n_ff=32,
        n_vocab=16,
        seed=0,
    )


@pytest.mark.parametrize(
    ("n", "main", "expected"),
    [
        (0, 0, ["CPU"] * 33),
        (10, 0, ["CPU"] * 22 + ["TOY0"] * 5 + ["TOY1"] * 5 + ["CPU"]),
        (32, 0, ["TOY0"] * 16 + ["TOY1"] * 16 + ["CPU"]),
        (33, 0, ["TOY0"] * 17 + ["TOY1"] * 15 + ["TOY0"]),
        (33, 1, ["TOY0"] * 17 + ["TOY1"] * 15 + ["TOY1"]),
    ],
)
def test_worked_placement_table(tmp_path: Path, n: int, main: int, expected: list[str]) -> None:
    be, _ = backend(
        placement_model(tmp_path), 2, num_gpu_layers=n, main_gpu=main, tensor_split=(1, 1)
    )
    assert layers_of(be) == expected
    assert be.get("token_embd.weight")._storage.device == 0  # input weights always CPU
    be.close()


def test_tensor_split_3_1(tmp_path: Path) -> None:
    be, _ = backend(placement_model(tmp_path), 2, num_gpu_layers=20, tensor_split=(3, 1))
    assert layers_of(be) == ["CPU"] * 12 + ["TOY0"] * 15 + ["TOY1"] * 5 + ["CPU"]
    be.close()


def test_invalid_params(tmp_path: Path) -> None:
    for params in ({"main_gpu": 2}, {"tensor_split": (1, 1, 1)}):
        with pytest.raises(ValueError):
            backend(None, 2, **params)
    with pytest.raises(ValueError):
        backend(None, 0, main_gpu=1)
    with pytest.raises(ValueError):
        BackendParams(tensor_split=(1.0, float("nan")))


def test_memory_report_sizes_and_statuses(tmp_path: Path) -> None:
    path = synth.write_llama_gguf(
        tmp_path / "m.gguf",
        n_layers=2,
        n_embd=64,
        n_head=2,
        n_head_kv=1,
        n_ff=96,
        n_vocab=10,
        seed=0,
        tied_output=True,
    )
    be, _ = backend(path, 1, num_gpu_layers=3)
    mem = be.backend_memory()
    emb = 64 * 10 * 4
    assert mem.input_weights == Memory(emb, A)
    per_layer = 2 * 256 + 4 * (64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 96)
    assert mem.gpus[0].weights == (
        Memory(per_layer, A),
        Memory(per_layer, A),
        Memory(256 + emb, A),
    )  # output_norm + tied output.weight
    assert mem.cpu.weights == (Memory(), Memory(), Memory())
    assert mem.gpus[0].name == "TOY0" and mem.gpus[0].id == "id-TOY0"
    assert be.get("output.weight").name == "output.weight"
    be.close()


def test_out_of_memory_for_weights_frees_everything(tmp_path: Path) -> None:
    path = placement_model(tmp_path, blocks=4)
    # 24832 bytes per layer; GPU0 gets layer 0, GPU1 layers 1-3 (too many for its cap).
    plugin, devices = toy_plugin(2, gpu_cap=60_000)
    with pytest.raises(ErrNoMem) as info:
        EngineFactory(plugin)(str(path), BackendParams(num_gpu_layers=4, tensor_split=(1, 3)))
    mem = info.value.memory
    assert all(m.status is A for m in mem.gpus[0].weights if m.size)
    assert any(m.status is F for m in mem.gpus[1].weights)
    assert mem.input_weights.status is U and mem.input_weights.size > 0
    assert all(d.used == 0 for d in devices)  # nothing left allocated


def test_load_progress_cancel_and_readability(tmp_path: Path) -> None:
    path = placement_model(tmp_path, blocks=3)
    be, _ = backend(path)
    w = be.get("blk.1.attn_q.weight")
    with pytest.raises(NotComputedError):
        w.floats()
    ctx = be.new_context()
    x = ctx.input().from_float_slice(np.ones(32, np.float32), 32)
    y = w.mulmat(ctx, x)
    ctx.forward(y)
    ctx.reserve()  # works before load
    with pytest.raises(NotComputedError):
        ctx.compute(y)
    event = threading.Event()
    event.set()
    with pytest.raises(LoadCancelledError):
        be.load(cancel=event)
    with pytest.raises(LoadCancelledError):
        be.load(cancel=lambda: True)

    def fail(fraction: float) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        be.load(progress=fail)
    seen: list[float] = []
    be.load(progress=seen.append, cancel=threading.Event())
    assert seen[-1] == 1.0 and seen == sorted(seen) and all(0 <= f <= 1 for f in seen)
    ctx.compute(y)
    reader = GGUFReader(path)
    wq = next(t for t in reader.tensors if t.name == "blk.1.attn_q.weight").data
    assert np.allclose(y.floats(), wq.sum(axis=1), rtol=1e-5)
    be.close()


def test_per_layer_rope_freqs_and_get(tmp_path: Path) -> None:
    freqs = np.linspace(1, 2, 8, dtype=np.float32)
    path = synth.write_llama_gguf(
        tmp_path / "r.gguf",
        n_layers=2,
        n_embd=32,
        n_head=2,
        n_head_kv=2,
        n_ff=32,
        n_vocab=8,
        extra_tensors=[("rope_freqs.weight", freqs, DType.F32)],
    )
    be, _ = backend(path, 1, num_gpu_layers=1)
    be.load()
    assert be.get("rope_freqs.weight") is None
    copies = [be.get(f"blk.{i}.rope_freqs.weight") for i in range(2)]
    assert [c._storage.device for c in copies] == [0, 1]
    assert all(np.array_equal(c.floats(), freqs) for c in copies)
    assert be.new_context().max_graph_nodes() == 8192
    be.close()


def test_malformed_files_raise_gguf_error_and_leak_nothing(tmp_path: Path) -> None:
    good = placement_model(tmp_path, blocks=2)
    size = good.stat().st_size
    bad = tmp_path / "bad.gguf"
    for cut in (3, 64, size - 10):
        bad.write_bytes(good.read_bytes()[:cut])
        plugin, devices = toy_plugin(1)
        with pytest.raises(GGUFError, match=r"bad\.gguf"):
            EngineFactory(plugin)(str(bad), BackendParams(num_gpu_layers=1))
        assert all(d.used == 0 for d in devices)
    bad.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(GGUFError):
        backend(bad)
    with pytest.raises(FileNotFoundError):
        backend(tmp_path / "missing.gguf")


@pytest.mark.parametrize("main", [0, 1])
def test_inputs_on_two_gpus_gather_on_main_gpu(tmp_path: Path, main: int) -> None:
    path = placement_model(tmp_path, blocks=4)
    plugin, devices = toy_plugin(2)
    be = EngineFactory(plugin)(
        str(path), BackendParams(num_gpu_layers=4, main_gpu=main, tensor_split=(1, 1))
    )
    ctx = be.new_context()
    a = ctx.layer(0).from_float_slice([1, 2, 3], 3)  # layers 0-1 -> TOY0
    b = ctx.layer(2).from_float_slice([10, 20, 30], 3)  # layers 2-3 -> TOY1
    assert (a._storage.device, b._storage.device) == (1, 2)
    y = a.add(ctx, b)
    ctx.forward(y).compute(y)
    assert y.floats().tolist() == [11, 22, 33]
    assert devices[1 + main].executed == ["add"]
    assert devices[2 - main].executed == []
    be.close()


@pytest.mark.parametrize("direct", [(True, True), (True, False), (False, True)])
def test_gpu_to_gpu_transfers_copy_directly_when_both_devices_offer_it(
    tmp_path: Path, direct: tuple[bool, bool]
) -> None:
    path = placement_model(tmp_path, blocks=4)
    plugin, devices = toy_plugin(2, gpu_direct=direct)
    be = EngineFactory(plugin)(
        str(path), BackendParams(num_gpu_layers=4, main_gpu=1, tensor_split=(1, 1))
    )
    ctx = be.new_context()
    a = ctx.layer(0).from_float_slice([1, 2, 3], 3)  # TOY0
    b = ctx.layer(2).from_float_slice([10, 20, 30], 3)  # TOY1
    y = a.add(ctx, b)  # runs on TOY1 (main_gpu): a is transferred from TOY0
    ctx.forward(y).compute(y)
    assert y.floats().tolist() == [11, 22, 33]
    copies = getattr(devices[2], "direct_copies", None)
    if all(direct):
        assert copies == [12]  # the 12 bytes of a, device to device
    else:
        assert not copies  # one side cannot: through host bytes
    be.close()


def _swap_block_scales(packed: np.ndarray, dtype: DType) -> np.ndarray:
    """Make a little-endian quantised tensor's bytes big-endian (swap each block's fp16 d)."""
    blocks = packed.reshape(-1, dtype.type_size).copy()
    blocks[:, :2] = blocks[:, 1::-1]
    return blocks.reshape(packed.shape)


@pytest.mark.parametrize("dtype", [DType.F32, DType.F16, DType.Q8_0, DType.Q4_0])
def test_big_endian_files_load_the_same_values(tmp_path: Path, dtype: DType) -> None:
    rng = np.random.default_rng(1)
    values = rng.standard_normal((4, 64)).astype(np.float32)
    little = synth.encode(values, dtype)
    stored = _swap_block_scales(little, dtype) if dtype.is_block else little
    le = synth.write_gguf(tmp_path / "le.gguf", [("w", little, dtype)])
    be_path = synth.write_gguf(tmp_path / "be.gguf", [("w", stored, dtype)], big_endian=True)
    results = []
    for path in (le, be_path):
        be, _ = backend(path)
        be.load()
        results.append(be.get("w").floats())
        be.close()
    assert np.array_equal(results[0], results[1])
    assert np.allclose(results[0], values.reshape(-1), atol=0.3)


def test_big_endian_k_quants_are_refused(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = synth.random_weight(rng, (2, 256), DType.Q4_K)
    path = synth.write_gguf(tmp_path / "bk.gguf", [("w", data, DType.Q4_K)], big_endian=True)
    with pytest.raises(GGUFError, match=r"'w': big-endian Q4_K"):
        backend(path)
