"""``mlplug run``: the main job.

Until the llama model runner lands, ``mlplug run`` without a model runs a small two-layer MLP
graph (random weights, fixed seed) on the selected backend and reports the memory table and the
throughput; with a model file it says that models are not runnable yet. This is a graph demo,
not a language model.
"""

from __future__ import annotations

import argparse
import sys
import time

__all__ = ["run"]


def run(args: argparse.Namespace) -> int:
    """Run the demo graph; return the exit code."""
    import numpy as np

    import mlplug

    if args.model:
        print("mlplug run: running GGUF models is not implemented yet (graph demo only)",
              file=sys.stderr)
        return 2
    params = mlplug.BackendParams(num_threads=args.threads, num_gpu_layers=args.num_gpu_layers,
                                  flash_attention=args.flash_attention)
    backend = mlplug.new_backend(None, params, backend=args.backend)
    with backend:
        rng = np.random.default_rng(args.seed)
        d_in, d_hidden, tokens = 256, 1024, 32
        ctx = backend.new_context()
        w1 = ctx.layer(0).from_float_slice(rng.standard_normal((d_hidden, d_in)) * 0.05,
                                           d_in, d_hidden)
        w2 = ctx.layer(0).from_float_slice(rng.standard_normal((d_in, d_hidden)) * 0.05,
                                           d_hidden, d_in)
        x = ctx.input().from_float_slice(rng.standard_normal((tokens, d_in)), d_in, tokens)
        h = w1.mulmat(ctx, x).silu(ctx)
        y = w2.mulmat(ctx, h).rms_norm(ctx, None, 1e-6)
        ctx.forward(y)
        ctx.reserve()
        print(f"mlplug graph demo on backend {args.backend or '(auto)'}: "
              f"MLP {d_in}->{d_hidden}->{d_in}, {tokens} tokens")
        print(backend.backend_memory().summary())
        start = time.perf_counter()
        repeats = 10
        for _ in range(repeats):
            ctx.compute(y)
        elapsed = time.perf_counter() - start
        flops = repeats * 2 * 2 * d_in * d_hidden * tokens
        print(mlplug.dump(ctx, y, threshold=16, edge_items=2))
        print(f"{repeats} runs in {elapsed * 1e3:.1f} ms: {flops / elapsed / 1e9:.2f} GFLOP/s")
        ctx.close()
    return 0
