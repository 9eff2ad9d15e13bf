"""``import mlplug`` stays light (SEMANTICS §10, STYLE)."""

from __future__ import annotations

import subprocess
import sys


def test_import_loads_no_heavy_library_and_no_plugin() -> None:
    code = (
        "import sys, mlplug; "
        "heavy = [m for m in ('numpy', 'cupy', 'mlx', 'gguf', 'tokenizers', 'mlplug_cpu', "
        "'mlplug_conformance') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
