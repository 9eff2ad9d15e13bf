"""Perf mode: each op once at model-sized shapes; µs, GFLOP/s and GB/s. Never fails.

Shapes follow a 1B-parameter llama (embedding 2048, FFN 8192, 32 query heads and 8 KV heads of
64): the FFN product at ``n = 1`` (decode) and ``n = 512`` (prompt) for every creatable weight
dtype plus Q4_K and Q6_K (weights of a synthetic GGUF file), rows of 4096 for the row ops,
attention over a 2k-token history, and element-wise ops on ``[4096, 512]``. Inputs are made
once; the op's graph is computed repeatedly (one warm-up, then until ``--perf-seconds`` have
passed, at least three times) and the median time is reported.
FLOPs and bytes come from the ops table (``OpDef.flops``, ``OpDef.bytes_moved``).

Timings go in benchmarks, never in tests; this mode only prints (and writes ``--json``).
"""

from __future__ import annotations

import argparse
import fnmatch
import statistics
import time
from typing import Any

import mlplug
from mlplug.dtype import DType
from mlplug.ops import OPS, category
from mlplug_conformance.cases import Case
from mlplug_conformance.cases.dsl import CREATE_WEIGHT, Params, case, inp, step
from mlplug_conformance.cases.elementwise import BINARY, UNARY, unary_params
from mlplug_conformance.cases.model import ints
from mlplug_conformance.cases.program import build_inputs, build_steps, infer_step
from mlplug_conformance.execute import WeightFile

__all__ = ["perf_cases", "run_perf"]

EMBD, FFN, HEADS, KV_HEADS, HEAD_DIM, CONTEXT = 2048, 8192, 32, 8, 64, 2048
_F32 = DType.F32


def _unary_params(op: str) -> Params:
    return unary_params(op)[0][1]


def _attention(tokens: int) -> Case:
    op = "scaled_dot_product_attention"
    return case(
        op,
        _F32,
        f"perf-ctx{CONTEXT}-t{tokens}-kv-F16",
        [
            inp("q", _F32, HEAD_DIM, HEADS, tokens),
            inp("k", DType.F16, HEAD_DIM, KV_HEADS, CONTEXT),
            inp("v", DType.F16, HEAD_DIM, KV_HEADS, CONTEXT),
            inp("vp", DType.F16, CONTEXT, HEAD_DIM, KV_HEADS),
            inp("m", _F32, CONTEXT, tokens, zeros=True),
        ],
        [
            step("y", op, "q", "k", "vp", "m", scale=0.125, when="permuted_v"),
            step("y", op, "q", "k", "v", "m", scale=0.125, when="standard_v"),
        ],
    )


