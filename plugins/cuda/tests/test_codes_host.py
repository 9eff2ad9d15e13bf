"""The CUDA C decoding of every mmvq type (``kernels/cuda/codes.cuh``), run on the host.

``codes.cuh`` holds pure functions (a block's bytes → an element's integer code, a sub-block's
scale and min); compiled with the host C++ compiler they are checked value by value against the
numpy element maps of :mod:`mlplug_cuda.kernels.quant`, which ``test_kernels.py`` checks against
gguf. So the CUDA kernels' decoding is verified without a GPU; the kernels' arithmetic around it
(dp4a sums, warp reductions) is verified by ``test_gpu.py`` on a GPU.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from mlplug.device import DType
from mlplug_cuda.kernels.mmvq import TYPES
from mlplug_cuda.kernels.quant import CODES, codes
from mlplug_cuda.xp import emulation

_HARNESS = r"""
#include <cmath>
#define __device__
#define __forceinline__ inline
typedef unsigned char u8;
typedef signed char i8;
static inline float f16_at(const u8* p) {
    const unsigned h = p[0] | (p[1] << 8), e = (h >> 10) & 31, f = h & 1023;
    float v = e == 0 ? std::ldexp((float)f, -24)
            : e == 31 ? (f ? NAN : INFINITY) : std::ldexp((float)(f | 1024), (int)e - 25);
    return (h >> 15) ? -v : v;
}
#include "codes.cuh"
template <typename T>
static void run(const u8* data, int nblocks, int* q, float* d, float* m) {
    for (int b = 0; b < nblocks; ++b) {
        const u8* blk = data + (long)b * T::S;
        for (int e = 0; e < T::B; ++e) q[b * T::B + e] = T::code(blk, e);
        for (int s = 0; s < T::B / T::SUB; ++s)
            T::scale(blk, s, d[b * (T::B / T::SUB) + s], m[b * (T::B / T::SUB) + s]);
    }
}
#define ENTRY(NAME, T) \
    extern "C" void NAME(const u8* x, int n, int* q, float* d, float* m) { run<T>(x, n, q, d, m); }
ENTRY(codes_q4_0, Q4_0) ENTRY(codes_q4_1, Q4_1) ENTRY(codes_q5_0, Q5_0) ENTRY(codes_q5_1, Q5_1)
ENTRY(codes_q8_0, Q8_0) ENTRY(codes_q2_k, Q2_K) ENTRY(codes_q3_k, Q3_K) ENTRY(codes_q4_k, Q4_K)
ENTRY(codes_q5_k, Q5_K) ENTRY(codes_q6_k, Q6_K)
"""


@pytest.fixture(scope="module")
def host_codes(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    compiler = shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        pytest.skip("no host C++ compiler (g++) to compile codes.cuh for the host")
    folder = tmp_path_factory.mktemp("codes")
    (folder / "harness.cpp").write_text(_HARNESS)
    header = resources.files("mlplug_cuda.kernels") / "cuda" / "codes.cuh"
    (folder / "codes.cuh").write_text(header.read_text(encoding="utf-8"))
    library = folder / "codes.so"
    subprocess.run(
        [compiler, "-O1", "-shared", "-fPIC", "-o", str(library), str(folder / "harness.cpp")],
        check=True,
        capture_output=True,
    )
    return ctypes.CDLL(str(Path(library)))


@pytest.mark.parametrize("dtype", sorted(TYPES, key=lambda d: d.value), ids=lambda d: d.name)
def test_cuda_codes_equal_the_numpy_twin(
    host_codes: ctypes.CDLL, dtype: DType, random_blocks: Callable[..., np.ndarray]
) -> None:
    blocks = np.ascontiguousarray(
        random_blocks(dtype, 4, 512, seed=21).reshape(-1, dtype.type_size)
    )
    n = blocks.shape[0]
    subs = dtype.block_size // CODES[dtype].sub
    q = np.zeros(n * dtype.block_size, np.int32)
    d = np.zeros(n * subs, np.float32)
    m = np.zeros(n * subs, np.float32)
    fn = getattr(host_codes, "codes_" + dtype.name.lower())
    fn(*(a.ctypes.data_as(ctypes.c_void_p) for a in (blocks,)), ctypes.c_int(n),
       *(a.ctypes.data_as(ctypes.c_void_p) for a in (q, d, m)))  # fmt: skip
    want_q, want_d, want_m = codes(emulation(), blocks, dtype)
    np.testing.assert_array_equal(q.reshape(want_q.shape), want_q)
    np.testing.assert_array_equal(d.reshape(want_d.shape), want_d)
    np.testing.assert_array_equal(m.reshape(want_m.shape), want_m)
