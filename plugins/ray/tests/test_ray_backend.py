"""The ray backend on a private loopback cluster: devices, conformance ops, the demo model
split over two node actors, a memory cap, and a node actor killed mid-run.

Kept few and small: each backend starts its node actors (one worker process each).
"""

from __future__ import annotations

import re
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
from mlplug.device import BackendParams, DeviceOutOfMemory, DType, Node, TensorRef
from mlplug.models.llama import Batch, Llama
from mlplug_ray.device import RayDevice, load
from mlplug_ray.errors import RayNodeError

DEMO = Path(str(resources.files("mlplug") / "data" / "demo.gguf"))
PROMPT = [1, 17, 42, 99, 7]


def _ref(buffer: Any, n: int) -> TensorRef:
    return TensorRef(buffer, 0, (n, 1, 1, 1), (4, 4 * n, 4 * n, 4 * n), DType.F32)


def test_devices_alloc_write_execute_read_and_cap(
    two_nodes: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLPLUG_RAY_MEMORY_LIMIT", "4096")
    devices = load(BackendParams())
    try:
        assert [d.kind for d in devices] == ["cpu", "gpu", "gpu"]
        node = devices[1]
        assert isinstance(node, RayDevice) and node.name == "RAY0" and node.node_id
        assert node.total_memory() == 4096
        a, b, out = (node.alloc(16) for _ in range(3))
        assert node.free_memory() == 4096 - 3 * node.alignment * -(-16 // node.alignment)
        a.write(0, np.array([1, 2, 3, 4], np.float32).tobytes())
        b.write(0, np.array([10, 20, 30, 40], np.float32).tobytes())
        # two ops in one segment: out = (a + b) * b
        node.execute(
            [
                Node("add", _ref(out, 4), (_ref(a, 4), _ref(b, 4))),
                Node("mul", _ref(out, 4), (_ref(out, 4), _ref(b, 4))),
            ]
        )
        got = np.frombuffer(out.read(0, 16), np.float32)
        assert got.tolist() == [110.0, 440.0, 990.0, 1760.0]
        with pytest.raises(DeviceOutOfMemory, match=r"\[RAY0\]"):
            node.alloc(8192)
        with pytest.raises(ValueError, match="outside a buffer"):
            a.read(8, 16)
        for buf in (a, b, out):
            buf.free()
        assert node.free_memory() == 4096
    finally:
        for device in devices:
            device.close()


def test_conformance_suite_through_ray(
    two_nodes: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = pytest.importorskip("mlplug_conformance.runner")
    segments: list[int] = []
    execute = RayDevice.execute

    def counted(self: RayDevice, nodes: Any) -> None:
        segments.append(len(nodes))
        execute(self, nodes)

    monkeypatch.setattr(RayDevice, "execute", counted)
    rc = runner.main(["--backend", "ray"])
    out = capsys.readouterr().out
    assert rc == 0, out[-3000:]
    match = re.search(r"(\d+) cases on backend 'ray': 0 failed", out)
    assert match and int(match.group(1)) > 1000, out[-3000:]
    # the cases ran on the node actors (cpu_fallback=False), one segment per case at least
    assert len(segments) >= int(match.group(1)) and all(n > 0 for n in segments)


def test_conformance_memory_mode_through_ray(
    ray_cluster: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = pytest.importorskip("mlplug_conformance.runner")
    for name in ("MLPLUG_RAY_NODES", "MLPLUG_RAY_MEMORY_LIMIT", "MLPLUG_RAY_MODEL_PATHS"):
        monkeypatch.delenv(name, raising=False)
    rc = runner.main(["--backend", "ray", "--mode", "memory"])
    out = capsys.readouterr().out
    assert rc == 0, out[-3000:]
    # placement with 1, 2 and 3 node devices, caps, ErrNoMem, reserve, cache and load
    assert re.search(r"9 memory checks on backend 'ray': 0 failed", out), out[-3000:]
    for check in ("placement/3-gpus", "out-of-memory", "reserve-and-cache", "load"):
        assert re.search(rf"pass +memory/{check}", out), out[-3000:]


def _logits(backend_name: str) -> list[np.ndarray]:
    params = mlplug.BackendParams(num_gpu_layers=99)
    with mlplug.new_backend(str(DEMO), params, backend=backend_name) as backend:
        backend.load()
        mem = backend.backend_memory()
        if backend_name == "ray":
            # the blocks are spread over both node devices
            holding = [g for g in mem.gpus if any(w.size for w in g.weights)]
            assert len(mem.gpus) == 2 and len(holding) == 2, mem
        model = Llama(backend)
        cache = model.new_cache(capacity=32)
        out = [model.forward(cache, Batch.single(PROMPT))]
        out.append(model.forward(cache, Batch.single([11], start=len(PROMPT))))
        cache.close()
    return out


def test_demo_model_split_over_two_nodes_matches_cpu(
    two_nodes: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    remote = _logits("ray")
    cpu = _logits("cpu")
    for r, c in zip(remote, cpu, strict=True):
        # the node actors run the same cpu kernels; only the thread split may differ
        assert np.abs(r - c).max() <= 1e-5 * np.abs(c).max()
        assert r.argmax(-1).tolist() == c.argmax(-1).tolist()


def test_node_cap_gives_errnomem(two_nodes: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLPLUG_RAY_MEMORY_LIMIT", "64KiB")
    params = mlplug.BackendParams(num_gpu_layers=99)
    with pytest.raises(mlplug.ErrNoMem, match="RAY") as info:
        mlplug.new_backend(str(DEMO), params, backend="ray").close()
    # the report shows both node devices, each with its cap
    assert [g.name for g in info.value.memory.gpus] == ["RAY0", "RAY1"]


@pytest.mark.parametrize("name", ["RAY0", "RAY1"])
def test_killed_node_gives_clear_error_then_close_works(two_nodes: Any, name: str) -> None:
    ray = two_nodes
    params = mlplug.BackendParams(num_gpu_layers=99)
    backend = mlplug.new_backend(str(DEMO), params, backend="ray")
    try:
        backend.load()
        model = Llama(backend)
        cache = model.new_cache(capacity=32)
        model.forward(cache, Batch.single(PROMPT))
        model.forward(cache, Batch.single([11], start=len(PROMPT)))
        victim = _device(backend, name)
        ray.kill(victim.actor, no_restart=True)
        # the next decode step replays segments on both nodes and copies between them
        with pytest.raises(RayNodeError, match=rf"\[{name}\] node actor died") as info:
            model.forward(cache, Batch.single([12], start=len(PROMPT) + 1))
        assert victim.node_id in str(info.value) and info.value.device == name
        cache.close()
    finally:
        backend.close()
    assert victim._closed


def _device(backend: Any, name: str) -> RayDevice:
    for device in backend.devices:
        if device.name == name:
            assert isinstance(device, RayDevice)
            return device
    raise AssertionError(f"no device {name}")


def test_pooled_actors_are_reused_and_a_dead_one_replaced(two_nodes: Any) -> None:
    from mlplug_ray.session import POOL

    ray = two_nodes
    first = load(BackendParams())
    pids = {d.pid for d in first if isinstance(d, RayDevice)}
    for device in first:
        device.close()
    # closed devices hand their actors to the pool; the next backend takes them
    again = load(BackendParams())
    assert {d.pid for d in again if isinstance(d, RayDevice)} == pids
    for device in again:
        device.close()
    idle = POOL.idle()
    assert len(idle) >= 2
    for actor in idle:
        ray.kill(actor, no_restart=True)
    fresh = load(BackendParams())
    try:
        nodes = [d for d in fresh if isinstance(d, RayDevice)]
        assert len(nodes) == 2 and not {d.pid for d in nodes} & pids
        buffer = nodes[0].alloc(8)
        buffer.write(0, b"12345678")
        assert buffer.read(0, 8) == b"12345678"
    finally:
        for device in fresh:
            device.close()
