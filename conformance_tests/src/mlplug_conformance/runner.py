"""``mlplug conformance`` / ``mlplug-conformance`` / ``python -m mlplug_conformance``.

Modes:

* ``test`` (default): every case of the selected ops; prints the op x dtype table, exits 1 on
  any FAIL, or when a selected op ran no case (0/0 is never OK; an op whose every case the
  device declared unsupported is reported, not failed).
* ``support``: one case per op x dtype, for a quick support table.
* ``perf``: each op at model-sized shapes; µs, GFLOP/s and GB/s; never fails.

* ``memory``: the ``BackendMemory`` contract end to end (:mod:`.memory`).

Extension point: a mode is a :class:`Mode` in :data:`MODES`, added with :func:`register_mode`
before the command line is parsed; its ``add_arguments`` adds its own options. Modes import
their heavy modules inside ``run``, so building the ``mlplug`` parser stays light.
"""

from __future__ import annotations

import argparse
import fnmatch
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlplug_conformance.cases import Case
    from mlplug_conformance.execute import CaseResult

__all__ = [
    "MODES",
    "Mode",
    "add_arguments",
    "add_command",
    "main",
    "register_mode",
    "run",
    "select_cases",
]


@dataclass(frozen=True, slots=True)
class Mode:
    """A run mode.

    Attributes:
        name: Value of ``--mode``.
        help: One line for ``--help``.
        run: ``run(args) -> exit code``.
        add_arguments: Optional; adds the mode's own options to the parser.
    """

    name: str
    help: str
    run: Callable[[argparse.Namespace], int]
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None


MODES: dict[str, Mode] = {}
"""Registered modes by name; :func:`register_mode` adds one."""


def register_mode(mode: Mode) -> None:
    """Add (or replace) a mode; call before the command line is parsed."""
    MODES[mode.name] = mode


# ---------------------------------------------------------------------------------------------
# Command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the conformance options to ``parser``."""
    parser.add_argument(
        "--backend", metavar="NAME", help="backend to test (required unless --merge)"
    )
    parser.add_argument(
        "--mode",
        default="test",
        choices=sorted(MODES),
        help="; ".join(f"{m.name}: {m.help}" for m in MODES.values()),
    )
    parser.add_argument(
        "--ops", metavar="PATTERN", default="*", help="fnmatch pattern on op names (e.g. 'mulmat*')"
    )
    parser.add_argument("--case", metavar="ID", help="run only this case")
    parser.add_argument("--json", metavar="FILE", help="write the versioned JSON report")
    parser.add_argument(
        "--expectations",
        metavar="FILE",
        help="TOML/JSON list of {pattern, status: xfail|unsupported, reason}",
    )
    parser.add_argument(
        "--merge",
        metavar="JSON",
        nargs="+",
        help="merge JSON reports into the op x backend support matrix",
    )
    parser.add_argument("--out", metavar="FILE", help="where --merge writes its markdown")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every case")
    for mode in MODES.values():
        if mode.add_arguments is not None:
            mode.add_arguments(parser)


