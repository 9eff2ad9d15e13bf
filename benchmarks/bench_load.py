"""Load speed and footprint: mlplug's GGUF load on cpu next to reading the file.

Generates a llama-shaped GGUF of about the requested size (F16 or Q4_0, random weights), then
in fresh subprocesses measures:

* ``cat FILE > /dev/null`` — the cost of reading the file (page cache warm, like the load);
* ``mlplug``: ``new_backend(FILE)`` + ``load()`` on the cpu backend (weights allocated and every
  byte read from the file into device buffers), with the peak RSS of that process.

Prints a table with the ratios; results go to ``benchmarks/RESULTS.md`` by hand, with the machine.

Usage: ``python benchmarks/bench_load.py [--size-gb 1.0] [--type F16|Q4_0] [--keep DIR]``
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlplug import DType

_CHILD = """
import resource, sys, time
import mlplug
t0 = time.perf_counter()
backend = mlplug.new_backend(sys.argv[1], mlplug.BackendParams(), backend="cpu")
t1 = time.perf_counter()
backend.load()
t2 = time.perf_counter()
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(t1 - t0, t2 - t1, rss)
backend.close()
"""


def make_model(path: Path, size_gb: float, dtype: DType) -> None:
    """Write a llama-shaped model of about ``size_gb`` GB (hidden 2048, ff 5632, like 1.1B)."""
    from mlplug_conformance import synth

    n_embd, n_ff, n_vocab = 2048, 5632, 32000
    bytes_per_param = dtype.type_size / dtype.block_size
    per_layer = (2 * n_embd * n_embd + 2 * n_embd * 256 + 3 * n_embd * n_ff) * bytes_per_param
    embed = 2 * n_embd * n_vocab * bytes_per_param
    layers = max(1, round((size_gb * 1e9 - embed) / per_layer))
    synth.write_llama_gguf(
        path,
        n_layers=layers,
        n_embd=n_embd,
        n_head=32,
        n_head_kv=4,
        n_ff=n_ff,
        n_vocab=n_vocab,
        weight_type=dtype,
        seed=0,
    )


def time_cat(path: Path) -> float:
    """Return the seconds ``cat FILE > /dev/null`` takes."""
    start = time.perf_counter()
    with open(os.devnull, "wb") as sink:
        subprocess.run(["cat", str(path)], stdout=sink, check=True)
    return time.perf_counter() - start


def time_mlplug(path: Path) -> tuple[float, float, int]:
    """Return (construct seconds, load seconds, peak RSS bytes) from a fresh process."""
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path)], capture_output=True, text=True, check=True
    )
    construct, load, rss = out.stdout.split()
    return float(construct), float(load), int(rss)


def main() -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=1.0)
    parser.add_argument("--type", default="F16", choices=["F16", "Q4_0", "Q8_0", "F32"])
    parser.add_argument("--keep", default=None, help="directory to keep the model in")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    folder = Path(args.keep or tempfile.mkdtemp(prefix="mlplug-bench-"))
    path = folder / f"bench-{args.type}-{args.size_gb:g}GB.gguf"
    if not path.exists():
        print(f"writing {path} ...", flush=True)
        make_model(path, args.size_gb, DType[args.type])
    size = path.stat().st_size
    time_cat(path)  # warm the page cache so both sides read from memory
    cats = [time_cat(path) for _ in range(args.repeats)]
    runs = [time_mlplug(path) for _ in range(args.repeats)]
    cat = min(cats)
    construct = min(r[0] for r in runs)
    load = min(r[1] for r in runs)
    rss = max(r[2] for r in runs)
    gb = size / 1e9
    print(f"file: {path.name}  {gb:.3f} GB  ({args.type})  best of {args.repeats}")
    print(f"{'':<28}{'seconds':>10}{'GB/s':>10}{'ratio':>10}")
    print(f"{'cat FILE > /dev/null':<28}{cat:>10.3f}{gb / cat:>10.2f}{1.0:>10.2f}")
    print(f"{'mlplug new_backend':<28}{construct:>10.3f}")
    print(f"{'mlplug load()':<28}{load:>10.3f}{gb / load:>10.2f}{load / cat:>10.2f}")
    print(f"peak RSS {rss / 1e9:.3f} GB = {rss / size:.2f} x file size")
    if args.keep is None:
        path.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
