"""Segments replayed by id, the per-node queue (one ``run`` call per sync point), and copies
from node to node without the coordinator reading the bytes."""

from __future__ import annotations

from collections import Counter
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip(
    "mlplug_ray", reason="mlplug-ray is not installed (pip install -e ./plugins/ray)"
)
pytest.importorskip("ray", reason='ray is not installed (pip install "mlplug[ray]")')

import mlplug
from mlplug.device import BackendParams, DType, Node, TensorRef
from mlplug.models.llama import Batch, Llama
from mlplug_ray.device import RayBuffer, RayDevice, load

DEMO = Path(str(resources.files("mlplug") / "data" / "demo.gguf"))


def _ref(buffer: Any, n: int) -> TensorRef:
    return TensorRef(buffer, 0, (n, 1, 1, 1), (4, 4 * n, 4 * n, 4 * n), DType.F32)


def _f32(values: list[float]) -> bytes:
    return np.array(values, np.float32).tobytes()


def test_a_segment_is_sent_once_then_replayed_by_id(two_nodes: Any) -> None:
    devices = load(BackendParams())
    try:
        node = devices[1]
        assert isinstance(node, RayDevice)
        a, b, out = (node.alloc(16) for _ in range(3))
        b.write(0, _f32([10, 20, 30, 40]))
        segment = [Node("add", _ref(out, 4), (_ref(a, 4), _ref(b, 4)))]
        got = []
        for first in (1.0, 2.0, 3.0):
            a.write(0, _f32([first, 0, 0, 0]))
            node.execute(segment)
            got.append(np.frombuffer(out.read(0, 16), np.float32)[0])
        # the replays ran with the new inputs: 11, 12, 13
        assert got == [11.0, 12.0, 13.0]
        assert node.ops["define"] == 1 and node.ops["replay"] == 2
        # each step was one `run` call (the writes and the segment) and one read
        assert node.calls["run"] == 3 and node.calls["read"] == 3
        # freeing a buffer the segment uses forgets it: the next one is sent whole again
        b.free()
        b2 = node.alloc(16)
        b2.write(0, _f32([1, 1, 1, 1]))
        node.execute([Node("add", _ref(out, 4), (_ref(a, 4), _ref(b2, 4)))])
        assert np.frombuffer(out.read(0, 16), np.float32).tolist() == [4.0, 1.0, 1.0, 1.0]
        assert node.ops["define"] == 2
    finally:
        for device in devices:
            device.close()


def test_copy_between_nodes_never_reads_through_the_coordinator(
    two_nodes: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    devices = load(BackendParams())
    try:
        src, dst = devices[1], devices[2]
        assert isinstance(src, RayDevice) and isinstance(dst, RayDevice)
        a = src.alloc(32)
        b = dst.alloc(32)
        a.write(0, _f32([1, 2, 3, 4, 5, 6, 7, 8]))
        reads: list[int] = []
        read = RayBuffer.read
        monkeypatch.setattr(
            RayBuffer, "read", lambda self, o, n: reads.append(n) or read(self, o, n)
        )
        src.synchronize()
        assert dst.copy_from(a, 8, b, 4, 12)
        assert reads == []  # nothing went through the coordinator's read
        assert dst.ops["pull"] == 1 and src.calls["read"] == 1
        got = np.frombuffer(b.read(0, 32), np.float32)
        assert got[1:4].tolist() == [3.0, 4.0, 5.0]
        # not a node buffer: the engine falls back to read + write
        host = devices[0].alloc(32)
        assert not dst.copy_from(host, 0, b, 0, 4)
        host.free()
    finally:
        for device in devices:
            device.close()


def test_decode_steps_replay_every_segment(two_nodes: Any) -> None:
    params = mlplug.BackendParams(num_gpu_layers=99)
    prompt = [1, 17, 42, 99, 7]
    steps: list[dict[str, tuple[Counter[str], Counter[str]]]] = []
    with mlplug.new_backend(str(DEMO), params, backend="ray") as backend:
        backend.load()
        nodes = [d for d in backend.devices if isinstance(d, RayDevice)]
        model = Llama(backend)
        cache = model.new_cache(capacity=64)
        model.forward(cache, Batch.single(prompt))
        for k in range(4):
            before = {d.name: (d.ops.copy(), d.calls.copy()) for d in nodes}
            model.forward(cache, Batch.single([11 + k], start=len(prompt) + k))
            steps.append(
                {d.name: (d.ops - before[d.name][0], d.calls - before[d.name][1]) for d in nodes}
            )
        cache.close()
    for step in steps[1:]:  # the first decode step defines its segments
        for name, (ops, calls) in step.items():
            assert ops["define"] == 0 and ops["replay"] > 0, (name, ops)
            # the node's segments and input writes travel in a few `run` calls, one per point
            # where the engine waits for the node (its boundaries), not one per segment or op
            assert calls["run"] < ops["replay"] + ops["write"], (name, ops, calls)
            assert set(calls) <= {"run", "read"}, (name, calls)
        assert step == steps[1]  # every decode step costs the same calls
    # activations move between the two nodes directly
    assert any(ops["pull"] for ops, _ in steps[1].values())


def test_unsupported_is_asked_once_per_description(two_nodes: Any) -> None:
    devices = load(BackendParams())
    try:
        node = devices[1]
        assert isinstance(node, RayDevice)
        add = Node("add", _ref(None, 4), (_ref(None, 4), _ref(None, 4)))
        assert node.unsupported(add) is None
        assert node.unsupported(Node("add", _ref(None, 4), (_ref(None, 4), _ref(None, 4)))) is None
        assert node.calls["unsupported"] == 1
        scale = Node("scale", _ref(None, 8), (_ref(None, 8),), {"s": 2.0})
        assert node.unsupported(scale) is None
        assert node.calls["unsupported"] == 2
    finally:
        for device in devices:
            device.close()
