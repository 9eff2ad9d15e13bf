"""GGUF reading and validation (SEMANTICS §11, §12): ``mlplug.gguf.GGUFFile``."""

from __future__ import annotations

import random
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFValueType

from mlplug.config import MetadataValue, ValueType
from mlplug.dtype import DType
from mlplug.errors import GGUFError
from mlplug.gguf import GGUFFile, TensorInfo
from mlplug_conformance import synth

# SEMANTICS §3.1, copied here so that the test checks the table and not the code under test:
# member -> (ggml id, block size B, bytes per block S).
SPEC_SIZES = {
    "F32": (0, 1, 4), "F16": (1, 1, 2), "Q8_0": (8, 32, 34), "Q4_0": (2, 32, 18),
    "I32": (26, 1, 4), "MXFP4": (39, 32, 17), "BF16": (30, 1, 2), "Q4_1": (3, 32, 20),
    "Q5_0": (6, 32, 22), "Q5_1": (7, 32, 24), "Q2_K": (10, 256, 84), "Q3_K": (11, 256, 110),
    "Q4_K": (12, 256, 144), "Q5_K": (13, 256, 176), "Q6_K": (14, 256, 210),
    "Q8_K": (15, 256, 292), "IQ2_XXS": (16, 256, 66), "IQ2_XS": (17, 256, 74),
    "IQ3_XXS": (18, 256, 98), "IQ1_S": (19, 256, 50), "IQ4_NL": (20, 32, 18),
    "IQ3_S": (21, 256, 110), "IQ2_S": (22, 256, 82), "IQ4_XS": (23, 256, 136),
    "I8": (24, 1, 1), "I16": (25, 1, 2), "I64": (27, 1, 8), "F64": (28, 1, 8),
    "IQ1_M": (29, 256, 56), "TQ1_0": (34, 256, 54), "TQ2_0": (35, 256, 66),
}  # fmt: skip


@pytest.fixture
def llama(tmp_path: Path) -> Path:
    return synth.write_llama_gguf(
        tmp_path / "llama.gguf", n_layers=2, n_embd=64, n_head=4, n_head_kv=2, n_ff=96, n_vocab=40
    )


def f32_tensor(name: str, numpy_shape: tuple[int, ...]) -> synth.SynthTensor:
    n = int(np.prod(numpy_shape))
    return (name, np.arange(n, dtype=np.float32).reshape(numpy_shape), DType.F32)


# -- reading ------------------------------------------------------------------------------------


def test_llama_file_tensors_in_ggml_order(llama: Path) -> None:
    with GGUFFile.open(llama) as f:
        assert f.version == 3
        assert f.byte_order == "little"
        assert f.alignment == 32
        assert f.data_offset % 32 == 0
        names = [t.name for t in f.tensors]
        layer = [f"blk.0.{n}.weight" for n in synth.LLAMA_LAYER_TENSORS]
        assert names[:10] == ["token_embd.weight", *layer]
        assert names[-2:] == ["output_norm.weight", "output.weight"]
        assert len(names) == 1 + 2 * 9 + 2
        by_name = {t.name: t for t in f.tensors}
        # The writer takes numpy shapes; the file (and TensorInfo.ne) is in ggml order.
        assert by_name["token_embd.weight"].ne == (64, 40, 1, 1)
        assert by_name["blk.1.attn_k.weight"].ne == (64, 32, 1, 1)  # n_embd_kv = 64 / 4 * 2
        assert by_name["blk.1.ffn_down.weight"].ne == (96, 64, 1, 1)
        assert by_name["blk.0.attn_norm.weight"].ne == (64, 1, 1, 1)
        for t in f.tensors:
            assert t.dtype is DType.F32
            assert t.nbytes == 4 * t.n_elements
            assert (t.offset - f.data_offset) % f.alignment == 0
            assert t.offset + t.nbytes <= f.size


def test_view_returns_the_written_bytes_read_only(tmp_path: Path) -> None:
    values = np.linspace(-1, 1, 2 * 3 * 5, dtype=np.float32).reshape(2, 3, 5)
    path = synth.write_gguf(tmp_path / "v.gguf", [("x", values, DType.F32)])
    with GGUFFile.open(path) as f:
        (t,) = f.tensors
        assert t == TensorInfo("x", (5, 3, 2, 1), DType.F32, f.data_offset, 120)
        view = f.view(t.offset, t.nbytes)
        assert isinstance(view, memoryview)
        assert view.readonly
        assert np.array_equal(np.frombuffer(view, dtype=np.float32), values.ravel())
        with pytest.raises(TypeError):
            view[0] = 1
        del view


