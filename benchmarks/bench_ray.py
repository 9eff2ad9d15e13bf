"""Per-token overhead of the ray backend against the local cpu backend, on the same model.

Generates (or reuses, with ``--keep DIR``) a llama-shaped GGUF (``--shape 135m`` by default:
SmolLM2-135M's shape, see ``bench_model.py``; random ``--type`` weights), starts a private Ray
cluster bound to 127.0.0.1 (``mlplug_ray.cluster.init_local``), and decodes ``--decode`` single
tokens after a short prompt on three backends, in turn (A B C A B C ..., ``--rounds`` times) so
that the load of a shared machine hits every side alike:

* ``cpu``: the local cpu backend, ``num_threads=--threads``;
* ``ray x1``: every layer on one node actor (``MLPLUG_RAY_NODES=1``);
* ``ray x2``: the layers split over two node actors (``MLPLUG_RAY_NODES=2``).

All run on this machine, so the ray sides pay Ray's calls and the processes' hand-offs but no
network. Per side: median ms per token, the time the node actors spent running their queues
per token (their compute), the remote calls per token (from ``RayDevice.calls``, by kind), and
the ray overhead per call = (ray ms/token - cpu ms/token) / calls per token. A bare actor round
trip (``free_memory`` on a node actor) is timed too: the floor of one call.

Then an estimate on paper for a 7B llama (Llama-2-7B: hidden 4096, 32 layers, vocab 32000,
Q4_0 weights) split over 2 machines, at 1 and 10 Gbit/s: the bytes that cross a network per
token (the F32 hidden state at each boundary, the F32 logits back to the coordinator), their
wire time, and the measured calls per token times a LAN round trip, against the compute floor
(each machine reads its half of the weights once per token at ``--node-bandwidth`` GB/s).

Usage: ``python benchmarks/bench_ray.py [--shape 135m|1.1b] [--type Q8_0] [--threads 1]
[--decode 32] [--rounds 3] [--keep DIR] [--rtt-ms 0.2] [--node-bandwidth 20]``.
Results go to ``benchmarks/RESULTS.md`` by hand, with the machine and its load.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_model import machine, make_model  # a sibling script, not a package

SIDES = ("cpu", "ray x1", "ray x2")

# Llama-2-7B, for the estimate on paper.
SEVEN_B = {"n_embd": 4096, "n_layers": 32, "n_vocab": 32000, "weight_bytes": 3.83e9}


def _decode(backend_name: str, path: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Decode ``args.decode`` tokens on a fresh backend; return ms per token and the calls."""
    import mlplug
    from mlplug.models import from_backend
    from mlplug.nn import Batch
    from mlplug_ray.device import RayDevice

    params = mlplug.BackendParams(num_threads=args.threads, num_gpu_layers=999)
    with mlplug.new_backend(str(path), params, backend=backend_name) as backend:
        backend.load()
        model = from_backend(backend)
        cache = model.new_cache(capacity=args.decode + 64)
        prompt = [300 + i for i in range(8)]
        model.forward(cache, Batch.single(prompt, 0))
        # two warm-up steps: the first decode step plans and sends its segments
        for i in range(2):
            model.forward(cache, Batch.single([400 + i], len(prompt) + i))
        nodes = [d for d in backend.devices if isinstance(d, RayDevice)]
        before = [d.calls.copy() for d in nodes]
        busy = _busy(nodes)
        times = []
        for i in range(args.decode):
            batch = Batch.single([500 + i], len(prompt) + 2 + i)
            start = time.perf_counter()
            model.forward(cache, batch)
            times.append(time.perf_counter() - start)
        busy = _busy(nodes) - busy
        calls: Counter[str] = Counter()
        for d, b in zip(nodes, before, strict=True):
            calls += d.calls - b
        ping = _ping(nodes[0]) if nodes else 0.0
        cache.close()
    return {
        "ms": statistics.median(times) * 1e3,
        "calls": calls,
        "ping_ms": ping,
        "node_ms": busy / args.decode * 1e3,
    }


def _busy(nodes: list[Any]) -> float:
    """Return the seconds the node actors have spent running their queues, together."""
    import ray

    return float(sum(ray.get([d.actor.busy.remote() for d in nodes]))) if nodes else 0.0


