"""The example third-party plugin passes the conformance suite, run the way its guide shows.

``examples/mlplug-example-plugin`` is a separate distribution (``mlplug-example``, backend
``example``), installed by the README's test command. These tests run the suite against it
through its entry point, as ``docs/plugin-authors.md`` does, and require that:

* nothing fails and no case is expected to fail (it declares what it lacks as unsupported);
* every op and dtype the plugin claims to support really ran cases and passed them, so a run
  that silently counts nothing (or a plugin refusing what it claims) cannot look green;
* the suite turns red when one of the example's kernels is broken (two mutants).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import mlplug
from mlplug.device import TensorRef, contiguous_strides
from mlplug.ops import OPS
from mlplug_conformance.cases import all_cases
from mlplug_conformance.runner import main

try:
    from mlplug_example import kernels
except ImportError:  # pragma: no cover - the README's test command installs it
    kernels = None  # type: ignore[assignment]

INSTALL = "pip install -e ./examples/mlplug-example-plugin"


@pytest.fixture(scope="module")
def example() -> Any:
    """Return the example's kernels module; fail (not skip) when it is not installed."""
    if kernels is None:
        pytest.fail(f"the example plugin is not installed: {INSTALL}")
    return kernels


def run_suite(path: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    """Run ``mlplug conformance --backend example --json PATH *extra``; return (rc, report)."""
    rc = main(["--backend", "example", "--json", str(path), *extra])
    return rc, json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def report(example: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The JSON report of the whole suite (every op) on the example backend."""
    rc, data = run_suite(tmp_path_factory.mktemp("example") / "report.json")
    data["exit_code"] = rc
    return data


def test_example_is_an_installed_backend(example: Any) -> None:
    info = {i.name: i for i in mlplug.list_backends()}["example"]
    assert info.available, info.reason
    assert info.provider.startswith("mlplug-example ")
    assert info.priority < 0  # never chosen over cpu by default


def test_example_passes_the_suite(report: dict[str, Any]) -> None:
    failed = [(r["id"], r["message"]) for r in report["results"] if r["status"] == "FAIL"]
    assert failed == []
    assert report["exit_code"] == 0
    assert set(report["summary"]) <= {"pass", "unsupported"}, report["summary"]


def test_every_supported_op_and_dtype_ran_and_passed(example: Any, report: dict[str, Any]) -> None:
    statuses: dict[tuple[str, str], Counter[str]] = {}
    for r in report["results"]:
        statuses.setdefault((r["op"], r["dtype"]), Counter())[r["status"]] += 1
    generated = {(c.op, c.dtype.name) for c in all_cases()}
    claimed = [
        (op, dt.name)
        for op, kernel in example.KERNELS.items()
        for dt in kernel.dtypes & OPS[op].dtypes
        if (op, dt.name) in generated
    ]
    assert len(claimed) >= 2 * len(example.KERNELS)  # F32 and F16 at least for every op
    not_run = [cell for cell in claimed if statuses.get(cell, Counter())["pass"] == 0]
    assert not_run == []


def test_unsupported_reasons_come_from_the_example(report: dict[str, Any]) -> None:
    refused = [r for r in report["results"] if r["status"] == "unsupported"]
    assert refused, "the example declares BF16 and many ops unsupported"
    assert [r["id"] for r in refused if "mlplug-example" not in r["message"]] == []


def test_one_command_from_the_guide(example: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from mlplug.cli import main as mlplug_main

    assert mlplug_main(["conformance", "--backend", "example", "--ops", "rms_norm"]) == 0
    out = capsys.readouterr().out
    assert "rms_norm" in out
    assert "cases on backend 'example': 0 failed" in out


def test_a_wrong_kernel_fails_the_suite(
    example: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(example.BINARY, "add", np.subtract)
    rc, data = run_suite(tmp_path / "add.json", "--ops", "add")
    assert rc == 1
    assert data["summary"]["FAIL"] >= 10


def test_ignoring_strides_fails_the_suite(
    example: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    real = example.array

    def packed(ref: TensorRef) -> np.ndarray:
        strides = contiguous_strides(ref.ne, ref.dtype)
        return real(TensorRef(ref.buffer, ref.offset, ref.ne, strides, ref.dtype))

    monkeypatch.setattr(example, "array", packed)
    rc, data = run_suite(tmp_path / "strides.json", "--ops", "softmax")
    assert rc == 1
    failed = [r["id"] for r in data["results"] if r["status"] == "FAIL"]
    assert "softmax/F32/permuted-5x9" in failed
