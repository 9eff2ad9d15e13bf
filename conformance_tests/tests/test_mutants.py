"""Every mutant of the cpu plugin is caught by the suite (conformance issue, item 7)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cpu_mutants import MUTANTS, register_mutants

from mlplug_conformance.runner import main

# The ops whose cases must catch each mutant (the run covers every op; these must FAIL).
MUST_FAIL = {
    "mutant_stride": {"contiguous"},
    "mutant_broadcast": {"add", "mul"},
    "mutant_transpose": {"mulmat"},
    "mutant_nan": {"sqrt"},
    "mutant_ulp": {"mulmat", "add"},
    "mutant_gather": {"rows"},
}


@pytest.fixture(scope="module", autouse=True)
def _registered() -> None:
    register_mutants()


@pytest.mark.parametrize("name", MUTANTS)
def test_mutant_is_caught(name: str, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    assert main(["--backend", name, "--json", str(report)]) != 0
    results = json.loads(report.read_text())["results"]
    failed = {r["op"] for r in results if r["status"] == "FAIL"}
    assert MUST_FAIL[name] <= failed, f"{name} failed only {sorted(failed)}"
    # A mutant breaks one behaviour; most of the suite still passes.
    passed = sum(r["status"] == "pass" for r in results)
    assert passed > len(results) // 2


def test_the_unbroken_plugin_passes() -> None:
    assert main(["--backend", "cpu", "--ops", "mulmat"]) == 0
