"""Open and validate a GGUF model file (SEMANTICS §11).

:meth:`GGUFFile.open` parses the file with the ``gguf`` package's :class:`gguf.GGUFReader` and
checks everything the engine relies on before returning: magic, version (2 or 3), every tensor's
type id (a member of :class:`~mlplug.dtype.DType`), ``ne0`` a multiple of the block size, at most
four dimensions, offsets aligned to ``general.alignment``, data inside the file, unique names.
Any problem raises :class:`~mlplug.errors.GGUFError` naming the file and the key or tensor; no
partially built object escapes. Tensor data stays in a read-only memory map; :meth:`GGUFFile.view`
hands out zero-copy slices of it.

Byte order: the ``gguf`` reader detects a file written for the other byte order (its version
field reads as ``n << 16``) and decodes the header, metadata and tensor infos correctly either
way; :attr:`GGUFFile.byte_order` records which one the file uses. Tensor *data* is returned as
stored, so the bytes of a big-endian file are big-endian: a loader on a little-endian host must
swap them (or refuse the file) itself.

This module imports numpy (through ``gguf``); ``import mlplug`` does not import it.
"""

from __future__ import annotations

import contextlib
import math
import mmap
import os
import stat
import struct
import sys
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

import numpy as np
from gguf.constants import GGUFValueType
from gguf.gguf_reader import GGUFReader, ReaderField

from mlplug.config import Config, MetadataValue, ValueType
from mlplug.dtype import DType
from mlplug.errors import GGUFError
from mlplug.placement import place_tensors

__all__ = ["GGUFFile", "TensorInfo"]

_MAX_DIMS = 4
_MAGIC = b"GGUF"
_VERSIONS = (2, 3)
_HEADER_SIZE = 24  # magic, u32 version, u64 tensor count, u64 key/value count
# Smallest possible encodings, to reject absurd counts before looping over them.
_MIN_KV_SIZE = 8 + 4 + 1  # empty key string, value type, one-byte value
_MIN_TENSOR_INFO_SIZE = 8 + 4 + 4 + 8  # empty name, n_dims = 0, type, offset
_INT64_MAX = 2**63 - 1
_VALUE_TYPES = frozenset(ValueType)
_MAX_ARRAY_DEPTH = 8  # arrays of arrays of…: no real file nests deeper; garbage could, endlessly
# GGUFReader.byte_order: "I" the host's order, "S" swapped; as struct prefixes.
_ORDER = {"I": "=", "S": ">" if sys.byteorder == "little" else "<"}
# Errors the ``gguf`` reader (and numpy under it) raises on malformed input.
_READER_ERRORS = (ValueError, IndexError, KeyError, OverflowError, struct.error)


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """One tensor of a GGUF file.

    Attributes:
        name: The tensor's name in the file.
        ne: Extents in ggml order (``ne0`` first), padded with 1 to four entries.
        dtype: The element type.
        offset: Absolute byte offset of the tensor's data in the file.
        nbytes: Size of the data in bytes: ``dtype.nbytes(n_elements)``.
    """

    name: str
    ne: tuple[int, int, int, int]
    dtype: DType
    offset: int
    nbytes: int

    @property
    def n_elements(self) -> int:
        """Return the number of elements."""
        return math.prod(self.ne)


class _Where:
    """What the reader was parsing, for error messages."""

    __slots__ = ("text",)

    def __init__(self) -> None:
        self.text = "the header"


