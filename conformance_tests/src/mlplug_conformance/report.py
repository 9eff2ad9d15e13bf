"""Reports: the human table, the versioned JSON report and the merged support matrix.

JSON report (``--json FILE``), version 1::

    {"version": 1, "backend": "cpu", "mode": "test", "mlplug": "0.1.0",
     "results": [{"id", "op", "dtype", "status", "message", "error", "bound", "seconds"}, ...],
     "not_generated": [{"op", "dtype", "reason"}, ...],
     "summary": {"pass": 1234, "FAIL": 0, ...}}

``error``/``bound`` are ``null`` when not numeric. ``--merge A.json B.json --out FILE`` turns
several reports into one markdown op x backend matrix.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from mlplug.dtype import DType
from mlplug_conformance.execute import STATUSES, CaseResult

__all__ = [
    "REPORT_VERSION",
    "format_table",
    "merge_reports",
    "read_report",
    "report_dict",
    "write_report",
]

REPORT_VERSION = 1


def _num(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def report_dict(
    backend: str,
    mode: str,
    results: Sequence[CaseResult],
    not_generated: Iterable[tuple[str, DType, str]] = (),
) -> dict[str, Any]:
    """Return the JSON-able report."""
    import mlplug

    return {
        "version": REPORT_VERSION,
        "backend": backend,
        "mode": mode,
        "mlplug": mlplug.__version__,
        "results": [
            {
                "id": r.id,
                "op": r.op,
                "dtype": r.dtype,
                "status": r.status,
                "message": r.message,
                "error": _num(r.error),
                "bound": _num(r.bound),
                "seconds": round(r.seconds, 6),
            }
            for r in results
        ],
        "not_generated": [
            {"op": op, "dtype": dt.name, "reason": why} for op, dt, why in not_generated
        ],
        "summary": dict(Counter(r.status for r in results)),
    }


def write_report(path: str | Path, report: dict[str, Any]) -> None:
    """Write a report as JSON."""
    Path(path).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")


def read_report(path: str | Path) -> tuple[dict[str, Any], list[CaseResult]]:
    """Read a report; return it and its results.

    Raises:
        ValueError: Not a report of a version this code reads.
    """
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict) or data.get("version") != REPORT_VERSION:
        raise ValueError(f"{path}: not a version {REPORT_VERSION} conformance report")
    results = [
        CaseResult(
            r["id"],
            r["op"],
            r["dtype"],
            r["status"],
            r.get("message", ""),
            math.nan if r.get("error") is None else r["error"],
            math.nan if r.get("bound") is None else r["bound"],
            r.get("seconds", 0.0),
        )
        for r in data["results"]
    ]
    return data, results


def format_table(
    results: Sequence[CaseResult], not_generated: Iterable[tuple[str, DType, str]] = ()
) -> str:
    """Return the op x dtype table with counts per status, then the not-generated cells."""
    cells: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    order: list[tuple[str, str]] = []
    for r in results:
        key = (r.op, r.dtype)
        if key not in cells:
            order.append(key)
        cells[key][r.status] += 1
    shown = [s for s in STATUSES if any(c[s] for c in cells.values())] or ["pass"]
    header = f"{'op':<30} {'dtype':<6} " + " ".join(f"{s:>11}" for s in shown)
    lines = [header, "-" * len(header)]
    for op, dt in order:
        c = cells[(op, dt)]
        mark = "  <-- FAIL" if c["FAIL"] else ""
        lines.append(f"{op:<30} {dt:<6} " + " ".join(f"{c[s]:>11}" for s in shown) + mark)
    total = Counter(r.status for r in results)
    lines.append("-" * len(header))
    lines.append(f"{'total':<37} " + " ".join(f"{total[s]:>11}" for s in shown))
    missing: dict[str, list[str]] = defaultdict(list)
    for op, dtype, _ in not_generated:
        missing[op].append(dtype.name)
    if missing:
        lines.append("")
        lines.append("not generated yet (weight-only dtypes come from GGUF files; not counted):")
        for op, dts in missing.items():
            lines.append(f"  {op}: {', '.join(sorted(dts))}")
    return "\n".join(lines)


_ORDER = {d.name: d.value for d in DType}


def _cell(results: Sequence[CaseResult]) -> str:
    by_dtype: dict[str, Counter[str]] = defaultdict(Counter)
    for r in results:
        by_dtype[r.dtype][r.status] += 1
    groups: dict[str, list[str]] = defaultdict(list)
    for dt in sorted(by_dtype, key=lambda d: _ORDER.get(d, 99)):
        c = by_dtype[dt]
        total = sum(c.values())
        passed = c["pass"] + c["xpass"]
        if c["FAIL"]:
            groups["fail"].append(f"{dt} ({c['FAIL']}/{total})")
        elif c["xfail"]:
            groups["xfail"].append(dt)
        elif passed == total:
            groups["pass"].append(dt)
        elif passed:
            # Some cases ran and passed, the plugin declined the rest (say, broadcasts).
            groups["partial"].append(f"{dt} ({passed}/{total})")
        else:
            groups["unsupported"].append(dt)
    parts = []
    for key, label in (
        ("pass", "pass"),
        ("partial", "partial"),
        ("fail", "FAIL"),
        ("xfail", "xfail"),
        ("unsupported", "unsupported"),
    ):
        if groups[key]:
            parts.append(f"{label}: {' '.join(groups[key])}")
    return "; ".join(parts) or "-"


def merge_reports(paths: Sequence[str | Path]) -> str:
    """Return the markdown op x backend support matrix of several reports."""
    columns: list[str] = []
    by_backend: dict[str, dict[str, list[CaseResult]]] = {}
    not_generated: dict[str, set[str]] = defaultdict(set)
    ops: list[str] = []
    for path in paths:
        data, results = read_report(path)
        name = str(data["backend"])
        if name not in by_backend:
            columns.append(name)
            by_backend[name] = defaultdict(list)
        for r in results:
            by_backend[name][r.op].append(r)
            if r.op not in ops:
                ops.append(r.op)
        for item in data.get("not_generated", []):
            not_generated[item["op"]].add(item["dtype"])
    from mlplug.ops import OPS

    order = {name: i for i, name in enumerate(OPS)}
    ops.sort(key=lambda o: order.get(o, len(order)))
    lines = [
        "# Op support by backend",
        "",
        "Generated by `mlplug conformance --merge`; do not edit by hand. Each cell groups the "
        "receiver dtypes of an op: **pass** (every case passed), **partial** (the cases "
        "shown as passed/run passed, the plugin declared the others unsupported), **FAIL** "
        "(failed/run), **xfail** (expected to fail, from the plugin's expectations file) and "
        "**unsupported** (the plugin declared every case unsupported).",
        "",
        "Regenerate: `mlplug conformance --backend NAME --json NAME.json` per backend (metal "
        "with `MLPLUG_METAL_DEVICE=cpu` off macOS; cuda with `MLPLUG_CUDA_EMULATE=1` where there "
        "is no GPU, and `--expectations plugins/cuda/src/mlplug_cuda/expectations.toml`), then "
        "`mlplug conformance --merge NAME.json ... --out docs/support-matrix.md`; "
        "`core/tests/test_support_matrix.py` fails when this file is stale.",
        "",
        "| op | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for op in ops:
        cells = [_cell(by_backend[b].get(op, [])) for b in columns]
        lines.append(f"| `{op}` | " + " | ".join(cells) + " |")
    if not_generated:
        lines += [
            "",
            "## Not generated yet",
            "",
            "Weight-only dtypes (SEMANTICS §3.1) come from GGUF files; their cases are not "
            "generated yet and are not counted above.",
            "",
        ]
        for op in sorted(not_generated, key=lambda o: order.get(o, len(order))):
            dts = sorted(not_generated[op], key=lambda d: _ORDER.get(d, 99))
            lines.append(f"* `{op}`: {', '.join(dts)}")
    return "\n".join(lines) + "\n"
