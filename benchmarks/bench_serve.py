"""Continuous batching: aggregate decode tokens/s with 1, 2, 4, 8 concurrent requests.

Three ways of running ``N`` greedy requests at once on the same GGUF file with the same threads:

* **mlplug**: the scheduler of ``mlplug serve`` in process (:class:`mlplug.serve.scheduler.
  Scheduler`, no HTTP): the ``N`` prompts are read in one step, then every step decodes one token
  of each request;
* **llama.cpp**: the same loop on llama.cpp through ``llama-cpp-python``'s low-level API, as
  ``llama-server`` runs its slots: one ``llama_batch`` holding the ``N`` prompts (``N`` sequence
  ids, logits for each prompt's last token), then one ``llama_decode`` of ``N`` tokens per step;
* **mlplug serve (HTTP)**: ``mlplug serve`` in a subprocess and ``N`` concurrent streaming
  clients (``httpx``), for the end-to-end cost of the server: wall time from the requests to the
  last token, prompt included.

Decode tokens/s = tokens sampled after each request's first / time from the end of the prompt
step to the end of the last step (the two in-process sides); the HTTP side reports all tokens /
wall time. Every request generates exactly ``--tokens`` tokens (``ignore_eos``). Each
measurement runs in a fresh process, alternating the sides (A B A B…), ``--repeats`` times; the
table shows medians and the ratio mlplug / llama.cpp.

Usage: ``python benchmarks/bench_serve.py [--model gemma3:270m|FILE] [--threads 1]
[--tokens 64] [--concurrency 1 2 4 8] [--repeats 3] [--no-http]``. Results go to
``benchmarks/RESULTS.md`` by hand, with the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small town by the sea,",
    "A tensor is a block of numbers with up to four dimensions.",
    "The quick brown fox jumps over the lazy dog.",
    "def add(a, b):",
    "In 1969, the first people to walk on the Moon",
    "Water boils at a temperature of",
    "The best way to learn a language is",
]


def _model_path(name: str) -> Path:
    path = Path(name)
    if path.is_file():
        return path
    from mlplug import catalog

    known = catalog.lookup(name)
    if known is None:
        raise SystemExit(f"{name}: no such file or known model")
    return catalog.resolve(known)


def _prompts(path: Path, n: int) -> list[list[int]]:
    from mlplug.tokenizer import Tokenizer

    tok = Tokenizer.from_gguf(path)
    return [tok.encode(PROMPTS[i % len(PROMPTS)]) for i in range(n)]


# -- the sides, each run in its own process ---------------------------------------------------


def run_mlplug(path: Path, n: int, tokens: int, threads: int) -> dict[str, float]:
    import threading

    import mlplug
    from mlplug.generate import Sampling
    from mlplug.models import from_backend
    from mlplug.serve.scheduler import Event, Finished, Job, Scheduler
    from mlplug.tokenizer import Tokenizer

    backend = mlplug.new_backend(str(path), mlplug.BackendParams(num_threads=threads), "cpu")
    backend.load()
    model = from_backend(backend)
    step_ends: list[float] = []

    class Timed:
        """The model, with the end time of every step."""

        def __getattr__(self, name: str) -> Any:
            return getattr(model, name)

        def forward(self, cache: Any, batch: Any) -> Any:
            out = model.forward(cache, batch)
            step_ends.append(time.perf_counter())
            return out

    prompts = _prompts(path, n)
    ctx = max(map(len, prompts)) + tokens
    tok = Tokenizer.from_config(backend.config())
    sched = Scheduler(Timed(), tok, parallel=n, ctx_size=ctx, n_batch=512, queue_size=n)  # type: ignore[arg-type]
    done = threading.Semaphore(0)
    generated: list[int] = []

    def emit(event: Event) -> None:
        if isinstance(event, Finished):
            generated.append(event.completion_tokens)
            done.release()

    for p in prompts:
        sched.submit(Job(p, tokens, Sampling(temperature=0), (), emit, ignore_eos=True))
    sched.start()
    for _ in prompts:
        done.acquire()
    sched.close()
    backend.close()
    decode = sum(generated) - n
    return {"decode_tokens": decode, "decode_seconds": step_ends[-1] - step_ends[0]}


def run_llama_cpp(path: Path, n: int, tokens: int, threads: int) -> dict[str, float]:
    import ctypes

    import llama_cpp as ll
    import numpy as np

    ll.llama_backend_init()
    mparams = ll.llama_model_default_params()
    model = ll.llama_model_load_from_file(str(path).encode(), mparams)
    prompts = _prompts(path, n)
    per_seq = max(map(len, prompts)) + tokens
    cparams = ll.llama_context_default_params()
    cparams.n_ctx = per_seq * n
    cparams.n_batch = cparams.n_ubatch = 512
    cparams.n_seq_max = n
    cparams.n_threads = cparams.n_threads_batch = threads
    ctx = ll.llama_init_from_model(model, cparams)
    n_vocab = ll.llama_vocab_n_tokens(ll.llama_model_get_vocab(model))
    batch = ll.llama_batch_init(512, 0, n)

    def decode(items: list[tuple[int, int, int, bool]]) -> None:
        batch.n_tokens = len(items)
        for i, (token, pos, seq, want) in enumerate(items):
            batch.token[i] = token
            batch.pos[i] = pos
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq
            batch.logits[i] = want
        if ll.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")

    def argmax(i: int) -> int:
        row = ll.llama_get_logits_ith(ctx, i)
        values = np.ctypeslib.as_array(ctypes.cast(row, ctypes.POINTER(ctypes.c_float)), (n_vocab,))
        return int(np.argmax(values))

    items = []
    outs = []
    for s, p in enumerate(prompts):
        for j, t in enumerate(p):
            last = j == len(p) - 1
            if last:
                outs.append(len(items))
            items.append((t, j, s, last))
    decode(items)
    start = time.perf_counter()
    last_tokens = [argmax(i) for i in outs]
    positions = [len(p) for p in prompts]
    for _ in range(tokens - 1):
        decode([(last_tokens[s], positions[s], s, True) for s in range(n)])
        last_tokens = [argmax(s) for s in range(n)]
        positions = [q + 1 for q in positions]
    seconds = time.perf_counter() - start
    ll.llama_batch_free(batch)
    ll.llama_free(ctx)
    ll.llama_model_free(model)
    return {"decode_tokens": n * (tokens - 1), "decode_seconds": seconds}


def run_http(path: Path, n: int, tokens: int, threads: int) -> dict[str, float]:
    import threading

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        *(sys.executable, "-m", "mlplug.cli", "serve", str(path), "--port", str(port)),
        *("--parallel", str(n), "--threads", str(threads), "--ctx-size", str(64 + tokens)),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(url + "/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        counts: list[int] = []

        def client(i: int) -> None:
            body = {"prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": tokens, "temperature": 0,
                    "ignore_eos": True}  # fmt: skip
            r = httpx.post(url + "/v1/completions", json=body, timeout=600)
            counts.append(r.json()["usage"]["completion_tokens"])

        start = time.perf_counter()
        workers = [threading.Thread(target=client, args=(i,)) for i in range(n)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        seconds = time.perf_counter() - start
    finally:
        proc.terminate()
        proc.wait(30)
    return {"decode_tokens": sum(counts), "decode_seconds": seconds}


SIDES = {"mlplug": run_mlplug, "llama.cpp": run_llama_cpp, "mlplug-http": run_http}


def _measure(side: str, args: argparse.Namespace, n: int) -> float:
    cmd = [sys.executable, __file__, "--worker", side, "--model", str(args.path), "-n", str(n),
           "--tokens", str(args.tokens), "--threads", str(args.threads)]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{side} failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return float(result["decode_tokens"] / result["decode_seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma3:270m")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-http", action="store_true")
    parser.add_argument("--worker", choices=list(SIDES), help=argparse.SUPPRESS)
    parser.add_argument("-n", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.path = _model_path(args.model)
    if args.worker:
        print(json.dumps(SIDES[args.worker](args.path, args.n, args.tokens, args.threads)))
        return
    sides = ["mlplug", "llama.cpp"] + ([] if args.no_http else ["mlplug-http"])
    print(f"model {args.path.name}, {args.tokens} tokens per request, {args.threads} threads")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.1f}")  # fmt: skip
    header = f"{'N':>3}  " + "  ".join(f"{s + ' tok/s':>18}" for s in sides) + "  mlplug/llama.cpp"
    print(header)
    for n in args.concurrency:
        rates: dict[str, list[float]] = {s: [] for s in sides}
        for _ in range(args.repeats):
            for side in sides:  # alternating: A B A B ...
                rates[side].append(_measure(side, args, n))
        med = {s: statistics.median(v) for s, v in rates.items()}
        cells = "  ".join(f"{med[s]:>18.1f}" for s in sides)
        print(f"{n:>3}  {cells}  {med['mlplug'] / med['llama.cpp']:>16.2f}x", flush=True)


if __name__ == "__main__":
    main()
