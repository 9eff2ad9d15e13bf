"""mlplug-example: a small third-party mlplug device plugin on numpy.

It is the worked example of ``docs/plugin-authors.md``: one CPU device that runs a subset of
the ops table (element-wise ops, products, softmax, ``rms_norm``, copies, ``rows``, sorting) on
F32/F16 data and declares everything else unsupported. Importing this package is light; numpy
is imported by :mod:`mlplug_example.device`, which ``load()`` imports when a backend is built.
"""

from __future__ import annotations

__all__: list[str] = []
