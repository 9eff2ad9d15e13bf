"""Device memory over MLX arrays: byte-addressed buffers made of immutable pieces.

The device API (:class:`mlplug.device.Buffer`) is a block of raw bytes that the engine writes and
reads at byte offsets and that kernels address through byte-strided windows
(:class:`~mlplug.device.TensorRef`). MLX arrays are immutable lazy values. The choice here:

* A buffer is a sorted list of non-overlapping **segments**, each a flat ``uint8`` MLX array
  standing for the bytes ``[start, stop)``; bytes no segment covers are zero (``alloc`` returns
  zeroed memory). Nothing is allocated up front: the accounted size is a budget (the device's
  memory cap), and MLX memory is only what the live segments hold.
* A kernel's result replaces the segments in its output window (slices of neighbours are views,
  no copy), so writing a node's output into the compute arena copies nothing, and a graph stays
  one lazy MLX graph until it is evaluated (MLX fuses and schedules it). The engine's slot reuse
  simply drops the arrays of dead results.
* A buffer that is one segment covering all of it (a KV cache made by ``zeros``) is updated with
  ``slice_update`` instead, which MLX performs in place when the old array has no other user,
  so appending to a cache does not fragment it.
* Reading a window that spans several segments concatenates them (zero gaps filled) and, for
  raw bytes, keeps the joined array in their place, so fragmentation does not accumulate.
* Quantised weights are **held segments** (:class:`HeldWeight`): the MLX form the device
  computes with (affine 4/8-bit, or dequantised F16), covering the byte range the weight's GGUF
  bytes would occupy. Kernels ask :meth:`MlxBuffer.held_at` for them; raw reads of that range
  (cross-device transfers, ``bytes()``) get the GGUF bytes back from the held form when the
  repack is lossless.

A plain numpy staging array plus a cached MLX copy was the alternative; it copies every result
through host memory (or keeps two copies of everything) and breaks MLX's lazy graph at every
node, so it was not taken.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import mlx.core as mx
import numpy as np

from mlplug.device import AccountedBuffer, Release

__all__ = ["HeldWeight", "MlxBuffer"]


class HeldWeight(Protocol):
    """A weight stored in the device's own form (see :mod:`mlplug_metal.kernels.quant`)."""

    def gguf_bytes(self) -> mx.array:
        """Return the weight's GGUF bytes (flat ``uint8``); raise if the repack was lossy."""
        ...


@dataclass(slots=True)
class _Segment:
    start: int
    stop: int
    data: mx.array | None  # flat uint8, stop - start bytes
    held: HeldWeight | None = None

    def raw(self) -> mx.array:
        if self.data is not None:
            return self.data
        assert self.held is not None
        return self.held.gguf_bytes()


