"""Continuous batching: every active request advances by one token in one shared model step.

One worker thread owns the model and its KV cache (a backend is used by one thread at a time,
SEMANTICS §2.6). The cache holds ``parallel`` sequences of ``ctx_size`` positions; each active
request has a slot, which is its sequence id. Every step builds one batch:

1. the last sampled token of every request that is decoding (one token each, logits wanted);
2. then prompt tokens of requests still reading their prompt, oldest first, up to ``n_batch``
   tokens in all (logits wanted only for a prompt's last token).

So a new request joins between two steps, its prompt is read in chunks that share the steps
with the others' decode tokens, and no step is longer than one prompt batch: a long prompt
never stalls the requests that are decoding. A request that finishes, fails or is cancelled
leaves between steps and its cells are freed (``cache.remove(slot, 0)``). Waiting requests queue
up to ``queue_size``; past that ``submit`` refuses with HTTP 429.

Results go back through the request's ``emit`` callback, called on the worker thread with
:class:`Piece` (released text) and finally one :class:`Finished`.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mlplug.errors import RequestError
from mlplug.generate import Sampler, Sampling
from mlplug.serve.text import TextStream

if TYPE_CHECKING:
    from mlplug.nn.transformer import Decoder
    from mlplug.tokenizer import Tokenizer

__all__ = ["Event", "Finished", "Job", "Piece", "Scheduler", "SchedulerStats", "used_cells"]

_log = logging.getLogger("mlplug.serve")


def used_cells(cache: Any) -> int:
    """Return the occupied cells of a model's cache (a ``Causal``, or ``LayerCaches`` of them)."""
    from mlplug.nn.layer_caches import LayerCaches

    parts = cache.caches.values() if isinstance(cache, LayerCaches) else [cache]
    return sum(1 for part in parts for _, seqs in part.cells() if seqs)


@dataclass(frozen=True, slots=True)
class Piece:
    """Text a request generated, released in order."""

    text: str


@dataclass(frozen=True, slots=True)
class Finished:
    """The end of a request.

    Attributes:
        reason: ``"stop"`` (end-of-generation token or stop string), ``"length"``
            (``max_tokens`` reached), ``"cancelled"`` or ``"error"``.
        prompt_tokens: Prompt tokens.
        completion_tokens: Tokens sampled (an end-of-generation token included).
        error: What went wrong, for ``"error"``.
    """

    reason: str
    prompt_tokens: int
    completion_tokens: int
    error: str = ""


Event = Piece | Finished


class Job:
    """One request: its prompt, limits and sampling, and its progress (worker-owned).

    Args:
        prompt: Prompt token ids (at least one).
        max_tokens: Tokens to sample at most (at least one).
        sampling: How tokens are drawn.
        stop: Stop strings.
        emit: Called on the worker thread with every :class:`Piece` and the final
            :class:`Finished`; it must not block.
        ignore_eos: Go on past end-of-generation tokens (llama.cpp's ``ignore_eos``; their
            text is empty), until ``max_tokens`` or a stop string.
    """

    __slots__ = (
        "cancelled",
        "emit",
        "generated",
        "ignore_eos",
        "last",
        "max_tokens",
        "n_past",
        "prompt",
        "sampler",
        "slot",
        "stop",
        "text",
    )

    def __init__(
        self,
        prompt: Sequence[int],
        max_tokens: int,
        sampling: Sampling,
        stop: Sequence[str],
        emit: Callable[[Event], None],
        *,
        ignore_eos: bool = False,
    ) -> None:
        if not prompt:
            raise RequestError("[serve] the prompt has no tokens", param="prompt")
        if max_tokens < 1:
            raise RequestError("[serve] max_tokens must be >= 1", param="max_tokens")
        self.prompt = list(prompt)
        self.max_tokens = max_tokens
        self.sampler = Sampler(sampling, history=prompt)
        self.stop = tuple(stop)
        self.emit = emit
        self.ignore_eos = ignore_eos
        self.cancelled = False
        self.slot = -1
        self.n_past = 0  # tokens of this request in the cache
        self.generated = 0
        self.last = -1  # the last sampled token, fed to the next step
        self.text: TextStream | None = None

    def cancel(self) -> None:
        """Ask the worker to drop this request (and free its cells) before the next step."""
        self.cancelled = True

    @property
    def decoding(self) -> bool:
        """Whether the whole prompt is in the cache (the next step feeds a sampled token)."""
        return self.n_past >= len(self.prompt)


@dataclass(frozen=True, slots=True)
class SchedulerStats:
    """What the scheduler holds now.

    Attributes:
        parallel: Slots (requests decoded together).
        active: Requests in a slot.
        waiting: Requests queued for a slot.
        cells_used: Occupied KV cache cells, counted in the cache when a request last joined or
            left (0 once every request has left).
        steps: Model steps run.
        requests_done: Requests that left (finished, failed or cancelled).
        requests_cancelled: Of those, the cancelled ones (client gone, server closing).
    """

    parallel: int
    active: int
    waiting: int
    cells_used: int
    steps: int
    requests_done: int
    requests_cancelled: int


