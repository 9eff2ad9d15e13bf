"""The memory report: ``AllocationStatus``, ``Memory``, ``DeviceMemory``, ``BackendMemory``.

These are immutable snapshots (SEMANTICS §7). The engine keeps mutable books internally
(:mod:`mlplug._books`) and hands out these records; their text forms are part of the contract
(§7.4): ``str(Memory)`` is ``"<size><U|F|A>"``, ``str(DeviceMemory)``/``str(BackendMemory)``
flatten ``log_value()`` into ``key=value`` pairs, and ``BackendMemory.summary()`` is the table
the CLI prints.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

__all__ = ["AllocationStatus", "BackendMemory", "DeviceMemory", "Memory", "format_bytes"]


class AllocationStatus(IntEnum):
    """Whether a memory entry has been allocated."""

    UNALLOCATED = 0
    FAILED = 1
    ALLOCATED = 2


_STATUS_LETTER = {
    AllocationStatus.UNALLOCATED: "U",
    AllocationStatus.FAILED: "F",
    AllocationStatus.ALLOCATED: "A",
}


@dataclass(frozen=True, slots=True)
class Memory:
    """One accounted size in bytes and its allocation status."""

    size: int = 0
    status: AllocationStatus = AllocationStatus.UNALLOCATED

    def __str__(self) -> str:
        return f"{self.size}{_STATUS_LETTER[self.status]}"


def _list_text(entries: tuple[Memory, ...]) -> str:
    return "[" + " ".join(str(m) for m in entries) + "]"


def _quote(value: str) -> str:
    if any(c in value for c in ' ="'):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return value


def _flatten(prefix: str, value: dict[str, object], out: list[str]) -> None:
    for key, item in value.items():
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(item, dict):
            _flatten(name, item, out)
        else:
            out.append(f"{name}={_quote(str(item))}")


@dataclass(frozen=True, slots=True)
class DeviceMemory:
    """The memory one device holds: weights and cache per layer (``blocks + 1``), graph."""

    name: str
    id: str = ""
    weights: tuple[Memory, ...] = ()
    cache: tuple[Memory, ...] = ()
    graph: Memory = Memory()

    def log_value(self) -> dict[str, str]:
        """Return the ordered key/value form of SEMANTICS §7.4 (empty when nothing is held)."""
        out: dict[str, str] = {}
        if any(m.size for m in self.weights):
            out["Weights"] = _list_text(self.weights)
        if any(m.size for m in self.cache):
            out["Cache"] = _list_text(self.cache)
        if self.graph.size != 0:
            out["Graph"] = str(self.graph)
        if out and self.id:
            out = {"ID": self.id, **out}
        return out

    def __str__(self) -> str:
        parts: list[str] = []
        _flatten("", dict(self.log_value()), parts)
        return " ".join(parts)


@dataclass(frozen=True, slots=True)
class BackendMemory:
    """The whole report: CPU-pinned input weights, the CPU device and every GPU."""

    input_weights: Memory
    cpu: DeviceMemory
    gpus: tuple[DeviceMemory, ...] = ()

    def log_value(self) -> dict[str, object]:
        """Return the ordered key/value form of SEMANTICS §7.4."""
        out: dict[str, object] = {}
        if self.input_weights.size != 0:
            out["InputWeights"] = str(self.input_weights)
        for device in (self.cpu, *self.gpus):
            value = device.log_value()
            if value:
                out[device.name] = value
        return out

    def __str__(self) -> str:
        parts: list[str] = []
        _flatten("", self.log_value(), parts)
        return " ".join(parts)

    def summary(self) -> str:
        """Return the per-device table the CLI prints (GPUs, then CPU, then total)."""
        header = ("device", "weights", "kv cache", "graph", "total")
        rows: list[tuple[str, ...]] = [header]
        columns: list[list[Memory]] = [[], [], []]
        for device in (*self.gpus, self.cpu):
            weights = list(device.weights)
            if device is self.cpu:
                weights.append(self.input_weights)
            cells = (weights, list(device.cache), [device.graph])
            for column, cell in zip(columns, cells, strict=True):
                column.extend(cell)
            total = _cell([m for c in cells for m in c])
            rows.append((device.name, *(_cell(c) for c in cells), total))
        rows.append(("total", *(_cell(c) for c in columns), _cell([m for c in columns for m in c])))
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        return "\n".join(
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            for row in rows
        )


def _cell(entries: list[Memory]) -> str:
    text = format_bytes(sum(m.size for m in entries))
    if any(m.status is AllocationStatus.FAILED for m in entries):
        text += " (failed)"
    return text


def format_bytes(n: int) -> str:
    """Format a size in IEC units with one decimal (``512.0 MiB``); ``N B`` below 1 KiB."""
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        value /= 1024.0
        if value < 1024.0 or unit == "PiB":
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")
