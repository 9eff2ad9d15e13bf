"""A tiny numpy device, so the engine is testable with no plugin.

The toy device implements a handful of ops (enough to exercise scheduling, transfers, the
planner and the books). Devices record which nodes they executed, so tests can check placement.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

import mlplug
from mlplug.device import DeviceOutOfMemory, EnginePlugin, Node, TensorRef

TOY_OPS = {"add", "mul", "scale", "contiguous", "copy", "set_rows", "mulmat", "sum_rows", "neg"}
_NP = {mlplug.DType.F32: np.float32, mlplug.DType.I32: np.int32, mlplug.DType.F16: np.float16}


class ToyBuffer:
    def __init__(self, device: ToyDevice, nbytes: int) -> None:
        self.device = device
        self.nbytes = nbytes
        self.data: np.ndarray | None = np.zeros(nbytes, np.uint8)

    def write(self, offset: int, data: bytes | memoryview) -> None:
        assert self.data is not None
        self.data[offset : offset + len(data)] = np.frombuffer(data, np.uint8)

    def read(self, offset: int, n: int) -> bytes:
        assert self.data is not None
        return self.data[offset : offset + n].tobytes()

    def free(self) -> None:
        if self.data is not None:
            self.device.used -= self.nbytes
            self.data = None


def view(ref: TensorRef) -> np.ndarray:
    """Return a writable numpy view (numpy order) of a non-block ref."""
    assert isinstance(ref.buffer, ToyBuffer) and ref.buffer.data is not None
    dtype = np.dtype(_NP[ref.dtype])
    base = ref.buffer.data[ref.offset :]
    raw = np.lib.stride_tricks.as_strided(
        base, shape=(*reversed(ref.ne), dtype.itemsize), strides=(*reversed(ref.nb), 1)
    )
    return raw.view(dtype)[..., 0]


class ToyDevice:
    def __init__(
        self, name: str, kind: str, cap: int = 1 << 30, unsupported_ops: Sequence[str] = ()
    ) -> None:
        self.name, self.id, self.kind, self.alignment = name, f"id-{name}", kind, 32
        self.cap, self.used = cap, 0
        self.unsupported_ops = set(unsupported_ops)
        self.executed: list[str] = []

    def total_memory(self) -> int:
        return self.cap

    def free_memory(self) -> int:
        return self.cap - self.used

    def alloc(self, nbytes: int) -> ToyBuffer:
        if self.used + nbytes > self.cap:
            raise DeviceOutOfMemory(self.name, nbytes, self.cap - self.used)
        self.used += nbytes
        return ToyBuffer(self, nbytes)

    def unsupported(self, node: Node) -> str | None:
        if node.op not in TOY_OPS:
            return f"toy device has no {node.op} kernel"
        if node.op in self.unsupported_ops:
            return f"{self.name} declines {node.op}"
        return None

    def execute(self, nodes: Sequence[Node]) -> None:
        for node in nodes:
            self.executed.append(node.op)
            out = view(node.out)
            srcs = [None if s is None else view(s) for s in node.srcs]
            if node.op in ("add", "mul"):
                a, b = srcs
                reps = np.array(a.shape) // np.array(b.shape)
                f = np.add if node.op == "add" else np.multiply
                out[...] = f(a, np.tile(b, reps))
            elif node.op == "scale":
                out[...] = srcs[0] * np.float32(node.params["s"])
            elif node.op == "neg":
                out[...] = -srcs[0]
            elif node.op == "contiguous":
                out[...] = srcs[0]
            elif node.op == "copy":
                out[...] = srcs[0].reshape(-1).astype(out.dtype).reshape(out.shape)
            elif node.op == "set_rows":
                ids = srcs[2].reshape(-1)
                for r, i in enumerate(ids):  # in order: a later row wins
                    out[:, :, i, :] = srcs[0][:, :, r, :]
            elif node.op == "sum_rows":
                out[...] = srcs[0].sum(axis=-1, keepdims=True)
            elif node.op == "mulmat":
                a, b = srcs
                r = (b.shape[0] // a.shape[0], b.shape[1] // a.shape[1])
                rep = np.repeat(np.repeat(a, r[0], axis=0), r[1], axis=1)
                out[...] = b @ rep.swapaxes(-1, -2)

    def synchronize(self) -> None:
        pass

    def close(self) -> None:
        pass


class DirectToyDevice(ToyDevice):
    """A toy device that copies from other toy devices' buffers directly (no host bytes)."""

    def __init__(
        self, name: str, kind: str, cap: int = 1 << 30, unsupported_ops: Sequence[str] = ()
    ) -> None:
        super().__init__(name, kind, cap, unsupported_ops)
        self.direct_copies: list[int] = []

    def copy_from(
        self, src: object, src_offset: int, dst: object, dst_offset: int, nbytes: int
    ) -> bool:
        if not isinstance(src, ToyBuffer) or not isinstance(dst, ToyBuffer):
            return False
        assert src.data is not None and dst.data is not None
        dst.data[dst_offset : dst_offset + nbytes] = src.data[src_offset : src_offset + nbytes]
        self.direct_copies.append(nbytes)
        return True


def toy_plugin(
    n_gpus: int = 0,
    *,
    cpu_cap: int = 1 << 30,
    gpu_cap: int = 1 << 20,
    gpu_unsupported: Sequence[str] = (),
    gpu_direct: Sequence[bool] = (),
) -> tuple[EnginePlugin, list[ToyDevice]]:
    """Return a plugin whose ``load`` returns fresh toy devices (also returned for inspection).

    ``gpu_direct[i]`` makes GPU ``i`` a :class:`DirectToyDevice` (optional direct copies).
    """
    made: list[ToyDevice] = []

    def load(params: mlplug.BackendParams) -> list[ToyDevice]:
        made.clear()
        made.append(ToyDevice("CPU", "cpu", cpu_cap))
        for i in range(n_gpus):
            kind = DirectToyDevice if i < len(gpu_direct) and gpu_direct[i] else ToyDevice
            made.append(kind(f"TOY{i}", "gpu", gpu_cap, gpu_unsupported))
        return made

    return EnginePlugin(name="toy", load=load), made
