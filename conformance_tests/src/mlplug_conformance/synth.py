"""Synthetic GGUF files: llama-shaped models with random weights, and deliberately broken files.

Everything is written with the ``gguf`` package's :class:`gguf.GGUFWriter`. Shapes handed to
this module are in **numpy order** (as the writer takes them); the file stores ggml order
(``ne0`` first), so a numpy ``(n_vocab, n_embd)`` array is the ggml tensor ``[n_embd, n_vocab]``.

Encoding: F32/F16/BF16/Q8_0/Q4_0 (and the other types ``gguf.quants`` can quantise) go through
``gguf.quants.quantize``. ``gguf`` has no quantiser for K-quants, so Q4_K and Q6_K weights are
random but well-formed blocks (finite fp16 scales of a chosen magnitude); their values are what
``gguf.quants.dequantize`` makes of them, which is all a synthetic model needs.

The ``corrupt_magic``/``set_*``/``rename_*``/``truncate`` helpers patch a valid file in place to
make the malformed inputs the GGUF tests need.

Needs gguf >= 0.18 (MXFP4 and byte-swapped big-endian tensor data in the writer).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, GGUFEndian, GGUFReader, GGUFValueType, GGUFWriter
from gguf import quants as gq

from mlplug.dtype import DType

__all__ = [
    "LLAMA_LAYER_TENSORS",
    "SynthTensor",
    "corrupt_magic",
    "encode",
    "random_weight",
    "rename_key",
    "rename_tensor",
    "set_key_type",
    "set_tensor_offset",
    "set_tensor_type",
    "set_version",
    "tensor_info_position",
    "truncate",
    "write_gguf",
    "write_llama_gguf",
]

SynthTensor = tuple[str, np.ndarray, DType]
"""``(name, encoded data, dtype)``: data as :func:`encode` returns it (numpy order)."""

# Metadata: key -> (value type, value) or (ARRAY, values, element type).
Metadata = Mapping[str, tuple[Any, ...]]

LLAMA_LAYER_TENSORS = (
    "attn_norm",
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_output",
    "ffn_norm",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
)

_NATIVE = {
    DType.F32: np.float32,
    DType.F16: np.float16,
    DType.F64: np.float64,
    DType.I8: np.int8,
    DType.I16: np.int16,
    DType.I32: np.int32,
    DType.I64: np.int64,
}


def _qtype(dtype: DType) -> GGMLQuantizationType:
    return GGMLQuantizationType(dtype.ggml_type)


def encode(values: np.ndarray, dtype: DType) -> np.ndarray:
    """Encode float values (numpy order) as ``dtype`` the way ``gguf.quants.quantize`` does.

    Returns a native array for F32/F16/F64 and the integer types, else the packed bytes as a
    ``uint8`` array of numpy shape ``(..., ne0 // B * S)``.

    Raises:
        ValueError: ``ne0`` (the last numpy extent) is not a multiple of the block size.
        NotImplementedError: ``gguf`` cannot quantise to ``dtype`` (the K-quants, IQ types…).
    """
    if values.shape and values.shape[-1] % dtype.block_size:
        raise ValueError(f"ne0={values.shape[-1]} is not a multiple of {dtype.name}'s block size")
    if dtype in _NATIVE:
        return np.ascontiguousarray(values, dtype=_NATIVE[dtype])
    return np.ascontiguousarray(gq.quantize(np.asarray(values, dtype=np.float32), _qtype(dtype)))


def _random_k_blocks(
    rng: np.random.Generator, dtype: DType, shape: tuple[int, ...], scale: float
) -> np.ndarray:
    """Random, well-formed Q4_K or Q6_K blocks whose values have roughly magnitude ``scale``."""
    n_blocks = int(np.prod(shape)) // dtype.block_size
    raw = rng.integers(0, 256, size=(n_blocks, dtype.type_size), dtype=np.uint8)
    jitter = rng.uniform(0.5, 1.5, size=n_blocks).astype(np.float32)
    if dtype is DType.Q4_K:
        # value = d·sc·q - dmin·m, with 6-bit sc, m and 4-bit q: centre it with dmin ≈ 7.5·d.
        d = (scale / (31.5 * 7.5) * jitter).astype(np.float16)
        raw[:, 0:2] = d.view(np.uint8).reshape(n_blocks, 2)
        raw[:, 2:4] = (d * np.float16(7.5)).view(np.uint8).reshape(n_blocks, 2)
    elif dtype is DType.Q6_K:
        # value = d·scale·(q - 32), with int8 scales and 6-bit q; d is the last two bytes.
        d = (scale / (64.0 * 16.0) * jitter).astype(np.float16)
        raw[:, 208:210] = d.view(np.uint8).reshape(n_blocks, 2)
    else:
        raise NotImplementedError(f"no random-block generator for {dtype.name}")
    return raw.reshape((*shape[:-1], shape[-1] // dtype.block_size * dtype.type_size))


def random_weight(
    rng: np.random.Generator, shape: tuple[int, ...], dtype: DType, scale: float = 1.0
) -> np.ndarray:
    """Return encoded random weights of numpy shape ``shape``.

    Values are N(0, scale²) before encoding; Q4_K and Q6_K get random blocks whose values have
    roughly that magnitude (``gguf`` cannot quantise to them).
    """
    if dtype in (DType.Q4_K, DType.Q6_K):
        if shape[-1] % dtype.block_size:
            raise ValueError(f"ne0={shape[-1]} is not a multiple of {dtype.name}'s block size")
        return _random_k_blocks(rng, dtype, shape, scale)
    return encode(rng.standard_normal(shape, dtype=np.float32) * np.float32(scale), dtype)


def _add_metadata(writer: GGUFWriter, metadata: Metadata) -> None:
    for key, entry in metadata.items():
        vtype = GGUFValueType(int(entry[0]))
        sub_type = GGUFValueType(int(entry[2])) if len(entry) > 2 else None
        writer.add_key_value(key, entry[1], vtype, sub_type=sub_type)


def write_gguf(
    path: str | os.PathLike[str],
    tensors: Sequence[SynthTensor],
    *,
    arch: str = "llama",
    metadata: Metadata | None = None,
    alignment: int | None = None,
    big_endian: bool = False,
) -> Path:
    """Write a GGUF file (version 3) with ``general.architecture = arch`` and these tensors.

    Args:
        path: Where to write.
        tensors: ``(name, data, dtype)`` in file order; ``data`` from :func:`encode` or
            :func:`random_weight` (numpy order; ``uint8`` packed bytes for block types).
        arch: ``general.architecture``.
        metadata: Extra key/value pairs: ``key: (value type, value)`` or, for arrays,
            ``key: (ARRAY, values, element type)``; types are ``gguf.GGUFValueType`` or
            :class:`mlplug.config.ValueType` members (same ids).
        alignment: Write ``general.alignment`` (u32) and align the data to it.
        big_endian: Write a big-endian file (header, metadata and tensor data).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    endian = GGUFEndian.BIG if big_endian else GGUFEndian.LITTLE
    writer = GGUFWriter(path, arch, endianess=endian)
    if alignment is not None:
        writer.add_custom_alignment(alignment)
    _add_metadata(writer, metadata or {})
    for name, data, dtype in tensors:
        if data.dtype == np.uint8:  # packed bytes: the writer derives the element shape
            writer.add_tensor(name, data, raw_dtype=_qtype(dtype))
        elif data.dtype == _NATIVE.get(dtype):
            writer.add_tensor(name, data, raw_shape=data.shape, raw_dtype=_qtype(dtype))
        else:
            raise ValueError(f"{name}: {data.dtype} data for {dtype.name}; use encode()")
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return path


def write_llama_gguf(
    path: str | os.PathLike[str],
    *,
    n_layers: int,
    n_embd: int,
    n_head: int,
    n_head_kv: int,
    n_ff: int,
    n_vocab: int,
    weight_type: DType = DType.F32,
    tied_output: bool = False,
    arch: str = "llama",
    seed: int = 0,
    context_length: int = 2048,
    rms_eps: float = 1e-5,
    rope_freq_base: float = 10000.0,
    extra_tensors: Sequence[SynthTensor] = (),
    extra_metadata: Metadata | None = None,
    alignment: int | None = None,
) -> Path:
    """Write a llama-shaped model with deterministic random weights.

    Tensors (ggml shapes): ``token_embd.weight [n_embd, n_vocab]``; per layer ``blk.N.``
    ``attn_norm [n_embd]``, ``attn_q [n_embd, n_embd]``, ``attn_k``/``attn_v
    [n_embd, n_embd_kv]``, ``attn_output [n_embd, n_embd]``, ``ffn_norm [n_embd]``,
    ``ffn_gate``/``ffn_up [n_embd, n_ff]``, ``ffn_down [n_ff, n_embd]``; ``output_norm [n_embd]``;
    ``output [n_embd, n_vocab]`` unless ``tied_output``. Matrices use ``weight_type``, norms F32.
    ``n_embd_kv = n_embd // n_head * n_head_kv``. Keys: ``<arch>.block_count``,
    ``embedding_length``, ``feed_forward_length``, ``attention.head_count``,
    ``attention.head_count_kv`` (u32), ``attention.layer_norm_rms_epsilon``, ``rope.freq_base``
    (f32), ``context_length``, ``rope.dimension_count`` (u32), ``general.name``.

    Raises:
        ValueError: Inconsistent sizes, or ``n_embd``/``n_ff`` not a multiple of the block size
            of ``weight_type``.
    """
    if n_embd % n_head or n_head % n_head_kv:
        raise ValueError(f"n_embd={n_embd}, n_head={n_head}, n_head_kv={n_head_kv} don't divide")
    for what, n in (("n_embd", n_embd), ("n_ff", n_ff)):
        if n % weight_type.block_size:
            raise ValueError(
                f"{what}={n} is not a multiple of {weight_type.name}'s block size "
                f"{weight_type.block_size}"
            )
    rng = np.random.default_rng(seed)
    head_dim = n_embd // n_head
    n_embd_kv = head_dim * n_head_kv

    def matrix(name: str, n_out: int, n_in: int) -> SynthTensor:
        # numpy (n_out, n_in) is ggml [n_in, n_out]: ne0 is the input (reduction) dimension.
        scale = 1.0 if name == "token_embd.weight" else n_in**-0.5
        return (name, random_weight(rng, (n_out, n_in), weight_type, scale), weight_type)

    def norm(name: str) -> SynthTensor:
        values = 1.0 + 0.1 * rng.standard_normal(n_embd, dtype=np.float32)
        return (name, values.astype(np.float32), DType.F32)

    tensors = [matrix("token_embd.weight", n_vocab, n_embd)]
    for i in range(n_layers):
        p = f"blk.{i}."
        tensors += [
            norm(p + "attn_norm.weight"),
            matrix(p + "attn_q.weight", n_embd, n_embd),
            matrix(p + "attn_k.weight", n_embd_kv, n_embd),
            matrix(p + "attn_v.weight", n_embd_kv, n_embd),
            matrix(p + "attn_output.weight", n_embd, n_embd),
            norm(p + "ffn_norm.weight"),
            matrix(p + "ffn_gate.weight", n_ff, n_embd),
            matrix(p + "ffn_up.weight", n_ff, n_embd),
            matrix(p + "ffn_down.weight", n_embd, n_ff),
        ]
    tensors.append(norm("output_norm.weight"))
    if not tied_output:
        tensors.append(matrix("output.weight", n_vocab, n_embd))
    tensors += extra_tensors

    u32, f32 = GGUFValueType.UINT32, GGUFValueType.FLOAT32
    metadata: dict[str, tuple[Any, ...]] = {
        "general.name": (GGUFValueType.STRING, f"synthetic {arch} {n_layers}x{n_embd}"),
        f"{arch}.block_count": (u32, n_layers),
        f"{arch}.context_length": (u32, context_length),
        f"{arch}.embedding_length": (u32, n_embd),
        f"{arch}.feed_forward_length": (u32, n_ff),
        f"{arch}.attention.head_count": (u32, n_head),
        f"{arch}.attention.head_count_kv": (u32, n_head_kv),
        f"{arch}.attention.layer_norm_rms_epsilon": (f32, rms_eps),
        f"{arch}.rope.freq_base": (f32, rope_freq_base),
        f"{arch}.rope.dimension_count": (u32, head_dim),
    }
    metadata.update(extra_metadata or {})
    return write_gguf(path, tensors, arch=arch, metadata=metadata, alignment=alignment)


# -- broken files -----------------------------------------------------------------------------
# Each helper patches a valid file in place (the patched file need not be valid any more).


def truncate(path: str | os.PathLike[str], size: int) -> None:
    """Cut the file to its first ``size`` bytes."""
    os.truncate(path, size)


def _patch(path: str | os.PathLike[str], offset: int, data: bytes) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(data)


def _order(reader: GGUFReader) -> str:
    return ">" if reader.endianess == GGUFEndian.BIG else "<"


def _same_length(old: str, new: bytes | str) -> bytes:
    data = new.encode() if isinstance(new, str) else new
    if len(data) != len(old.encode()):
        raise ValueError(f"{new!r} must have the UTF-8 length of {old!r}")
    return data


def corrupt_magic(path: str | os.PathLike[str], magic: bytes = b"GGUX") -> None:
    """Overwrite the 4-byte magic."""
    _patch(path, 0, magic[:4].ljust(4, b"\0"))


def set_version(path: str | os.PathLike[str], version: int) -> None:
    """Overwrite the version field (little-endian u32)."""
    _patch(path, 4, struct.pack("<I", version))


def tensor_info_position(path: str | os.PathLike[str], name: str) -> tuple[int, str]:
    """Return the file offset of tensor ``name``'s info record and the file's byte order.

    The record is: u64 name length, name, u32 n_dims, n_dims u64 extents, u32 type id, u64
    offset. The byte order is a ``struct`` prefix (``"<"`` or ``">"``).
    """
    reader = GGUFReader(path)
    for tensor in reader.tensors:
        if tensor.name == name:
            return tensor.field.offset, _order(reader)
    raise KeyError(f"{path}: no tensor {name!r}")


def _type_position(path: str | os.PathLike[str], name: str) -> tuple[int, str]:
    pos, order = tensor_info_position(path, name)
    with open(path, "rb") as fh:
        fh.seek(pos)
        (name_len,) = struct.unpack(order + "Q", fh.read(8))
        fh.seek(pos + 8 + name_len)
        (n_dims,) = struct.unpack(order + "I", fh.read(4))
    return pos + 8 + name_len + 4 + 8 * n_dims, order


def set_tensor_type(path: str | os.PathLike[str], name: str, type_id: int) -> None:
    """Overwrite the ggml type id of tensor ``name`` (e.g. with one unknown to mlplug)."""
    pos, order = _type_position(path, name)
    _patch(path, pos, struct.pack(order + "I", type_id))


def set_tensor_offset(path: str | os.PathLike[str], name: str, offset: int) -> None:
    """Overwrite tensor ``name``'s data offset (relative to the data section).

    A value that is not a multiple of the alignment makes a misaligned file; a large aligned
    value makes data past the end of the file.
    """
    pos, order = _type_position(path, name)
    _patch(path, pos + 4, struct.pack(order + "Q", offset))


def rename_tensor(path: str | os.PathLike[str], name: str, new_name: bytes | str) -> None:
    """Overwrite tensor ``name``'s name with one of the same length (e.g. a duplicate)."""
    pos, _ = tensor_info_position(path, name)
    _patch(path, pos + 8, _same_length(name, new_name))


def _key_position(path: str | os.PathLike[str], key: str) -> tuple[int, str]:
    reader = GGUFReader(path)
    field = reader.fields.get(key)
    if field is None:
        raise KeyError(f"{path}: no key {key!r}")
    return field.offset, _order(reader)


def rename_key(path: str | os.PathLike[str], key: str, new_key: bytes | str) -> None:
    """Overwrite a metadata key with bytes of the same length (a duplicate, or bad UTF-8)."""
    pos, _ = _key_position(path, key)
    _patch(path, pos + 8, _same_length(key, new_key))


def set_key_type(path: str | os.PathLike[str], key: str, type_id: int) -> None:
    """Overwrite the value type id of metadata ``key`` (e.g. with an unknown one)."""
    pos, order = _key_position(path, key)
    _patch(path, pos + 8 + len(key.encode()), struct.pack(order + "I", type_id))
