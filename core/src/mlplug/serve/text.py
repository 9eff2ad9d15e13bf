"""Generated text for the server: streaming detokenisation that stops at stop strings.

:class:`mlplug.tokenizer.DecodeStream` starts a text (it drops the leading space a SentencePiece
tokenizer adds); generated tokens continue the prompt's text, so :class:`TextStream` decodes
their pieces as they are, holding back the bytes of an unfinished UTF-8 character and any tail
that could be the start of a stop string.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlplug.tokenizer import Tokenizer

__all__ = ["TextStream"]


class TextStream:
    """Turn generated token ids into text, released as soon as no stop string can claim it.

    Args:
        tokenizer: The model's tokenizer (control tokens decode to nothing).
        stop: Stop strings: the text ends before the first one that appears.
    """

    __slots__ = ("_decoder", "_held", "_stop", "_tok", "stopped")

    def __init__(self, tokenizer: Tokenizer, stop: Sequence[str] = ()) -> None:
        self._tok = tokenizer
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stop = tuple(s for s in stop if s)
        self._held = ""
        self.stopped = False
        """Whether a stop string has appeared (nothing is released after it)."""

    def push(self, token_id: int) -> str:
        """Feed one generated token; return the text that can be released now."""
        if self.stopped:
            return ""
        return self._feed(self._decoder.decode(self._tok.token_to_piece(token_id)))

    def finish(self) -> str:
        """Return the rest of the text at the end of generation."""
        if self.stopped:
            return ""
        out = self._feed(self._decoder.decode(b"", final=True))
        if not self.stopped:
            out += self._held
        self._held = ""
        return out

    def _feed(self, text: str) -> str:
        if not self._stop:
            return text
        buf = self._held + text
        # Every earlier character was released only because no stop string could start there.
        cuts = [i for i in (buf.find(s) for s in self._stop) if i >= 0]
        if cuts:
            self.stopped = True
            self._held = ""
            return buf[: min(cuts)]
        hold = 0
        for s in self._stop:
            for k in range(min(len(s) - 1, len(buf)), hold, -1):
                if buf.endswith(s[:k]):
                    hold = k
                    break
        self._held = buf[len(buf) - hold :]
        return buf[: len(buf) - hold]
