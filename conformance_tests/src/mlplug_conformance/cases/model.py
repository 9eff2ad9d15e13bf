"""What a case is: inputs, a small program of op calls, and the step whose result is checked.

A case is data, so the same description drives both sides:

* :mod:`.program` builds it through the public API on a backend (``ctx.layer(0)`` tensors live on
  the device under test, SEMANTICS §6.7) and evaluates it with the float64 reference;
* its input values come from a generator seeded by the case id (``hashlib``, stable across runs
  and machines), and are rounded to their dtype on the host first, so every device receives the
  same values exactly (a correct conversion or quantiser reproduces them bit for bit).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlplug.dtype import CREATE, DType
from mlplug_conformance import convert
from mlplug_conformance.reference import numpy_shape
from mlplug_conformance.weights import random_weight_bytes

__all__ = [
    "Case",
    "Fill",
    "Input",
    "Step",
    "explicit",
    "ints",
    "normal",
    "rng_for",
    "specials",
    "uniform",
    "zeros",
]

Fill = Callable[[np.random.Generator, int], np.ndarray]
"""``fill(rng, n) -> n values`` in ggml order (dim 0 fastest)."""


def normal(std: float = 1.0, mean: float = 0.0) -> Fill:
    """Return a fill of normally distributed values."""
    return lambda rng, n: rng.normal(mean, std, n)


def uniform(lo: float, hi: float) -> Fill:
    """Return a fill of values uniform in ``[lo, hi)``."""
    return lambda rng, n: rng.uniform(lo, hi, n)


def ints(lo: int, hi: int) -> Fill:
    """Return a fill of integers uniform in ``[lo, hi)``."""
    return lambda rng, n: rng.integers(lo, hi, n).astype(np.int64)


def explicit(values: Sequence[float]) -> Fill:
    """Return a fill with exactly these values (repeated cyclically if fewer)."""
    arr = np.asarray(values)
    return lambda rng, n: np.resize(arr, n)


def zeros() -> Fill:
    """Return a fill of zeros (created with ``zeros``, no conversion needed)."""
    return lambda rng, n: np.zeros(n)


def specials(base: Fill, values: Sequence[float], every: int = 3) -> Fill:
    """Return ``base`` with ``values`` (NaN, ±inf, ±0…) cycled into every ``every``-th slot."""
    arr = np.asarray(values, dtype=np.float64)

    def fill(rng: np.random.Generator, n: int) -> np.ndarray:
        out = np.asarray(base(rng, n), dtype=np.float64)
        slots = np.arange(0, n, every)
        out[slots] = np.resize(arr, slots.size)
        return out

    return fill


@dataclass(frozen=True, slots=True)
class Input:
    """A buffer tensor the case creates on the device under test.

    Attributes:
        name: Name the steps refer to.
        dtype: Any dtype: create dtypes are made on ``ctx.layer(0)``; the others are weights of
            a synthetic GGUF file loaded by the backend (random well-formed blocks).
        ne: Creation shape (1 to 4 extents, ggml order).
        fill: How the values are drawn; they are then rounded to ``dtype`` on the host.
        is_zeros: Create with ``zeros`` (content 0) instead of writing values.
    """

    name: str
    dtype: DType
    ne: tuple[int, ...]
    fill: Fill = field(default_factory=normal)
    is_zeros: bool = False

    @property
    def full_ne(self) -> tuple[int, int, int, int]:
        """The four stored extents (``[0, 1, 1, 1]`` when it holds no element)."""
        full = (*self.ne, 1, 1, 1, 1)[:4]
        return (0, 1, 1, 1) if 0 in full else (full[0], full[1], full[2], full[3])

    @property
    def from_file(self) -> bool:
        """Whether the dtype only comes from GGUF files (the input is a weight of a synthetic
        model, :mod:`mlplug_conformance.weights`)."""
        return self.dtype not in CREATE

    def generate(self, rng: np.random.Generator) -> tuple[np.ndarray, bytes | None]:
        """Return the logical values (numpy order 4-D, exact in ``dtype``) and, for a file
        input, its packed bytes."""
        ne = self.full_ne
        n = ne[0] * ne[1] * ne[2] * ne[3]
        if self.from_file:
            raw = random_weight_bytes(rng, self.dtype, n)
            return convert.decode(raw, self.dtype).reshape(numpy_shape(ne)), raw
        flat = np.zeros(n) if self.is_zeros else np.asarray(self.fill(rng, n))
        if convert.is_int(self.dtype):
            flat = flat.astype(np.int64)
        return convert.round_to(flat, self.dtype).reshape(numpy_shape(ne)), None

    def values(self, rng: np.random.Generator) -> np.ndarray:
        """Return the logical values (numpy order 4-D, rounded to ``dtype``)."""
        return self.generate(rng)[0]


@dataclass(frozen=True, slots=True)
class Step:
    """One op call: ``result = args[0].<op>(ctx, *args[1:], **params)``.

    Attributes:
        name: Name of the result.
        op: Op name in ``mlplug.ops.OPS``.
        args: Names of the tensor operands in the op's order; ``None`` for an absent optional
            operand (a norm's weight, attention's mask).
        params: The op's parameters exactly as the ``Tensor`` method records them (e.g.
            ``{"axes": (1, 0, 2, 3)}`` for ``permute``, ``{"offset": 4, "args": (2, 16, 3)}``
            for ``view``).
        when: ``"permuted_v"`` / ``"standard_v"``: the step exists only when the backend's
            ``cache_config().permuted_v`` is true / false (attention value layouts).
    """

    name: str
    op: str
    args: tuple[str | None, ...] = ()
    params: dict[str, Any] = field(default_factory=dict)
    when: str | None = None

    def active(self, permuted_v: bool) -> bool:
        """Whether the step runs on a backend with this value layout."""
        return self.when is None or (self.when == "permuted_v") == permuted_v


@dataclass(frozen=True, slots=True)
class Case:
    """One conformance case.

    Attributes:
        id: Stable id ``op/DTYPE/label`` (the seed of its values, and ``--case``'s argument).
        op: The op under test (the op of the checked step).
        dtype: Column of the support table: the receiver dtype of the op under test.
        inputs: Buffer tensors to create.
        steps: The program, in order; the last active step is the checked result.
        extra: Names of buffer inputs read and checked after compute (e.g. the whole destination
            buffer of a strided ``copy``, to prove nothing outside the window changed).
        flash_attention: Build the backend with ``BackendParams(flash_attention=...)``.
        layout: ``"permuted_v"`` / ``"standard_v"``: the case only applies to a backend whose
            ``cache_config().permuted_v`` is true / false (block-dtype values exist only in the
            standard layout); ``None``: any.
        bad_ids: Name of an input of gather indices that holds out-of-range ids (``rows``,
            ``mulmat_id``; §5.4): the backend must raise ``IndexError`` or compute every output
            column whose id is in range right (the others are unspecified), never read outside
            the operands.
    """

    id: str
    op: str
    dtype: DType
    inputs: tuple[Input, ...]
    steps: tuple[Step, ...]
    extra: tuple[str, ...] = ()
    flash_attention: bool = False
    layout: str | None = None
    bad_ids: str | None = None

    def applies(self, permuted_v: bool) -> bool:
        """Whether the case applies to a backend with this value layout."""
        return self.layout is None or (self.layout == "permuted_v") == permuted_v

    def active_steps(self, permuted_v: bool) -> tuple[Step, ...]:
        """Return the steps that run on a backend with this value layout."""
        return tuple(s for s in self.steps if s.active(permuted_v))

    @property
    def needs_file(self) -> bool:
        """Whether some input is a weight that must come from a GGUF file."""
        return any(inp.from_file for inp in self.inputs)

    def materialize(self) -> tuple[dict[str, np.ndarray], dict[str, bytes]]:
        """Return every input's logical values and every file input's packed bytes, drawn from
        this case's own generator."""
        rng = rng_for(self.id)
        values, raw = {}, {}
        for inp in self.inputs:
            values[inp.name], data = inp.generate(rng)
            if data is not None:
                raw[inp.name] = data
        return values, raw

    def values(self) -> dict[str, np.ndarray]:
        """Return every input's logical values, drawn from this case's own generator."""
        return self.materialize()[0]


def rng_for(case_id: str) -> np.random.Generator:
    """Return the generator seeded by ``case_id`` (SHA-256, not ``hash()``, so it is stable)."""
    digest = hashlib.sha256(case_id.encode("utf-8")).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))