def perf_cases() -> list[Case]:
    """Return the perf cases (ids ``op/DTYPE/perf-…``)."""
    out: list[Case] = []
    rows = (4096, 64)
    big = (4096, 512)
    for op in UNARY:
        out.append(
            case(
                op,
                _F32,
                "perf-4096x512",
                [inp("x", _F32, *big)],
                [step("y", op, "x", **_unary_params(op))],
            )
        )
    for op in BINARY:
        out.append(
            case(
                op,
                _F32,
                "perf-4096x512-row",
                [inp("a", _F32, *big), inp("b", _F32, big[0])],
                [step("y", op, "a", "b")],
            )
        )
    for dt in (*CREATE_WEIGHT, DType.Q4_K, DType.Q6_K):  # K-quants come from a GGUF file
        for n in (1, 512):
            out.append(
                case(
                    "mulmat",
                    dt,
                    f"perf-ffn-k{EMBD}-m{FFN}-n{n}",
                    [inp("w", dt, EMBD, FFN), inp("x", _F32, EMBD, n)],
                    [step("y", "mulmat", "w", "x")],
                )
            )
    for tokens in (1, 512):
        out.append(
            case(
                "mulmat_full_prec",
                DType.F16,
                f"perf-scores-ctx{CONTEXT}-t{tokens}",
                [
                    inp("k", DType.F16, HEAD_DIM, CONTEXT, KV_HEADS),
                    inp("q", _F32, HEAD_DIM, tokens, HEADS),
                ],
                [step("y", "mulmat_full_prec", "k", "q")],
            )
        )
    out.append(
        case(
            "mulmat_id",
            DType.Q4_0,
            "perf-experts8-used2-t32",
            [
                inp("w", DType.Q4_0, EMBD, 1024, 8),
                inp("x", _F32, EMBD, 1, 32),
                inp("ids", DType.I32, 2, 32, fill=ints(0, 8)),
            ],
            [step("y", "mulmat_id", "w", "x", "ids")],
        )
    )
    for op in ("softmax", *category("reduce"), "argsort"):
        out.append(
            case(op, _F32, "perf-rows-4096x64", [inp("x", _F32, *rows)], [step("y", op, "x")])
        )
    out.append(
        case(
            "rms_norm",
            _F32,
            "perf-rows-4096x64",
            [inp("x", _F32, *rows), inp("w", _F32, rows[0])],
            [step("y", "rms_norm", "x", "w", eps=1e-5)],
        )
    )
    out.append(
        case(
            "layer_norm",
            _F32,
            "perf-rows-4096x64",
            [inp("x", _F32, *rows), inp("w", _F32, rows[0]), inp("b", _F32, rows[0])],
            [step("y", "layer_norm", "x", "w", "b", eps=1e-5)],
        )
    )
    out.append(
        case(
            "topk",
            _F32,
            "perf-vocab32000-k40",
            [inp("x", _F32, 32000)],
            [step("y", "topk", "x", k=40)],
        )
    )
    for op in ("contiguous", "duplicate"):
        out.append(
            case(
                op,
                _F32,
                "perf-permuted-64x32x512",
                [inp("x", _F32, HEAD_DIM, 512, HEADS)],
                [step("t", "permute", "x", axes=(0, 2, 1, 3)), step("y", op, "t")],
            )
        )
    for dst in (DType.F16, DType.Q8_0):
        out.append(
            case(
                "copy",
                _F32,
                f"perf-kv-to-{dst.name}-64x8x512",
                [
                    inp("a", _F32, HEAD_DIM, KV_HEADS, 512),
                    inp("d", dst, HEAD_DIM, KV_HEADS, 512, zeros=True),
                ],
                [step("y", "copy", "a", "d")],
            )
        )
    out.append(
        case(
            "rows",
            DType.F16,
            "perf-embedding-2048x16384-ids512",
            [inp("a", DType.F16, EMBD, 16384), inp("i", DType.I32, 512, fill=ints(0, 16384))],
            [step("y", "rows", "a", "i")],
        )
    )
    out.append(
        case(
            "set",
            _F32,
            "perf-4096x512",
            [inp("a", _F32, *big), inp("b", _F32, 4096, 256)],
            [step("y", "set", "a", "b", offset=0, strides=())],
        )
    )
    out.append(
        case(
            "pad",
            _F32,
            "perf-4096x512",
            [inp("x", _F32, *big)],
            [step("y", "pad", "x", pads=(64, 64, 0, 0))],
        )
    )
    out.append(
        case(
            "concat",
            _F32,
            "perf-4096x512",
            [inp("a", _F32, *big), inp("b", _F32, *big)],
            [step("y", "concat", "a", "b", dim=1)],
        )
    )
    out.append(
        case(
            "stack",
            _F32,
            "perf-4096x512",
            [inp("a", _F32, *big), inp("b", _F32, *big)],
            [step("y", "stack", "a", "b", dim=1)],
        )
    )
    out.append(
        case(
            "repeat",
            _F32,
            "perf-4096x512",
            [inp("x", _F32, *big)],
            [step("y", "repeat", "x", dim=1, n=2)],
        )
    )
    conv_in = [inp("k", _F32, 3, 3, 16, 32), inp("x", _F32, 64, 64, 16, 1)]
    conv_p: Params = {"s0": 1, "s1": 1, "p0": 1, "p1": 1, "d0": 1, "d1": 1}
    out.append(
        case(
            "conv_2d",
            _F32,
            "perf-64x64x16-k3x3x32",
            conv_in,
            [step("y", "conv_2d", "k", "x", **conv_p)],
        )
    )
    out.append(
        case(
            "im2col", _F32, "perf-64x64x16-k3x3", conv_in, [step("y", "im2col", "k", "x", **conv_p)]
        )
    )
    out.append(
        case(
            "avg_pool_2d",
            _F32,
            "perf-128x128x16-k2",
            [inp("x", _F32, 128, 128, 16)],
            [step("y", "avg_pool_2d", "x", k=2, s=2, p=0)],
        )
    )
    out.extend(_attention(t) for t in (1, 512))
    out.append(
        case(
            "arange",
            _F32,
            "perf-1M",
            [],
            [step("y", "arange", start=0, stop=1 << 20, step=1, dtype=_F32)],
        )
    )
    return out


