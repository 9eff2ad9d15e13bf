"""The plugin kit in mlplug.device: Node operand helpers, tile shapes, allocator and buffers."""

from __future__ import annotations

import gc

import pytest

from mlplug.device import (
    CappedAllocator,
    DeviceOutOfMemory,
    DType,
    HostBuffer,
    Node,
    Release,
    SupportsHostView,
    TensorRef,
    env_size,
    host_memory,
    tile_shapes,
)


def _ref() -> TensorRef:
    return TensorRef(None, 0, (4, 1, 1, 1), (4, 16, 16, 16), DType.F32)


def test_node_operand_and_optional() -> None:
    a, w = _ref(), _ref()
    node = Node("rms_norm", _ref(), (a, None), {"eps": 1e-6})
    assert node.operand(0) is a and node.operand() is a
    assert node.optional(1) is None and node.optional(2) is None
    with pytest.raises(ValueError, match=r"^\[rms_norm\] operand 1 is missing"):
        node.operand(1)
    with pytest.raises(ValueError, match=r"^\[rms_norm\] operand 5 is missing"):
        node.operand(5)
    assert Node("rms_norm", _ref(), (a, w)).optional(1) is w


def test_tile_shapes_split_only_the_repeating_axes() -> None:
    assert tile_shapes((2, 6), (2, 3)) == ((2, 2, 3), (2, 1, 3))
    assert tile_shapes((4, 6), (1, 6)) == ((4, 6), (1, 6))
    assert tile_shapes((4, 6, 8), (2, 3, 8)) == ((2, 2, 2, 3, 8), (1, 2, 1, 3, 8))
    with pytest.raises(ValueError):
        tile_shapes((4, 6), (4,))


class _Buffer:
    __slots__ = ("__weakref__", "_release", "freed", "nbytes")

    def __init__(self, nbytes: int, release: Release) -> None:
        self.nbytes, self._release, self.freed = nbytes, release, False

    def write(self, offset: int, data: bytes | memoryview) -> None: ...

    def read(self, offset: int, n: int) -> bytes:
        return bytes(n)

    def free(self) -> None:
        self.freed = True
        self._release()


class _Device(CappedAllocator[_Buffer]):
    __slots__ = ("fail", "hardware", "name")

    def __init__(self, memory_limit: int | None = None, hardware: tuple[int, int] = (800, 600)):
        self.name, self.hardware, self.fail = "TOY", hardware, False
        super().__init__(memory_limit)

    def _alloc(self, nbytes: int, release: Release) -> _Buffer:
        if self.fail:
            raise MemoryError("no pages")
        return _Buffer(nbytes, release)

    def _hardware_memory(self) -> tuple[int, int]:
        return self.hardware


def test_the_books_count_allocations_under_the_cap() -> None:
    dev = _Device(memory_limit=1000)
    assert (dev.total_memory(), dev.free_memory(), dev.allocated) == (1000, 1000, 0)
    first, second = dev.alloc(400), dev.alloc(500)
    assert (dev.allocated, dev.free_memory()) == (900, 100)
    with pytest.raises(DeviceOutOfMemory) as err:
        dev.alloc(101)
    assert (err.value.device, err.value.requested, err.value.free) == ("TOY", 101, 100)
    assert dev.allocated == 900  # a refused allocation counts nothing
    first.free()
    first.free()  # idempotent: the bytes go back once
    assert dev.allocated == 500
    dev.alloc(100)
    assert dev.allocated == 600
    del second
    gc.collect()
    assert dev.allocated == 600  # the toy buffer gives back on free() only


