"""A GGUF model's weights on devices: placement, allocation and streaming load (§6.4–6.6).

``Model.open`` validates the file (``mlplug.gguf``) and places every tensor (``mlplug.placement``)
without reading tensor data. ``allocate`` gives each device one buffer holding all its weights
(all-or-nothing, GPUs in index order then the CPU), keeping the books; ``load`` reads the bytes
with ``pread`` (straight into host buffers, else through a staging chunk) in chunks of at most
16 MiB, reporting progress and honouring cancellation. It never touches the memory map, so a file
truncated during the load raises ``GGUFError`` instead of killing the process with ``SIGBUS``.
A tied ``output.weight`` on the same device as ``token_embd.weight`` is the same storage: no
second allocation, no second copy, counted once (§6.5 rule 1). A device that reads weights from
its own copy of the file (``SupportsFileWeights``: a remote node) is offered all of its weights
in one call first; what it loads is not copied.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mlplug.config import Config
from mlplug.device import (
    Buffer,
    DeviceOutOfMemory,
    FileWeight,
    SupportsFileWeights,
    SupportsHostView,
    SupportsWeightUpload,
    TensorRef,
)
from mlplug.dtype import DType
from mlplug.errors import ErrNoMem, GGUFError, LoadCancelledError
from mlplug.gguf import GGUFFile, TensorInfo
from mlplug.memory import AllocationStatus
from mlplug.ops import Meta
from mlplug.placement import Placement, place_tensors
from mlplug.tensor import Storage, Tensor

from .books import round_up

if TYPE_CHECKING:
    from .graph_backend import GraphBackend

__all__ = ["CHUNK", "Model"]

_TIED = "output.weight"

CHUNK = 16 * 1024 * 1024
"""Largest piece copied between two cancellation checks."""

# Big-endian files store every multi-byte number big-endian, the scales inside quantised
# blocks included. Bytes to swap at the start of each block, for the block types we convert.
_BLOCK_SWAPS: dict[DType, tuple[int, ...]] = {
    DType.Q8_0: (2,),
    DType.Q4_0: (2,),
    DType.Q4_1: (2, 2),
}


def _swappable(dtype: DType) -> bool:
    return not dtype.is_block or dtype in _BLOCK_SWAPS


def _to_little_endian(data: memoryview, dtype: DType) -> bytes:
    """Return a big-endian file's tensor bytes in the little-endian layout devices expect."""
    import numpy as np

    raw = np.frombuffer(data, dtype=np.uint8)
    if not dtype.is_block:
        size = dtype.type_size
        if size == 1:
            return raw.tobytes()
        return raw.view(f">u{size}").astype(f"<u{size}").tobytes()
    blocks = raw.reshape(-1, dtype.type_size).copy()
    start = 0
    for width in _BLOCK_SWAPS[dtype]:
        blocks[:, start : start + width] = blocks[:, start : start + width][:, ::-1]
        start += width
    return blocks.tobytes()


@dataclass(slots=True)
class _Weight:
    placement: Placement
    info: TensorInfo
    device: int
    offset: int = 0
    tensor: Tensor | None = None
    shares: bool = False  # the storage of an earlier weight with the same source and device


def _cancelled(cancel: Any) -> bool:
    if cancel is None:
        return False
    is_set = getattr(cancel, "is_set", None)
    if callable(is_set):
        return bool(is_set())
    return bool(cancel())


