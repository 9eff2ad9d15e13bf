"""The GGUF tokenizer (``mlplug.tokenizer``): both vocabulary styles, specials, streaming."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from mlplug.tokenizer import Tokenizer, TokenType, merges_from_scores

K = "tokenizer.ggml."

TEXTS = [
    "Hello world!",
    "hello world",
    " leading space and  double  spaces ",
    "line one\nline two\n\ttabbed",
    "héllo wörld, ça va? naïve café Ångström",
    "你好\uff0c世界。日本語のテキスト",
    "emoji 😀🎉 and a flag 🇫🇷 and a family 👨‍👩‍👧",
    "It's 2024; we're testing 12345 numbers & symbols: <>{}[]",
    "",
]

# -- a gpt2-style (byte-level BPE) vocabulary trained with tokenizers' own trainer -----------------

CORPUS = [
    "Hello world! The quick brown fox jumps over the lazy dog.",
    "héllo wörld, ça va? naïve café",
    "你好\uff0c世界。日本語のテキスト",
    "emoji 😀🎉 test",
    "It's 2024 and we're testing 12345 numbers.",
] * 20


@pytest.fixture(scope="module")
def trained():
    """A tiny byte-level BPE trained deterministically, and its GGUF metadata."""
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    hf.train_from_iterator(CORPUS, trainer)
    model = json.loads(hf.to_str())["model"]
    tokens = [""] * len(model["vocab"])
    for text, i in model["vocab"].items():
        tokens[i] = text
    eot = model["vocab"]["<|endoftext|>"]
    merges = tuple(m if isinstance(m, str) else " ".join(m) for m in model["merges"])
    meta = {
        K + "model": "gpt2",
        K + "pre": "gpt-2",
        K + "tokens": tuple(tokens),
        K + "token_type": tuple(3 if t == "<|endoftext|>" else 1 for t in tokens),
        K + "merges": merges,
        K + "bos_token_id": eot,
        K + "eos_token_id": eot,
    }
    return hf, meta


@pytest.fixture(scope="module")
def gpt2(trained):
    return Tokenizer.from_metadata(trained[1])


@pytest.mark.parametrize("text", TEXTS)
def test_gpt2_matches_reference_and_round_trips(trained, gpt2, text):
    hf, _ = trained
    ids = gpt2.encode(text)
    assert ids == hf.encode(text).ids
    assert gpt2.decode(ids) == text


def test_gpt2_defaults(gpt2):
    assert gpt2.model == "gpt2"
    assert gpt2.vocab_size == len(gpt2.tokens)
    assert gpt2.bos_id == gpt2.eos_id == gpt2.tokens.index("<|endoftext|>")
    assert not gpt2.add_bos  # byte-level BPE adds no BOS unless the file asks
    assert gpt2.is_eog(gpt2.eos_id)
    assert not gpt2.is_eog(gpt2.encode("Hello")[0])


def test_gpt2_special_tokens(gpt2):
    eot = gpt2.eos_id
    ids = gpt2.encode("hi<|endoftext|>there")
    assert eot in ids
    assert gpt2.decode(ids) == "hithere"  # control tokens are hidden by default
    assert gpt2.decode(ids, skip_special=False) == "hi<|endoftext|>there"
    plain = gpt2.encode("hi<|endoftext|>there", parse_special=False)
    assert eot not in plain
    assert gpt2.decode(plain) == "hi<|endoftext|>there"


def test_gpt2_add_bos_from_metadata(trained):
    meta = dict(trained[1])
    meta[K + "add_bos_token"] = True
    tok = Tokenizer.from_metadata(meta)
    assert tok.encode("Hello")[0] == tok.bos_id
    assert tok.encode("Hello", add_special=False)[0] != tok.bos_id


def _byte_alphabet() -> list[str]:
    """GPT-2's byte → character table, in byte order (as every byte-level vocab writes bytes)."""
    keep = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    out, n = [], 0
    for b in range(256):
        if b in keep:
            out.append(chr(b))
        else:
            out.append(chr(0x100 + n))
            n += 1
    return out