def test_view_bounds_and_close(llama: Path) -> None:
    f = GGUFFile.open(llama)
    assert len(f.view(f.size - 4, 4)) == 4
    assert len(f.view(0, 0)) == 0
    for offset, n in ((-1, 4), (f.size - 3, 4), (0, -1)):
        with pytest.raises(ValueError, match="outside the file"):
            f.view(offset, n)
    kept = f.view(0, 4)
    f.close()
    f.close()  # idempotent
    assert bytes(kept) == b"GGUF"  # a view handed out before close stays valid
    with pytest.raises(ValueError, match="closed"):
        f.view(0, 4)
    assert f.tensors and f.metadata  # plain data survives close


def test_alignment_example_of_section_11(tmp_path: Path) -> None:
    # Nine F32 tensors of 6 elements, alignment 16: 24 bytes each, padded to 32.
    tensors = [f32_tensor(f"t{i}", (2, 3)) for i in range(9)]
    path = synth.write_gguf(tmp_path / "a.gguf", tensors, alignment=16)
    with GGUFFile.open(path) as f:
        assert f.alignment == 16
        assert f.data_offset % 16 == 0
        assert [t.offset - f.data_offset for t in f.tensors] == [32 * i for i in range(9)]
        assert all(t.nbytes == 24 for t in f.tensors)


