"""Static checks the style guide asks for: strict mypy on every tree, ruff, import-linter."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_mypy_on_core() -> None:
    pytest.importorskip("mypy")
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "core/src/mlplug"], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr


# Each tree is checked in its own mypy run: the packages are separate distributions.
_PLUGIN_TREES = [
    "plugins/cpu/src",
    "plugins/metal/src",
    "plugins/cuda/src",
    "plugins/ray/src",
    "conformance_tests/src",
    "examples/mlplug-example-plugin/src",
]


@pytest.mark.parametrize("tree", _PLUGIN_TREES)
def test_mypy_on_plugins_and_conformance(tree: str) -> None:
    pytest.importorskip("mypy")
    if not (ROOT / tree).is_dir():
        pytest.skip(f"{tree} is not in this checkout")
    out = subprocess.run(
        [sys.executable, "-m", "mypy", tree], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_import_contracts() -> None:
    lint = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    if not Path(lint).exists():
        pytest.fail("import-linter is not installed (it is in the dev extra)")
    out = subprocess.run([lint], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def _ruff() -> str:
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    if not Path(ruff).exists():
        pytest.fail("ruff is not installed (it is in the dev extra)")
    return ruff


@pytest.mark.parametrize("args", [["check"], ["format", "--check"]], ids=["lint", "format"])
def test_ruff(args: list[str]) -> None:
    out = subprocess.run([_ruff(), *args, "."], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
