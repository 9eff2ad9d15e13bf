"""A plugin's expectations file: cases it declares unsupported or expected to fail.

TOML::

    [[expect]]
    pattern = "mulmat/BF16/*"      # fnmatch on the case id
    status = "xfail"               # or "unsupported"
    reason = "BF16 products accumulate in BF16 on this device"

or JSON: a list of ``{"pattern", "status", "reason"}`` objects (or ``{"expect": [...]}``).
The first matching rule applies. ``unsupported`` cases are not run; ``xfail`` cases run and
report ``xfail`` when they fail and ``xpass`` when they pass.
"""

from __future__ import annotations

import fnmatch
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Expectation", "Expectations", "load_expectations"]

_STATUSES = ("xfail", "unsupported")


@dataclass(frozen=True, slots=True)
class Expectation:
    """One rule: cases whose id matches ``pattern`` get ``status`` for ``reason``."""

    pattern: str
    status: str
    reason: str


@dataclass(frozen=True, slots=True)
class Expectations:
    """An ordered list of rules (empty: every case is expected to pass)."""

    rules: tuple[Expectation, ...] = field(default=())

    def match(self, case_id: str) -> Expectation | None:
        """Return the first rule matching ``case_id``, or None."""
        return next((r for r in self.rules if fnmatch.fnmatchcase(case_id, r.pattern)), None)


def _rule(item: Any, where: str) -> Expectation:
    if not isinstance(item, dict):
        raise ValueError(f"{where}: each expectation must be a table/object, got {item!r}")
    missing = [k for k in ("pattern", "status", "reason") if not isinstance(item.get(k), str)]
    if missing:
        raise ValueError(f"{where}: expectation {item!r} lacks string field(s) {missing}")
    if item["status"] not in _STATUSES:
        raise ValueError(f"{where}: status must be one of {_STATUSES}, got {item['status']!r}")
    if not item["reason"].strip():
        raise ValueError(f"{where}: expectation {item['pattern']!r} needs a reason")
    return Expectation(item["pattern"], item["status"], item["reason"])


def load_expectations(path: str | Path) -> Expectations:
    """Read an expectations file (``.toml`` or ``.json``).

    Raises:
        ValueError: The file is malformed.
        OSError: It cannot be read.
    """
    p = Path(path)
    text = p.read_text(encoding="utf-8")
    if p.suffix.lower() == ".json":
        data: Any = json.loads(text)
    else:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise ValueError(f"{p}: {err}") from err
    items = data.get("expect", []) if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise ValueError(f"{p}: expected a list of expectations")
    return Expectations(tuple(_rule(item, str(p)) for item in items))