class _Reader(GGUFReader):
    """``GGUFReader`` with bounds-checked reads and fewer numpy views.

    The stock reader slices its memory map without checking the end of the file (a short
    string or array element silently comes back short), makes a numpy view per array element
    and per tensor, and fails with messages that name neither key nor tensor. Here every read is
    checked, arrays are read whole, the reader records where it is for error messages, and
    ``_build_tensors`` only keeps the raw tensor-info fields so that :class:`GGUFFile` validates
    and names each tensor itself. Overridden: ``_get``, ``_get_field_parts``, ``_push_field``,
    ``_build_tensor_info``, ``_get_tensor_info_field``, ``_build_tensors``: internal methods of
    gguf's reader, checked with gguf 0.17.1, 0.18 and 0.19 (the tests exercise every one).
    """

    def __init__(self, fd: int, where: _Where) -> None:
        self._where = where
        self._depth = 0
        self.tensor_fields: list[ReaderField] = []
        # The reader maps what it is given with np.memmap, which takes an open file too: give it
        # the descriptor already checked to be a regular file, never the path again.
        with os.fdopen(fd, "rb", closefd=False) as fh:
            super().__init__(fh, "r")  # type: ignore[arg-type]

    def _get(
        self,
        offset: int,
        dtype: Any,
        count: int = 1,
        override_order: Literal["I", "S", "<"] | None = None,
    ) -> Any:
        count = int(count)
        end = int(offset) + np.dtype(dtype).itemsize * count
        if end > len(self.data):
            raise _Truncated(int(offset), end - int(offset), len(self.data))
        return super()._get(offset, dtype, count, override_order)

    def _get_field_parts(self, orig_offs: int, raw_type: int) -> Any:
        if int(raw_type) not in _VALUE_TYPES:
            raise ValueError(f"unknown metadata value type {int(raw_type)} (expected 0..12)")
        if raw_type != ValueType.ARRAY:
            return super()._get_field_parts(orig_offs, raw_type)
        raw_item, count_part = self._get(orig_offs, np.uint32), self._get(orig_offs + 4, np.uint64)
        item, count, start = int(raw_item[0]), int(count_part[0]), orig_offs + 12
        # Each element takes at least one byte: reject an absurd count before looping on it.
        if count > len(self.data) - start:
            raise _Truncated(start, count, len(self.data), what="array elements")
        # The stock reader makes a numpy view per element (seconds for a 150k-token vocabulary);
        # read a scalar array as one view and a string array as one byte range instead. The
        # element parts are then [element type, count, values]; _metadata_value decodes them.
        types = [GGUFValueType.ARRAY, GGUFValueType(item)]
        scalar = self.gguf_scalar_to_np.get(GGUFValueType(item))
        if scalar is not None:
            values = self._get(start, scalar, count)
        elif item == ValueType.STRING:
            values = self.data[start : self._strings_end(start, count)]
        else:  # an array of arrays: their parts one after the other
            return self._nested_parts(orig_offs, [raw_item, count_part], count, types)
        return 12 + int(values.nbytes), [raw_item, count_part, values], [2], types

    def _nested_parts(
        self, orig_offs: int, parts: list[Any], count: int, types: list[GGUFValueType]
    ) -> Any:
        if self._depth >= _MAX_ARRAY_DEPTH:
            raise ValueError(f"arrays nested deeper than {_MAX_ARRAY_DEPTH} levels")
        self._depth += 1
        offset = orig_offs + 12
        for _ in range(count):
            size, sub, _, _ = self._get_field_parts(offset, ValueType.ARRAY)
            parts += sub
            offset += size
        self._depth -= 1
        return offset - orig_offs, parts, [], types

    def _strings_end(self, offset: int, count: int) -> int:
        """Return the end of ``count`` consecutive GGUF strings starting at ``offset``."""
        size, fmt = len(self.data), _ORDER[self.byte_order] + "Q"
        buf = memoryview(self.data)  # type: ignore[arg-type]  # a memmap is a buffer
        for _ in range(count):
            if offset + 8 > size:
                raise _Truncated(offset, 8, size)
            (n,) = struct.unpack_from(fmt, buf, offset)
            offset += 8
            if n > size - offset:
                raise _Truncated(offset, n, size)
            offset += n
        return offset

    def _push_field(self, field: ReaderField, skip_sum: bool = False) -> int:
        if field.name in self.fields:  # older gguf versions only warn and rename the key
            raise ValueError(f"duplicate key {field.name!r}")
        result = super()._push_field(field, skip_sum)
        if field.name == "GGUF.kv_count":  # the header's last field
            self._where.text = "the first key/value pair"
        elif not field.name.startswith("GGUF."):
            self._where.text = f"the key/value pair after {field.name!r}"
        return result

    def _build_tensor_info(self, offs: int, count: int) -> tuple[int, list[ReaderField]]:
        self._where.text = "the first tensor info"
        result = super()._build_tensor_info(offs, count)
        # The reader applies general.alignment next; older gguf versions don't check it.
        self._where.text = "general.alignment"
        field = self.fields.get("general.alignment")
        if field is not None:
            if field.types != [GGUFValueType.UINT32]:
                raise ValueError(f"general.alignment must be a u32, not {field.types[0].name}")
            alignment = int(field.parts[-1][0])
            if alignment == 0 or alignment & (alignment - 1):
                raise ValueError(f"general.alignment = {alignment} is not a power of two")
        return result

    def _get_tensor_info_field(self, orig_offs: int) -> ReaderField:
        field = super()._get_tensor_info_field(orig_offs)
        self._where.text = f"the tensor info after {field.name!r}"
        return field

    def _build_tensors(self, start_offs: int, fields: list[ReaderField]) -> None:
        self.tensor_fields = fields


