"""The conformance suite on the metal backend, on MLX's CPU device (as CI runs it).

Equivalent to ``MLPLUG_METAL_DEVICE=cpu mlplug conformance --backend metal --expectations
plugins/metal/src/mlplug_metal/expectations.toml``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip(
    "mlx.core", reason="MLX is not installed (pip install 'mlx[cpu]')", exc_type=ImportError
)
runner = pytest.importorskip(
    "mlplug_conformance.runner", reason="mlplug-conformance is not installed"
)
pytest.importorskip("mlplug_metal.plugin", reason="mlplug-metal is not installed")

EXPECTATIONS = Path(__file__).parents[1] / "src" / "mlplug_metal" / "expectations.toml"


@pytest.fixture(autouse=True)
def _mlx_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLPLUG_METAL_DEVICE", "cpu")
    monkeypatch.delenv("MLPLUG_METAL_MEMORY_LIMIT", raising=False)
    monkeypatch.delenv("MLPLUG_CPU_MEMORY_LIMIT", raising=False)


def test_every_case_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = tmp_path / "metal.json"
    rc = runner.main(
        ["--backend", "metal", "--expectations", str(EXPECTATIONS), "--json", str(report)]
    )
    out = capsys.readouterr().out
    assert rc == 0, out[-3000:]
    assert "0 failed" in out
    assert json.loads(report.read_text())  # a report was written


def test_memory_contract() -> None:
    from mlplug_conformance.memory import run_memory_mode

    results = {r.id: r for r in run_memory_mode("metal")}
    for check in (
        "memory/placement/1-gpus",
        "memory/sizes",
        "memory/reserve-and-cache",
        "memory/load",
    ):
        assert results[check].status == "pass", f"{check}: {results[check].detail}"