class Model:
    """The weights of one GGUF file, as placed on a backend's devices."""

    __slots__ = ("blocks", "buffers", "config", "file", "tensors", "weights")

    def __init__(self, file: GGUFFile) -> None:
        self.file = file
        self.config = Config(dict(file.metadata))
        self.blocks = self.config.uint("block_count")
        self.tensors = file.tensors
        self.weights: list[_Weight] = []
        self.buffers: dict[int, Buffer] = {}

    @classmethod
    def open(cls, path: str) -> Model:
        """Open and validate ``path`` (no tensor data is read).

        Raises:
            GGUFError: Also for a big-endian file holding a block type whose inner layout this
                loader cannot convert (anything but Q8_0, Q4_0 and Q4_1).
        """
        file = GGUFFile.open(path)
        try:
            if file.byte_order == "big":
                for t in file.tensors:
                    if not _swappable(t.dtype):
                        raise GGUFError(
                            f"[gguf] {path}: tensor {t.name!r}: big-endian {t.dtype.name} data "
                            "is not supported (convert the file to little-endian)"
                        )
        except BaseException:
            file.close()
            raise
        return cls(file)

    def placements(self) -> list[tuple[Placement, TensorInfo]]:
        """Return every weight to create with the file tensor it is made from."""
        by_name = {t.name: t for t in self.tensors}
        names = [t.name for t in self.tensors]
        return [(p, by_name[p.source]) for p in place_tensors(names, self.blocks)]

    def plan(self, layer_device: list[int], devices: list[Any]) -> dict[int, int]:
        """Place the weights and return the bytes each device must allocate."""
        self.weights = []
        totals: dict[int, int] = {}
        placed: dict[tuple[str, int], _Weight] = {}
        for placement, info in self.placements():
            device = 0 if placement.layer is None else layer_device[placement.layer]
            source = placed.get((placement.source, device))
            if source is not None and placement.name == _TIED:
                # §6.5 rule 1: the tied output on the embedding's device is the same storage.
                self.weights.append(_Weight(placement, info, device, source.offset, shares=True))
                continue
            dev = devices[device]
            size = (
                dev.weight_nbytes(info.dtype, info.ne)
                if isinstance(dev, SupportsWeightUpload)
                else info.nbytes
            )
            weight = _Weight(placement, info, device, totals.get(device, 0))
            totals[device] = weight.offset + round_up(size, dev.alignment)
            self.weights.append(weight)
            placed[(placement.source, device)] = weight
        return totals

    def allocate(self, backend: GraphBackend) -> None:
        """Allocate every device's weight storage and record it in the books (§6.6, §7.2)."""
        devices = backend.devices
        totals = self.plan(backend._layer_device, devices)
        books = backend._books
        for device in range(len(devices)):
            per_layer = [0] * (self.blocks + 1)
            inputs = 0
            for w in self.weights:
                if w.device != device or w.shares:
                    continue
                dev = devices[device]
                size = (
                    dev.weight_nbytes(w.info.dtype, w.info.ne)
                    if isinstance(dev, SupportsWeightUpload)
                    else w.info.nbytes
                )
                accounted = round_up(size, dev.alignment)
                if w.placement.layer is None:
                    inputs += accounted
                else:
                    per_layer[w.placement.layer] += accounted
            books.set_weight_sizes(device, per_layer, inputs)
        for device in [*range(1, len(devices)), 0]:
            total = totals.get(device, 0)
            if not total:
                continue
            try:
                self.buffers[device] = devices[device].alloc(total)
            except DeviceOutOfMemory as err:
                books.mark_weights(device, AllocationStatus.FAILED)
                snapshot = books.snapshot()
                self.free(backend)
                raise ErrNoMem(snapshot, f"weights: {err}") from err
            books.mark_weights(device, AllocationStatus.ALLOCATED)
        for w in self.weights:
            meta = Meta.fresh(w.info.dtype, w.info.ne)
            storage = Storage(w.device, self.buffers[w.device], w.offset, w.info.nbytes)
            w.tensor = Tensor(backend._weights_family, meta, storage=storage, name=w.placement.name)
            backend._weights[w.placement.name] = w.tensor

    def load(
        self, backend: GraphBackend, progress: Callable[[float], None] | None, cancel: Any
    ) -> None:
        """Copy every weight's bytes from the file (§6.6)."""
        copies = [w for w in self.weights if not w.shares]
        total = sum(w.info.nbytes for w in copies)
        done = 0
        # Devices that read their weights from their own copy of the file (SupportsFileWeights).
        for index, device in enumerate(backend.devices):
            mine = [w for w in copies if w.device == index]
            if (
                not mine
                or not isinstance(device, SupportsFileWeights)
                or self.file.byte_order == "big"
            ):
                continue
            if _cancelled(cancel):
                raise LoadCancelledError("load: cancelled")
            if device.load_file_weights(self.file.path, [self._file_weight(w) for w in mine]):
                copies = [w for w in copies if w.device != index]
                done += sum(w.info.nbytes for w in mine)
                if progress is not None and total:
                    progress(min(done / total, 1.0))
        # Bytes are read with pread (GGUFFile.read_into), never through the memory map: a file
        # truncated under us then gives GGUFError instead of SIGBUS (SEMANTICS §6.6).
        staging: memoryview | None = None  # for buffers without a host view
        for w in copies:
            if _cancelled(cancel):
                raise LoadCancelledError("load: cancelled")
            assert w.tensor is not None and w.tensor._storage is not None
            storage = w.tensor._storage
            device = backend.devices[w.device]
            buffer = storage.buffer
            assert buffer is not None
            big = self.file.byte_order == "big"
            if isinstance(device, SupportsWeightUpload):
                meta = w.tensor._meta
                ref = TensorRef(buffer, storage.offset, meta.ne, meta.nb, meta.dtype)
                data = memoryview(bytearray(w.info.nbytes))
                self.file.read_into(w.info.offset, data)
                if big:
                    data = memoryview(_to_little_endian(data, w.info.dtype))
                device.upload_weight(ref, data)
                done += w.info.nbytes
                if progress is not None and total:
                    progress(min(done / total, 1.0))
                continue
            # Whole blocks per chunk, so that a byte swap never straddles two chunks.
            chunk = CHUNK - CHUNK % w.info.dtype.type_size
            # Host memory: read straight into the buffer (one copy); else through staging.
            direct = buffer.host_view if isinstance(buffer, SupportsHostView) and not big else None
            for start in range(0, w.info.nbytes, chunk):
                if start and _cancelled(cancel):
                    raise LoadCancelledError("load: cancelled")
                n = min(chunk, w.info.nbytes - start)
                if direct:
                    self.file.read_into(w.info.offset + start, direct(storage.offset + start, n))
                else:
                    if staging is None:
                        staging = memoryview(bytearray(CHUNK))
                    data = staging[:n]
                    self.file.read_into(w.info.offset + start, data)
                    if big:
                        data = memoryview(_to_little_endian(data, w.info.dtype))
                    buffer.write(storage.offset + start, data)
                done += n
                if progress is not None and total:
                    progress(min(done / total, 1.0))
        for index in {w.device for w in self.weights}:
            backend.devices[index].synchronize()
        if progress is not None and (total == 0 or done / total < 1.0):
            progress(1.0)

    @staticmethod
    def _file_weight(w: _Weight) -> FileWeight:
        assert w.tensor is not None and w.tensor._storage is not None
        storage, meta = w.tensor._storage, w.tensor._meta
        ref = TensorRef(storage.buffer, storage.offset, meta.ne, meta.nb, meta.dtype)
        return FileWeight(ref, w.info.offset, w.info.nbytes)

    def free(self, backend: GraphBackend) -> None:
        """Free the weight storage and close the file."""
        for buffer in self.buffers.values():
            buffer.free()
        self.buffers.clear()
        for w in self.weights:
            if w.tensor is not None and w.tensor._storage is not None:
                w.tensor._storage.buffer = None
        self.file.close()