def test_gpt2_hand_made_vocab_exact_ids():
    alphabet = _byte_alphabet()
    merges = ["h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "l d", "Ġwor ld"]
    tokens = [*alphabet, "he", "ll", "hell", "hello", "Ġw", "or", "Ġwor", "ld", "Ġworld", "<eos>"]
    tok = Tokenizer.from_metadata(
        {
            K + "model": "gpt2",
            K + "pre": "gpt-2",
            K + "tokens": tuple(tokens),
            K + "token_type": tuple([1] * (len(tokens) - 1) + [3]),
            K + "merges": tuple(merges),
            K + "eos_token_id": len(tokens) - 1,
        }
    )
    assert tok.encode("hello world") == [259, 264]
    assert tok.encode("hello world!") == [259, 264, ord("!")]
    # "é" is two bytes, each its own byte-level token.
    assert tok.encode("é") == [0xC3, 0xA9]
    assert tok.token_to_piece(0xC3) == b"\xc3"
    assert tok.decode([259, 264]) == "hello world"
    assert tok.is_eog(len(tokens) - 1)


# -- a llama-style (SentencePiece BPE) vocabulary made by hand ----------------------------------

# Normal pieces, highest score first (score = -rank, as SentencePiece BPE models store them).
PIECES = ["▁w", "or", "ld", "▁wor", "▁world", "el", "lo", "▁h", "ello", "▁hello", "你好", "▁a"]
CHARS = ["▁", "h", "e", "l", "o", "w", "r", "d", "a", "你", "好"]
N_FIXED = 3 + 256  # <unk>, <s>, </s>, then the 256 byte tokens


def llama_meta(**extra):
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + PIECES + CHARS
    types = [2, 3, 3] + [6] * 256 + [1] * (len(PIECES) + len(CHARS))
    scores = [0.0] * N_FIXED + [-float(i) for i in range(len(PIECES) + len(CHARS))]
    meta = {
        K + "model": "llama",
        K + "tokens": tuple(tokens),
        K + "token_type": tuple(types),
        K + "scores": tuple(scores),
        K + "bos_token_id": 1,
        K + "eos_token_id": 2,
        K + "unknown_token_id": 0,
        K + "add_bos_token": True,
        K + "add_eos_token": False,
    }
    meta.update({K + k: v for k, v in extra.items()})
    return meta


def pid(piece: str) -> int:
    return N_FIXED + (PIECES + CHARS).index(piece)


def byte_id(b: int) -> int:
    return 3 + b


@pytest.fixture(scope="module")
def llama():
    return Tokenizer.from_metadata(llama_meta())


def test_llama_known_ids(llama):
    assert llama.encode("hello world") == [1, pid("▁hello"), pid("▁world")]
    assert llama.encode("hello world", add_special=False) == [pid("▁hello"), pid("▁world")]
    # "é" is not in the vocabulary: byte fallback to its two UTF-8 bytes.
    assert llama.encode("héllo", add_special=False) == [
        pid("▁h"),
        byte_id(0xC3),
        byte_id(0xA9),
        pid("l"),
        pid("lo"),
    ]
    assert llama.encode("你好", add_special=False) == [pid("▁"), pid("你好")]
    assert llama.encode("", add_special=True) == [1]
    assert llama.encode("", add_special=False) == []


@pytest.mark.parametrize("text", TEXTS)
def test_llama_round_trip(llama, text):
    ids = llama.encode(text)
    assert ids[0] == llama.bos_id
    assert llama.decode(ids) == text


def test_llama_byte_fallback_for_missing_characters(llama):
    ids = llama.encode("😀", add_special=False)
    assert ids == [pid("▁")] + [byte_id(b) for b in "😀".encode()]
    assert llama.decode(ids) == "😀"


def test_llama_bos_eos_flags():
    assert Tokenizer.from_metadata(llama_meta(add_bos_token=False)).encode("a") == [pid("▁a")]
    tok = Tokenizer.from_metadata(llama_meta(add_eos_token=True))
    assert tok.encode("a") == [1, pid("▁a"), 2]
    assert tok.decode(tok.encode("a")) == "a"
    assert tok.is_eog(2)
    assert not tok.is_eog(1)


def test_llama_defaults_without_optional_keys():
    meta = llama_meta()
    for key in ("token_type", "scores", "bos_token_id", "eos_token_id", "unknown_token_id"):
        del meta[K + key]
    del meta[K + "add_bos_token"], meta[K + "add_eos_token"]
    tok = Tokenizer.from_metadata(meta)
    # llama.cpp's SentencePiece defaults: unk 0, bos 1, eos 2, BOS added; <0xXX> are bytes.
    assert (tok.unk_id, tok.bos_id, tok.eos_id, tok.add_bos, tok.add_eos) == (0, 1, 2, True, False)
    assert tok.token_types[byte_id(0x41)] is TokenType.BYTE
    text = "héllo wörld 😀"
    assert tok.decode(tok.encode(text)) == text


def test_llama_special_tokens_in_text(llama):
    ids = llama.encode("a</s>a", add_special=False)
    assert ids == [pid("▁a"), 2, pid("▁a")]  # a space is prefixed after a special token too
    assert llama.decode(ids) == "a a"
    assert llama.decode(ids, skip_special=False) == "a</s> a"
    plain = llama.encode("a</s>", add_special=False, parse_special=False)
    assert 2 not in plain


def test_llama_no_space_prefix():
    tok = Tokenizer.from_metadata(llama_meta(add_space_prefix=False))
    assert tok.encode("hello", add_special=False)[0] == pid("h")
    assert tok.decode(tok.encode(" hello world")) == " hello world"


def spm_reference(tok: Tokenizer, text: str) -> list[int]:
    """llama.cpp's SentencePiece tokenizer (llm_tokenizer_spm), written plainly.

    Repeatedly merge the adjacent pair whose concatenation is the best-scoring normal piece
    (ties: leftmost), then emit pieces, or the byte tokens of anything else.
    """
    scores = dict(zip(PIECES + CHARS, range(0, -len(PIECES) - len(CHARS), -1), strict=True))
    ids = {t: i for i, t in enumerate(tok.tokens)}
    symbols = list("▁" + text.replace(" ", "▁"))
    while True:
        best = None
        for i in range(len(symbols) - 1):
            merged = symbols[i] + symbols[i + 1]
            if merged in scores and (best is None or scores[merged] > scores[best[1]]):
                best = (i, merged)
        if best is None:
            break
        i, merged = best
        symbols[i : i + 2] = [merged]
    out = []
    for s in symbols:
        if s in ids:
            out.append(ids[s])
        else:
            out.extend(byte_id(b) for b in s.encode())
    return out


def test_llama_matches_reference_spm_on_random_text(llama):
    rng = random.Random(1234)
    alphabet = "helowrda你好 é😀"
    for _ in range(500):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 16)))
        if not text:
            continue
        assert llama.encode(text, add_special=False) == spm_reference(llama, text), text
        assert llama.decode(llama.encode(text)) == text


