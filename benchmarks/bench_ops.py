"""The cpu plugin's small ops per decode token: the native kernels (``_native_ops.c``) vs numpy.

Runs a model on the cpu backend — the 1.1B llama shape of ``bench_model.py`` (generated into
``--keep DIR``) or any GGUF given with ``--model FILE`` (e.g. the Gemma 3 270M checkpoint) —
and times every kernel call except the products and attention: add/mul, rms_norm(_add), rope,
set_rows, swiglu/geglu, rows, softmax… Decode steps alternate between the native small ops and
their numpy paths (A B A B …, same process, same cache; products and attention stay native), so
machine load hits both alike. Per op kind it prints calls per token and, as medians over the
steps, µs per call in CPU time of the calling thread (what the call costs, whatever else loads
the machine) and in wall time, and ms per token; and the floor of a call: the bytes its operands
and result occupy over this machine's memory bandwidth (a numpy copy). A prompt of ``--prompt``
tokens is timed the same way (wall time per op kind, best of two per side).

Usage: ``python benchmarks/bench_ops.py [--model FILE | --keep DIR --type Q4_0] [--threads 2]
[--prompt 64] [--decode 32]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import bench_model  # the model file, token ids and bandwidth of the model benchmark

SKIP = {"mulmat", "mulmat_id", "scaled_dot_product_attention"}
"""Kernels that are not small ops (timed by bench_products.py and bench_attention.py)."""


class _NoSmallOps:
    """The C extension with its small-op entry points declining (so numpy runs them)."""

    def __init__(self, ext: Any) -> None:
        self._ext = ext

    def __getattr__(self, name: str) -> Any:
        if name.startswith("ops_"):
            return lambda *args: False
        return getattr(self._ext, name)


@contextmanager
def small_ops(native_path: bool) -> Iterator[None]:
    """Run the small ops natively or in numpy (products and attention stay native)."""
    from mlplug_cpu.kernels import native

    saved = native.extension
    if not native_path:
        ext = saved()
        native.extension = lambda: None if ext is None else _NoSmallOps(ext)  # type: ignore[assignment]
    try:
        yield
    finally:
        native.extension = saved  # type: ignore[method-assign]


def touched(node: Any) -> int:
    """Return the bytes a node reads and writes at least (its floor's numerator)."""
    if node.op == "set_rows":  # the rows of a, the ids, the rows written (not all of dst)
        a, dst, ids = node.srcs
        return int(a.nbytes + ids.nbytes + dst.dtype.nbytes(a.n))
    if node.op == "rows":  # the rows gathered (not the whole table), the ids, the result
        table, ids = node.srcs
        return int(node.out.nbytes + ids.nbytes + table.dtype.nbytes(node.out.n))
    return sum(r.nbytes for r in (node.out, *node.srcs) if r is not None)


class Timer:
    """Times each kernel call (thread CPU and wall) by op kind; counts bytes touched."""

    def __init__(self) -> None:
        self.cpu: Counter[str] = Counter()
        self.wall: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()
        self.bytes: Counter[str] = Counter()

    @contextmanager
    def installed(self) -> Iterator[None]:
        from mlplug_cpu import device

        saved = device.KERNELS

        def timed(name: str, kernel: Callable[[Any], None]) -> Callable[[Any], None]:
            if name in SKIP:
                return kernel

            def run(node: Any) -> None:
                w0, c0 = time.perf_counter(), time.thread_time()
                kernel(node)
                self.cpu[name] += time.thread_time() - c0
                self.wall[name] += time.perf_counter() - w0
                self.calls[name] += 1
                self.bytes[name] += touched(node)

            return run

        # A new dict: the device remembers its kernels per table object.
        device.KERNELS = {name: timed(name, k) for name, k in saved.items()}
        try:
            yield
        finally:
            device.KERNELS = saved

    def reset(self) -> None:
        for counter in (self.cpu, self.wall, self.calls, self.bytes):
            counter.clear()


def measure(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Decode steps alternating native/numpy small ops; per side and op, lists over steps."""
    import mlplug
    from mlplug.models import from_backend
    from mlplug.nn import Batch

    backend = mlplug.new_backend(
        str(path), mlplug.BackendParams(num_threads=args.threads), backend="cpu"
    )
    backend.load()
    model = from_backend(backend)
    cache = model.new_cache(capacity=args.prompt + args.decode + 64, max_batch=512)
    timer = Timer()
    per: dict[str, dict[str, dict[str, list[float]]]] = {
        side: defaultdict(lambda: defaultdict(list)) for side in ("native", "numpy")
    }
    prompt_ms: dict[str, dict[str, list[float]]] = {
        "native": defaultdict(list),
        "numpy": defaultdict(list),
    }
    prompt = bench_model._tokens(args.prompt, 1)
    steps = bench_model._tokens(args.decode, 2)
    with timer.installed():
        for side in ("native", "numpy", "numpy", "native"):
            cache.remove(0, 0)
            timer.reset()
            with small_ops(side == "native"):
                model.forward(cache, Batch.single(prompt, 0))
            for op in timer.calls:
                prompt_ms[side][op].append(1e3 * timer.wall[op])
        for i, tok in enumerate(steps):
            side = ("native", "numpy")[i % 2]
            timer.reset()
            with small_ops(side == "native"):
                model.forward(cache, Batch.single([tok], args.prompt + i))
            for op, n in timer.calls.items():
                row = per[side][op]
                row["calls"].append(n)
                row["cpu_us"].append(1e6 * timer.cpu[op] / n)
                row["wall_us"].append(1e6 * timer.wall[op] / n)
                row["bytes"].append(timer.bytes[op] / n)
    backend.close()
    return {"per": per, "prompt_ms": prompt_ms}


def main() -> int:
    """Run and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a GGUF file (default: the 1.1B shape)")
    parser.add_argument("--keep", default=None, help="directory to keep (and reuse) models in")
    parser.add_argument("--type", default="Q4_0", choices=bench_model.TYPES)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--decode", type=int, default=32)
    args = parser.parse_args()

    if args.model:
        path = Path(args.model)
    else:
        path = Path(args.keep or ".") / f"tinyllama-shape-{args.type}.gguf"
        if not path.exists():
            bench_model.make_model(path, args.type)
    bandwidth = bench_model.bandwidth() / 2  # its figure counts read + write bytes
    print(bench_model.machine())
    print(
        f"{path.name}, threads {args.threads}, {args.decode} decode steps after a prompt of "
        f"{args.prompt} (alternating native/numpy small ops), copy bandwidth "
        f"{bandwidth / 1e9:.1f} GB/s each way"
    )
    result = measure(path, args)
    per = result["per"]
    print(
        "\n| op | calls/token | floor µs/call | numpy µs/call CPU (wall) | "
        "native µs/call CPU (wall) | numpy ms/token CPU | native ms/token CPU |"
    )
    print("|---|---|---|---|---|---|---|")
    totals = {"native": 0.0, "numpy": 0.0}
    for op in sorted(per["native"], key=lambda o: -statistics.median(per["numpy"][o]["cpu_us"])):
        med = {side: {k: statistics.median(v) for k, v in per[side][op].items()} for side in per}
        calls = med["native"]["calls"]
        floor = 1e6 * med["native"]["bytes"] / bandwidth
        ms = {side: med[side]["cpu_us"] * calls / 1e3 for side in med}
        for side in totals:
            totals[side] += ms[side]
        print(
            f"| {op} | {calls:.0f} | {floor:.2f} | {med['numpy']['cpu_us']:.1f} "
            f"({med['numpy']['wall_us']:.1f}) | {med['native']['cpu_us']:.1f} "
            f"({med['native']['wall_us']:.1f}) | {ms['numpy']:.2f} | {ms['native']:.2f} |"
        )
    print(f"| all small ops | | | | | {totals['numpy']:.2f} | {totals['native']:.2f} |")
    prompt = result["prompt_ms"]
    print(f"\nprompt of {args.prompt} tokens, wall ms per op kind (best of two; threads on):")
    print("\n| op | numpy ms | native ms |\n|---|---|---|")
    sums = {"native": 0.0, "numpy": 0.0}
    for op in sorted(prompt["native"], key=lambda o: -min(prompt["numpy"][o])):
        best = {side: min(prompt[side][op]) for side in prompt}
        for side in sums:
            sums[side] += best[side]
        print(f"| {op} | {best['numpy']:.2f} | {best['native']:.2f} |")
    print(f"| all small ops | {sums['numpy']:.2f} | {sums['native']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
