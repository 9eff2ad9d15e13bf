"""Weight products of the cpu plugin's native kernels against their two floors.

For each GGUF weight type, on TinyLlama-1.1B's ffn_up shape (M=5632 rows of K=2048):

* **decode** (N = 1 and 4 activation rows): time per product against the read floor, weight
  bytes / measured read bandwidth. Bandwidth is measured in the same run as BLAS ``sgemv`` over
  a 512 MiB F32 matrix (read-only and multithreaded, the best any kernel here can stream).
  Eight different weight matrices (> L3) are cycled so that every product reads from memory.
* **prompt** (N = 128 and 512): GFLOP/s (2·M·K·N per product) against BLAS ``sgemm`` on the same
  shape with F32 weights (the compute floor), and against the old path (decode the weight to
  F32 with the native decoder, then ``sgemm``) where that decoder exists. F16/BF16 take that
  path in the plugin at prompt sizes, so their "native" column is it.

Medians of ``--repeats`` alternating runs (native, then BLAS, then ...) with ``--threads``
threads for both. Usage: ``python benchmarks/bench_products.py [--type Q4_0 Q8_0 ...]
[--threads N] [--repeats 5]``. Results go to ``benchmarks/RESULTS.md`` by hand.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial

import gguf
import numpy as np
from threadpoolctl import threadpool_limits

from mlplug_cpu.kernels import native

TYPES = (
    "Q4_0",
    "Q4_1",
    "Q5_0",
    "Q5_1",
    "Q8_0",
    "Q2_K",
    "Q3_K",
    "Q4_K",
    "Q5_K",
    "Q6_K",
    "F16",
    "BF16",
)
M, K = 5632, 2048
N_MATRICES = 8


def _weights(name: str, rng: np.random.Generator) -> list[np.ndarray]:
    """Random blocks with small finite fp16 scales (values do not change the speed)."""
    kind = gguf.GGMLQuantizationType[name]
    block, size = gguf.GGML_QUANT_SIZES[kind]
    out = []
    for _ in range(N_MATRICES):
        if name in ("F16", "BF16"):
            w = rng.integers(0x3000, 0x3800, (M, K), dtype=np.uint16).view(np.uint8)
        else:
            w = rng.integers(0, 16, (M, K // block * size), dtype=np.uint8)
        out.append(np.ascontiguousarray(w.reshape(M, -1)))
    return out


def _median(fn: Callable[[], None], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def read_bandwidth(threads: int, repeats: int) -> float:
    """Bytes per second of BLAS sgemv over 512 MiB (best of ``repeats``)."""
    a = np.ones((1 << 14, 1 << 13), np.float32)
    x = np.ones(1 << 13, np.float32)
    with threadpool_limits(limits=threads, user_api="blas"):
        best = min(_median(lambda: a @ x, 1) for _ in range(repeats))
    return a.nbytes / best


def _native(
    kind: int, weights: list[np.ndarray], x: np.ndarray, o: np.ndarray, threads: int
) -> None:
    assert native._native is not None
    n = x.shape[0]
    for w in weights:
        native._native.matmul(kind, w, 0, w.shape[1], x, 0, 4 * K, o, 0, 4 * M, M, K, n, threads)


def _sgemm(weight: np.ndarray, x: np.ndarray, o: np.ndarray) -> None:
    np.matmul(x, weight.T, out=o)


def _dequantize_sgemm(
    kind: int, w: np.ndarray, scratch: np.ndarray, x: np.ndarray, o: np.ndarray, threads: int
) -> None:
    assert native._native is not None
    native._native.dequantize(kind, w, 0, w.shape[1], scratch, 0, M, K, threads)
    np.matmul(x, scratch.T, out=o)


def main() -> int:
    """Run the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--type", nargs="+", default=list(TYPES), choices=TYPES)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    ext = native._native
    if ext is None:
        raise SystemExit("mlplug_cpu._native is not built")
    rng = np.random.default_rng(0)
    bw = read_bandwidth(args.threads, args.repeats)
    print(f"kernels: {ext.isa()}, threads {args.threads}; read bandwidth {bw / 1e9:.1f} GB/s")
    print("| type | N | native | read floor | native / floor | GFLOP/s | sgemm F32 | old path |")
    print("|---|---|---|---|---|---|---|---|")
    f32 = np.ones((M, K), np.float32)
    scratch = np.empty((M, K), np.float32)
    for name in args.type:
        kind = int(gguf.GGMLQuantizationType[name])
        ws = _weights(name, rng)
        has_decoder = name in ("Q4_0", "Q8_0", "Q4_K", "Q6_K", "F16", "BF16")
        for n in (1, 4, 128, 512):
            x = rng.standard_normal((n, K)).astype(np.float32)
            o = np.zeros((n, M), np.float32)
            decode = n <= 4
            weights = ws if decode else ws[:1]
            old = partial(_dequantize_sgemm, kind, ws[0], scratch, x, o, args.threads)
            ours = partial(_native, kind, weights, x, o, args.threads)
            if name in ("F16", "BF16") and not decode:
                ours = old  # the plugin's path for these at prompt sizes
            t_native, t_sgemm, t_old = [], [], []
            with threadpool_limits(limits=args.threads, user_api="blas"):
                for _ in range(args.repeats):  # alternate the sides
                    t_native.append(_median(ours, 1) / len(weights))
                    if not decode:
                        t_sgemm.append(_median(partial(_sgemm, f32, x, o), 1))
                        if has_decoder:
                            t_old.append(_median(old, 1))
            native_s = statistics.median(t_native)
            flops = 2 * M * K * n
            floor = ws[0].nbytes / bw
            sgemm = f"{flops / statistics.median(t_sgemm) / 1e9:.1f}" if t_sgemm else ""
            before = f"{flops / statistics.median(t_old) / 1e9:.1f}" if t_old else ""
            print(
                f"| {name} | {n} | {native_s * 1e3:.2f} ms | {floor * 1e3:.2f} ms | "
                f"{native_s / floor:.2f} | {flops / native_s / 1e9:.1f} | {sgemm} | {before} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
