"""docs/support-matrix.md is what a fresh conformance run of every first-party backend merges to."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MATRIX = ROOT / "docs" / "support-matrix.md"
# The columns of the published matrix, in order; metal runs on MLX's CPU device off macOS, cuda
# on an emulated GPU (numpy standing in for cupy) with its expectations file.
BACKENDS = ["cpu", "metal", "cuda", "reference", "example"]
EXTRA_ARGS = {"cuda": ["--expectations", "plugins/cuda/src/mlplug_cuda/expectations.toml"]}


def test_support_matrix_is_current(tmp_path: Path) -> None:
    pytest.importorskip("mlplug_conformance")
    env = {
        **os.environ,
        "MLPLUG_METAL_DEVICE": os.environ.get("MLPLUG_METAL_DEVICE", "cpu"),
        "MLPLUG_CUDA_EMULATE": os.environ.get("MLPLUG_CUDA_EMULATE") or "1",
    }
    reports = []
    for name in BACKENDS:
        path = tmp_path / f"{name}.json"
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "mlplug_conformance",
                "--backend",
                name,
                "--json",
                str(path),
                *EXTRA_ARGS.get(name, []),
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        assert path.exists(), f"{name}: no report\n{run.stdout[-2000:]}{run.stderr[-2000:]}"
        reports.append(str(path))
    fresh = tmp_path / "matrix.md"
    subprocess.run(
        [sys.executable, "-m", "mlplug_conformance", "--merge", *reports, "--out", str(fresh)],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    assert MATRIX.read_text() == fresh.read_text(), (
        "docs/support-matrix.md is stale: regenerate it as its header says "
        f"(a fresh merge is in {fresh})"
    )