@pytest.mark.parametrize("name", list(SPEC_SIZES))
def test_byte_size_of_every_dtype_read_from_a_file(tmp_path: Path, name: str) -> None:
    _, block, size = SPEC_SIZES[name]
    dtype = DType[name]
    assert (dtype.ggml_type, dtype.block_size, dtype.type_size) == SPEC_SIZES[name]
    rows, blocks_per_row = 3, 2
    raw = np.random.default_rng(0).integers(0, 256, (rows, blocks_per_row * size), np.uint8)
    path = synth.write_gguf(
        tmp_path / "d.gguf", [("w", raw, dtype), f32_tensor("after", (4,))], alignment=64
    )
    with GGUFFile.open(path) as f:
        w, after = f.tensors
        assert w.dtype is dtype
        assert w.ne == (blocks_per_row * block, rows, 1, 1)
        assert w.nbytes == rows * blocks_per_row * size == dtype.nbytes(w.n_elements)
        assert after.offset - w.offset == -(-w.nbytes // 64) * 64
        assert bytes(f.view(w.offset, w.nbytes)) == raw.tobytes()


def test_metadata_values_and_types(tmp_path: Path) -> None:
    g = GGUFValueType
    metadata = {
        "x.u8": (g.UINT8, 200), "x.i8": (g.INT8, -5), "x.u16": (g.UINT16, 60000),
        "x.i16": (g.INT16, -300), "x.u32": (g.UINT32, 4_000_000_000), "x.i32": (g.INT32, -7),
        "x.f32": (g.FLOAT32, 0.1), "x.bool": (g.BOOL, True), "x.str": (g.STRING, "héllo"),
        "x.u64": (g.UINT64, 2**63), "x.i64": (g.INT64, -(2**40)), "x.f64": (g.FLOAT64, 0.1),
        "x.strs": (g.ARRAY, ["a", "", "ü"], g.STRING), "x.i32s": (g.ARRAY, [1, -2], g.INT32),
        "x.f32s": (g.ARRAY, [0.5, 0.1], g.FLOAT32), "x.bools": (g.ARRAY, [True, False], g.BOOL),
    }  # fmt: skip
    path = synth.write_gguf(tmp_path / "m.gguf", [], arch="x", metadata=metadata)
    with GGUFFile.open(path) as f:
        assert list(f.metadata) == ["general.architecture", *metadata]
        md = f.metadata
        assert md["general.architecture"].value == "x"
        assert (md["x.u8"].type, md["x.u8"].value) == (ValueType.U8, 200)
        assert (md["x.u32"].type, md["x.u32"].value) == (ValueType.U32, 4_000_000_000)
        assert (md["x.u64"].type, md["x.u64"].value) == (ValueType.U64, 2**63)
        assert md["x.f32"].value == struct.unpack("<f", struct.pack("<f", 0.1))[0]
        assert md["x.f64"].value == 0.1
        assert md["x.bool"].value is True
        assert md["x.str"].value == "héllo"
        assert (md["x.strs"].type, md["x.strs"].item_type) == (ValueType.ARRAY, ValueType.STRING)
        assert md["x.strs"].value == ("a", "", "ü")
        assert md["x.i32s"].value == (1, -2)
        assert md["x.bools"].value == (True, False)
        assert md["x.bools"].type_name() == "[bool]"
        assert md["x.i16"].type_name() == "i16"
        with pytest.raises(TypeError):
            md["x.u8"] = md["x.i8"]  # type: ignore[index]


def test_large_and_nested_arrays(tmp_path: Path) -> None:
    g = GGUFValueType
    tokens = [f"tok{i}é" for i in range(20_000)]
    metadata = {
        "tokenizer.ggml.tokens": (g.ARRAY, tokens, g.STRING),
        "tokenizer.ggml.scores": (g.ARRAY, [float(i) for i in range(20_000)], g.FLOAT32),
        "x.nested": (g.ARRAY, [[1, 2], [3]], g.ARRAY),
        "x.nested_strs": (g.ARRAY, [["a"], ["b", "c"]], g.ARRAY),
        "x.after": (g.UINT32, 5),
    }
    path = synth.write_gguf(tmp_path / "n.gguf", [], arch="x", metadata=metadata)
    with GGUFFile.open(path) as f:
        md = f.metadata
        assert md["tokenizer.ggml.tokens"].value == tuple(tokens)
        assert md["tokenizer.ggml.scores"].value == tuple(float(i) for i in range(20_000))
        assert md["x.nested"] == MetadataValue(ValueType.ARRAY, ((1, 2), (3,)), ValueType.ARRAY)
        assert md["x.nested_strs"].value == (("a",), ("b", "c"))
        assert md["x.after"].value == 5


def test_absurdly_nested_arrays(tmp_path: Path) -> None:
    # A key whose value is an array of an array of … 10,000 levels deep (12 bytes a level).
    key = struct.pack("<Q", 3) + b"x.d" + struct.pack("<I", ValueType.ARRAY)
    value = struct.pack("<IQ", ValueType.ARRAY, 1) * 10_000 + struct.pack("<IQ", ValueType.U32, 0)
    path = tmp_path / "deep.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + key + value)
    expect_gguf_error(path, "nested deeper than 8")


def test_big_endian_file(tmp_path: Path) -> None:
    values = np.arange(6, dtype=np.float32).reshape(2, 3)
    g = GGUFValueType
    metadata = {
        "llama.block_count": (g.UINT32, 7),
        "llama.f": (g.FLOAT32, 0.5),
        "llama.strs": (g.ARRAY, ["ab", "c"], g.STRING),
        "llama.ints": (g.ARRAY, [1, -2, 300], g.INT32),
    }
    path = synth.write_gguf(
        tmp_path / "be.gguf", [("a", values, DType.F32)], metadata=metadata, big_endian=True
    )
    with GGUFFile.open(path) as f:
        assert f.byte_order == "big"
        assert f.version == 3
        assert {k: v.value for k, v in f.metadata.items()} == {
            "general.architecture": "llama",
            "llama.block_count": 7,
            "llama.f": 0.5,
            "llama.strs": ("ab", "c"),
            "llama.ints": (1, -2, 300),
        }
        (t,) = f.tensors
        assert (t.ne, t.nbytes) == ((3, 2, 1, 1), 24)
        # Tensor data is returned as stored: big-endian.
        assert bytes(f.view(t.offset, 24)) == values.astype(">f4").tobytes()


def test_version_2_is_accepted(llama: Path) -> None:
    synth.set_version(llama, 2)
    with GGUFFile.open(llama) as f:
        assert f.version == 2


def test_tensor_with_zero_dims_and_zero_elements(tmp_path: Path) -> None:
    path = synth.write_gguf(
        tmp_path / "z.gguf",
        [("empty", np.zeros((0, 4), np.float32), DType.F32), f32_tensor("one", (1,))],
    )
    with GGUFFile.open(path) as f:
        empty, one = f.tensors
        assert (empty.ne, empty.nbytes, empty.n_elements) == ((4, 0, 1, 1), 0, 0)
        assert one.offset == empty.offset


def test_open_does_not_need_the_reader_afterwards(llama: Path) -> None:
    # The file is parsed once; metadata and tensor records are plain Python data.
    with GGUFFile.open(llama) as f:
        for value in f.metadata.values():
            assert not isinstance(value.value, np.generic)
            if isinstance(value.value, tuple):
                assert not any(isinstance(v, np.generic) for v in value.value)
        for t in f.tensors:
            assert all(type(x) is int for x in (*t.ne, t.offset, t.nbytes))


def test_importing_core_modules_does_not_import_numpy() -> None:
    code = (
        "import sys, mlplug, mlplug.config, mlplug.placement; "
        "sys.exit('numpy' in sys.modules or 'gguf' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# -- malformed files ------------------------------------------------------------------------


def expect_gguf_error(path: Path, *fragments: str) -> GGUFError:
    with pytest.raises(GGUFError) as info:
        GGUFFile.open(path)
    message = str(info.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message
    return info.value


def test_missing_file_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        GGUFFile.open(tmp_path / "nope.gguf")


def test_gguf_error_is_a_value_error(tmp_path: Path) -> None:
    path = tmp_path / "e.gguf"
    path.write_bytes(b"")
    with pytest.raises(ValueError):
        GGUFFile.open(path)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "e.gguf"
    path.write_bytes(b"")
    expect_gguf_error(path, "empty file")


def test_not_a_gguf_file(tmp_path: Path) -> None:
    path = tmp_path / "t.gguf"
    path.write_text("hello, this is text and certainly not a model\n")
    expect_gguf_error(path, "not a GGUF file", "expected b'GGUF'")


def test_corrupt_magic(llama: Path) -> None:
    synth.corrupt_magic(llama)
    expect_gguf_error(llama, "not a GGUF file", "b'GGUX'")


@pytest.mark.parametrize("version", [0, 1, 4, 0xFFFF])
def test_unsupported_version(llama: Path, version: int) -> None:
    synth.set_version(llama, version)
    expect_gguf_error(llama, f"version {version}", "expected 2 or 3")


def test_truncated_header(llama: Path) -> None:
    synth.truncate(llama, 10)
    expect_gguf_error(llama, "truncated header")


def test_truncated_in_metadata(tmp_path: Path) -> None:
    metadata = {f"x.key{i}": (GGUFValueType.STRING, "value" * 10) for i in range(10)}
    path = synth.write_gguf(tmp_path / "m.gguf", [], arch="x", metadata=metadata)
    synth.truncate(path, 300)
    expect_gguf_error(path, "truncated", "while reading the key/value pair after 'x.key")


def test_truncated_in_tensor_infos(llama: Path) -> None:
    with GGUFFile.open(llama) as f:
        infos_end = f.data_offset
    synth.truncate(llama, infos_end - 40)
    expect_gguf_error(llama, "truncated", "tensor info")


def test_truncated_data_names_the_tensor(llama: Path) -> None:
    with GGUFFile.open(llama) as f:
        last = f.tensors[-1]
    synth.truncate(llama, last.offset + last.nbytes - 1)
    expect_gguf_error(llama, f"tensor {last.name!r}", "past the end of the file")


def test_header_counts_larger_than_the_file(llama: Path) -> None:
    with open(llama, "r+b") as fh:
        fh.seek(8)
        fh.write(struct.pack("<Q", 2**40))
    expect_gguf_error(llama, "header claims", "tensors")


@pytest.mark.parametrize(("type_id", "why"), [(99, "unknown"), (9, "Q8_1"), (4, "removed")])
def test_unknown_type_id_names_the_tensor(llama: Path, type_id: int, why: str) -> None:
    # 9 (Q8_1) is known to the gguf package but is no DType; 4 is a retired ggml type.
    synth.set_tensor_type(llama, "blk.1.attn_q.weight", type_id)
    expect_gguf_error(llama, "'blk.1.attn_q.weight'", f"unknown ggml type id {type_id}")


def test_ne0_not_a_multiple_of_the_block_size(tmp_path: Path) -> None:
    path = synth.write_gguf(tmp_path / "b.gguf", [f32_tensor("w", (2, 48))])
    synth.set_tensor_type(path, "w", DType.Q8_0.ggml_type)
    expect_gguf_error(path, "'w'", "ne0 = 48 is not a multiple of Q8_0's block size 32")


def test_more_than_four_dims(tmp_path: Path) -> None:
    path = synth.write_gguf(tmp_path / "d.gguf", [f32_tensor("w5", (1, 1, 1, 2, 3))])
    expect_gguf_error(path, "'w5'", "5 dimensions, expected at most 4")


def test_misaligned_offset(llama: Path) -> None:
    synth.set_tensor_offset(llama, "token_embd.weight", 8)
    expect_gguf_error(llama, "'token_embd.weight'", "offset 8", "general.alignment (32)")


def test_data_past_the_end_of_the_file(llama: Path) -> None:
    synth.set_tensor_offset(llama, "blk.0.ffn_up.weight", 2**20)
    expect_gguf_error(llama, "'blk.0.ffn_up.weight'", "past the end of the file")


def test_duplicate_tensor_names(tmp_path: Path) -> None:
    path = synth.write_gguf(tmp_path / "d.gguf", [f32_tensor("ab", (4,)), f32_tensor("ac", (4,))])
    synth.rename_tensor(path, "ac", "ab")
    expect_gguf_error(path, "'ab'", "duplicate tensor name")


def test_duplicate_keys(tmp_path: Path) -> None:
    u32 = GGUFValueType.UINT32
    metadata = {"x.aa": (u32, 1), "x.ab": (u32, 2)}
    path = synth.write_gguf(tmp_path / "k.gguf", [], arch="x", metadata=metadata)
    synth.rename_key(path, "x.ab", "x.aa")
    expect_gguf_error(path, "duplicate key 'x.aa'")


def test_key_with_invalid_utf8(llama: Path) -> None:
    synth.rename_key(llama, "general.name", b"general.\xff\xfe\xfd\xfc")
    expect_gguf_error(llama, "while reading")


def test_string_array_with_invalid_utf8_names_the_key(tmp_path: Path) -> None:
    entry = (GGUFValueType.ARRAY, [b"ok", b"\xff"], GGUFValueType.STRING)
    path = synth.write_gguf(tmp_path / "u.gguf", [], metadata={"x.strs": entry})
    expect_gguf_error(path, "key 'x.strs'", "utf-8")


def test_unknown_metadata_value_type(llama: Path) -> None:
    synth.set_key_type(llama, "llama.block_count", 13)
    expect_gguf_error(llama, "unknown metadata value type 13", "the key/value pair after")


@pytest.mark.parametrize(
    ("entry", "fragment"),
    [
        ((GGUFValueType.UINT64, 32), "general.alignment must be a u32, not UINT64"),
        ((GGUFValueType.UINT32, 24), "general.alignment = 24 is not a power of two"),
        ((GGUFValueType.UINT32, 0), "general.alignment = 0 is not a power of two"),
    ],
)
def test_bad_alignment(tmp_path: Path, entry: tuple[GGUFValueType, int], fragment: str) -> None:
    path = synth.write_gguf(
        tmp_path / "a.gguf", [f32_tensor("w", (4,))], metadata={"general.alignment": entry}
    )
    expect_gguf_error(path, fragment)


def test_garbage_after_a_valid_header(tmp_path: Path) -> None:
    rng = random.Random(3)
    path = tmp_path / "g.gguf"
    for _ in range(50):
        path.write_bytes(b"GGUF" + struct.pack("<I", 3) + rng.randbytes(rng.randint(16, 2000)))
        expect_gguf_error(path)


def test_every_truncation_and_random_corruption_raise_gguf_error(tmp_path: Path) -> None:
    # Never a crash and never another exception: cut the file at every byte of its header,
    # metadata and tensor infos, and flip random bytes there.
    tokens = (GGUFValueType.ARRAY, ["a", "bc"], GGUFValueType.STRING)
    good = synth.write_llama_gguf(
        tmp_path / "good.gguf",
        n_layers=1, n_embd=32, n_head=2, n_head_kv=1, n_ff=32, n_vocab=4,
        weight_type=DType.Q8_0, extra_metadata={"tokenizer.ggml.tokens": tokens},
    )  # fmt: skip
    data = good.read_bytes()
    with GGUFFile.open(good) as f:
        infos_end = f.data_offset
    path = tmp_path / "bad.gguf"
    for n in range(infos_end):
        path.write_bytes(data[:n])
        expect_gguf_error(path)
    rng = random.Random(0)
    for _ in range(200):
        corrupt = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            corrupt[rng.randrange(infos_end)] = rng.randrange(256)
        path.write_bytes(corrupt)
        try:
            GGUFFile.open(path).close()
        except GGUFError as err:
            assert str(path) in str(err)
