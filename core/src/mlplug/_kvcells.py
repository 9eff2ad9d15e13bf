"""Cell metadata of the causal KV cache (SEMANTICS §8.2–§8.5), in plain Python containers.

:class:`mlplug.kvcache.Causal` keeps the tensors; :class:`Cells` keeps which cell holds what.
For cell ``c`` in ``0 … N-1``:

* ``seqs[c]`` (``list[set[int]]``): the sequences using the cell; an empty set is a free cell.
  This is the authoritative record.
* ``pos[c]`` (``array('q')``): the position stored in the cell (stale once the cell is free).

Per sequence ``s``:

* ``ranges[s]`` (``dict[int, list[int]]``): the ``[min, max]`` cell interval covering its cells;
  a sequence without cells has no entry.
* ``member[s]`` (``dict[int, bytearray]``): ``member[s][c] == 1`` iff ``s in seqs[c]``, a
  mirror of ``seqs`` kept in step by every method here.

``first_free`` is a lower bound of the free cells (every cell below it is occupied), so that
decoding one token per step finds its cell without rescanning the occupied prefix.

Why the flat buffers: every batch scans the batch sequences' ranges (window expiry, the mask),
which are thousands of cells when decoding over a long history. ``array`` and ``bytearray``
expose their memory to ``numpy.frombuffer`` without copying, so those scans run as vector
operations instead of Python loops over cells. numpy is imported inside the methods that scan.
"""

from __future__ import annotations

from array import array
from itertools import compress
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

__all__ = ["Cells", "Move"]

Move = tuple[int, int, int]
"""``(source cell, destination cell, run length)`` of a defragmentation step."""


