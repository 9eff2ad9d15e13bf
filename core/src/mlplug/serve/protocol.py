"""OpenAI request bodies of ``/v1/completions`` and ``/v1/chat/completions``, field by field.

Every field is checked for its JSON type and range; a wrong one raises :class:`RequestError`
(HTTP 400) naming the field, as the OpenAI API does. Fields this server cannot honour are
refused unless they hold their default (``n`` other than 1, ``logprobs``, ``echo``, penalties,
``logit_bias``, tools…): they are never silently ignored. Fields that do not change the output
(``user``, ``model``, ``metadata``…) are accepted and unused.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mlplug.errors import RequestError
from mlplug.generate import Sampling

__all__ = ["ChatRequest", "CompletionRequest", "Options", "parse_chat", "parse_completion"]

_MAX_STOP = 4  # as the OpenAI API


@dataclass(frozen=True, slots=True)
class Options:
    """What both endpoints share.

    Attributes:
        max_tokens: Tokens to generate at most; ``None`` fills the context.
        sampling: Temperature, top-k, top-p, min-p, repeat penalty and seed.
        stop: Stop strings.
        stream: Answer with server-sent events.
        include_usage: With ``stream``, send a last chunk with the token counts.
        ignore_eos: Generate past end-of-generation tokens (llama.cpp's extension).
    """

    max_tokens: int | None
    sampling: Sampling
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool
    ignore_eos: bool = False


@dataclass(frozen=True, slots=True)
class CompletionRequest:
    """A ``/v1/completions`` request: a prompt as text or as token ids."""

    prompt: str | tuple[int, ...]
    options: Options


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """A ``/v1/chat/completions`` request: messages as the chat template receives them."""

    messages: tuple[dict[str, Any], ...]
    options: Options


def _type_name(value: object) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


def _bad(name: str, expected: str, value: object) -> RequestError:
    return RequestError(
        f"[serve] '{name}' must be {expected}, got {_type_name(value)} {value!r}"[:300],
        param=name,
        code="invalid_type" if expected.startswith(("a ", "an ")) else "invalid_value",
    )


def _number(body: Mapping[str, Any], name: str, default: float, lo: float, hi: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _bad(name, "a number", value)
    if not lo <= value <= hi:
        raise _bad(name, f"between {lo:g} and {hi:g}", value)
    return float(value)


def _integer(body: Mapping[str, Any], name: str, lo: int, hi: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(name, "an integer", value)
    if value < lo or (hi is not None and value > hi):
        raise _bad(name, f">= {lo}" if hi is None else f"between {lo} and {hi}", value)
    return value


def _flag(body: Mapping[str, Any], name: str) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _bad(name, "a boolean", value)
    return value


def _refuse_unless_default(body: Mapping[str, Any], name: str, *defaults: object) -> None:
    if name in body and body[name] not in (None, *defaults):
        raise RequestError(
            f"[serve] '{name}' is not supported by this server (got {body[name]!r})"[:300],
            param=name,
            code="unsupported_parameter",
        )


def _options(body: Mapping[str, Any], max_tokens_names: tuple[str, ...]) -> Options:
    n = _integer(body, "n", 1)
    if n not in (None, 1):
        raise RequestError(
            "[serve] 'n' must be 1: one completion per request", param="n", code="invalid_value"
        )
    for name in ("presence_penalty", "frequency_penalty"):
        _refuse_unless_default(body, name, 0, 0.0)
    _refuse_unless_default(body, "logit_bias", {})
    _refuse_unless_default(body, "logprobs", False)
    max_tokens = None
    for name in max_tokens_names:
        value = _integer(body, name, 1)
        if value is not None:
            max_tokens = value if max_tokens is None else min(max_tokens, value)
    seed = _integer(body, "seed", -(2**63), 2**64 - 1)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    if top_p == 0:
        raise _bad("top_p", "above 0", top_p)
    repeat_penalty = _number(body, "repeat_penalty", 1.0, 0.0, 10.0)
    if repeat_penalty == 0:
        raise _bad("repeat_penalty", "above 0", repeat_penalty)
    repeat_last_n = _integer(body, "repeat_last_n", 0)
    sampling = Sampling(
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_k=_integer(body, "top_k", 0) or 0,
        top_p=top_p,
        min_p=_number(body, "min_p", 0.0, 0.0, 1.0),
        repeat_penalty=repeat_penalty,
        repeat_last_n=64 if repeat_last_n is None else repeat_last_n,
        # No seed: one from the OS, as the OpenAI API draws differently every time.
        seed=secrets.randbits(64) if seed is None else seed % 2**64,
    )
    stop_value = body.get("stop")
    if stop_value is None:
        stop: tuple[str, ...] = ()
    elif isinstance(stop_value, str):
        stop = (stop_value,)
    elif isinstance(stop_value, list) and all(isinstance(s, str) for s in stop_value):
        if len(stop_value) > _MAX_STOP:
            raise _bad("stop", f"at most {_MAX_STOP} strings", stop_value)
        stop = tuple(stop_value)
    else:
        raise _bad("stop", "a string or an array of strings", stop_value)
    stream = _flag(body, "stream")
    stream_options = body.get("stream_options")
    include_usage = False
    if stream_options is not None:
        if not isinstance(stream_options, dict):
            raise _bad("stream_options", "an object", stream_options)
        if not stream:
            raise RequestError(
                "[serve] 'stream_options' is only allowed with 'stream': true",
                param="stream_options",
                code="invalid_value",
            )
        include_usage = _flag(stream_options, "include_usage")
    return Options(
        max_tokens, sampling, stop, stream, include_usage, ignore_eos=_flag(body, "ignore_eos")
    )


def _object(body: object) -> Mapping[str, Any]:
    if not isinstance(body, dict):
        raise RequestError(
            f"[serve] the request body must be a JSON object, got {_type_name(body)}",
            code="invalid_type",
        )
    return body


def parse_completion(body: object) -> CompletionRequest:
    """Check a ``/v1/completions`` body.

    Raises:
        RequestError: A missing or ill-typed field, or an unsupported one.
    """
    body = _object(body)
    for name in ("echo",):
        _refuse_unless_default(body, name, False)
    _refuse_unless_default(body, "best_of", 1)
    _refuse_unless_default(body, "suffix", "")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]  # a batch of one prompt
    if isinstance(prompt, str):
        text: str | tuple[int, ...] = prompt
    elif (
        isinstance(prompt, list)
        and prompt
        and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)
    ):
        text = tuple(prompt)
    elif isinstance(prompt, list) and len(prompt) > 1:
        raise RequestError(
            "[serve] 'prompt' must be one prompt (a string or an array of token ids); "
            "send one request per prompt",
            param="prompt",
            code="invalid_value",
        )
    else:
        raise _bad("prompt", "a string or an array of token ids", prompt)
    return CompletionRequest(text, _options(body, ("max_tokens",)))


def _content(i: int, value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        parts = []
        for j, part in enumerate(value):
            if not (isinstance(part, dict) and part.get("type") == "text"):
                raise RequestError(
                    f"[serve] messages[{i}].content[{j}] must be a text part "
                    '({"type": "text", "text": ...}); other content is not supported',
                    param=f"messages[{i}].content",
                    code="invalid_value",
                )
            text = part.get("text")
            if not isinstance(text, str):
                raise _bad(f"messages[{i}].content[{j}].text", "a string", text)
            parts.append(text)
        return "".join(parts)
    raise _bad(f"messages[{i}].content", "a string or an array of text parts", value)


def parse_chat(body: object) -> ChatRequest:
    """Check a ``/v1/chat/completions`` body.

    Raises:
        RequestError: A missing or ill-typed field, or an unsupported one.
    """
    body = _object(body)
    _refuse_unless_default(body, "tools", [])
    _refuse_unless_default(body, "tool_choice", "none")
    _refuse_unless_default(body, "top_logprobs", 0)
    response_format = body.get("response_format")
    if response_format is not None and response_format != {"type": "text"}:
        raise RequestError(
            "[serve] 'response_format' other than text is not supported",
            param="response_format",
            code="unsupported_parameter",
        )
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise _bad("messages", "a non-empty array of messages", raw)
    messages = []
    for i, message in enumerate(raw):
        if not isinstance(message, dict):
            raise _bad(f"messages[{i}]", "an object", message)
        role = message.get("role")
        if not isinstance(role, str) or not role:
            raise _bad(f"messages[{i}].role", "a string", role)
        out = dict(message)
        out["content"] = "" if message.get("content") is None else _content(i, message["content"])
        messages.append(out)
    return ChatRequest(tuple(messages), _options(body, ("max_tokens", "max_completion_tokens")))
