"""Chat prompts from the model's own template (``tokenizer.chat_template`` in the GGUF file).

The template is the Jinja2 text the model's authors wrote for Hugging Face ``transformers``; it
runs in Jinja2's immutable sandbox, as llama.cpp's ``--jinja`` and ``transformers`` run it, with
the same context: ``messages``, ``add_generation_prompt``, ``bos_token``, ``eos_token`` and the
helpers ``raise_exception`` and ``strftime_now``.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from mlplug.errors import RequestError

if TYPE_CHECKING:
    import jinja2

    from mlplug.tokenizer import Tokenizer

__all__ = ["ChatTemplate"]


def _raise_exception(message: str) -> NoReturn:
    raise RequestError(f"[chat template] {message}", param="messages")


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


class ChatTemplate:
    """A compiled chat template with the model's special tokens.

    Args:
        source: The Jinja2 template text.
        tokenizer: The model's tokenizer (for ``bos_token``/``eos_token`` and encoding).

    Raises:
        ValueError: The template does not compile.
    """

    __slots__ = ("_template", "_tok", "bos_token", "eos_token", "source")

    def __init__(self, source: str, tokenizer: Tokenizer) -> None:
        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
        )
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        try:
            self._template: jinja2.Template = env.from_string(source)
        except jinja2.TemplateError as err:
            raise ValueError(f"[chat template] does not compile: {err}") from err
        self.source = source
        self._tok = tokenizer
        self.bos_token = tokenizer.tokens[tokenizer.bos_id] if tokenizer.bos_id is not None else ""
        self.eos_token = tokenizer.tokens[tokenizer.eos_id] if tokenizer.eos_id is not None else ""

    def render(self, messages: Sequence[Mapping[str, Any]]) -> str:
        """Return the prompt text of ``messages``, ending where the assistant's turn begins.

        Raises:
            RequestError: The template rejects the conversation, or fails on it.
        """
        import jinja2

        try:
            return self._template.render(
                messages=[dict(m) for m in messages],
                add_generation_prompt=True,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
            )
        except RequestError:
            raise
        except (jinja2.TemplateError, TypeError, ValueError, KeyError, IndexError) as err:
            raise RequestError(
                f"[chat template] failed on these messages: {type(err).__name__}: {err}",
                param="messages",
            ) from err

    def encode(self, messages: Sequence[Mapping[str, Any]]) -> list[int]:
        """Return the prompt token ids of ``messages``.

        Special-token text in the rendered prompt becomes the special ids. BOS is added as the
        model asks unless the template already wrote it.
        """
        text = self.render(messages)
        add = not (self.bos_token and text.startswith(self.bos_token))
        return self._tok.encode(text, add_special=add, parse_special=True)
