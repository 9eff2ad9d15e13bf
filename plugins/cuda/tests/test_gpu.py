"""On a real GPU: the CUDA C kernels against their numpy twins at model sizes, CUDA-graph
replay against eager execution, cupy's out-of-memory, peer copies.

Every test here skips, with the probe's reason, where no usable GPU is found (CI, this
project's development machines). ``benchmarks/gpu_check.sh`` runs them on a GPU machine.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from mlplug.device import DeviceOutOfMemory, DType, Node, TensorRef, contiguous_strides
from mlplug_cuda import plugin
from mlplug_cuda.kernels.mmvq import TYPES


def _gpu_reason() -> str | None:
    if os.environ.get(plugin.ENV_EMULATE, "").strip():
        return f"{plugin.ENV_EMULATE} is set: emulation, not a GPU"
    ok, reason = plugin.probe()
    return None if ok else f"no usable GPU: {reason}"


pytestmark = pytest.mark.skipif(_gpu_reason() is not None, reason=str(_gpu_reason()))


@pytest.fixture(scope="module")
def dev() -> Any:
    from mlplug_cuda.device import CudaDevice
    from mlplug_cuda.xp import gpu

    device = CudaDevice(gpu(), 0)
    yield device
    device.close()


def _upload(dev: Any, data: np.ndarray, ne: tuple[int, int, int, int], dtype: DType) -> TensorRef:
    raw = np.ascontiguousarray(data).view(np.uint8).reshape(-1)
    buffer = dev.alloc(raw.size)
    buffer.write(0, raw.tobytes())
    return TensorRef(buffer, 0, ne, contiguous_strides(ne, dtype), dtype)


def test_quantize_q8_1_kernel_equals_its_twin(dev: Any) -> None:
    from mlplug_cuda import compiler
    from mlplug_cuda.kernels.mmvq import quantize_q8_1_twin

    cp = dev.api.xp
    y = np.random.default_rng(0).standard_normal((8, 4096)).astype(np.float32)
    y[1, :32] = 0
    qy, dy, sy = (
        cp.empty((8, 4096), np.int8),
        cp.empty((8, 128), np.float32),
        cp.empty((8, 256), np.int32),
    )
    kernel = compiler.function("mmvq.cu", "quantize_q8_1", 0)
    kernel((128, 8), (32,), (cp.asarray(y), np.int32(4096), np.int32(8), qy, dy, sy))
    want = quantize_q8_1_twin(y)
    for got, ref in zip((qy, dy, sy), want, strict=True):
        np.testing.assert_array_equal(cp.asnumpy(got), ref)


@pytest.mark.parametrize("ncols", [1, 8])
@pytest.mark.parametrize(
    "dtype",
    sorted(TYPES, key=lambda d: d.value),
    ids=lambda d: d.name,
)
def test_mmvq_kernel_equals_its_twin_at_model_size(
    dev: Any, dtype: DType, ncols: int, random_blocks: Callable[..., np.ndarray]
) -> None:
    from mlplug_cuda.kernels import mmvq

    rows, k = 2048, 4096
    blocks = random_blocks(dtype, rows, k, 1)
    a = _upload(dev, blocks, (k, rows, 1, 1), dtype)
    y = np.random.default_rng(2).standard_normal((ncols, k)).astype(np.float32)
    got = dev.api.asnumpy(mmvq.mmvq(dev.api, 0, a, dev.api.xp.asarray(y)))
    from mlplug_cuda.xp import emulation

    want = mmvq.mmvq_twin(emulation(), blocks, dtype, *mmvq.quantize_q8_1_twin(y))
    # Integer sums are exact on both sides; only the F32 accumulation order differs.
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    a.buffer.free()  # type: ignore[union-attr]


@pytest.mark.parametrize("tokens", [1, 4, 8])
def test_flash_decode_kernel_equals_its_twin(dev: Any, tokens: int) -> None:
    from mlplug_cuda.kernels.attention import SPLIT, flash_decode_twin

    rng = np.random.default_rng(tokens)
    heads, kv_heads, d, length = 32, 8, 128, 1500
    q = rng.standard_normal((tokens, heads, d)).astype(np.float32)
    k = rng.standard_normal((length, kv_heads, d)).astype(np.float16)
    v = rng.standard_normal((length, kv_heads, d)).astype(np.float16)
    mask = np.zeros((tokens, length), np.float16)
    mask[:, -7:] = -np.inf
    qr = _upload(dev, q, (d, heads, tokens, 1), DType.F32)
    kr = _upload(dev, k, (d, kv_heads, length, 1), DType.F16)
    vr = _upload(dev, v, (d, kv_heads, length, 1), DType.F16)
    mr = _upload(dev, mask, (length, tokens, 1, 1), DType.F16)
    out = _upload(dev, np.zeros((tokens, heads, d), np.float32), (d, heads, tokens, 1), DType.F32)
    node = Node(
        "scaled_dot_product_attention", out, (qr, kr, vr, mr), {"scale": 0.088, "permuted_v": False}
    )
    dev.execute([node])
    dev.synchronize()
    got = np.frombuffer(out.buffer.read(0, out.nbytes), np.float32).reshape(tokens, heads, d)  # type: ignore[union-attr]
    want = flash_decode_twin(q, k, v, mask, 0.088, SPLIT)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_graph_replay_equals_eager(dev: Any) -> None:
    from mlplug_cuda.device import CudaDevice

    replaying = CudaDevice(dev.api, 0, graphs=True)
    rng = np.random.default_rng(4)
    w_host = rng.standard_normal((4096, 4096)).astype(np.float16)
    inputs = [rng.standard_normal(4096).astype(np.float32) for _ in range(4)]
    results: dict[bool, list[np.ndarray]] = {}
    for graphs, device in ((False, dev), (True, replaying)):
        w = _upload(device, w_host, (4096, 4096, 1, 1), DType.F16)
        x = _upload(device, np.zeros(4096, np.float32), (4096, 1, 1, 1), DType.F32)
        n = _upload(device, np.zeros(4096, np.float32), (4096, 1, 1, 1), DType.F32)
        y = _upload(device, np.zeros(4096, np.float32), (4096, 1, 1, 1), DType.F32)
        nodes = [Node("rms_norm", n, (x, None), {"eps": 1e-5}), Node("mulmat", y, (w, n), {})]
        out = []
        for values in inputs:
            x.buffer.write(0, values.tobytes())  # type: ignore[union-attr]
            device.execute(nodes)
            device.synchronize()
            out.append(np.frombuffer(y.buffer.read(0, 4 * 4096), np.float32).copy())  # type: ignore[union-attr]
        results[graphs] = out
    assert replaying.replay is not None
    assert (replaying.replay.captures, replaying.replay.replays) == (1, 2)
    for a, b in zip(results[False], results[True], strict=True):
        np.testing.assert_array_equal(a, b)
    replaying.close()


def test_cupy_out_of_memory_is_device_out_of_memory(dev: Any) -> None:
    with pytest.raises(DeviceOutOfMemory, match=r"^\[CUDA0\] cannot allocate"):
        dev.alloc(1 << 50)


def test_peer_copy_between_two_gpus() -> None:
    from mlplug_cuda.device import CudaDevice
    from mlplug_cuda.xp import gpu

    api = gpu()
    if api.xp.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("one GPU: no peer copy to test")
    a, b = CudaDevice(api, 0), CudaDevice(api, 1)
    src, dst = a.alloc(1024), b.alloc(1024)
    src.write(0, bytes(range(256)) * 4)
    assert b.copy_from(src, 0, dst, 0, 1024)
    b.synchronize()
    assert dst.read(0, 1024) == bytes(range(256)) * 4
