"""A model file's key/value metadata, read-only and type-exact (SEMANTICS §11).

:class:`Config` answers ``backend.config()``. Every accessor matches exactly one stored GGUF value
type: ``uint`` reads only a ``u32``, ``float`` only an ``f32``, ``ints`` only an array of ``i32``…;
a key that is absent or stored with any other type gives the default. Keys not starting with
``general.`` or ``tokenizer.`` are prefixed with the architecture: ``uint("block_count")`` reads
``llama.block_count``.

This module imports neither numpy nor ``gguf``: :mod:`mlplug.gguf` builds the
:class:`MetadataValue` records from a file, and ``import mlplug`` stays light.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import IntEnum
from types import MappingProxyType
from typing import Any

__all__ = ["Config", "MetadataValue", "ValueType"]


class ValueType(IntEnum):
    """A GGUF metadata value type (the ids stored in the file)."""

    U8 = 0
    I8 = 1
    U16 = 2
    I16 = 3
    U32 = 4
    I32 = 5
    F32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    U64 = 10
    I64 = 11
    F64 = 12


@dataclass(frozen=True, slots=True)
class MetadataValue:
    """One stored metadata value.

    Attributes:
        type: The stored value type.
        value: The value as Python data: ``int``, ``float`` (an ``f32`` widened exactly),
            ``bool``, ``str``, or for arrays a ``tuple`` of those (of tuples for nested arrays).
        item_type: The element type of an ``ARRAY`` (known even when the array is empty);
            ``None`` for scalars.
    """

    type: ValueType
    value: object
    item_type: ValueType | None = None

    def type_name(self) -> str:
        """Return the type as ``mlplug info`` shows it: ``u32``, ``[string]``…"""
        if self.type is ValueType.ARRAY and self.item_type is not None:
            return f"[{self.item_type.name.lower()}]"
        return self.type.name.lower()


_UNPREFIXED = ("general.", "tokenizer.")


class Config:
    """Read-only, type-exact access to a model's metadata (SEMANTICS §11).

    Args:
        metadata: The file's key/value pairs, as :attr:`mlplug.gguf.GGUFFile.metadata` holds them.
            The mapping is copied.
    """

    __slots__ = ("_arch", "_items")

    def __init__(self, metadata: Mapping[str, MetadataValue] | None = None) -> None:
        self._items: Mapping[str, MetadataValue] = MappingProxyType(dict(metadata or {}))
        arch = self._items.get("general.architecture")
        value = arch.value if arch is not None and arch.type is ValueType.STRING else None
        self._arch = value if isinstance(value, str) else "unknown"

    @classmethod
    def empty(cls) -> Config:
        """Return the config of a backend without a model file: every lookup gives its default."""
        return cls()

    # -- raw access (for ``mlplug info`` and the engine) -------------------------------------------

    def keys(self) -> Iterator[str]:
        """Return the stored keys in file order, exactly as stored (no prefixing)."""
        return iter(self._items)

    def items(self) -> Iterator[tuple[str, MetadataValue]]:
        """Return ``(key, MetadataValue)`` pairs in file order, keys exactly as stored."""
        return iter(self._items.items())

    def raw(self, key: str) -> MetadataValue | None:
        """Return the stored value of ``key`` (exact key, no prefixing), or ``None``."""
        return self._items.get(key)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Config(architecture={self._arch!r}, keys={len(self._items)})"

    # -- typed lookups -----------------------------------------------------------------------------

    def architecture(self) -> str:
        """Return ``general.architecture`` when stored as a string, else ``"unknown"``."""
        return self._arch

    def key(self, key: str) -> str:
        """Return the stored key a lookup of ``key`` reads (architecture prefix applied)."""
        if key.startswith(_UNPREFIXED):
            return key
        return f"{self._arch}.{key}"

    def _scalar(self, key: str, vtype: ValueType) -> object | None:
        item = self._items.get(self.key(key))
        if item is None or item.type is not vtype:
            return None
        return item.value

    def _array(self, key: str, item_type: ValueType) -> tuple[Any, ...] | None:
        item = self._items.get(self.key(key))
        if item is None or item.type is not ValueType.ARRAY or item.item_type is not item_type:
            return None
        return item.value if isinstance(item.value, tuple) else None

    def string(self, key: str, default: str = "") -> str:
        """Return the string stored at ``key``, or ``default``."""
        value = self._scalar(key, ValueType.STRING)
        return value if isinstance(value, str) else default

    def uint(self, key: str, default: int = 0) -> int:
        """Return the ``u32`` stored at ``key``, or ``default`` (any other int type included)."""
        value = self._scalar(key, ValueType.U32)
        return value if isinstance(value, int) else default

    def float(self, key: str, default: builtins.float = 0.0) -> builtins.float:
        """Return the ``f32`` stored at ``key`` (widened exactly), or ``default``."""
        value = self._scalar(key, ValueType.F32)
        return value if isinstance(value, builtins.float) else default

    def bool(self, key: str, default: builtins.bool = False) -> builtins.bool:
        """Return the ``bool`` stored at ``key``, or ``default``."""
        value = self._scalar(key, ValueType.BOOL)
        return value if isinstance(value, builtins.bool) else default

    def strings(self, key: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
        """Return the array of strings stored at ``key``, or ``default``."""
        value = self._array(key, ValueType.STRING)
        return default if value is None else value

    def ints(self, key: str, default: tuple[int, ...] = ()) -> tuple[int, ...]:
        """Return the array of ``i32`` stored at ``key``, or ``default``."""
        value = self._array(key, ValueType.I32)
        return default if value is None else value

    def uints(self, key: str, default: tuple[int, ...] = ()) -> tuple[int, ...]:
        """Return the array of ``u32`` stored at ``key``, or ``default``."""
        value = self._array(key, ValueType.U32)
        return default if value is None else value

    def floats(
        self, key: str, default: tuple[builtins.float, ...] = ()
    ) -> tuple[builtins.float, ...]:
        """Return the array of ``f32`` stored at ``key`` (widened exactly), or ``default``."""
        value = self._array(key, ValueType.F32)
        return default if value is None else value

    def bools(self, key: str, default: tuple[builtins.bool, ...] = ()) -> tuple[builtins.bool, ...]:
        """Return the array of ``bool`` stored at ``key``, or ``default``."""
        value = self._array(key, ValueType.BOOL)
        return default if value is None else value
