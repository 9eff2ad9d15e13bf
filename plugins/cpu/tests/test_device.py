"""Buffers, memory caps, simulated GPUs, environment parsing and thread limits."""

from __future__ import annotations

import gc
import os
import subprocess
import sys

import numpy as np
import pytest
from threadpoolctl import threadpool_info

from mlplug.device import BackendParams, DeviceOutOfMemory, Node
from mlplug_cpu import device as cpu_device
from mlplug_cpu.device import ENV_MEMORY_LIMIT, ENV_SIMULATED_GPUS, CpuDevice
from mlplug_cpu.kernels import native


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_MEMORY_LIMIT, raising=False)
    monkeypatch.delenv(ENV_SIMULATED_GPUS, raising=False)


def test_buffer_write_read_and_bounds() -> None:
    dev = CpuDevice()
    buf = dev.alloc(16)
    assert buf.read(0, 16) == bytes(16)
    buf.write(4, b"\x01\x02\x03")
    buf.write(8, memoryview(np.array([1.5], np.float32)))
    assert buf.read(3, 5) == b"\x00\x01\x02\x03\x00"
    assert np.frombuffer(buf.read(8, 4), np.float32)[0] == 1.5
    with pytest.raises(ValueError):
        buf.write(14, b"abc")
    with pytest.raises(ValueError):
        buf.read(-1, 2)
    buf.free()
    buf.free()  # idempotent
    with pytest.raises(ValueError, match="after free"):
        buf.read(0, 1)


def test_cap_raises_and_free_restores_the_budget() -> None:
    dev = CpuDevice(memory_limit=1000)
    assert dev.total_memory() == 1000 and dev.free_memory() == 1000
    first = dev.alloc(600)
    assert dev.free_memory() == 400
    with pytest.raises(DeviceOutOfMemory) as info:
        dev.alloc(500)
    assert isinstance(info.value, MemoryError)
    assert (info.value.requested, info.value.free) == (500, 400)
    assert dev.allocated == 600  # the failed request holds nothing
    second = dev.alloc(400)  # exactly fills the cap
    assert dev.free_memory() == 0
    first.free()
    assert dev.free_memory() == 600
    third = dev.alloc(500)
    second.free()
    assert dev.allocated == third.nbytes == 500


def test_collected_buffer_and_close_give_memory_back() -> None:
    dev = CpuDevice(memory_limit=100)
    buf = dev.alloc(100)
    del buf
    gc.collect()
    assert dev.allocated == 0
    kept = [dev.alloc(40), dev.alloc(60)]
    dev.close()
    assert dev.allocated == 0
    with pytest.raises(ValueError):
        kept[0].read(0, 1)


def test_set_memory_limit_returns_the_previous_cap() -> None:
    dev = CpuDevice()
    assert dev.set_memory_limit(64) is None
    held = dev.alloc(64)
    with pytest.raises(DeviceOutOfMemory):
        dev.alloc(1)
    assert dev.set_memory_limit(None) == 64
    assert dev.alloc(1).nbytes == 1
    held.free()
    with pytest.raises(ValueError):
        dev.set_memory_limit(-1)


def test_uncapped_memory_is_the_machines() -> None:
    dev = CpuDevice()
    total, free = dev.total_memory(), dev.free_memory()
    assert total > 0 and 0 < free <= total


def test_load_without_environment_gives_one_cpu_device() -> None:
    [cpu] = cpu_device.load(BackendParams())
    assert (cpu.name, cpu.id, cpu.kind, cpu.alignment) == ("CPU", "", "cpu", 32)
    assert cpu.memory_limit is None


def test_memory_limit_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_MEMORY_LIMIT, "1MiB")
    [cpu] = cpu_device.load(BackendParams())
    assert cpu.total_memory() == 2**20
    with pytest.raises(DeviceOutOfMemory):
        cpu.alloc(2**20 + 1)


def test_simulated_gpus_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_SIMULATED_GPUS, "2:512MiB")
    cpu, sim0, sim1 = cpu_device.load(BackendParams(num_threads=2))
    assert cpu.kind == "cpu" and cpu.memory_limit is None
    assert [(d.name, d.id, d.kind) for d in (sim0, sim1)] == [
        ("SIM0", "sim-0", "gpu"),
        ("SIM1", "sim-1", "gpu"),
    ]
    assert sim0.total_memory() == sim1.total_memory() == 512 * 2**20
    assert sim0.num_threads == cpu_device.usable_threads(2)
    held = sim0.alloc(500 * 2**20)
    assert sim0.free_memory() == 12 * 2**20
    assert sim1.free_memory() == 512 * 2**20  # separate books
    with pytest.raises(DeviceOutOfMemory):
        sim0.alloc(13 * 2**20)
    assert sim1.alloc(13 * 2**20).nbytes == 13 * 2**20
    held.free()


