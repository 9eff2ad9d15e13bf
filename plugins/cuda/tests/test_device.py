"""The CUDA devices under emulation: memory caps and ErrNoMem, placement over several GPUs,
peer copies, declined dtypes, CUDA errors named by op and device, cache layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFValueType

import mlplug
from mlplug.device import OPS, DType, Node, TensorRef
from mlplug_conformance import synth
from mlplug_cuda import device as cuda_device
from mlplug_cuda.device import CudaDevice, CudaKernelError, EmulatedCudaError
from mlplug_cuda.xp import emulation


def _backend(**params: object) -> mlplug.Backend:
    return mlplug.new_backend(None, mlplug.BackendParams(**params), backend="cuda")  # type: ignore[arg-type]


def test_every_op_of_the_table_has_a_kernel() -> None:
    assert set(cuda_device.KERNELS) == set(OPS)


def test_devices_are_the_cpu_then_one_per_gpu(emulate: pytest.MonkeyPatch) -> None:
    with _backend() as backend:
        mem = backend.backend_memory()
        assert mem.cpu.name == "CPU"
        assert [(g.name, g.id) for g in mem.gpus] == [
            ("CUDA0", "emulated-0"),
            ("CUDA1", "emulated-1"),
        ]


def test_a_cap_turns_an_allocation_into_errnomem(emulate: pytest.MonkeyPatch) -> None:
    emulate.setenv("MLPLUG_CUDA_MEMORY_LIMIT", "4KiB")
    with _backend(num_gpu_layers=1) as backend:
        ctx = backend.new_context()
        ctx.layer(0).from_float_slice(range(512), 512)  # 2 KiB fits
        with pytest.raises(mlplug.ErrNoMem) as caught:
            ctx.layer(0).from_float_slice(range(1024), 1024)  # 4 KiB more does not
        text = str(caught.value)
        assert "CUDA0.ID=emulated-0" in text and "F" in text
        # The backend stays usable after the failure.
        a = ctx.layer(0).from_float_slice([1, 2, 3], 3)
        y = a.add(ctx, a)
        ctx.forward(y).compute(y)
        assert y.floats().tolist() == [2, 4, 6]


def test_device_memory_reports_the_cap() -> None:
    dev = CudaDevice(emulation(), 0, memory_limit=1000)
    assert (dev.total_memory(), dev.free_memory()) == (1000, 1000)
    buf = dev.alloc(600)
    assert dev.free_memory() == 400
    with pytest.raises(mlplug.device.DeviceOutOfMemory):
        dev.alloc(500)
    buf.free()
    assert dev.free_memory() == 1000
    assert dev.set_memory_limit(None) == 1000


def _placement_model(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    tensors = [
        (f"blk.{i}.w", rng.standard_normal((4, 8)).astype(np.float32), DType.F32) for i in range(4)
    ]
    return synth.write_gguf(
        tmp_path / "m.gguf", tensors, metadata={"llama.block_count": (GGUFValueType.UINT32, 4)}
    )


def test_layers_spread_over_emulated_gpus_and_transfers_are_peer_copies(
    emulate: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = _placement_model(tmp_path)
    params = mlplug.BackendParams(num_gpu_layers=4, main_gpu=1, tensor_split=(1, 1))
    with mlplug.new_backend(str(path), params, backend="cuda") as backend:
        backend.load()
        names = [g.name for g in backend.backend_memory().gpus]
        assert names == ["CUDA0", "CUDA1"]
        w0, w3 = backend.get("blk.0.w"), backend.get("blk.3.w")
        ctx = backend.new_context()
        y = w0.add(ctx, w3)  # weights on CUDA0 and CUDA1: runs on w0's device, w3 is moved
        ctx.forward(y).compute(y)
        np.testing.assert_array_equal(y.floats(), w0.floats() + w3.floats())
        gpus = [d for d in backend.devices if isinstance(d, CudaDevice)]  # type: ignore[attr-defined]
        assert sum(d.direct_copies for d in gpus) == 1


def test_unsupported_names_the_dtype_it_cannot_write() -> None:
    dev = CudaDevice(emulation(), 0)
    ref = TensorRef(None, 0, (256, 1, 1, 1), (110, 110, 110, 110), DType.Q3_K)
    f32 = TensorRef(None, 0, (256, 1, 1, 1), (4, 1024, 1024, 1024), DType.F32)
    assert dev.unsupported(Node("copy", ref, (f32, ref))) == (
        "[CUDA0] copy: cannot write Q3_K on the GPU"
    )
    assert dev.unsupported(Node("copy", f32, (ref, f32))) is None  # decoding Q3_K is fine
    assert dev.unsupported(Node("contiguous", ref, (ref,))) is None  # bytes only


def test_a_cuda_error_in_a_kernel_names_the_op_and_device(
    emulate: pytest.MonkeyPatch,
) -> None:
    def broken(node: Node) -> None:
        raise EmulatedCudaError("an illegal memory access was encountered")

    emulate.setitem(cuda_device.KERNELS, "neg", broken)
    backend = _backend(num_gpu_layers=1)
    ctx = backend.new_context()
    a = ctx.layer(0).from_float_slice([1, 2, 3], 3)
    y = a.neg(ctx)
    ctx.forward(y)
    with pytest.raises(CudaKernelError, match=r"^\[CUDA0\] neg: CUDA error: an illegal memory"):
        ctx.compute(y)
    backend.close()  # still closes, and frees the GPUs' memory
    assert all(d.allocated == 0 for d in backend.devices[1:])  # type: ignore[attr-defined]


def test_flash_cache_layout() -> None:
    dev = CudaDevice(emulation(), 0)
    flash, plain = dev.cache_config(True), dev.cache_config(False)
    assert (flash.permuted_v, flash.mask_dtype, flash.cache_padding) == (False, DType.F16, 256)
    assert plain.permuted_v