def test_llama_uses_file_merges_when_present():
    merges = tuple(f"{a} {b}" for a, b in merges_from_scores(*_tokens_scores_types()))
    meta = llama_meta(merges=merges)
    del meta[K + "scores"]
    tok = Tokenizer.from_metadata(meta)
    assert tok.encode("hello world", add_special=False) == [pid("▁hello"), pid("▁world")]


def _tokens_scores_types():
    meta = llama_meta()
    return meta[K + "tokens"], meta[K + "scores"], meta[K + "token_type"]


def test_merges_from_scores_order():
    merges = merges_from_scores(*_tokens_scores_types())
    # Highest-scoring piece first; every split into two vocabulary pieces is a merge.
    assert merges[:3] == [("▁", "w"), ("o", "r"), ("l", "d")]
    assert ("▁w", "or") in merges and ("▁", "wor") not in merges
    assert merges.index(("▁h", "ello")) > merges.index(("el", "lo"))
    # Control and byte tokens are never merge results.
    assert all(a + b not in ("<s>", "</s>", "<unk>") for a, b in merges)


# -- streaming -------------------------------------------------------------------------------------


def test_stream_holds_back_split_characters(llama):
    stream = llama.decode_stream()
    e_acute = [byte_id(0xC3), byte_id(0xA9)]
    assert stream.step(1) == ""  # BOS prints nothing
    assert stream.step(pid("▁h")) == "h"  # the prefixed space is dropped
    assert stream.step(e_acute[0]) == ""
    assert stream.step(e_acute[1]) == "é"
    assert stream.step(pid("lo")) == "lo"
    emoji = [byte_id(b) for b in "😀".encode()]
    assert [stream.step(i) for i in emoji] == ["", "", "", "😀"]
    assert stream.flush() == ""


def test_stream_gpt2_emoji(gpt2):
    stream = gpt2.decode_stream()
    pieces = [stream.step(i) for i in gpt2.encode("a😀b")]
    assert "".join(pieces) == "a😀b"
    assert "\ufffd" not in "".join(pieces)


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("style", ["llama", "gpt2"])
def test_stream_equals_decode(request, style, text):
    tok = request.getfixturevalue(style)
    ids = tok.encode(text)
    stream = tok.decode_stream()
    assert "".join(stream.step(i) for i in ids) + stream.flush() == tok.decode(ids) == text


def test_stream_flush_reports_unfinished_character(llama):
    stream = llama.decode_stream()
    assert stream.step(byte_id(0xE4)) == ""
    assert stream.flush() == "\ufffd"


def test_token_to_piece(llama):
    assert llama.token_to_piece(pid("▁hello")) == b" hello"
    assert llama.token_to_piece(byte_id(0x0A)) == b"\n"
    assert llama.token_to_piece(1) == b""
    assert llama.token_to_piece(1, special=True) == b"<s>"
    with pytest.raises(IndexError):
        llama.token_to_piece(llama.vocab_size)


# -- construction ----------------------------------------------------------------------------------


