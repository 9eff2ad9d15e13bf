"""The runner: exit codes, JSON report round trip, merge, expectations, --case, CLI entry points."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from mlplug_conformance import report, runner
from mlplug_conformance.execute import CaseResult, Session
from mlplug_conformance.expectations import load_expectations


def test_json_report_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "ref.json"
    assert runner.main(["--backend", "reference", "--ops", "add", "--json", str(path)]) == 0
    data, results = report.read_report(path)
    assert data["version"] == 1 and data["backend"] == "reference" and data["mode"] == "test"
    assert len(results) == len(data["results"]) > 10
    assert {r.status for r in results} == {"pass"}
    assert all(r.op == "add" for r in results)
    again = tmp_path / "again.json"
    report.write_report(again, report.report_dict("reference", "test", results))
    _, back = report.read_report(again)
    assert [(r.id, r.status) for r in back] == [(r.id, r.status) for r in results]


def test_report_keeps_errors_and_bounds(tmp_path: Path) -> None:
    result = CaseResult("x/F32/y", "x", "F32", "FAIL", "boom", 1e-3, 2e-7, 0.5)
    path = tmp_path / "r.json"
    report.write_report(path, report.report_dict("b", "test", [result]))
    (_, [back]) = report.read_report(path)
    assert (back.error, back.bound, back.message) == (1e-3, 2e-7, "boom")
    report.write_report(
        path, report.report_dict("b", "test", [CaseResult("x/F32/y", "x", "F32", "pass")])
    )
    assert math.isnan(report.read_report(path)[1][0].error)
    assert json.loads(path.read_text())["results"][0]["error"] is None


def test_reports_of_another_version_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"version": 99, "results": []}))
    with pytest.raises(ValueError, match="version 1"):
        report.read_report(path)


def test_merge_builds_the_support_matrix(tmp_path: Path, mutant: Callable[..., str]) -> None:
    name = mutant("neg", lambda v: v + 1.0, declines=("sqr",))
    a, b, md = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "matrix.md"
    assert runner.main(["--backend", "reference", "--ops", "[ns]*", "--json", str(a)]) == 0
    assert runner.main(["--backend", name, "--ops", "[ns]*", "--json", str(b)]) == 1
    assert runner.main(["--merge", str(a), str(b), "--out", str(md)]) == 0
    text = md.read_text()
    assert f"| op | reference | {name} |" in text
    assert "| `neg` | pass: F32 F16 BF16 | FAIL: F32 (" in text
    assert "| `sqr` | pass: F32 F16 BF16 | partial: F32 (1/8) F16 (1/8) BF16 (1/8) |" in text


def test_a_failing_backend_exits_1_and_prints_the_rerun_command(
    mutant: Callable[..., str], capsys: pytest.CaptureFixture[str]
) -> None:
    name = mutant("neg", lambda v: v * 1.001)
    assert runner.main(["--backend", name, "--ops", "neg"]) == 1
    out = capsys.readouterr().out
    assert f"rerun: mlplug conformance --backend {name} --case neg/F32/" in out
    assert "> bound" in out and "<-- FAIL" in out


def test_case_option_runs_one_case(capsys: pytest.CaptureFixture[str]) -> None:
    assert runner.main(["--backend", "reference", "--case", "mulmat/Q4_0/gqa-k32-m5-n3"]) == 0
    out = capsys.readouterr().out
    assert "pass        mulmat/Q4_0/gqa-k32-m5-n3" in out
    assert "1 cases on backend 'reference': 0 failed" in out


def test_unknown_case_or_ops_is_a_usage_error() -> None:
    assert runner.main(["--backend", "reference", "--case", "nope/F32/x"]) == 2
    assert runner.main(["--backend", "reference", "--ops", "nope*"]) == 2
    assert runner.main(["--ops", "add"]) == 2  # no --backend


def test_declared_unsupported_ops_are_reported_not_failed(
    mutant: Callable[..., str], capsys: pytest.CaptureFixture[str]
) -> None:
    name = mutant("neg", declines=("sin",))
    assert runner.main(["--backend", name, "--ops", "sin"]) == 0
    assert "unsupported" in capsys.readouterr().out


def test_an_op_that_ran_no_case_fails_the_run() -> None:
    skipped = [CaseResult("op/F32/a", "op", "F32", "skip", "layout")]
    assert runner._zero_runs(skipped, ["op"]) == ["op: no case ran (1 generated, all skipped)"]
    assert runner._zero_runs([], ["op"]) == ["op: no case ran (0 generated)"]
    unsupported = [CaseResult("op/F32/a", "op", "F32", "unsupported")]
    assert runner._zero_runs(unsupported, ["op"]) == []


def test_expectations_turn_failures_into_xfail_and_passes_into_xpass(
    tmp_path: Path, mutant: Callable[..., str]
) -> None:
    name = mutant("neg", lambda v: v + 1.0)
    toml = tmp_path / "expect.toml"
    toml.write_text(
        '[[expect]]\npattern = "neg/F32/*"\nstatus = "xfail"\n'
        'reason = "known off-by-one"\n\n'
        '[[expect]]\npattern = "neg/F16/*"\nstatus = "unsupported"\n'
        'reason = "no F16 kernel"\n'
    )
    session = Session(name, load_expectations(toml))
    try:
        from mlplug_conformance.cases import all_cases

        results = {r.id: r for r in session.run([c for c in all_cases() if c.op == "neg"])}
    finally:
        session.close()
    assert results["neg/F32/n7x3"].status == "xfail"
    assert "known off-by-one" in results["neg/F32/n7x3"].message
    assert results["neg/F32/empty"].status == "xpass"  # nothing to doctor in zero elements
    assert results["neg/F16/n7x3"].status == "unsupported"
    assert results["neg/BF16/n7x3"].status == "FAIL"


def test_expectations_json_and_validation(tmp_path: Path) -> None:
    path = tmp_path / "e.json"
    path.write_text(json.dumps([{"pattern": "a/*", "status": "xfail", "reason": "r"}]))
    rules = load_expectations(path)
    assert rules.match("a/F32/x") is not None and rules.match("b/F32/x") is None
    path.write_text(json.dumps([{"pattern": "a/*", "status": "maybe", "reason": "r"}]))
    with pytest.raises(ValueError, match="status"):
        load_expectations(path)
    path.write_text(json.dumps([{"pattern": "a/*", "status": "xfail", "reason": " "}]))
    with pytest.raises(ValueError, match="reason"):
        load_expectations(path)


def test_input_conversion_is_verified(mutant: Callable[..., str]) -> None:
    # A device whose F32 -> F16 copy is wrong is caught at input preparation.
    name = mutant("copy", lambda v: np.where(v == 0, v, v * 1.5))
    session = Session(name)
    try:
        from mlplug_conformance.cases import find_case

        (result,) = session.run([find_case("neg/F16/n7x3")])
    finally:
        session.close()
    assert result.status == "FAIL" and "differ from the host's" in result.message


def test_mlplug_cli_has_the_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    from mlplug import cli

    assert cli.main(["conformance", "--backend", "reference", "--case", "softmax/F32/n7x3"]) == 0
    assert "0 failed" in capsys.readouterr().out


def test_python_dash_m_runs() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mlplug_conformance",
            "--backend",
            "reference",
            "--case",
            "rows/Q8_0/batched-64x4x2",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_support_mode_runs_one_case_per_cell(capsys: pytest.CaptureFixture[str]) -> None:
    assert runner.main(["--backend", "reference", "--mode", "support", "--ops", "mulmat"]) == 0
    assert "27 cases on backend 'reference'" in capsys.readouterr().out  # 5 + 22 from files


def test_perf_mode_never_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        runner.main(
            ["--backend", "reference", "--mode", "perf", "--ops", "sqr", "--perf-seconds", "0"]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "sqr/F32/perf-4096x512" in out and "GB/s" in out
