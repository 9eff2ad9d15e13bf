"""Attention time and graph size of the 1.1B llama shape on the cpu plugin, per decode token.

Runs the model of ``bench_model.py`` (``--model FILE``, or generated into ``--keep DIR``) through
mlplug on the cpu backend and times every kernel the device executes, without a profiler's
overhead: the attention node (``scaled_dot_product_attention``) and all nodes, and counts the
nodes a decode step executes. The attention path alternates between the native kernel and the
numpy kernel step by step (A B A B …, same process, same cache), so machine load hits both
alike; prompts alternate likewise. Reports medians.

Usage: ``python benchmarks/bench_attention.py [--model FILE | --keep DIR --type Q4_0]
[--threads N] [--prompt 512] [--decode 32] [--prompt-repeats 2] [--flash 0 1]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import bench_model  # the model file and token ids of the model benchmark


class Timer:
    """Wraps the cpu plugin's kernel table: seconds per op name and nodes executed."""

    def __init__(self) -> None:
        self.seconds: Counter[str] = Counter()
        self.nodes = 0

    @contextmanager
    def installed(self) -> Iterator[None]:
        from mlplug_cpu import kernels

        saved = dict(kernels.KERNELS)

        def timed(name: str, kernel: Callable[[Any], None]) -> Callable[[Any], None]:
            def run(node: Any) -> None:
                start = time.perf_counter()
                kernel(node)
                self.seconds[name] += time.perf_counter() - start
                self.nodes += 1

            return run

        kernels.KERNELS.update({name: timed(name, k) for name, k in saved.items()})
        try:
            yield
        finally:
            kernels.KERNELS.update(saved)

    def reset(self) -> None:
        self.seconds.clear()
        self.nodes = 0


@contextmanager
def attention_path(native: bool) -> Iterator[None]:
    """Run attention natively or in numpy (the products stay native either way)."""
    from mlplug_cpu.kernels import attention

    saved = attention._native
    if not native:
        attention._native = lambda node, refs: False  # type: ignore[assignment]
    try:
        yield
    finally:
        attention._native = saved


def measure(path: Path, args: argparse.Namespace, flash: bool) -> dict[str, Any]:
    """Time prompt and decode with both attention paths, alternating."""
    import mlplug
    from mlplug.models.llama import Batch, Llama

    params = mlplug.BackendParams(num_threads=args.threads, flash_attention=flash)
    backend = mlplug.new_backend(str(path), params, backend="cpu")
    backend.load()
    model = Llama(backend)
    cache = model.new_cache(capacity=args.prompt + args.decode + 64, max_batch=512)
    timer = Timer()
    rows: dict[str, dict[str, list[float]]] = {
        side: {"prompt_att": [], "prompt_all": [], "decode_att": [], "decode_all": []}
        for side in ("native", "numpy")
    }
    prompt = bench_model._tokens(args.prompt, 1)
    steps = bench_model._tokens(args.decode, 2)
    nodes = 0
    with timer.installed():
        for rep in range(args.prompt_repeats):
            for side in ("native", "numpy") if rep % 2 == 0 else ("numpy", "native"):
                cache.remove(0, 0)
                timer.reset()
                with attention_path(side == "native"):
                    start = time.perf_counter()
                    model.forward(cache, Batch.single(prompt, 0))
                    rows[side]["prompt_all"].append(time.perf_counter() - start)
                rows[side]["prompt_att"].append(timer.seconds["scaled_dot_product_attention"])
        for i, tok in enumerate(steps):
            side = ("native", "numpy")[i % 2]
            timer.reset()
            with attention_path(side == "native"):
                start = time.perf_counter()
                model.forward(cache, Batch.single([tok], args.prompt + i))
                rows[side]["decode_all"].append(time.perf_counter() - start)
            rows[side]["decode_att"].append(timer.seconds["scaled_dot_product_attention"])
            nodes = timer.nodes
    config = str(backend.cache_config())
    backend.close()
    return {"rows": rows, "nodes": nodes, "config": config}


def main() -> int:
    """Run and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a GGUF of bench_model.py's shape")
    parser.add_argument("--keep", default=None, help="directory to keep (and reuse) models in")
    parser.add_argument("--type", default="Q4_0", choices=bench_model.TYPES)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--prompt", type=int, default=512)
    parser.add_argument("--decode", type=int, default=32)
    parser.add_argument("--prompt-repeats", type=int, default=2)
    parser.add_argument("--flash", type=int, nargs="+", default=[1, 0], choices=(0, 1))
    args = parser.parse_args()

    if args.model:
        path = Path(args.model)
    else:
        folder = Path(args.keep or ".")
        path = folder / f"tinyllama-shape-{args.type}.gguf"
        if not path.exists():
            bench_model.make_model(path, args.type)
    from mlplug_cpu.kernels import attention

    print(bench_model.machine())
    print(
        f"{path.name}, threads {args.threads}, prompt {args.prompt}, decode {args.decode} "
        f"steps after it (alternating native/numpy attention), attention {attention.active()}"
    )
    print(
        "\n| flash_attention | attention | prompt: attention ms | prompt ms | "
        "decode: attention ms/token | decode ms/token | nodes/token |"
    )
    print("|---|---|---|---|---|---|---|")
    for flash in args.flash:
        result = measure(path, args, bool(flash))
        for side, r in result["rows"].items():
            med = {key: 1e3 * statistics.median(v) for key, v in r.items()}
            print(
                f"| {bool(flash)} | {side} | {med['prompt_att']:.0f} | {med['prompt_all']:.0f} | "
                f"{med['decode_att']:.2f} | {med['decode_all']:.1f} | {result['nodes']} |",
                flush=True,
            )
        print(f"<!-- {result['config']} -->")
    return 0


if __name__ == "__main__":
    sys.exit(main())