class Scheduler:
    """Run requests with continuous batching on one model and one KV cache.

    Args:
        model: The model (its backend loaded).
        tokenizer: The model's tokenizer (end-of-generation ids and text).
        parallel: Requests decoded together (cache sequences).
        ctx_size: Positions per request (prompt plus generated tokens).
        n_batch: The most tokens one step processes (at least ``parallel``; at most the
            cache's ``parallel × ctx_size`` cells, to which a larger value is lowered).
        queue_size: Requests that may wait for a slot.

    Raises:
        ValueError: A size below 1, or ``n_batch < parallel``.
        ErrNoMem: The cache and the compute buffers do not fit.
    """

    __slots__ = (
        "_active",
        "_cancelled",
        "_cells_used",
        "_closing",
        "_cond",
        "_done",
        "_free",
        "_steps",
        "_thread",
        "_waiting",
        "cache",
        "ctx_size",
        "model",
        "n_batch",
        "parallel",
        "queue_size",
        "tokenizer",
    )

    def __init__(
        self,
        model: Decoder,
        tokenizer: Tokenizer,
        *,
        parallel: int,
        ctx_size: int,
        n_batch: int,
        queue_size: int,
    ) -> None:
        for name, value in (
            ("parallel", parallel),
            ("ctx_size", ctx_size),
            ("n_batch", n_batch),
            ("queue_size", queue_size),
        ):
            if value < 1:
                raise ValueError(f"[serve] {name} must be >= 1, got {value}")
        n_batch = min(n_batch, parallel * ctx_size)
        if n_batch < parallel:
            raise ValueError(
                f"[serve] the batch ({n_batch}) must hold a decode token of each of the "
                f"{parallel} parallel requests"
            )
        self.model = model
        self.tokenizer = tokenizer
        self.parallel = parallel
        self.ctx_size = ctx_size
        self.n_batch = n_batch
        self.queue_size = queue_size
        self.cache: Any = model.new_cache(
            capacity=ctx_size, max_sequences=parallel, max_batch=n_batch
        )
        try:
            model.reserve(self.cache, n_batch)
        except BaseException:
            self.cache.close()
            raise
        self._cond = threading.Condition()
        self._waiting: collections.deque[Job] = collections.deque()
        self._active: list[Job] = []  # in order of admission
        self._free = list(range(parallel - 1, -1, -1))  # slots; pop() gives the lowest
        self._closing = False
        self._cells_used = 0
        self._steps = 0
        self._done = 0
        self._cancelled = 0
        self._thread = threading.Thread(target=self._loop, name="mlplug-serve-worker", daemon=True)

    # -- the caller's side (any thread) ----------------------------------------------------------

    def start(self) -> None:
        """Start the worker thread."""
        self._thread.start()

    def submit(self, job: Job) -> None:
        """Queue ``job`` for a slot.

        Raises:
            RequestError: The prompt plus ``max_tokens`` exceed ``ctx_size`` (400), the queue
                is full (429), or the scheduler is closing (503).
        """
        need = len(job.prompt) + job.max_tokens
        if len(job.prompt) >= self.ctx_size:
            raise RequestError(
                f"[serve] the prompt has {len(job.prompt)} tokens; the context holds "
                f"{self.ctx_size} (prompt and generated tokens)",
                param="prompt",
                code="context_length_exceeded",
            )
        if need > self.ctx_size:
            raise RequestError(
                f"[serve] the prompt ({len(job.prompt)} tokens) plus max_tokens "
                f"({job.max_tokens}) exceed the context of {self.ctx_size} tokens",
                param="max_tokens",
                code="context_length_exceeded",
            )
        with self._cond:
            if self._closing:
                raise RequestError(
                    "[serve] the server is shutting down", status=503, kind="server_error"
                )
            # Free slots take waiting requests at the next step: they do not count as queued.
            if len(self._waiting) - len(self._free) >= self.queue_size:
                raise RequestError(
                    f"[serve] {len(self._waiting)} requests are already waiting for one of "
                    f"{self.parallel} slots (the queue holds {self.queue_size}); retry later",
                    status=429,
                    code="queue_full",
                    kind="rate_limit_error",
                )
            self._waiting.append(job)
            self._cond.notify()

    def stats(self) -> SchedulerStats:
        """Return the current counts."""
        with self._cond:
            return SchedulerStats(
                parallel=self.parallel,
                active=len(self._active),
                waiting=len(self._waiting),
                cells_used=self._cells_used,
                steps=self._steps,
                requests_done=self._done,
                requests_cancelled=self._cancelled,
            )

    def close(self, timeout: float = 30.0) -> None:
        """Stop the worker (pending requests end with ``"cancelled"``) and close the cache."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if not self._thread.is_alive():
            self.cache.close()

    # -- the worker ------------------------------------------------------------------------------

    def _loop(self) -> None:
        try:
            while True:
                with self._cond:
                    while not (self._closing or self._waiting or self._active):
                        self._cond.wait()
                    if self._closing:
                        return
                    admitted = self._admit()
                left = self._leave([j for j in self._active if j.cancelled], "cancelled")
                if admitted or left:
                    self._count_cells()
                if self._active:
                    self._step()
        finally:
            with self._cond:
                self._closing = True  # later submits are refused, not left waiting
                pending = [*self._active, *self._waiting]
                self._waiting.clear()
            self._leave(pending, "cancelled")

    def _admit(self) -> bool:
        """Move waiting requests into free slots (under the lock)."""
        admitted = False
        while self._waiting and self._free:
            job = self._waiting.popleft()
            if job.cancelled:
                self._finish(job, "cancelled")
                continue
            job.slot = self._free.pop()
            job.text = TextStream(self.tokenizer, job.stop)
            self._active.append(job)
            admitted = True
        return admitted

    def _leave(self, jobs: list[Job], reason: str, error: str = "") -> bool:
        """Remove ``jobs`` from their slots and free their cells; report ``reason``."""
        for job in jobs:
            if job.slot >= 0:
                self.cache.remove(job.slot, 0)
                with self._cond:
                    self._active.remove(job)
                    self._free.append(job.slot)
                    self._free.sort(reverse=True)
                job.slot = -1
            self._finish(job, reason, error)
        return bool(jobs)

    def _finish(self, job: Job, reason: str, error: str = "") -> None:
        with self._cond:
            self._done += 1
            self._cancelled += reason == "cancelled"
        self._emit(job, Finished(reason, len(job.prompt), job.generated, error))

    def _emit(self, job: Job, event: Event) -> None:
        try:
            job.emit(event)
        except Exception:
            # The receiving side is gone (e.g. its event loop closed): drop the request.
            _log.exception("[serve] could not deliver a result; cancelling the request")
            job.cancelled = True

    def _count_cells(self) -> None:
        used = used_cells(self.cache)
        with self._cond:
            self._cells_used = used

    def _step(self) -> None:
        """Run one batch: a decode token of each decoding request, then prompt tokens."""
        from mlplug.nn.transformer import Batch

        tokens: list[int] = []
        positions: list[int] = []
        seqs: list[int] = []
        outputs: list[int] = []
        owners: list[Job] = []
        advance: list[tuple[Job, int]] = []
        for job in self._active:
            if job.decoding:
                outputs.append(len(tokens))
                owners.append(job)
                tokens.append(job.last)
                positions.append(job.n_past)
                seqs.append(job.slot)
                advance.append((job, 1))
        budget = self.n_batch - len(tokens)
        for job in self._active:
            if budget <= 0:
                break
            if job.decoding:
                continue
            chunk = job.prompt[job.n_past : job.n_past + budget]
            tokens.extend(chunk)
            positions.extend(range(job.n_past, job.n_past + len(chunk)))
            seqs.extend([job.slot] * len(chunk))
            budget -= len(chunk)
            advance.append((job, len(chunk)))
            if job.n_past + len(chunk) == len(job.prompt):
                outputs.append(len(tokens) - 1)
                owners.append(job)
        try:
            logits = self.model.forward(
                self.cache, Batch(tuple(tokens), tuple(positions), tuple(seqs), tuple(outputs))
            )
            with self._cond:
                self._steps += 1
            for job, n in advance:
                job.n_past += n
            finished: list[tuple[Job, str]] = []
            # Without an output the model still returns the last token's row: only the first
            # len(owners) rows are wanted.
            for job, row in zip(owners, logits[: len(owners)], strict=True):
                reason = self._accept(job, job.sampler(row))
                if reason:
                    finished.append((job, reason))
        except Exception as err:
            # The step failed as a whole: its requests end with the error, the others go on.
            _log.exception("[serve] a model step failed")
            self._leave([j for j, _ in advance], "error", f"{type(err).__name__}: {err}")
            self._count_cells()
            return
        for job, reason in finished:
            self._leave([job], reason)
        if finished:
            self._count_cells()

    def _accept(self, job: Job, token: int) -> str:
        """Record a sampled token; return the finish reason, or ``""`` to go on."""
        assert job.text is not None
        job.generated += 1
        job.sampler.accept(token)
        reason = ""
        if self.tokenizer.is_eog(token) and not job.ignore_eos:
            reason = "stop"
        else:
            text = job.text.push(token)
            if job.text.stopped:
                reason = "stop"
            elif job.generated >= job.max_tokens:
                reason = "length"
            if reason == "length":
                text += job.text.finish()
            if text:
                self._emit(job, Piece(text))
        if reason == "stop" and not job.text.stopped:
            rest = job.text.finish()
            if rest:
                self._emit(job, Piece(rest))
        job.last = token
        return reason
