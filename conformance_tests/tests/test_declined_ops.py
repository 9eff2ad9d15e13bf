"""An op the device under test declines is reported "unsupported", never a pass (issue #13)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

import mlplug
from mlplug.device import EnginePlugin, Node
from mlplug.engine import EngineFactory
from mlplug_conformance.runner import main


class _Declining:
    """A simulated GPU of the cpu plugin that declines ``add`` (everything else it runs)."""

    def __init__(self, inner: object) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    def unsupported(self, node: Node) -> str | None:
        if node.op == "add":
            return "[SIM0] add is not implemented here"
        return self._inner.unsupported(node)  # type: ignore[attr-defined, no-any-return]


def _load(params: mlplug.BackendParams) -> Sequence[object]:
    from mlplug_cpu.device import CpuDevice
    from mlplug_cpu.plugin import PLUGIN as CPU

    cpu = CPU.load(params)[0]
    return [cpu, _Declining(CpuDevice(name="SIM0", id="sim-0", kind="gpu"))]


@pytest.fixture(scope="module", autouse=True)
def _registered() -> None:
    plugin = EnginePlugin(name="declining", load=_load)  # type: ignore[arg-type]
    mlplug.register_backend("declining", EngineFactory(plugin), priority=-1000)


def test_a_declined_op_is_unsupported_not_passed(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    assert main(["--backend", "declining", "--ops", "add", "--json", str(report)]) == 0
    results = json.loads(report.read_text())["results"]
    # Zero-element cases execute nothing (SEMANTICS: no node runs), so no device is asked.
    ran = [r for r in results if r["op"] == "add" and not r["id"].endswith("/empty")]
    assert len(ran) >= 30
    assert {r["status"] for r in ran} == {"unsupported"}
    reason = "add: device SIM0 declines it ([SIM0] add is not implemented here)"
    assert all(reason in r["message"] for r in ran if r["dtype"] == "F32")


def test_ops_the_device_runs_still_pass(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    assert main(["--backend", "declining", "--ops", "mul", "--json", str(report)]) == 0
    results = json.loads(report.read_text())["results"]
    assert any(r["status"] == "pass" for r in results)
    assert all(r["status"] != "FAIL" for r in results)
