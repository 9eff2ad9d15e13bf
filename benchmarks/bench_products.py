"""Weight products of the cpu plugin's native kernels against their two floors.

For each GGUF weight type, on TinyLlama-1.1B's ffn_up shape (M=5632 rows of K=2048):

* **decode** (N = 1 and 4 activation rows): time per product against the read floor, weight
  bytes / measured read bandwidth. Bandwidth is measured in the same run as BLAS ``sgemv`` over
  a 512 MiB F32 matrix (read-only and multithreaded, the best any kernel here can stream).
  Eight different weight matrices (> L3) are cycled so that every product reads from memory.
* **prompt** (N = 128 and 512): GFLOP/s (2·M·K·N per product) against BLAS ``sgemm`` on the same
  shape with F32 weights (the compute floor), and against the old path (decode the weight to
  F32 with the native decoder, then ``sgemm``) where that decoder exists. Without AVX-512,
  F16/BF16 take that path in the plugin at prompt sizes, so their "native" column is it.

Medians of ``--repeats`` alternating runs (native, then BLAS, then ...) with ``--threads``
threads for both.

``--decode-step`` instead times what one decode token of the 1.1B llama shape asks of the
products: the seven matrices of a layer (q 2048x2048, k and v 256x2048, o 2048x2048, gate and
up 5632x2048, down 2048x5632) for ``--layers`` distinct layers (more than the L3 cache), one
activation row each, on 1 and 2 threads. For each thread count it measures the read bandwidth
first (BLAS ``sgemv`` over 512 MiB on as many threads) and prints the products' GB/s against it
(the 1.2x goal of issue #10.1 is ``ratio <= 1.2``), wall and CPU time per 155-call step (CPU
time: ``time.process_time``, all threads; it stays meaningful when other jobs share the
machine), and µs per call. Bandwidth and products alternate ``--repeats`` times; best and
median are printed.

Usage: ``python benchmarks/bench_products.py [--type Q4_0 Q8_0 ...] [--threads N]
[--repeats 5] [--decode-step [--layers 6]]``. Results go to ``benchmarks/RESULTS.md`` by hand.
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


# (rows, K) of one layer's products in TinyLlama-1.1B, in the order a decode step runs them.
LAYER_SHAPES = (
    (2048, 2048),
    (256, 2048),
    (256, 2048),
    (2048, 2048),
    (5632, 2048),
    (5632, 2048),
    (2048, 5632),
)
STEP_CALLS = 155  # 22 layers x 7 products + the output product


def _step(
    kind: int,
    mats: list[tuple[int, int, np.ndarray]],
    xs: dict[int, np.ndarray],
    outs: dict[int, np.ndarray],
    threads: int,
) -> None:
    assert native._native is not None
    for m, k, w in mats:
        x, o = xs[k], outs[m]
        native._native.matmul(kind, w, 0, w.shape[1], x, 0, 4 * k, o, 0, 4 * m, m, k, 1, threads)


def decode_step(names: list[str], layers: int, repeats: int) -> None:
    """Print the decode-step table (see the module doc)."""
    assert native._native is not None
    ext = native._native
    rng = np.random.default_rng(0)
    print(f"kernels: {ext.isa()}; {layers} layers of the 1.1B shape, N=1, cycled")
    print(
        "| type | threads | read GB/s | products GB/s (best, median) | best / floor "
        "| per step and call |"
    )
    print("|---|---|---|---|---|---|")
    for name in names:
        kind = int(gguf.GGMLQuantizationType[name])
        block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[name]]
        mats = [
            (m, k, rng.integers(0, 16, (m, k // block * size), dtype=np.uint8))
            for _ in range(layers)
            for m, k in LAYER_SHAPES
        ]
        total = sum(w.nbytes for _, _, w in mats)
        xs = {k: rng.standard_normal((1, k)).astype(np.float32) for k in (2048, 5632)}
        outs = {m: np.zeros((1, m), np.float32) for m in (256, 2048, 5632)}

        for threads in (1, 2):
            bws, walls, cpus = [], [], []
            for _ in range(repeats):
                bws.append(read_bandwidth(threads, 1))
                start, cpu = time.perf_counter(), time.process_time()
                _step(kind, mats, xs, outs, threads)
                walls.append(time.perf_counter() - start)
                cpus.append(time.process_time() - cpu)
            bw = max(bws)
            best, median = min(walls), statistics.median(walls)
            per_step = STEP_CALLS / len(mats)
            print(
                f"| {name} | {threads} | {bw / 1e9:.1f} | {total / best / 1e9:.1f}, "
                f"{total / median / 1e9:.1f} | {best / (total / bw):.2f} | "
                f"step {best * per_step * 1e3:.1f} ms wall, "
                f"{statistics.median(cpus) * per_step * 1e3:.1f} ms CPU, "
                f"{best / len(mats) * 1e6:.0f} µs/call |",
                flush=True,
            )


def main() -> int:
    """Run the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--type", nargs="+", default=list(TYPES), choices=TYPES)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--decode-step", action="store_true")
    parser.add_argument("--layers", type=int, default=6)
    args = parser.parse_args()
    ext = native._native
    if ext is None:
        raise SystemExit("mlplug_cpu._native is not built")
    if args.decode_step:
        decode_step(args.type, args.layers, args.repeats)
        return 0
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
            if name in ("F16", "BF16") and not decode and not ext.wide_float():
                ours = old  # the plugin's path for these at prompt sizes without AVX-512
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
