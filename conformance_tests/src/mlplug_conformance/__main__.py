"""``python -m mlplug_conformance``: the conformance command line."""

from __future__ import annotations

import sys

from mlplug_conformance.runner import main

if __name__ == "__main__":
    sys.exit(main())
