"""``Config``: read-only, type-exact metadata lookups (SEMANTICS §11)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from gguf import GGUFValueType as G

from mlplug.config import Config, MetadataValue, ValueType
from mlplug.gguf import GGUFFile
from mlplug_conformance import synth


def f32(x: float) -> float:
    return float(struct.unpack("<f", struct.pack("<f", x))[0])


METADATA = {
    "general.name": (G.STRING, "tiny"),
    "general.alignment": (G.UINT32, 32),
    "general.flag": (G.BOOL, True),
    "tokenizer.ggml.model": (G.STRING, "gpt2"),
    "tokenizer.ggml.tokens": (G.ARRAY, ["<s>", "a", "b"], G.STRING),
    "tokenizer.ggml.token_type": (G.ARRAY, [3, 1, 1], G.INT32),
    "tokenizer.ggml.scores": (G.ARRAY, [0.0, -1.5, 0.1], G.FLOAT32),
    "llama.block_count": (G.UINT32, 32),
    "llama.context_length": (G.UINT64, 4096),  # u64: uint() does not match it
    "llama.embedding_length": (G.INT32, 4096),  # i32: uint() does not match it
    "llama.rope.freq_base": (G.FLOAT32, 10000.0),
    "llama.attention.layer_norm_rms_epsilon": (G.FLOAT32, 1e-5),
    "llama.rope.scaling.factor": (G.FLOAT64, 8.0),  # f64: float() does not match it
    "llama.use_parallel_residual": (G.BOOL, False),
    "llama.flags": (G.ARRAY, [True, False, True], G.BOOL),
    "llama.head_counts": (G.ARRAY, [8, 8, 4], G.UINT32),
    "llama.signed": (G.ARRAY, [-1, 2], G.INT32),
    "llama.wide": (G.ARRAY, [1, 2], G.UINT64),
    "llama.doubles": (G.ARRAY, [0.5], G.FLOAT64),
    "llama.small": (G.UINT8, 3),
}


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Config:
    path: Path = tmp_path_factory.mktemp("config") / "c.gguf"
    synth.write_gguf(path, [], arch="llama", metadata=METADATA)
    with GGUFFile.open(path) as f:
        return Config(f.metadata)


def test_architecture_and_prefixing(config: Config) -> None:
    assert config.architecture() == "llama"
    assert config.uint("block_count") == 32  # reads llama.block_count
    assert config.key("block_count") == "llama.block_count"
    assert config.key("general.name") == "general.name"
    assert config.key("tokenizer.ggml.model") == "tokenizer.ggml.model"
    assert config.string("general.name") == "tiny"
    assert config.string("tokenizer.ggml.model") == "gpt2"
    assert config.uint("general.alignment") == 32
    # A full key is prefixed too: "llama.block_count" reads "llama.llama.block_count".
    assert config.uint("llama.block_count") == 0


def test_scalar_lookups_are_type_exact(config: Config) -> None:
    assert config.uint("context_length") == 0  # stored as u64
    assert config.uint("context_length", 7) == 7
    assert config.uint("embedding_length") == 0  # stored as i32
    assert config.uint("small") == 0  # stored as u8
    assert config.uint("rope.freq_base") == 0  # stored as f32
    assert config.float("rope.freq_base") == 10000.0
    assert config.float("attention.layer_norm_rms_epsilon") == f32(1e-5)
    assert config.float("rope.scaling.factor") == 0.0  # stored as f64
    assert config.float("rope.scaling.factor", 1.0) == 1.0
    assert config.float("block_count") == 0.0  # stored as u32
    assert config.bool("general.flag") is True
    assert config.bool("use_parallel_residual", True) is False  # stored False beats default
    assert config.bool("block_count") is False
    assert config.string("block_count") == ""
    assert config.string("block_count", "d") == "d"
    assert config.string("general.flag") == ""


def test_array_lookups_are_type_exact(config: Config) -> None:
    assert config.strings("tokenizer.ggml.tokens") == ("<s>", "a", "b")
    assert config.ints("tokenizer.ggml.token_type") == (3, 1, 1)
    assert config.floats("tokenizer.ggml.scores") == (0.0, -1.5, f32(0.1))
    assert config.bools("flags") == (True, False, True)
    assert config.uints("head_counts") == (8, 8, 4)
    assert config.ints("signed") == (-1, 2)
    assert config.uints("signed") == ()  # i32 elements
    assert config.ints("head_counts") == ()  # u32 elements
    assert config.uints("wide") == ()  # u64 elements
    assert config.floats("doubles") == ()  # f64 elements
    assert config.strings("general.name") == ()  # a scalar string is not an array
    assert config.ints("block_count", (1, 2)) == (1, 2)
    assert isinstance(config.strings("tokenizer.ggml.tokens"), tuple)


def test_absent_keys_give_the_defaults(config: Config) -> None:
    assert config.string("nope") == ""
    assert config.uint("nope") == 0
    assert config.float("nope") == 0.0
    assert config.bool("nope") is False
    for method in (config.strings, config.ints, config.uints, config.floats, config.bools):
        assert method("nope") == ()
    assert config.uint("nope", 5) == 5
    assert config.floats("nope", (1.0,)) == (1.0,)


def test_empty_config() -> None:
    empty = Config.empty()
    assert empty.architecture() == "unknown"
    assert empty.key("block_count") == "unknown.block_count"
    assert empty.uint("block_count") == 0
    assert empty.string("general.name", "x") == "x"
    assert len(empty) == 0
    assert list(empty.keys()) == []


def test_architecture_must_be_a_string() -> None:
    config = Config({"general.architecture": MetadataValue(ValueType.U32, 1)})
    assert config.architecture() == "unknown"
    no_arch = Config({"llama.block_count": MetadataValue(ValueType.U32, 3)})
    assert no_arch.architecture() == "unknown"
    assert no_arch.uint("block_count") == 0
    assert no_arch.uint("llama.block_count") == 0  # prefixed: unknown.llama.block_count


def test_empty_arrays_keep_their_element_type() -> None:
    # The gguf writer cannot write an empty array, so build the records directly.
    config = Config(
        {
            "general.architecture": MetadataValue(ValueType.STRING, "x"),
            "x.ids": MetadataValue(ValueType.ARRAY, (), ValueType.I32),
        }
    )
    assert config.ints("ids", (9,)) == ()
    assert config.uints("ids", (9,)) == (9,)


def test_raw_access_in_file_order(config: Config) -> None:
    keys = list(config.keys())
    assert keys == ["general.architecture", *METADATA]
    assert [k for k, _ in config.items()] == keys
    assert len(config) == len(keys)
    assert "llama.block_count" in config
    assert "block_count" not in config  # raw access is not prefixed
    raw = config.raw("llama.context_length")
    assert raw == MetadataValue(ValueType.U64, 4096)
    assert raw.type_name() == "u64"
    assert config.raw("tokenizer.ggml.tokens").type_name() == "[string]"  # type: ignore[union-attr]
    assert config.raw("nope") is None
    assert "llama" in repr(config)


def test_read_only() -> None:
    source = {"general.architecture": MetadataValue(ValueType.STRING, "a")}
    config = Config(source)
    source["general.architecture"] = MetadataValue(ValueType.STRING, "b")
    source["a.n"] = MetadataValue(ValueType.U32, 1)
    assert config.architecture() == "a"
    assert config.uint("n") == 0
    with pytest.raises(AttributeError):
        config.extra = 1  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        config.raw("general.architecture").value = "c"  # type: ignore[misc,union-attr]
