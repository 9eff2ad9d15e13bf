"""CUDA speed: a llama-shaped Q4_0 model on the cuda backend, against the bandwidth floor.

Generates (or reuses, with ``--keep DIR``) the TinyLlama-1.1B-shaped GGUF of ``bench_model.py``
(random weights, ``--type``, default Q4_0), loads it on the ``cuda`` backend with every layer on
GPU 0 (flash attention on), and times

* **prompt**: one batch of ``--prompt`` token ids (default 512) from an empty cache, best of
  ``--repeats``;
* **decode**: ``--decode`` single-token steps (default 64) continuing that sequence.

Floors (DESIGN §7): decode floor = weight bytes read per token / ``--bandwidth`` (default 4.3e12
B/s, an H200's measured device-to-device copy rate); the script also measures this GPU's copy
bandwidth with cupy (read + write bytes counted) and prints both. llama.cpp's CUDA build is not
installed on the GPU machines this project borrows, so no llama.cpp ratio is printed here.

Usage: ``python benchmarks/bench_cuda.py [--type Q4_0] [--keep DIR] [--prompt 512]
[--decode 64] [--repeats 2] [--json FILE]``. Record results in ``benchmarks/RESULTS.md`` with the
machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent


def _bench_model() -> Any:
    spec = importlib.util.spec_from_file_location("bench_model", _HERE / "bench_model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def copy_bandwidth(mib: int = 2048, repeats: int = 10) -> float:
    """Return this GPU's device-to-device copy rate in B/s (read + write bytes counted)."""
    import cupy as cp

    src = cp.ones(mib << 20, cp.uint8)
    dst = cp.empty_like(src)
    cp.copyto(dst, src)
    cp.cuda.Device().synchronize()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        cp.copyto(dst, src)
        cp.cuda.Device().synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * src.nbytes / best


def run(path: Path, args: argparse.Namespace, bm: Any) -> dict[str, Any]:
    """Time prompt and decode on the cuda backend."""
    import mlplug
    from mlplug.models.llama import Batch, Llama

    start = time.perf_counter()
    params = mlplug.BackendParams(num_gpu_layers=999, flash_attention=True)
    backend = mlplug.new_backend(str(path), params, backend="cuda")
    backend.load()
    model = Llama(backend)
    cache = model.new_cache(capacity=args.prompt + args.decode + 64, max_batch=512)
    load = time.perf_counter() - start
    prompt, steps = bm._tokens(args.prompt, 1), bm._tokens(args.decode, 2)
    times = []
    for _ in range(args.repeats):
        cache.remove(0, 0)
        times.append(bm._timed(lambda: model.forward(cache, Batch.single(prompt, 0))))
    decode = []
    for i, tok in enumerate(steps):
        batch = Batch.single([tok], args.prompt + i)
        decode.append(bm._timed(lambda batch=batch: model.forward(cache, batch)))
    backend.close()
    return {"load_s": load, "prompt_s": times, "decode_s": decode}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--type", default="Q4_0")
    parser.add_argument("--keep", type=Path, default=None, help="folder to keep the model in")
    parser.add_argument("--prompt", type=int, default=512)
    parser.add_argument("--decode", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--bandwidth", type=float, default=4.3e12, help="B/s for the floor")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--model", type=Path, default=None, help="an existing GGUF to time")
    args = parser.parse_args()
    bm = _bench_model()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="mlplug-bench-cuda-"))
    folder.mkdir(parents=True, exist_ok=True)
    path = args.model or folder / f"tinyllama-shape-{args.type}.gguf"
    if not path.exists():
        start = time.perf_counter()
        bm.make_model(path, args.type)
        print(f"wrote {path} in {time.perf_counter() - start:.0f} s", flush=True)
    if args.model:  # token ids and the embedding row size follow the given model's vocabulary
        from gguf import GGUFReader

        embd = next(t for t in GGUFReader(path).tensors if t.name == "token_embd.weight")
        bm.SHAPE["n_vocab"] = int(embd.shape[-1])
    read, params = bm.weight_bytes(path)
    measured = copy_bandwidth() if not os.environ.get("MLPLUG_CUDA_EMULATE") else float("nan")
    result = run(path, args, bm)
    prompt_tps = args.prompt / min(result["prompt_s"])
    decode_s = statistics.median(result["decode_s"][1:] or result["decode_s"])
    rows = {
        "type": args.type,
        "weight_bytes_per_token": read,
        "params": params,
        "copy_bandwidth_Bps": measured,
        "decode_tok_s": 1 / decode_s,
        "decode_floor_tok_s": args.bandwidth / read,
        "decode_floor_measured_tok_s": measured / read,
        "prompt_tok_s": prompt_tps,
        "load_s": result["load_s"],
        **result,
    }
    floor = args.bandwidth / read
    print(f"{args.type}: weights/token {read / 1e9:.3f} GB; copy {measured / 1e12:.2f} TB/s")
    print(
        f"decode {1 / decode_s:.1f} tok/s; floor {floor:.0f} tok/s at "
        f"{args.bandwidth / 1e12:.1f} TB/s ({100 / decode_s / floor:.1f}% of it)"
    )
    print(f"prompt {prompt_tps:.0f} tok/s ({args.prompt} tokens); load {result['load_s']:.1f} s")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
