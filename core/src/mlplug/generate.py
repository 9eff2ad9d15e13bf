"""Text generation with a llama-family model: prompt batches, decode steps, sampling, timing.

:func:`generate` is a generator of token ids: the prompt goes through the model in batches of at
most ``n_batch`` tokens (only the last token's logits are computed), then every new token is fed
back one at a time through the KV cache. The caller consumes ids as they come (to stream text)
and may stop at any time; :class:`GenerationStats`, updated in place, holds the token counts and
the time spent in each phase so far.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from mlplug.models.llama import Llama

__all__ = ["GenerationStats", "generate", "sample"]


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


def sample(logits: np.ndarray, temperature: float, rng: np.random.Generator) -> int:
    """Pick a token id from one row of logits.

    ``temperature <= 0`` is greedy (argmax, the first on ties); otherwise the id is drawn from
    ``softmax(logits / temperature)``.
    """
    import numpy as np

    if temperature <= 0:
        return int(np.argmax(logits))
    z = np.asarray(logits, dtype=np.float64) / temperature
    z -= z.max()
    p = np.exp(z)
    p /= p.sum()
    return int(rng.choice(p.size, p=p))


def generate(
    model: Llama,
    cache: Any,
    prompt: Sequence[int],
    max_tokens: int,
    *,
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
        temperature: Sampling temperature; 0 is greedy.
        seed: Seed of the sampler's random generator.
        n_batch: Largest prompt batch.
        seq: The cache sequence to use.
        stop: Generation ends after yielding an id for which this returns true (e.g.
            ``tokenizer.is_eog``).
        stats: Filled in while generating.
    """
    import numpy as np

    from mlplug.models.llama import Batch

    if not prompt:
        raise ValueError("[generate] the prompt needs at least one token")
    if n_batch < 1:
        raise ValueError(f"[generate] n_batch must be >= 1, got {n_batch}")
    stats = stats if stats is not None else GenerationStats()
    rng = np.random.default_rng(seed)
    if max_tokens <= 0:
        return

    start = time.perf_counter()
    logits = None
    for i in range(0, len(prompt), n_batch):
        chunk = list(prompt[i : i + n_batch])
        logits = model.forward(cache, Batch.single(chunk, start=i, seq=seq))
        stats.prompt_tokens += len(chunk)
    assert logits is not None
    token = sample(logits[-1], temperature, rng)
    stats.prompt_seconds = time.perf_counter() - start
    stats.generated = 1
    yield token

    pos = len(prompt)
    while stats.generated < max_tokens and not (stop is not None and stop(token)):
        start = time.perf_counter()
        logits = model.forward(cache, Batch.single([token], start=pos, seq=seq))
        token = sample(logits[-1], temperature, rng)
        stats.decode_seconds += time.perf_counter() - start
        stats.decode_tokens += 1
        stats.generated += 1
        pos += 1
        yield token
