"""Text generation with an ``mlplug.models`` model: prompt batches, decode steps, sampling, timing.

:func:`generate` is a generator of token ids: the prompt goes through the model in batches of at
most ``n_batch`` tokens (only the last token's logits are computed), then every new token is fed
back one at a time through the KV cache. The caller consumes ids as they come (to stream text)
and may stop at any time; :class:`GenerationStats`, updated in place, holds the token counts and
the time spent in each phase so far.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from mlplug.nn.transformer import Decoder

__all__ = ["GenerationStats", "Sampler", "Sampling", "generate", "sample"]


@dataclass(slots=True)
class GenerationStats:
    """Counts and wall-clock seconds of one generation (updated while it runs).

    Attributes:
        prompt_tokens: Prompt tokens processed.
        prompt_seconds: Time of the prompt batches (up to the first token's logits).
        decode_tokens: Tokens fed back through the model one at a time.
        decode_seconds: Time of those decode steps, sampling included.
        generated: Tokens sampled (the first one comes from the prompt's logits).
    """

    prompt_tokens: int = 0
    prompt_seconds: float = 0.0
    decode_tokens: int = 0
    decode_seconds: float = 0.0
    generated: int = 0

    @property
    def prompt_tokens_per_second(self) -> float:
        """Prompt throughput (0 before any prompt token)."""
        return self.prompt_tokens / self.prompt_seconds if self.prompt_seconds > 0 else 0.0

    @property
    def decode_tokens_per_second(self) -> float:
        """Decode throughput (0 before any decode step)."""
        return self.decode_tokens / self.decode_seconds if self.decode_seconds > 0 else 0.0


@dataclass(frozen=True, slots=True)
class Sampling:
    """How the next token is picked from a row of logits (llama.cpp's default sampler chain).

    The steps, in order: the repeat penalty over the last ``repeat_last_n`` tokens (prompt
    included; a positive logit is divided by ``repeat_penalty``, a negative one multiplied),
    then ``top_k``, ``top_p`` and ``min_p`` at temperature 1, then the temperature, then a draw
    from the softmax. ``temperature <= 0`` picks the largest logit after the penalty (greedy,
    the first on ties).

    Attributes:
        temperature: Divides the logits; ``<= 0`` is greedy.
        top_k: Keep the ``k`` most likely tokens (0: all).
        top_p: Keep the most likely tokens whose probabilities sum to at least ``p`` (1: all).
        min_p: Keep the tokens at least ``min_p`` times as likely as the most likely (0: all).
        repeat_penalty: Penalty of recently seen tokens (1: none).
        repeat_last_n: How many recent tokens the penalty looks at.
        seed: Seed of the random generator.

    Raises:
        ValueError: A value out of range.
    """

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        problems = [
            f"{name} {value} outside {bounds}"
            for name, value, ok, bounds in (
                (
                    "temperature",
                    self.temperature,
                    math.isfinite(self.temperature),
                    "the finite numbers",
                ),
                ("top_k", self.top_k, self.top_k >= 0, ">= 0"),
                ("top_p", self.top_p, 0.0 < self.top_p <= 1.0, "(0, 1]"),
                ("min_p", self.min_p, 0.0 <= self.min_p <= 1.0, "[0, 1]"),
                ("repeat_penalty", self.repeat_penalty, self.repeat_penalty > 0, "> 0"),
                ("repeat_last_n", self.repeat_last_n, self.repeat_last_n >= 0, ">= 0"),
            )
            if not ok
        ]
        if problems:
            raise ValueError("[sampling] " + "; ".join(problems))


class Sampler:
    """A :class:`Sampling` with its random generator and the recent tokens."""

    __slots__ = ("_recent", "params", "rng")

    def __init__(self, params: Sampling, history: Sequence[int] = ()) -> None:
        import numpy as np

        self.params = params
        self.rng = np.random.default_rng(params.seed)
        self._recent: list[int] = []
        for token in history:
            self.accept(token)

    def accept(self, token: int) -> None:
        """Record a token of the sequence (for the repeat penalty)."""
        n = self.params.repeat_last_n
        if n:
            self._recent.append(token)
            del self._recent[:-n]

    def __call__(self, logits: np.ndarray) -> int:
        """Pick a token from one row of logits (it is not recorded: call :meth:`accept`)."""
        import numpy as np

        p = self.params
        z = np.array(logits, dtype=np.float64).ravel()
        if p.repeat_penalty != 1.0 and self._recent:
            seen = np.unique(np.asarray(self._recent, dtype=np.int64))
            seen = seen[(seen >= 0) & (seen < z.size)]
            v = z[seen]
            z[seen] = np.where(v > 0, v / p.repeat_penalty, v * p.repeat_penalty)
        if p.temperature <= 0:
            return int(np.argmax(z))
        ids = np.arange(z.size)
        if 0 < p.top_k < z.size:
            ids = np.argpartition(-z, p.top_k - 1)[: p.top_k]
        ids = ids[np.argsort(-z[ids], kind="stable")]  # most likely first
        zs = z[ids]
        probs = np.exp(zs - zs[0])
        probs /= probs.sum()
        if p.top_p < 1.0:
            keep = int(np.searchsorted(np.cumsum(probs), p.top_p)) + 1
            ids, zs, probs = ids[:keep], zs[:keep], probs[:keep]
        if p.min_p > 0.0:
            keep = max(1, int(np.count_nonzero(probs >= p.min_p * probs[0])))
            ids, zs = ids[:keep], zs[:keep]
        w = np.exp((zs - zs[0]) / p.temperature)
        return int(ids[self.rng.choice(ids.size, p=w / w.sum())])


def sample(logits: np.ndarray, temperature: float, rng: np.random.Generator) -> int:
    """Pick a token id from one row of logits with ``rng``, without other filters.

    ``temperature <= 0`` is greedy (argmax, the first on ties); otherwise the id is drawn from
    ``softmax(logits / temperature)``.
    """
    import numpy as np

    if temperature <= 0:
        return int(np.argmax(logits))
    z = np.asarray(logits, dtype=np.float64) / temperature
    z -= z.max()
    q = np.exp(z)
    q /= q.sum()
    return int(rng.choice(q.size, p=q))


def generate(
    model: Decoder,
    cache: Any,
    prompt: Sequence[int],
    max_tokens: int,
    *,
    sampling: Sampling | None = None,
    temperature: float = 0.0,
    seed: int = 0,
    n_batch: int = 512,
    seq: int = 0,
    stop: Callable[[int], bool] | None = None,
    stats: GenerationStats | None = None,
) -> Iterator[int]:
    """Yield up to ``max_tokens`` new token ids continuing ``prompt`` in sequence ``seq``.

    Args:
        model: The model.
        cache: Its KV cache, with room for ``len(prompt) + max_tokens`` positions of ``seq`` and
            ``max_batch ≥ min(n_batch, len(prompt))``.
        prompt: Token ids (at least one).
        max_tokens: How many ids to generate at most.
        sampling: How tokens are picked; ``None``: ``Sampling(temperature, seed=seed)``.
        temperature: Sampling temperature when ``sampling`` is ``None``; 0 is greedy.
        seed: Seed of the random generator when ``sampling`` is ``None``.
        n_batch: Largest prompt batch.
        seq: The cache sequence to use.
        stop: Generation ends after yielding an id for which this returns true (e.g.
            ``tokenizer.is_eog``).
        stats: Filled in while generating.
    """
    from mlplug.nn.transformer import Batch

    if not prompt:
        raise ValueError("[generate] the prompt needs at least one token")
    if n_batch < 1:
        raise ValueError(f"[generate] n_batch must be >= 1, got {n_batch}")
    stats = stats if stats is not None else GenerationStats()
    sampler = Sampler(sampling or Sampling(temperature=temperature, seed=seed), prompt)
    if max_tokens <= 0:
        return

    start = time.perf_counter()
    logits = None
    for i in range(0, len(prompt), n_batch):
        chunk = list(prompt[i : i + n_batch])
        logits = model.forward(cache, Batch.single(chunk, start=i, seq=seq))
        stats.prompt_tokens += len(chunk)
    assert logits is not None
    token = sampler(logits[-1])
    sampler.accept(token)
    stats.prompt_seconds = time.perf_counter() - start
    stats.generated = 1
    yield token

    pos = len(prompt)
    while stats.generated < max_tokens and not (stop is not None and stop(token)):
        start = time.perf_counter()
        logits = model.forward(cache, Batch.single([token], start=pos, seq=seq))
        token = sampler(logits[-1])
        sampler.accept(token)
        stats.decode_seconds += time.perf_counter() - start
        stats.decode_tokens += 1
        stats.generated += 1
        pos += 1
        yield token