def test_without_a_cap_the_hardware_answers() -> None:
    dev = _Device(hardware=(800, 600))
    assert (dev.total_memory(), dev.free_memory()) == (800, 600)
    dev.alloc(10_000)  # only the allocator itself can refuse
    assert dev.set_memory_limit(50) is None
    with pytest.raises(DeviceOutOfMemory):
        dev.alloc(1)  # past the new cap: 10 000 bytes are held
    assert dev.set_memory_limit(None) == 50
    with pytest.raises(ValueError, match=r"^\[TOY\] memory limit must be >= 0"):
        dev.set_memory_limit(-1)
    with pytest.raises(ValueError, match=r"^\[TOY\] cannot allocate -1 bytes"):
        dev.alloc(-1)


def test_a_hardware_bound_device_refuses_past_its_free_memory() -> None:
    class Lazy(_Device):
        __slots__ = ()
        hardware_bound = True

    dev = Lazy(hardware=(800, 600))
    dev.alloc(600)
    with pytest.raises(DeviceOutOfMemory) as err:
        dev.alloc(601)
    assert err.value.free == 600


def test_a_failed_allocation_is_out_of_memory_and_counts_nothing() -> None:
    dev = _Device(memory_limit=1000)
    dev.fail = True
    with pytest.raises(DeviceOutOfMemory, match=r"^\[TOY\] cannot allocate 10 bytes") as err:
        dev.alloc(10)
    assert isinstance(err.value.__cause__, MemoryError)
    assert dev.allocated == 0


def test_close_buffers_frees_what_is_live_and_release_holds_the_device_weakly() -> None:
    dev = _Device()
    kept = [dev.alloc(8), dev.alloc(16)]
    dev.close_buffers()
    assert all(b.freed for b in kept) and dev.allocated == 0
    orphan = dev.alloc(4)
    del dev
    gc.collect()
    orphan.free()  # the device is gone: nothing to give back to, no error


def test_host_memory_and_env_size(monkeypatch: pytest.MonkeyPatch) -> None:
    total, available = host_memory()
    assert total > 0 and 0 < available <= total
    monkeypatch.setenv("MLPLUG_TEST_LIMIT", " 2KiB ")
    assert env_size("MLPLUG_TEST_LIMIT") == 2048
    monkeypatch.setenv("MLPLUG_TEST_LIMIT", "")
    assert env_size("MLPLUG_TEST_LIMIT") is None
    monkeypatch.setenv("MLPLUG_TEST_LIMIT", "lots")
    with pytest.raises(ValueError, match=r"^MLPLUG_TEST_LIMIT='lots': not a memory size"):
        env_size("MLPLUG_TEST_LIMIT")


class _HostDevice(CappedAllocator[HostBuffer]):
    __slots__ = ("name",)

    def __init__(self, memory_limit: int | None = None) -> None:
        self.name = "HOST"
        super().__init__(memory_limit)

    def _alloc(self, nbytes: int, release: Release) -> HostBuffer:
        return HostBuffer(self.name, bytearray(nbytes), release)


def test_host_buffer_reads_writes_checks_and_gives_back_once() -> None:
    dev = _HostDevice(memory_limit=64)
    buf = dev.alloc(16)
    buf.write(4, b"abcd")
    buf.write(8, memoryview(b"\x01\x02"))
    assert buf.read(3, 6) == b"\x00abcd\x01"
    view = buf.host_view(12, 4)
    view[:] = b"WXYZ"  # the loader reads file bytes straight into this view
    assert buf.read(12, 4) == b"WXYZ"
    assert isinstance(buf, SupportsHostView)
    with pytest.raises(ValueError, match=r"^\[HOST\] bytes \[14, 18\) outside a 16-byte buffer"):
        buf.write(14, b"wxyz")
    with pytest.raises(ValueError, match="outside"):
        buf.read(-1, 2)
    assert dev.allocated == 16 and buf.alive
    buf.free()
    buf.free()
    assert dev.allocated == 0 and not buf.alive
    with pytest.raises(ValueError, match=r"^\[HOST\] buffer used after free\(\)"):
        buf.read(0, 1)
    dev.alloc(64)  # collected without free(): the finalizer gives the bytes back
    gc.collect()
    assert dev.allocated == 0