def test_zero_simulated_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_SIMULATED_GPUS, "0:1G")
    assert len(cpu_device.load(BackendParams())) == 1


@pytest.mark.parametrize("value", ["2", "x:1G", "-1:1G", "2:lots", "2:", ":1G", "1.5:1G"])
def test_malformed_simulated_gpus_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv(ENV_SIMULATED_GPUS, value)
    with pytest.raises(ValueError, match=ENV_SIMULATED_GPUS):
        cpu_device.load(BackendParams())


def test_malformed_memory_limit_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_MEMORY_LIMIT, "plenty")
    with pytest.raises(ValueError, match=ENV_MEMORY_LIMIT):
        cpu_device.load(BackendParams())


def test_num_threads_limits_blas_during_execution() -> None:
    seen: list[int] = []
    blas = [i for i in threadpool_info() if i["user_api"] == "blas"]
    if not blas:
        pytest.skip("numpy's BLAS is not visible to threadpoolctl")
    with cpu_device._thread_limit(1):
        seen = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
    assert seen and all(n == 1 for n in seen)
    after = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
    assert after == [i["num_threads"] for i in blas]


def test_threads_are_capped_to_the_affinity_mask(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 2, 5}, raising=False)
    assert cpu_device.usable_threads(0) == 3
    assert cpu_device.usable_threads(2) == 2
    assert cpu_device.usable_threads(64) == 3
    assert CpuDevice(num_threads=0).num_threads == 3
    assert CpuDevice(num_threads=2**32 + 1).num_threads == 3


_POOL_SCRIPT = """
import time, numpy as np
from mlplug_cpu.kernels import native
ext = native._native
w = np.zeros((256, 18 * 64), np.uint8)
x = np.ones((1, 2048), np.float32)
o = np.zeros((1, 256), np.float32)
def product(threads):
    assert ext.matmul(2, w, 0, w.shape[1], x, 0, 8192, o, 0, 1024, 256, 2048, 1, threads)
product(1)
print(ext.pool_workers())
product(3)
print(ext.pool_workers())
time.sleep(0.2)
start = time.process_time()
time.sleep(0.5)
print(time.process_time() - start)
"""


@pytest.mark.skipif(native._native is None, reason="mlplug_cpu._native is not built")
def test_native_pool_honours_threads_and_sleeps_when_idle() -> None:
    """One thread starts no worker; three start two; idle workers use no CPU (no spinning)."""
    done = subprocess.run(
        [sys.executable, "-c", _POOL_SCRIPT], capture_output=True, text=True, check=True
    )
    one, three, idle_cpu = done.stdout.split()
    assert (int(one), int(three)) == (0, 2)
    assert float(idle_cpu) < 0.1  # spinning workers would use ~2 x 0.5 s


def test_blas_runs_on_one_thread_except_for_large_products(monkeypatch: pytest.MonkeyPatch) -> None:
    """Small BLAS calls stay single-threaded while executing; prompt-sized ones get the threads."""
    if not [i for i in threadpool_info() if i["user_api"] == "blas"]:
        pytest.skip("numpy's BLAS is not visible to threadpoolctl")
    seen: dict[str, list[int]] = {}

    def blas() -> list[int]:
        return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]

    def probe(node: object) -> None:
        seen["small"] = blas()
        with native.blas_threads(native.BLAS_PARALLEL_FLOPS - 1):
            seen["below"] = blas()
        with native.blas_threads(native.BLAS_PARALLEL_FLOPS):
            seen["large"] = blas()
        seen["after"] = blas()

    monkeypatch.setitem(cpu_device.KERNELS, "probe", probe)
    device = CpuDevice(num_threads=2)
    device.execute([Node("probe", None, (), {})])  # type: ignore[arg-type]
    want = device.num_threads
    assert seen["small"] == seen["below"] == seen["after"] and set(seen["small"]) == {1}
    assert set(seen["large"]) == {want}
