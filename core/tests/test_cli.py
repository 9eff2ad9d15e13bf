"""The ``mlplug`` command line (``backends``, ``info``)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

import mlplug
from mlplug.cli import main
from mlplug.engine import EngineFactory
from mlplug_conformance import synth
from toy_device import toy_plugin


@pytest.fixture
def toy_registered() -> Iterator[None]:
    plugin, _ = toy_plugin(2, gpu_cap=1 << 20)
    mlplug.register_backend(
        "toycli", EngineFactory(plugin), priority=-5, install_hint="pip install toy"
    )
    yield
    mlplug.unregister_backend("toycli")


def test_backends_json(toy_registered: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["backends", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["backends"]}
    toy = rows["toycli"]
    assert toy["available"] and toy["provider"] == "register_backend"
    assert [d["name"] for d in toy["devices"]] == ["CPU", "TOY0", "TOY1"]


def test_info_prints_metadata_and_plan(
    tmp_path: Path, toy_registered: None, capsys: pytest.CaptureFixture[str]
) -> None:
    path = synth.write_llama_gguf(
        tmp_path / "m.gguf", n_layers=4, n_embd=32, n_head=2, n_head_kv=1, n_ff=32, n_vocab=16
    )
    assert (
        main(
            [
                "info",
                str(path),
                "--backend",
                "toycli",
                "--num-gpu-layers",
                "2",
                "--tensor-split",
                "1,1",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "architecture: llama  blocks: 4" in out and "llama.block_count = 4" in out
    lines = out.splitlines()
    assert lines[-4].startswith("TOY0") and lines[-1].startswith("total")
    assert main(["info", str(path), "--backend", "toycli", "--json", "--num-gpu-layers", "5"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["fits"] and data["metadata"]["llama.block_count"] == 4
    assert "TOY0" in data["memory"]


def test_info_reports_what_does_not_fit(
    tmp_path: Path, toy_registered: None, capsys: pytest.CaptureFixture[str]
) -> None:
    path = synth.write_llama_gguf(
        tmp_path / "m.gguf", n_layers=4, n_embd=256, n_head=2, n_head_kv=1, n_ff=1024, n_vocab=16
    )
    assert main(["info", str(path), "--backend", "toycli", "--num-gpu-layers", "4"]) == 1
    captured = capsys.readouterr()
    assert "(failed)" in captured.out and "does not fit" in captured.err


def test_info_on_a_broken_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"GGUF" + b"\xff" * 20)
    assert main(["info", str(bad), "--backend", "cpu"]) == 1
    assert "x.gguf" in capsys.readouterr().err