def _ping(node: Any, repeats: int = 50) -> float:
    """Return the median round trip of a bare call to a node actor, in ms."""
    import ray

    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        ray.get(node.actor.free_memory.remote())
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def _estimate(calls_per_token: float, rtt_ms: float, node_gbs: float) -> str:
    """The 7B estimate on paper, as markdown lines."""
    m = SEVEN_B
    hidden = m["n_embd"] * 4  # the F32 residual stream crossing a boundary, per token
    logits = m["n_vocab"] * 4  # F32 logits back to the coordinator
    embed = hidden  # the embedding row, from the coordinator (input layer) to the first node
    crossing = embed + hidden + logits  # 2 machines: host->A, A->B, B->host
    compute_ms = m["weight_bytes"] / (node_gbs * 1e9) * 1e3  # the two halves, one after the other
    lines = [
        f"7B estimate (Llama-2-7B shape, Q4_0 {m['weight_bytes'] / 1e9:.2f} GB, 2 machines, "
        f"each reading its half at {node_gbs:g} GB/s: {compute_ms:.0f} ms/token of compute):",
        f"  bytes over the network per token: embedding row {embed / 1024:.0f} KiB + hidden "
        f"state at the A->B boundary {hidden / 1024:.0f} KiB + logits {logits / 1024:.0f} KiB"
        f" = {crossing / 1024:.0f} KiB",
    ]
    for gbit in (1, 10):
        wire_ms = crossing * 8 / (gbit * 1e9) * 1e3
        # At most one round trip per call (queued calls overlap; only reads and syncs wait).
        latency_ms = calls_per_token * rtt_ms
        total = wire_ms + latency_ms
        lines.append(
            f"  {gbit:>2} Gbit/s: wire {wire_ms:.2f} ms + at most {calls_per_token:.0f} calls x "
            f"{rtt_ms:g} ms round trip = {total:.2f} ms/token "
            f"({100 * total / compute_ms:.1f} % of the compute)"
        )
    return "\n".join(lines)


def main() -> int:
    """Run the comparison and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="135m", choices=("135m", "1.1b"))
    parser.add_argument("--type", default="Q8_0")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--decode", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep", metavar="DIR", help="where to keep the generated model")
    parser.add_argument("--rtt-ms", type=float, default=0.2, help="LAN round trip (estimate)")
    parser.add_argument(
        "--node-bandwidth", type=float, default=20.0, help="GB/s a node reads weights at"
    )
    args = parser.parse_args()

    from mlplug_ray.cluster import init_local

    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-ray-"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{args.shape}-{args.type}.gguf"
    if not path.exists():
        make_model(path, args.type, args.shape)
    ray = init_local(num_cpus=1)
    results: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    try:
        for _ in range(args.rounds):
            for side in SIDES:
                if side == "cpu":
                    results[side].append(_decode("cpu", path, args))
                    continue
                os.environ["MLPLUG_RAY_NODES"] = side[-1]
                results[side].append(_decode("ray", path, args))
    finally:
        ray.shutdown()
        if not args.keep:
            path.unlink(missing_ok=True)
    load = os.getloadavg()
    print(f"machine: {machine()}")
    print(f"load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(
        f"model: {args.shape} shape, {args.type}, {path.stat().st_size / 2**20:.0f} MiB"
        if path.exists()
        else f"model: {args.shape} shape, {args.type}"
    )
    print(f"decode: {args.decode} tokens x {args.rounds} rounds, {args.threads} thread(s)\n")
    cpu_ms = statistics.median(r["ms"] for r in results["cpu"])
    print(
        "| side | ms/token | vs cpu | nodes busy ms/token | calls/token "
        "| ms per call (overhead) | bare call ms |"
    )
    print("|---|---|---|---|---|---|---|")
    calls_x2 = 0.0
    for side in SIDES:
        ms = statistics.median(r["ms"] for r in results[side])
        calls: Counter[str] = Counter()
        for r in results[side]:
            calls += r["calls"]
        n = args.decode * len(results[side])
        per_token = sum(calls.values()) / n
        kinds = ", ".join(f"{k} {v / n:.1f}" for k, v in sorted(calls.items()))
        if side == "ray x2":
            calls_x2 = per_token
        per_call = (ms - cpu_ms) / per_token if per_token else 0.0
        ping = statistics.median(r["ping_ms"] for r in results[side])
        busy = statistics.median(r["node_ms"] for r in results[side])
        print(
            f"| {side} | {ms:.2f} | {ms / cpu_ms:.2f} x | {busy:.2f} | {per_token:.1f}"
            + (f" ({kinds})" if kinds else "")
            + f" | {per_call:.2f} | {ping:.2f} |"
        )
    print()
    print(_estimate(calls_x2, args.rtt_ms, args.node_bandwidth))
    return 0


if __name__ == "__main__":
    sys.exit(main())