def add_command(subparsers: Any) -> None:
    """Add the ``conformance`` subcommand to the core CLI's subparsers."""
    parser = subparsers.add_parser(
        "conformance",
        help="test a backend against the float64 reference, op by op",
        description="Test a backend against the float64 reference, op by op.",
    )
    add_arguments(parser)
    parser.set_defaults(func=run)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    parser = argparse.ArgumentParser(
        prog="mlplug-conformance", description="mlplug conformance suite"
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Dispatch parsed arguments to ``--merge`` or a mode."""
    if args.merge:
        from mlplug_conformance.report import merge_reports

        text = merge_reports(args.merge)
        if args.out:
            with open(args.out, "w", encoding="utf-8") as f:
                f.write(text)
        else:
            sys.stdout.write(text)
        return 0
    if not args.backend:
        print("mlplug conformance: --backend NAME is required (or --merge)", file=sys.stderr)
        return 2
    return MODES[args.mode].run(args)


# ---------------------------------------------------------------------------------------------
# test and support modes


def select_cases(
    ops_pattern: str = "*", case_id: str | None = None
) -> tuple[list[Case], list[str]]:
    """Return the selected cases and the selected op names.

    Raises:
        KeyError: ``case_id`` names no case.
        ValueError: ``ops_pattern`` matches no op.
    """
    from mlplug.ops import OPS
    from mlplug_conformance.cases import all_cases, find_case

    if case_id:
        case = find_case(case_id)
        return [case], [case.op]
    ops = [name for name in OPS if fnmatch.fnmatchcase(name, ops_pattern)]
    if not ops:
        raise ValueError(f"--ops {ops_pattern!r} matches no op")
    chosen = set(ops)
    return [c for c in all_cases() if c.op in chosen], ops


def _zero_runs(results: Sequence[CaseResult], ops: Sequence[str]) -> list[str]:
    from mlplug_conformance.execute import RAN

    problems = []
    for op in ops:
        mine = [r for r in results if r.op == op]
        if any(r.status in RAN for r in mine):
            continue
        if mine and all(r.status == "unsupported" for r in mine):
            continue
        problems.append(
            f"{op}: no case ran ({len(mine)} generated" + (", all skipped" if mine else "") + ")"
        )
    return problems


def _run_cases(args: argparse.Namespace, support_only: bool) -> int:
    from mlplug_conformance.cases import not_generated as uncovered
    from mlplug_conformance.execute import Session
    from mlplug_conformance.expectations import Expectations, load_expectations
    from mlplug_conformance.report import format_table, report_dict, write_report

    try:
        cases, ops = select_cases(args.ops, args.case)
        expectations = load_expectations(args.expectations) if args.expectations else Expectations()
    except (KeyError, ValueError, OSError) as err:
        print(f"mlplug conformance: {err}", file=sys.stderr)
        return 2
    if support_only:
        first: dict[tuple[str, str], Case] = {}
        for c in cases:
            first.setdefault((c.op, c.dtype.name), c)
        cases = list(first.values())
    not_generated = [
        (op, dt, why) for (op, dt), why in uncovered().items() if op in set(ops) and not args.case
    ]
    verbose = args.verbose or bool(args.case)

    def show(r: CaseResult) -> None:
        if verbose or r.status == "FAIL":
            print(
                f"{r.status:<11} {r.id}" + (f"\n    {r.message}" if r.message else ""), flush=True
            )

    session = Session(args.backend, expectations)
    try:
        results = session.run(cases, show)
    except Exception as err:
        print(
            f"mlplug conformance: cannot create backend {args.backend!r}: "
            f"{type(err).__name__}: {err}",
            file=sys.stderr,
        )
        return 2
    finally:
        session.close()
    print()
    print(format_table(results, not_generated))
    zero = _zero_runs(results, ops)
    for line in zero:
        print(f"ERROR {line}")
    if args.json:
        write_report(args.json, report_dict(args.backend, args.mode, results, not_generated))
    failed = sum(r.status == "FAIL" for r in results)
    print(
        f"\n{len(results)} cases on backend {args.backend!r}: {failed} failed"
        + (f", {len(zero)} op(s) ran no case" if zero else "")
    )
    return 1 if failed or zero else 0


def _test_mode(args: argparse.Namespace) -> int:
    return _run_cases(args, support_only=False)


def _support_mode(args: argparse.Namespace) -> int:
    return _run_cases(args, support_only=True)


def _perf_mode(args: argparse.Namespace) -> int:
    from mlplug_conformance.perf import run_perf

    return run_perf(args)


register_mode(Mode("test", "every case, checked (default)", _test_mode))
register_mode(Mode("support", "one case per op x dtype", _support_mode))


def _memory_mode(args: argparse.Namespace) -> int:
    from mlplug_conformance.execute import CaseResult
    from mlplug_conformance.memory import run_memory_mode
    from mlplug_conformance.report import report_dict, write_report

    checks = run_memory_mode(args.backend)
    results = [
        CaseResult(r.id, "memory", "-", "skip" if r.status == "skipped" else r.status, r.detail)
        for r in checks
    ]
    for r in results:
        print(f"{r.status:<8} {r.id:<32} {r.message}")
    if args.json:
        write_report(args.json, report_dict(args.backend, args.mode, results))
    failed = sum(r.status == "FAIL" for r in results)
    print(f"\n{len(results)} memory checks on backend {args.backend!r}: {failed} failed")
    return 1 if failed or not results else 0


def _perf_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--perf-seconds",
        type=float,
        default=0.5,
        metavar="S",
        help="perf mode: time budget per op (default 0.5)",
    )


register_mode(
    Mode("perf", "model-sized shapes: us, GFLOP/s, GB/s (never fails)", _perf_mode, _perf_arguments)
)
register_mode(Mode("memory", "the BackendMemory contract on synthetic GGUF files", _memory_mode))
