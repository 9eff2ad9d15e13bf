"""mlplug-conformance: proves that a backend computes every op right (DESIGN §6).

* :mod:`.reference` - the float64 numpy meaning of every op of ``mlplug.ops.OPS``.
* :mod:`.convert` - dtype conversions (rounding, quantisation, dequantisation) in float64.
* :mod:`.cases` - cases generated per op x dtype, built through the public API only.
* :mod:`.weights` - random well-formed weight-only dtypes, fed to cases through GGUF files.
* :mod:`.bounds` and :mod:`.checks` - tolerances, and the checks a result must pass.
* :mod:`.execute` - running cases on a backend; :mod:`.expectations` - a plugin's xfail list.
* :mod:`.runner` - ``mlplug conformance`` / ``python -m mlplug_conformance`` (with
  :mod:`.report`, :mod:`.perf` and :mod:`.memory`).
* :mod:`.plugin` and :mod:`.device` - the ``reference`` backend (the reference on the core
  engine); :mod:`.synth` - synthetic GGUF files.

Plugins never import this package (an import-linter contract enforces it).
"""

from __future__ import annotations

__all__: list[str] = []
