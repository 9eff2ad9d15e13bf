"""Text for a terminal: generated text with its control characters made visible.

A model can generate any character, ESC and BEL included; sent raw, ``ESC [ 2 J`` clears the
screen, other sequences retitle the window, move the cursor, or (on some terminals) write into
the input line. ``mlplug run`` prints generated text through :func:`visible`.
"""

from __future__ import annotations

import re

__all__ = ["visible"]

# C0 controls except tab and newline, DEL, C1 controls; and the bidirectional overrides and
# isolates, which reorder what is shown ("Trojan source", CVE-2021-42574).
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(text: str) -> str:
    r"""Return ``text`` with control characters written as escapes (``\x1b``, ``\u202e``).

    Tabs and newlines are kept; a backslash is left alone, so the escapes are for reading, not
    for decoding back.
    """
    return _UNSAFE.sub(_escape, text)