class MlxBuffer(AccountedBuffer):
    """A block of device memory made of MLX arrays (see the module docstring).

    Range checks and giving the bytes back once (on ``free()`` or when collected unfreed) come
    from :class:`~mlplug.device.AccountedBuffer`.

    Args:
        device_name: For error messages.
        nbytes: Size in bytes.
        release: Gives the bytes back to the device (called when the buffer is freed or
            collected).
        on_change: Called with each array a write creates (the device evaluates them).
    """

    __slots__ = ("_on_change", "_segments", "_starts")

    def __init__(
        self,
        device_name: str,
        nbytes: int,
        release: Release,
        on_change: Callable[[mx.array], None],
    ) -> None:
        super().__init__(device_name, nbytes, release)
        self._segments: list[_Segment] = []
        self._starts: list[int] = []
        self._on_change = on_change

    def __repr__(self) -> str:
        return f"MlxBuffer({self.nbytes} bytes, {len(self._segments)} segments)"

    # -- the Buffer protocol ----------------------------------------------------------------

    def write(self, offset: int, data: bytes | memoryview) -> None:
        """Copy host bytes into the buffer at ``offset``."""
        src = np.frombuffer(memoryview(data).cast("B"), np.uint8)
        self.check(offset, src.size)
        if src.size:
            self.put(offset, mx.array(src))

    def read(self, offset: int, n: int) -> bytes:
        """Return ``n`` bytes starting at ``offset`` (evaluating what produces them)."""
        self.check(offset, n)
        if n == 0:
            return b""
        return np.asarray(self.window(offset, offset + n)).tobytes()

    def _drop(self) -> None:
        """Drop every segment (``free()``: the bytes went back to the device's budget)."""
        self._segments.clear()
        self._starts.clear()

    # -- what kernels use -------------------------------------------------------------------

    def _overlapping(self, lo: int, hi: int) -> tuple[int, int]:
        """Return the index range of the segments that intersect ``[lo, hi)``."""
        i = max(0, bisect.bisect_right(self._starts, lo) - 1)
        if i < len(self._segments) and self._segments[i].stop <= lo:
            i += 1
        j = bisect.bisect_left(self._starts, hi, lo=i)
        return i, j

    def held_at(self, lo: int, hi: int) -> tuple[int, HeldWeight] | None:
        """Return ``(start, weight)`` when ``[lo, hi)`` lies inside a held weight's range."""
        i, j = self._overlapping(lo, hi)
        if j - i == 1:
            seg = self._segments[i]
            if seg.held is not None and seg.start <= lo and hi <= seg.stop:
                return seg.start, seg.held
        return None

    def window(self, lo: int, hi: int) -> mx.array:
        """Return the bytes ``[lo, hi)`` as a flat ``uint8`` array (lazy)."""
        self.check(lo, hi - lo)
        i, j = self._overlapping(lo, hi)
        if j - i == 1:
            seg = self._segments[i]
            if seg.start <= lo and hi <= seg.stop:
                return seg.raw()[lo - seg.start : hi - seg.start]
        if j == i:
            return mx.zeros((hi - lo,), mx.uint8)
        pieces: list[mx.array] = []
        at = lo
        for seg in self._segments[i:j]:
            if seg.start > at:
                pieces.append(mx.zeros((seg.start - at,), mx.uint8))
                at = seg.start
            end = min(seg.stop, hi)
            pieces.append(seg.raw()[at - seg.start : end - seg.start])
            at = end
        if at < hi:
            pieces.append(mx.zeros((hi - at,), mx.uint8))
        joined = mx.concatenate(pieces)
        if all(seg.held is None for seg in self._segments[i:j]):
            self._replace(lo, hi, [_Segment(lo, hi, joined)])  # coalesce: same bytes, one piece
        return joined

    def put(self, lo: int, data: mx.array) -> None:
        """Store the flat ``uint8`` array ``data`` at ``[lo, lo + data.size)``."""
        hi = lo + data.size
        self.check(lo, data.size)
        if len(self._segments) == 1:
            seg = self._segments[0]
            if (
                seg.data is not None
                and seg.start == 0
                and seg.stop == self.nbytes
                and (lo > 0 or hi < self.nbytes)
            ):
                # One array for the whole buffer: update it (in place when MLX can donate it).
                seg.data[lo:hi] = data  # rebinds seg.data's array; nothing else holds it
                self._on_change(seg.data)
                return
        self._replace(lo, hi, [_Segment(lo, hi, data)])
        self._on_change(data)

    def put_held(self, lo: int, hi: int, held: HeldWeight) -> None:
        """Store a weight in the device's form; it stands for the bytes ``[lo, hi)``."""
        self.check(lo, hi - lo)
        self._replace(lo, hi, [_Segment(lo, hi, None, held)])

    def _replace(self, lo: int, hi: int, new: list[_Segment]) -> None:
        i, j = self._overlapping(lo, hi)
        kept: list[_Segment] = []
        if i < j:
            first, last = self._segments[i], self._segments[j - 1]
            if first.start < lo:
                kept.append(_Segment(first.start, lo, first.raw()[: lo - first.start]))
            kept.extend(new)
            if last.stop > hi:
                kept.append(_Segment(hi, last.stop, last.raw()[hi - last.start :]))
        else:
            kept = new
        self._segments[i:j] = kept
        self._starts[i:j] = [s.start for s in kept]