def test_from_metadata_accepts_a_getter():
    meta = llama_meta()

    def get(key):
        return meta[key]  # raises KeyError for absent keys

    tok = Tokenizer.from_metadata(get)
    assert tok.encode("hello world") == [1, pid("▁hello"), pid("▁world")]


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({K + "model": "bert"}, "unsupported"),
        ({K + "tokens": ()}, "missing or empty"),
        ({K + "scores": (0.0,)}, "scores"),
    ],
)
def test_bad_metadata(change, match):
    meta = llama_meta()
    meta.update(change)
    with pytest.raises(ValueError, match=match):
        Tokenizer.from_metadata(meta)


def test_gpt2_without_merges_raises(trained):
    meta = dict(trained[1])
    del meta[K + "merges"]
    with pytest.raises(ValueError, match="merges"):
        Tokenizer.from_metadata(meta)


def test_unknown_pre_warns(trained):
    meta = dict(trained[1])
    meta[K + "pre"] = "no-such-pre"
    with pytest.warns(UserWarning, match="no-such-pre"):
        Tokenizer.from_metadata(meta)


def test_from_config():
    from mlplug.config import Config, MetadataValue, ValueType

    meta = llama_meta()
    stored = {}
    for key, value in meta.items():
        if isinstance(value, tuple):
            item = {str: ValueType.STRING, int: ValueType.I32, float: ValueType.F32}[type(value[0])]
            stored[key] = MetadataValue(ValueType.ARRAY, value, item)
        elif isinstance(value, bool):
            stored[key] = MetadataValue(ValueType.BOOL, value)
        elif isinstance(value, int):
            stored[key] = MetadataValue(ValueType.U32, value)
        else:
            stored[key] = MetadataValue(ValueType.STRING, value)
    tok = Tokenizer.from_config(Config(stored))
    assert tok.encode("hello world") == [1, pid("▁hello"), pid("▁world")]


def test_from_gguf(tmp_path):
    gguf = pytest.importorskip("gguf")
    meta = llama_meta()
    path = tmp_path / "vocab.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model("llama")
    writer.add_token_list(list(meta[K + "tokens"]))
    writer.add_token_scores(list(meta[K + "scores"]))
    writer.add_token_types(list(meta[K + "token_type"]))
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tok = Tokenizer.from_gguf(path)
    assert tok.encode("hello world") == [1, pid("▁hello"), pid("▁world")]
    assert tok.decode(tok.encode("héllo 你好 😀")) == "héllo 你好 😀"


def test_import_is_light():
    code = (
        "import sys, mlplug, mlplug.tokenizer; "
        "assert 'tokenizers' not in sys.modules, 'tokenizers imported'; "
        "assert 'numpy' not in sys.modules, 'numpy imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    "pre",
    [
        "default",
        "gpt-2",
        "llama-bpe",
        "qwen2",
        "starcoder",
        "falcon",
        "deepseek-coder",
        "bloom",
        "viking",
        "tekken",
        "dbrx",
        "command-r",
    ],
)
def test_every_pre_tokenizer_builds_and_round_trips(trained, pre):
    meta = dict(trained[1])
    meta[K + "pre"] = pre
    tok = Tokenizer.from_metadata(meta)
    for text in TEXTS:
        assert tok.decode(tok.encode(text)) == text


def test_llama3_pre_splits_digits_in_threes(trained):
    meta = dict(trained[1])
    meta[K + "pre"] = "llama-bpe"
    tok = Tokenizer.from_metadata(meta)
    assert tok.add_bos  # llama.cpp adds BOS for llama3 unless the file says otherwise
    pieces = [tok.decode([i]) for i in tok.encode("12345", add_special=False)]
    # No merge may cross the 3-digit boundary: "123" | "45".
    boundary = [len("".join(pieces[: k + 1])) for k in range(len(pieces))]
    assert 3 in boundary


@pytest.mark.parametrize("prefix", [True, False])
def test_per_text_merges_equal_the_full_merge_list(prefix: bool) -> None:
    # A score-only vocabulary is encoded with the merges of the pieces found in each text; the
    # ids equal those of the full merge list, special and user-defined tokens in the text too.
    from mlplug.tokenizer import _build_spm

    meta = llama_meta(add_space_prefix=prefix)
    meta[K + "tokens"] += ("<ctl>", "  ")
    meta[K + "token_type"] += (3, 4)
    meta[K + "scores"] += (0.0, 0.0)
    tok = Tokenizer.from_metadata(meta)
    full = _build_spm(tok, merges_from_scores(tok.tokens, meta[K + "scores"], tok.token_types))
    rng = random.Random(7)
    alphabet = ["h", "e", "l", "o", " ", "w", "r", "d", "a", "你", "好", "é", "<ctl>", "  "]
    for _ in range(400):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 20)))
        assert tok.encode(text, add_special=False) == full.encode(text).ids, text
