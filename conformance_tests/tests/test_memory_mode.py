"""Memory-mode conformance: green on cpu, and red when core's books or placement are wrong."""

from __future__ import annotations

import pytest

import mlplug.engine.books as books
import mlplug.engine.graph_backend as graph_backend
import mlplug.engine.weights as weights
from mlplug_conformance.memory import expected_layers, run_memory_mode


def statuses(results: list) -> dict[str, str]:
    return {r.id: r.status for r in results}


def test_cpu_passes_memory_mode() -> None:
    results = run_memory_mode("cpu")
    assert all(r.status == "pass" for r in results), [r for r in results if r.status != "pass"]
    assert len(results) == 9


def test_restated_rule_matches_the_worked_table() -> None:
    cpu = None
    assert expected_layers(32, 10, 2, 0, (1, 1)) == [cpu] * 22 + [0] * 5 + [1] * 5 + [cpu]
    assert expected_layers(32, 33, 2, 1, (1, 1)) == [0] * 17 + [1] * 15 + [1]
    assert expected_layers(32, 20, 2, 0, (3, 1)) == [cpu] * 12 + [0] * 15 + [1] * 5 + [cpu]


def test_wrong_placement_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    real = graph_backend.layer_devices

    def reversed_gpus(blocks, n, n_gpus, main_gpu, splits):  # type: ignore[no-untyped-def]
        out = real(blocks, n, n_gpus, main_gpu, splits)
        return [None if g is None else n_gpus - 1 - g for g in out]

    monkeypatch.setattr(graph_backend, "layer_devices", reversed_gpus)
    got = statuses(run_memory_mode("cpu"))
    assert got["memory/placement/2-gpus"] == "FAIL"
    assert got["memory/placement/0-gpus"] == "pass"


def test_wrong_failure_status_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    def never_failed(self, device, status):  # type: ignore[no-untyped-def]
        status = books.AllocationStatus.ALLOCATED
        for entry in self.weights[device]:
            if entry[0]:
                entry[1] = status

    monkeypatch.setattr(books.Books, "mark_weights", never_failed)
    assert statuses(run_memory_mode("cpu"))["memory/out-of-memory"] == "FAIL"


def test_cpu_only_plugin_checks_out_of_memory_on_its_cpu_cap() -> None:
    got = statuses(run_memory_mode("example"))
    assert got["memory/out-of-memory"] == "pass"
    assert got["memory/placement/2-gpus"] == "skipped"
    assert got["memory/load"] == "pass"


def test_a_second_copy_of_the_tied_output_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    # A core that copies the tied output.weight next to token_embd.weight on the CPU (counting
    # the embedding twice, as before §6.5 said otherwise) fails the tied-output check only.
    monkeypatch.setattr(weights, "_TIED", "no-such-weight")
    got = statuses(run_memory_mode("cpu"))
    assert got["memory/tied-output"] == "FAIL"
    assert got["memory/sizes"] == "pass" and got["memory/load"] == "pass"