class Cells:
    """Positions and sequence sets of ``n`` cache cells, with each sequence's cell range."""

    __slots__ = ("first_free", "member", "n", "pos", "ranges", "seqs")

    def __init__(self, n: int) -> None:
        self.n = n
        self.pos = array("q", [-1]) * n
        self.seqs: list[set[int]] = [set() for _ in range(n)]
        self.ranges: dict[int, list[int]] = {}
        self.member: dict[int, bytearray] = {}
        self.first_free = 0

    # -- single cells ---------------------------------------------------------------------------

    def _join(self, c: int, seq: int) -> None:
        self.seqs[c].add(seq)
        bits = self.member.get(seq)
        if bits is None:
            bits = self.member[seq] = bytearray(self.n)
        bits[c] = 1

    def release(self, c: int, seq: int) -> None:
        """Drop ``seq`` from cell ``c`` (ranges are the caller's business)."""
        cell = self.seqs[c]
        if seq in cell:
            cell.discard(seq)
            self.member[seq][c] = 0
            if not cell and c < self.first_free:
                self.first_free = c

    def cells_of(self, seq: int) -> list[int]:
        """Return the cells holding ``seq``, in index order."""
        rng = self.ranges.get(seq)
        if rng is None:
            return []
        lo, hi = rng
        return list(compress(range(lo, hi + 1), self.member[seq][lo : hi + 1]))

    def _tighten(self, seq: int) -> None:
        """Recompute ``seq``'s range after some of its cells were released."""
        rng = self.ranges.get(seq)
        if rng is None:
            return
        bits = self.member[seq]
        lo = bits.find(1, rng[0], rng[1] + 1)
        if lo < 0:
            del self.ranges[seq]
            del self.member[seq]
        else:
            self.ranges[seq] = [lo, bits.rfind(1, rng[0], rng[1] + 1)]

    # -- start_forward ------------------------------------------------------------------------

    def expire(self, positions: list[int], sequences: list[int], window: int) -> None:
        """Release each batch sequence's cells with ``pos < p_min - window``."""
        import numpy as np

        lowest: dict[int, int] = {}
        for p, s in zip(positions, sequences, strict=True):
            if s not in lowest or p < lowest[s]:
                lowest[s] = p
        all_pos = np.frombuffer(self.pos, dtype=np.int64)
        for s, p_min in lowest.items():
            rng = self.ranges.get(s)
            if rng is None:
                continue
            lo, hi = rng
            held = np.frombuffer(self.member[s], dtype=np.bool_)[lo : hi + 1]
            old = np.flatnonzero(held & (all_pos[lo : hi + 1] < p_min - window))
            if old.size:
                for c in (old + lo).tolist():
                    self.release(c, s)
                self._tighten(s)

    def held_positions(self, sequences: list[int], positions: list[int]) -> tuple[int, int] | None:
        """Return a ``(seq, pos)`` of the batch that a cell already holds, or ``None``.

        (Window expiry never releases such a cell: it drops positions below the batch's.)
        """
        import numpy as np

        wanted: dict[int, list[int]] = {}
        for s, p in zip(sequences, positions, strict=True):
            wanted.setdefault(s, []).append(p)
        all_pos = np.frombuffer(self.pos, dtype=np.int64)
        for s, ps in wanted.items():
            rng = self.ranges.get(s)
            if rng is None:
                continue
            lo, hi = rng
            held = np.frombuffer(self.member[s], dtype=np.bool_)[lo : hi + 1]
            if len(ps) == 1:  # a decode step: one comparison, no set operation
                if (held & (all_pos[lo : hi + 1] == ps[0])).any():
                    return s, ps[0]
                continue
            stored = all_pos[lo : hi + 1][held]
            clash = np.isin(np.array(ps, dtype=np.int64), stored)
            if clash.any():
                return s, ps[int(np.flatnonzero(clash)[0])]
        return None

    def find_slot(self, b: int) -> int | None:
        """Return the start of the first run of ``b`` free cells, or ``None``."""
        seqs = self.seqs
        run = 0
        for c in range(self.first_free, self.n):
            if seqs[c]:
                run = 0
            else:
                run += 1
                if run == b:
                    return c - b + 1
        return None

    def place(self, loc: int, positions: list[int], sequences: list[int]) -> None:
        """Give the free cell ``loc + i`` the token ``(positions[i], {sequences[i]})``."""
        for c, (p, s) in enumerate(zip(positions, sequences, strict=True), start=loc):
            self.pos[c] = p
            self._join(c, s)
            rng = self.ranges.get(s)
            if rng is None:
                self.ranges[s] = [c, c]
            else:
                rng[0] = min(rng[0], c)
                rng[1] = max(rng[1], c)
        if loc == self.first_free:
            self.first_free = loc + len(positions)

    def batch_range(self, sequences: list[int], padding: int) -> tuple[int, int]:
        """Return ``R``: the union of the sequences' ranges, padded to ``padding`` (§8.4)."""
        distinct = set(sequences)
        lo = min(self.ranges[s][0] for s in distinct)
        hi = max(self.ranges[s][1] for s in distinct)
        return (lo // padding * padding, -(-(hi + 1) // padding) * padding - 1)

    # -- defragmentation ----------------------------------------------------------------------

    def plan_defrag(self) -> list[Move]:
        """Plan moving occupied runs from the end into the holes at the front.

        Each move fills (part of) the first hole with the tail of the last occupied run,
        keeping the order of the moved cells, so the data moves in few contiguous copies.
        Sources are occupied and destinations free, so no move reads what another writes.
        """
        occupied = [bool(s) for s in self.seqs]
        n = self.n
        moves: list[Move] = []
        lo, hi = 0, n - 1
        while True:
            while lo < n and occupied[lo]:
                lo += 1
            while hi >= 0 and not occupied[hi]:
                hi -= 1
            if lo >= hi:
                return moves
            hole = 1
            while lo + hole < hi and not occupied[lo + hole]:
                hole += 1
            run = 1
            while hi - run > lo and occupied[hi - run]:
                run += 1
            k = min(hole, run)
            src = hi - k + 1
            moves.append((src, lo, k))
            for j in range(k):
                occupied[lo + j] = True
                occupied[src + j] = False
            lo += k
            hi -= k

    def apply_moves(self, moves: list[Move]) -> None:
        """Move the metadata of planned runs (positions kept) and recompute every range."""
        for src, dst, k in moves:
            for j in range(k):
                a, b = src + j, dst + j
                self.pos[b] = self.pos[a]
                self.seqs[b], self.seqs[a] = self.seqs[a], set()
                for s in self.seqs[b]:
                    bits = self.member[s]
                    bits[a], bits[b] = 0, 1
        ranges: dict[int, list[int]] = {}
        for s, bits in self.member.items():
            lo = bits.find(1)
            if lo >= 0:
                ranges[s] = [lo, bits.rfind(1)]
        self.ranges = ranges
        self.member = {s: self.member[s] for s in ranges}
        self.first_free = next((c for c, cell in enumerate(self.seqs) if not cell), self.n)

    # -- sequence operations --------------------------------------------------------------------

    def split_remove(self, seq: int, begin: int, end: int | None) -> tuple[list[int], list[int]]:
        """Return ``seq``'s cells with ``begin ≤ pos < end``, and those with ``pos ≥ end``."""
        dropped: list[int] = []
        moved: list[int] = []
        for c in self.cells_of(seq):
            p = self.pos[c]
            if p >= begin and (end is None or p < end):
                dropped.append(c)
            elif end is not None and p >= end:
                moved.append(c)
        return dropped, moved

    def drop(self, seq: int, cells: list[int]) -> None:
        """Release ``seq`` from ``cells`` and tighten its range."""
        for c in cells:
            self.release(c, seq)
        self._tighten(seq)

    def copy_prefix(self, src: int, dst: int, length: int) -> None:
        """Make ``dst`` leave its cells, then share ``src``'s cells with ``pos < length``."""
        self.drop(dst, self.cells_of(dst))
        shared = [c for c in self.cells_of(src) if self.pos[c] < length]
        for c in shared:
            self._join(c, dst)
        if shared:
            self.ranges[dst] = [shared[0], shared[-1]]

    def last_pos(self, seq: int) -> int | None:
        """Return the highest cached position of ``seq``, or ``None`` without cells."""
        return max((self.pos[c] for c in self.cells_of(seq)), default=None)

    # -- mask (§8.4) ----------------------------------------------------------------------------

    def mask(
        self,
        cell_range: tuple[int, int],
        positions: list[int],
        sequences: list[int],
        exempt: frozenset[int],
        rows: int,
        chunk: int | None,
        window: int | None,
    ) -> np.ndarray:
        """Return the mask ``[L, rows]`` as a numpy ``(rows, L)`` float32 array of 0 and -inf."""
        import numpy as np

        lo, hi = cell_range
        length = hi - lo + 1
        mask = np.full((rows, length), -np.inf, dtype=np.float32)
        cell_pos = np.frombuffer(self.pos, dtype=np.int64)[None, lo : hi + 1]
        batch_pos = np.array(positions, dtype=np.int64)
        batch_seq = np.array(sequences, dtype=np.int64)
        skip_causal = np.zeros(len(positions), dtype=bool)
        for i in exempt:
            if 0 <= i < len(positions):
                skip_causal[i] = True
        for s in dict.fromkeys(sequences):
            bits = self.member.get(s)
            if bits is None:  # the sequence left its cells since the batch was placed
                continue
            held = np.frombuffer(bits, dtype=np.bool_)[None, lo : hi + 1]
            idx = np.flatnonzero(batch_seq == s)
            p = batch_pos[idx][:, None]
            ok = held & ((cell_pos <= p) | skip_causal[idx][:, None])
            if chunk is not None:
                ok &= cell_pos >= p - p % chunk
            if window is not None:
                ok &= cell_pos >= p - window
            mask[idx] = np.where(ok, np.float32(0), np.float32(-np.inf))
        return mask