def _time(ctx: mlplug.Context, out: mlplug.Tensor, budget: float) -> float:
    ctx.forward(out).compute(out)  # warm-up (and arena allocation)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - start < budget and len(times) < 200):
        t0 = time.perf_counter()
        ctx.compute(out)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _measure(
    session: dict[bool, mlplug.Backend], backend_name: str, c: Case, budget: float
) -> dict[str, Any]:
    if False not in session:
        session[False] = mlplug.new_backend(
            None, mlplug.BackendParams(num_gpu_layers=1), backend=backend_name
        )
    backend = session[False]
    row: dict[str, Any] = {"id": c.id, "op": c.op, "dtype": c.dtype.name}
    prep = ctx = None
    weights = WeightFile(backend_name, [c]) if c.needs_file else None
    try:
        if weights is not None:
            if weights.backend is None:
                raise RuntimeError(weights.error)
            backend = weights.backend
        permuted_v = (
            backend.cache_config().permuted_v
            if isinstance(backend, mlplug.BackendCacheConfig)
            else False
        )
        srcs, meta = infer_step(c, permuted_v)
        opdef = OPS[c.op]
        flops, nbytes = opdef.flops(srcs, meta), opdef.bytes_moved(srcs, meta)
        loaded = weights.weights(c) if weights is not None else None
        prep, tensors, _ = build_inputs(backend, c, c.values(), loaded)
        ctx = backend.new_context()
        seconds = _time(ctx, build_steps(ctx, c, tensors, permuted_v), budget)
        row.update(
            status="ok", us=seconds * 1e6, gflops=flops / seconds / 1e9, gbps=nbytes / seconds / 1e9
        )
    except mlplug.UnsupportedOpError as err:
        row.update(status="unsupported", message=str(err))
    except Exception as err:
        row.update(status="error", message=f"{type(err).__name__}: {err}")
    finally:
        for c_ in (ctx, prep):
            if c_ is not None:
                c_.close()
        if weights is not None:
            weights.close()
    return row


def run_perf(args: argparse.Namespace) -> int:
    """Run the perf cases of the selected ops on ``args.backend``; print; return 0."""
    budget = float(getattr(args, "perf_seconds", 0.5))
    cases = [
        c
        for c in perf_cases()
        if fnmatch.fnmatchcase(c.op, args.ops) and (not args.case or c.id == args.case)
    ]
    session: dict[bool, mlplug.Backend] = {}
    rows = []
    print(f"{'case':<58} {'us':>12} {'GFLOP/s':>9} {'GB/s':>8}")
    try:
        for c in cases:
            row = _measure(session, args.backend, c, budget)
            rows.append(row)
            if row["status"] == "ok":
                print(
                    f"{c.id:<58} {row['us']:>12.1f} {row['gflops']:>9.2f} {row['gbps']:>8.2f}",
                    flush=True,
                )
            else:
                print(f"{c.id:<58} {row['status']}: {row.get('message', '')}", flush=True)
    finally:
        for backend in session.values():
            backend.close()
    if args.json:
        import json

        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(
                {"version": 1, "backend": args.backend, "mode": "perf", "results": rows},
                f,
                indent=1,
            )
    return 0
