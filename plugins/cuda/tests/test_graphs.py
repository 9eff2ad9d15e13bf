"""Replay of repeated batches (CUDA graphs; under emulation the recorded node list)."""

from __future__ import annotations

import numpy as np
import pytest

from mlplug.device import DType, Node, TensorRef, contiguous_strides
from mlplug_cuda.device import CudaBuffer, CudaDevice
from mlplug_cuda.xp import emulation


def _ref(buffer: CudaBuffer, ne: tuple[int, int, int, int], dtype: DType = DType.F32) -> TensorRef:
    return TensorRef(buffer, 0, ne, contiguous_strides(ne, dtype), dtype)


def _graph(dev: CudaDevice) -> tuple[list[Node], TensorRef, TensorRef, TensorRef]:
    """``y = rms_norm(x) @ w`` over buffers of ``dev`` (x: 8 values, w: 4 x 8)."""
    x = _ref(dev.alloc(32), (8, 1, 1, 1))
    w = _ref(dev.alloc(128), (8, 4, 1, 1))
    n = _ref(dev.alloc(32), (8, 1, 1, 1))
    y = _ref(dev.alloc(16), (4, 1, 1, 1))
    nodes = [
        Node("rms_norm", n, (x, None), {"eps": 1e-5}),
        Node("mulmat", y, (w, n), {}),
    ]
    return nodes, x, w, y


def _expected(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    n = x / np.sqrt((x.astype(np.float64) ** 2).mean() + 1e-5)
    return w.reshape(4, 8) @ n


def _read(ref: TensorRef) -> np.ndarray:
    assert ref.buffer is not None
    return np.frombuffer(ref.buffer.read(0, ref.nbytes), np.float32)


def test_a_repeated_batch_is_captured_once_then_replayed_with_new_data() -> None:
    dev = CudaDevice(emulation(), 0, graphs=True)
    nodes, x, w, y = _graph(dev)
    rng = np.random.default_rng(0)
    weights = rng.standard_normal(32).astype(np.float32)
    assert w.buffer is not None and x.buffer is not None
    w.buffer.write(0, weights.tobytes())
    for step in range(4):
        values = rng.standard_normal(8).astype(np.float32)
        x.buffer.write(0, values.tobytes())  # the per-token data lives in device memory
        dev.execute(nodes)
        np.testing.assert_allclose(_read(y), _expected(values, weights), rtol=1e-5, atol=1e-5)
        assert dev.replay is not None
        assert (dev.replay.captures, dev.replay.replays) == ([0, 1, 1, 1][step], [0, 0, 1, 2][step])


def test_a_different_batch_or_a_freed_buffer_starts_over() -> None:
    dev = CudaDevice(emulation(), 0, graphs=True)
    nodes, _, w, y = _graph(dev)
    assert dev.replay is not None
    dev.execute(nodes)
    dev.execute(nodes)
    assert dev.replay.captures == 1
    dev.execute(nodes[:1])  # another structure: eager, the old graph is dropped
    dev.execute(nodes)
    dev.execute(nodes)
    assert dev.replay.captures == 2
    assert w.buffer is not None
    w.buffer.free()
    other = _ref(dev.alloc(128), (8, 4, 1, 1))
    moved = [nodes[0], Node("mulmat", y, (other, nodes[0].out), {})]
    dev.execute(moved)
    assert dev.replay.captures == 2  # first sighting of the new key: eager


@pytest.mark.parametrize("op", ["rows", "arange"])
def test_ops_that_talk_to_the_host_are_never_captured(op: str) -> None:
    dev = CudaDevice(emulation(), 0, graphs=True)
    out = _ref(dev.alloc(16), (4, 1, 1, 1))
    if op == "arange":
        node = Node("arange", out, (), {"start": 0.0, "stop": 4.0, "step": 1.0, "n": 4,
                                         "dtype": DType.F32})  # fmt: skip
    else:
        table = _ref(dev.alloc(64), (4, 4, 1, 1))
        ids = _ref(dev.alloc(4), (1, 1, 1, 1), DType.I32)
        out = _ref(dev.alloc(16), (4, 1, 1, 1))
        node = Node("rows", out, (table, ids), {})
    for _ in range(3):
        dev.execute([node])
    assert dev.replay is not None and dev.replay.captures == 0
