"""The Starlette application: OpenAI routes, server-sent events, JSON errors.

Routes: ``POST /v1/completions``, ``POST /v1/chat/completions`` (both streaming or not),
``GET /v1/models``, ``GET /health``. Every error is an OpenAI-style JSON body
``{"error": {"message", "type", "param", "code"}}`` with a 4xx status for a request at fault
(400 bad JSON or field, 404 unknown route, 405 wrong method, 413 body too large, 429 queue
full) and 5xx for the server's own failures.

A request's generation runs on the scheduler's worker thread; its events come back through an
``asyncio.Queue`` (``loop.call_soon_threadsafe``). While a response is pending or streaming, a
task watches the connection: a client that disconnects cancels its request, which frees its
slot and cache cells before the next model step.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from mlplug.errors import RequestError
from mlplug.serve.protocol import Options, parse_chat, parse_completion
from mlplug.serve.scheduler import Event, Finished, Job, Piece

if TYPE_CHECKING:
    from mlplug.serve.chat import ChatTemplate
    from mlplug.serve.scheduler import Scheduler
    from mlplug.tokenizer import Tokenizer

__all__ = ["MAX_BODY_BYTES", "ServerState", "create_app"]

MAX_BODY_BYTES = 16 * 1024 * 1024
"""The largest request body accepted (413 beyond)."""


@dataclass(frozen=True, slots=True)
class ServerState:
    """What the routes serve.

    Attributes:
        scheduler: The running scheduler.
        tokenizer: The model's tokenizer.
        model_id: The name ``/v1/models`` lists and responses carry.
        chat_template: The compiled chat template, or ``None``.
        no_template_reason: Why there is none (the 400 message of chat requests).
    """

    scheduler: Scheduler
    tokenizer: Tokenizer
    model_id: str
    chat_template: ChatTemplate | None
    no_template_reason: str = ""


def _error(status: int, message: str, kind: str, param: str | None, code: str | None) -> Response:
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status)


def _request_error(err: RequestError) -> Response:
    return _error(err.status, str(err), err.kind, err.param, err.code)


async def _on_request_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestError)
    return _request_error(exc)


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    message = f"[serve] {request.method} {request.url.path}: {exc.detail}"
    return _error(exc.status_code, message, kind, None, None)


async def _on_server_error(request: Request, exc: Exception) -> Response:
    return _error(
        500, f"[serve] internal error: {type(exc).__name__}: {exc}", "server_error", None, None
    )


async def _read_json(request: Request) -> Any:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
        raise RequestError(
            f"[serve] the body has {length} bytes; at most {MAX_BODY_BYTES} are accepted",
            status=413,
        )
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise RequestError(f"[serve] the body exceeds {MAX_BODY_BYTES} bytes", status=413)
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RequestError(
            f"[serve] the body is not valid JSON: {err}", code="invalid_json"
        ) from err


async def _watch_disconnect(receive: Receive, job: Job) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            job.cancel()
            return


class _Generation:
    """One submitted request: its job and the queue its events arrive on."""

    __slots__ = ("job", "queue")

    def __init__(self, state: ServerState, prompt: list[int], options: Options) -> None:
        loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[Event] = asyncio.Queue()

        def emit(event: Event) -> None:
            loop.call_soon_threadsafe(self.queue.put_nowait, event)

        scheduler = state.scheduler
        max_tokens = options.max_tokens
        if max_tokens is None:
            max_tokens = max(1, scheduler.ctx_size - len(prompt))
        self.job = Job(
            prompt,
            max_tokens,
            options.sampling,
            options.stop,
            emit,
            ignore_eos=options.ignore_eos,
        )
        scheduler.submit(self.job)

    async def events(self) -> AsyncIterator[Event]:
        while True:
            event = await self.queue.get()
            yield event
            if isinstance(event, Finished):
                return


class _Guarded(Response):
    """Run a response while watching the connection; cancel the job when it ends early."""

    def __init__(self, job: Job, inner: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        super().__init__()
        self._job = job
        self._inner = inner

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        watcher = asyncio.ensure_future(_watch_disconnect(receive, self._job))
        try:
            await self._inner(scope, receive, send)
        finally:
            watcher.cancel()
            self._job.cancel()  # a no-op once the job has finished


def _usage(done: Finished) -> dict[str, int]:
    return {
        "prompt_tokens": done.prompt_tokens,
        "completion_tokens": done.completion_tokens,
        "total_tokens": done.prompt_tokens + done.completion_tokens,
    }


def _failure(done: Finished) -> Response:
    if done.reason == "cancelled":
        return _error(503, "[serve] the request was cancelled", "server_error", None, None)
    return _error(500, f"[serve] generation failed: {done.error}", "server_error", None, None)


class _Api:
    """The route handlers over one :class:`ServerState`."""

    __slots__ = ("state",)

    def __init__(self, state: ServerState) -> None:
        self.state = state

    async def health(self, request: Request) -> Response:
        s = self.state.scheduler.stats()
        return JSONResponse(
            {
                "status": "ok",
                "slots_idle": s.parallel - s.active,
                "slots_processing": s.active,
                "requests_waiting": s.waiting,
                "cells_used": s.cells_used,
                "steps": s.steps,
                "requests_done": s.requests_done,
                "requests_cancelled": s.requests_cancelled,
            }
        )

    async def models(self, request: Request) -> Response:
        model = {"id": self.state.model_id, "object": "model", "created": 0, "owned_by": "mlplug"}
        return JSONResponse({"object": "list", "data": [model]})

    def _prompt_ids(self, prompt: str | tuple[int, ...]) -> list[int]:
        tok = self.state.tokenizer
        if isinstance(prompt, str):
            return tok.encode(prompt)
        bad = [t for t in prompt if not 0 <= t < tok.vocab_size]
        if bad:
            raise RequestError(
                f"[serve] token id {bad[0]} is outside 0..{tok.vocab_size - 1}",
                param="prompt",
                code="invalid_value",
            )
        return list(prompt)

    async def completions(self, request: Request) -> Response:
        req = parse_completion(await _read_json(request))
        prompt = self._prompt_ids(req.prompt)
        return self._respond(prompt, req.options, chat=False)

    async def chat_completions(self, request: Request) -> Response:
        req = parse_chat(await _read_json(request))
        template = self.state.chat_template
        if template is None:
            raise RequestError(
                self.state.no_template_reason, param="messages", code="no_chat_template"
            )
        prompt = template.encode(req.messages)
        return self._respond(prompt, req.options, chat=True)

    def _respond(self, prompt: list[int], options: Options, *, chat: bool) -> Response:
        gen = _Generation(self.state, prompt, options)
        ident = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        created = int(time.time())
        if options.stream:
            chunks = self._stream(gen, ident, created, options.include_usage, chat=chat)
            inner = StreamingResponse(chunks, media_type="text/event-stream")
            return _Guarded(gen.job, inner)
        return _Guarded(gen.job, self._whole(gen, ident, created, chat=chat))

    def _whole(
        self, gen: _Generation, ident: str, created: int, *, chat: bool
    ) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
        async def respond(scope: Scope, receive: Receive, send: Send) -> None:
            parts: list[str] = []
            done = Finished("error", 0, 0, "no result")
            async for event in gen.events():
                if isinstance(event, Piece):
                    parts.append(event.text)
                else:
                    done = event
            if done.reason not in ("stop", "length"):
                await _failure(done)(scope, receive, send)
                return
            text = "".join(parts)
            choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": done.reason}
            if chat:
                choice["message"] = {"role": "assistant", "content": text}
            else:
                choice["text"] = text
            body = {
                "id": ident,
                "object": "chat.completion" if chat else "text_completion",
                "created": created,
                "model": self.state.model_id,
                "choices": [choice],
                "usage": _usage(done),
            }
            await JSONResponse(body)(scope, receive, send)

        return respond

    async def _stream(
        self, gen: _Generation, ident: str, created: int, include_usage: bool, *, chat: bool
    ) -> AsyncIterator[str]:
        base: dict[str, object] = {
            "id": ident,
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": created,
            "model": self.state.model_id,
        }

        def chunk(text: str | None, finish: str | None, first: bool = False) -> str:
            choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": finish}
            if chat:
                delta: dict[str, str] = {"role": "assistant"} if first else {}
                if text is not None:
                    delta["content"] = text
                choice["delta"] = delta
            else:
                choice["text"] = text or ""
            return "data: " + json.dumps({**base, "choices": [choice]}) + "\n\n"

        if chat:
            yield chunk("", None, first=True)
        async for event in gen.events():
            if isinstance(event, Piece):
                yield chunk(event.text, None)
                continue
            if event.reason not in ("stop", "length"):
                message = (
                    "[serve] the request was cancelled"
                    if event.reason == "cancelled"
                    else f"[serve] generation failed: {event.error}"
                )
                error = {"message": message, "type": "server_error", "param": None, "code": None}
                yield "data: " + json.dumps({"error": error}) + "\n\n"
                return
            yield chunk(None, event.reason)
            if include_usage:
                usage: dict[str, object] = {**base, "choices": [], "usage": _usage(event)}
                yield "data: " + json.dumps(usage) + "\n\n"
        yield "data: [DONE]\n\n"


def create_app(state: ServerState) -> Starlette:
    """Return the ASGI application serving ``state``."""
    api = _Api(state)
    routes = [
        Route("/health", api.health, methods=["GET"]),
        Route("/v1/models", api.models, methods=["GET"]),
        Route("/v1/completions", api.completions, methods=["POST"]),
        Route("/v1/chat/completions", api.chat_completions, methods=["POST"]),
    ]
    handlers: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
        RequestError: _on_request_error,
        HTTPException: _on_http_error,
        Exception: _on_server_error,
    }
    return Starlette(routes=routes, exception_handlers=handlers)
