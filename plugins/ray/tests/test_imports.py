"""The ray plugin's import contracts (plugins/ray/importlinter.toml) and its light descriptor."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip(
    "mlplug_ray", reason="mlplug-ray is not installed (pip install -e ./plugins/ray)"
)

ROOT = Path(__file__).resolve().parents[3]


def test_import_contracts() -> None:
    lint = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    if not Path(lint).exists():
        pytest.fail("import-linter is not installed (it is in the dev extra)")
    config = ROOT / "plugins" / "ray" / "importlinter.toml"
    out = subprocess.run(
        [lint, "--config", str(config)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "3 kept, 0 broken" in out.stdout


def test_descriptor_does_not_import_ray() -> None:
    code = "import sys, mlplug_ray.plugin; print('ray' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "False"
