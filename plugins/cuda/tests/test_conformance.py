"""The conformance suite through the cuda plugin's code, under emulation (as CI runs it).

Equivalent to ``MLPLUG_CUDA_EMULATE=1 mlplug conformance --backend cuda --expectations
plugins/cuda/src/mlplug_cuda/expectations.toml`` and ``mlplug conformance --backend cuda --mode
memory``. The suite builds its backends with ``cpu_fallback=False``: an op the CUDA device
declined would be reported "unsupported", never passed on the CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

runner = pytest.importorskip(
    "mlplug_conformance.runner", reason="mlplug-conformance is not installed"
)

EXPECTATIONS = Path(__file__).parents[1] / "src" / "mlplug_cuda" / "expectations.toml"


def test_every_case_passes(
    emulate: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    emulate.setenv("MLPLUG_CUDA_EMULATE", "1")
    report = tmp_path / "cuda.json"
    rc = runner.main(
        ["--backend", "cuda", "--expectations", str(EXPECTATIONS), "--json", str(report)]
    )
    out = capsys.readouterr().out
    assert rc == 0, out[-3000:]
    results = json.loads(report.read_text())["results"]
    statuses = {r["status"] for r in results}
    assert statuses <= {"pass", "xfail", "skip"}, statuses  # nothing declined, nothing failed
    assert sum(r["status"] == "pass" for r in results) > 1800


def test_memory_contract(emulate: pytest.MonkeyPatch) -> None:
    from mlplug_conformance.memory import run_memory_mode

    results = run_memory_mode("cuda")
    assert {r.id: r.status for r in results if r.status != "pass"} == {}
