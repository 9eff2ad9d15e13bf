"""Token sampling for the server: temperature, top-k, top-p, min-p, with a seed per request.

The filters run in llama.cpp's default order (top-k, top-p, min-p on the untempered
distribution, then temperature, then the draw), so a request means the same here as with
``llama-server``. ``temperature <= 0`` is greedy: the first maximum, whatever the filters say.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

__all__ = ["Sampler", "SamplingParams"]


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How one request picks its tokens.

    Attributes:
        temperature: Divides the logits; ``<= 0`` is greedy.
        top_k: Keep the ``top_k`` most likely tokens; 0 keeps all.
        top_p: Keep the smallest set of most likely tokens whose probability reaches ``top_p``.
        min_p: Keep the tokens at least ``min_p`` times as likely as the most likely one.
        seed: Seed of the request's generator; ``None`` draws one from the OS.
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    seed: int | None = None


def _softmax(z: np.ndarray) -> np.ndarray:
    import numpy as np

    p: np.ndarray = np.exp(z - z.max())
    p /= p.sum()
    return p


class Sampler:
    """Draw tokens for one request with its own random generator."""

    __slots__ = ("_rng", "params")

    def __init__(self, params: SamplingParams) -> None:
        import numpy as np

        self.params = params
        self._rng = np.random.default_rng(params.seed)

    def __call__(self, logits: np.ndarray) -> int:
        """Return the token id drawn from one row of logits."""
        import numpy as np

        p = self.params
        if p.temperature <= 0:
            return int(np.argmax(logits))
        z = np.asarray(logits, dtype=np.float64)
        ids = None
        if 0 < p.top_k < z.size:
            ids = np.argpartition(-z, p.top_k - 1)[: p.top_k]
            z = z[ids]
        if p.top_p < 1.0 or p.min_p > 0.0:
            order = np.argsort(-z, kind="stable")
            ids = order if ids is None else ids[order]
            z = z[order]
            probs = _softmax(z)
            keep = z.size
            if p.top_p < 1.0:
                keep = min(keep, int(np.searchsorted(np.cumsum(probs), p.top_p)) + 1)
            if p.min_p > 0.0:
                keep = min(keep, int(np.count_nonzero(probs >= p.min_p * probs[0])))
            z = z[: max(keep, 1)]
            ids = ids[: max(keep, 1)]
        probs = _softmax(z / p.temperature)
        i = int(self._rng.choice(probs.size, p=probs))
        return i if ids is None else int(ids[i])