class _Truncated(ValueError):
    def __init__(self, offset: int, n: int, size: int, what: str = "bytes") -> None:
        super().__init__(
            f"truncated: needs {n} {what} at offset {offset}, but the file has {size} bytes"
        )


class GGUFFile:
    """A validated, memory-mapped GGUF file.

    Use :meth:`open`; the constructor is private. ``with GGUFFile.open(p) as f:`` closes the map.

    Attributes:
        path: The file's path as given.
        version: The GGUF version (2 or 3).
        byte_order: ``"little"`` or ``"big"``: how the file stores numbers (see the module doc).
        size: The file size in bytes.
        alignment: ``general.alignment`` (u32), 32 when absent.
        data_offset: Absolute byte offset of the data section.
        tensors: Every tensor, in file order.
        metadata: Key → :class:`~mlplug.config.MetadataValue`, in file order, read-only.
    """

    __slots__ = (
        "_buf",
        "_fd",
        "_map",
        "alignment",
        "byte_order",
        "data_offset",
        "metadata",
        "path",
        "size",
        "tensors",
        "version",
    )

    def __init__(
        self,
        path: str,
        fd: int,
        fmap: mmap.mmap,
        version: int,
        byte_order: Literal["little", "big"],
        alignment: int,
        data_offset: int,
        tensors: tuple[TensorInfo, ...],
        metadata: dict[str, MetadataValue],
    ) -> None:
        self.path = path
        self._fd = fd
        self._map: mmap.mmap | None = fmap
        self._buf: memoryview | None = memoryview(fmap)
        self.size = len(fmap)
        self.version = version
        self.byte_order = byte_order
        self.alignment = alignment
        self.data_offset = data_offset
        self.tensors = tensors
        self.metadata = MappingProxyType(metadata)

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> GGUFFile:
        """Open and validate a GGUF file.

        Args:
            path: The file to open.

        Returns:
            The validated file, memory-mapped read-only.

        Raises:
            FileNotFoundError: ``path`` does not exist (other ``OSError`` for unreadable files).
            GGUFError: The file is not GGUF, is truncated or malformed, or uses a version, type
                id or layout that mlplug does not support. The message names the file and the key
                or tensor at fault.
        """
        spath = os.fspath(path)
        # O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused just below.
        flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(spath, flags | getattr(os, "O_BINARY", 0))
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise GGUFError(
                    f"[gguf] {spath}: not a regular file ({_file_kind(info.st_mode)}), "
                    "expected a GGUF file"
                )
            if info.st_size == 0:
                raise GGUFError(f"[gguf] {spath}: empty file, expected a GGUF header")
            fmap = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        except BaseException:
            os.close(fd)
            raise
        try:
            return cls._parse(spath, fd, fmap)
        except BaseException:
            fmap.close()
            os.close(fd)
            raise

    @classmethod
    def _parse(cls, path: str, fd: int, fmap: mmap.mmap) -> GGUFFile:
        size = len(fmap)
        version, byte_order = _check_header(path, fmap)
        where = _Where()
        try:
            reader = _Reader(fd, where)
        except _READER_ERRORS as err:
            raise GGUFError(f"[gguf] {path}: {err} (while reading {where.text})") from err
        metadata: dict[str, MetadataValue] = {}
        for name, field in reader.fields.items():
            if name.startswith("GGUF."):  # the header, which the reader lists as fields too
                continue
            try:
                metadata[name] = _metadata_value(field, reader.byte_order)
            except _READER_ERRORS as err:
                raise GGUFError(f"[gguf] {path}: key {name!r}: {err}") from err
        alignment = int(reader.alignment)
        data_offset = int(reader.data_offset)
        tensors = _tensors(path, reader.tensor_fields, alignment, data_offset, size)
        _check_block_count(path, metadata, tensors, size)
        return cls(path, fd, fmap, version, byte_order, alignment, data_offset, tensors, metadata)

    def view(self, offset: int, n: int) -> memoryview:
        """Return ``n`` bytes of the file from absolute ``offset``: read-only, no copy.

        Raises:
            ValueError: The range is outside the file, or the file is closed.
        """
        if self._buf is None:
            raise ValueError(f"[gguf] {self.path}: file is closed")
        if offset < 0 or n < 0 or offset + n > self.size:
            raise ValueError(
                f"[gguf] {self.path}: range [{offset}, {offset + n}) outside the file "
                f"({self.size} bytes)"
            )
        return self._buf[offset : offset + n]

    def read_into(self, offset: int, out: memoryview) -> None:
        """Fill ``out`` with the file's bytes from absolute ``offset``, read with ``pread``.

        Unlike :meth:`view`, this never touches the memory map, so a file truncated or rewritten
        while it is read gives :class:`~mlplug.errors.GGUFError`, not a ``SIGBUS`` that kills the
        process. The loader copies tensor data this way.

        Raises:
            GGUFError: The file ends before ``offset + len(out)`` (it shrank since it was
                opened), or cannot be read.
            ValueError: The file is closed.
        """
        if self._map is None:
            raise ValueError(f"[gguf] {self.path}: file is closed")
        out = out.cast("B")
        done, n = 0, len(out)
        while done < n:
            try:
                got = _pread_into(self._fd, out[done:], offset + done)
            except OSError as err:
                raise GGUFError(f"[gguf] {self.path}: cannot read the file ({err})") from err
            if got == 0:
                raise GGUFError(
                    f"[gguf] {self.path}: the file ends at byte {offset + done}, expected "
                    f"{self.size} bytes (it shrank since it was opened)"
                )
            done += got

    def release(self, offset: int, n: int) -> None:
        """Drop the pages of ``[offset, offset + n)`` from this process's resident memory.

        The loader calls this after copying a chunk into device memory, so a load holds each
        byte once (the data stays in the OS page cache; a later ``view`` maps it back). Only
        whole pages inside the range are released. A no-op where ``madvise`` is unavailable.
        """
        fmap = self._map
        if fmap is None or not hasattr(mmap, "MADV_DONTNEED") or n <= 0:
            return
        page = mmap.PAGESIZE
        start = -(-offset // page) * page
        stop = min((offset + n) // page * page, self.size)
        if stop > start:
            fmap.madvise(mmap.MADV_DONTNEED, start, stop - start)

    def close(self) -> None:
        """Release the memory map. Idempotent.

        Views handed out by :meth:`view` keep the map alive until they are released; the map is
        then unmapped when the last of them goes.
        """
        if self._buf is not None:
            self._buf.release()
            self._buf = None
        if self._map is not None:
            fmap, self._map = self._map, None
            # While views are still exported the map cannot close; it goes with the last one.
            with contextlib.suppress(BufferError):
                fmap.close()
            os.close(self._fd)

    def __enter__(self) -> GGUFFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._buf is None else f"{len(self.tensors)} tensors"
        return f"GGUFFile({self.path!r}, v{self.version}, {state})"


MAX_BLOCKS_WITHOUT_TENSORS = 512
"""``block_count`` a file may declare beyond its tensor count (llama.cpp's LLAMA_MAX_LAYERS)."""
_COPIES_PER_BLOCK = 3  # rope_freqs, rope_factors_long, rope_factors_short (§6.5 rule 4)


def _check_block_count(
    path: str, metadata: dict[str, MetadataValue], tensors: tuple[TensorInfo, ...], size: int
) -> None:
    """Refuse a ``block_count`` the file cannot back, before anything is sized by it.

    Each block has weights of its own, so a file declares at most as many blocks as it has
    tensors (or :data:`MAX_BLOCKS_WITHOUT_TENSORS`, for vocabulary-only files). The per-layer
    copies of rope tables (one per block, §6.5 rule 4) are bounded too: at most
    ``_COPIES_PER_BLOCK`` per block, and no more bytes than the file holds. Without these checks a
    2.7 MB file declaring 10^8 blocks took 72 s and 7.4 GiB before failing.

    Raises:
        GGUFError: Naming the key (and the tensor for rope tables).
    """
    config = Config(metadata)
    key = config.key("block_count")
    blocks = config.uint("block_count")
    n_tensors = len(tensors)
    limit = max(n_tensors, MAX_BLOCKS_WITHOUT_TENSORS)
    if blocks > limit:
        raise GGUFError(
            f"[gguf] {path}: {key} = {blocks}, more blocks than the file has tensors "
            f"({n_tensors}; at most {limit} blocks)"
        )
    # Which tensors place_tensors copies per block: with one block, each becomes "blk.0.<name>".
    names = [t.name for t in tensors]
    copied = {p.source for p in place_tensors(names, 1) if p.name == "blk.0." + p.source}
    if not copied or not blocks:
        return
    if blocks * len(copied) > _COPIES_PER_BLOCK * limit:
        raise GGUFError(
            f"[gguf] {path}: {len(copied)} rope tables copied to each of the {blocks} "
            f"blocks of {key} (at most {_COPIES_PER_BLOCK} per block)"
        )
    by_name = {t.name: t for t in tensors}
    copy_bytes = blocks * sum(by_name[n].nbytes for n in copied)
    if copy_bytes > size:
        biggest = max(copied, key=lambda n: by_name[n].nbytes)
        raise GGUFError(
            f"[gguf] {path}: tensor {biggest!r} copied to each of the {blocks} blocks of "
            f"{key} needs {copy_bytes} bytes, more than the file's {size}"
        )


def _file_kind(mode: int) -> str:
    for test, kind in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return kind
    return "not a regular file"


def _pread_into(fd: int, out: memoryview, offset: int) -> int:
    """Read into ``out`` at ``offset``; return the bytes read (0 at the end of the file)."""
    if hasattr(os, "preadv"):
        return os.preadv(fd, [out], offset)
    data = os.pread(fd, len(out), offset)  # no preadv (older macOS): one more copy
    out[: len(data)] = data
    return len(data)


def _check_header(path: str, fmap: mmap.mmap) -> tuple[int, Literal["little", "big"]]:
    """Check magic, version and counts; return the version and the byte order."""
    size = len(fmap)
    if size < 4 or fmap[:4] != _MAGIC:
        raise GGUFError(
            f"[gguf] {path}: not a GGUF file (magic {bytes(fmap[:4])!r}, expected {_MAGIC!r})"
        )
    if size < _HEADER_SIZE:
        raise GGUFError(
            f"[gguf] {path}: truncated header ({size} bytes, expected at least {_HEADER_SIZE})"
        )
    (version,) = struct.unpack_from("<I", fmap, 4)
    order = "<"
    if version & 0xFFFF == 0:  # written for the other byte order (how the gguf reader tells)
        order = ">"
        (version,) = struct.unpack_from(">I", fmap, 4)
    if version not in _VERSIONS:
        raise GGUFError(f"[gguf] {path}: unsupported GGUF version {version} (expected 2 or 3)")
    n_tensors, n_kv = struct.unpack_from(order + "QQ", fmap, 8)
    room = size - _HEADER_SIZE
    if n_kv * _MIN_KV_SIZE + n_tensors * _MIN_TENSOR_INFO_SIZE > room:
        raise GGUFError(
            f"[gguf] {path}: header claims {n_kv} key/value pairs and {n_tensors} tensors, "
            f"more than the file's {size} bytes can hold"
        )
    return version, ("little" if order == "<" else "big")


def _metadata_value(field: ReaderField, byte_order: str) -> MetadataValue:
    # parts: key length, key, value type, then the value's parts (see _Reader._get_field_parts).
    vtype = ValueType(int(field.types[0]))
    if vtype is ValueType.STRING:  # parts: …, length, bytes
        return MetadataValue(vtype, field.parts[-1].tobytes().decode("utf-8"))
    if vtype is not ValueType.ARRAY:
        return MetadataValue(vtype, field.parts[-1].tolist()[0])
    values, _ = _decode_array(field.parts, 3, byte_order)
    return MetadataValue(vtype, values, ValueType(int(field.parts[3][0])))


def _decode_array(parts: list[Any], i: int, byte_order: str) -> tuple[tuple[Any, ...], int]:
    """Decode the array whose parts start at ``parts[i]``; return it and the next index."""
    item, count = ValueType(int(parts[i][0])), int(parts[i + 1][0])
    if item is ValueType.ARRAY:
        out: list[tuple[Any, ...]] = []
        i += 2
        for _ in range(count):
            value, i = _decode_array(parts, i, byte_order)
            out.append(value)
        return tuple(out), i
    if item is ValueType.STRING:
        return _decode_strings(parts[i + 2], byte_order), i + 3
    return tuple(parts[i + 2].tolist()), i + 3


def _decode_strings(blob: np.ndarray, byte_order: str) -> tuple[str, ...]:
    """Decode consecutive GGUF strings (u64 length, UTF-8 bytes) that fill ``blob``."""
    data, fmt = blob.tobytes(), _ORDER[byte_order] + "Q"
    out: list[str] = []
    offset = 0
    while offset < len(data):
        (n,) = struct.unpack_from(fmt, data, offset)
        out.append(data[offset + 8 : offset + 8 + n].decode("utf-8"))
        offset += 8 + n
    return tuple(out)


def _tensors(
    path: str, fields: list[ReaderField], alignment: int, data_offset: int, size: int
) -> tuple[TensorInfo, ...]:
    """Validate the raw tensor-info fields and build the :class:`TensorInfo` records."""
    out: list[TensorInfo] = []
    seen: set[str] = set()
    for field in fields:
        name = field.name

        def fail(problem: str, name: str = name) -> GGUFError:
            return GGUFError(f"[gguf] {path}: tensor {name!r}: {problem}")

        if name in seen:
            raise fail("duplicate tensor name")
        seen.add(name)
        _name_len, _name, n_dims_part, dims_part, type_part, offset_part = field.parts
        n_dims = int(n_dims_part[0])
        if n_dims > _MAX_DIMS:
            raise fail(f"{n_dims} dimensions, expected at most {_MAX_DIMS}")
        dims = [int(d) for d in dims_part]
        if any(d > _INT64_MAX for d in dims) or math.prod(dims) > _INT64_MAX:
            raise fail(f"extents {dims} overflow int64")
        type_id = int(type_part[0])
        try:
            dtype = DType.from_ggml(type_id)
        except ValueError:
            raise fail(f"unknown ggml type id {type_id} (not a DType of SEMANTICS §3.1)") from None
        ne = (*dims, 1, 1, 1, 1)[:_MAX_DIMS]
        if ne[0] % dtype.block_size:
            raise fail(
                f"ne0 = {ne[0]} is not a multiple of {dtype.name}'s block size {dtype.block_size}"
            )
        rel = int(offset_part[0])
        if rel % alignment:
            raise fail(f"offset {rel} is not a multiple of general.alignment ({alignment})")
        start = data_offset + rel
        nbytes = dtype.nbytes(math.prod(dims))
        if start + nbytes > size:
            raise fail(
                f"data [{start}, {start + nbytes}) runs past the end of the file ({size} bytes)"
            )
        out.append(TensorInfo(name, (ne[0], ne[1], ne[2], ne[3]), dtype, start, nbytes))
    return tuple(out)
