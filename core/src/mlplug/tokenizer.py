"""Text ⇄ token ids from a GGUF file's tokenizer metadata, on HuggingFace ``tokenizers``.

Two vocabulary styles, chosen by ``tokenizer.ggml.model`` as llama.cpp does:

* ``"gpt2"`` — byte-level BPE (GPT-2, Llama 3, Qwen…): the vocabulary plus
  ``tokenizer.ggml.merges``; text is split by the regexes that ``tokenizer.ggml.pre`` names, then
  every byte is mapped to a printable character before merging.
* ``"llama"`` — SentencePiece BPE (Llama 1/2, Mistral…): spaces become ``▁``, a ``▁`` is prepended
  (``tokenizer.ggml.add_space_prefix``, default true), characters missing from the vocabulary fall
  back to ``<0xXX>`` byte tokens. When the file has no merges (Gemma, Llama 2…) they follow
  from ``tokenizer.ggml.scores`` (see :func:`merges_from_scores`); a tokenizer derives, for each
  text it encodes, the merges of the pieces found in that text, which gives the same ids as the
  full list and keeps building a 262,144-piece tokenizer well under a second.

Encoding (the BPE itself) runs in ``tokenizers``. Decoding maps each token to its *bytes*
(:meth:`Tokenizer.token_to_piece`, llama.cpp's ``token_to_piece``) because ``tokenizers``' decoders
only return ``str``: a character split across tokens would come back as U+FFFD, and streaming
generation (:class:`DecodeStream`) needs the raw bytes to join such characters.

``tokenizers`` is imported when a :class:`Tokenizer` is built, not when this module is imported.
"""

from __future__ import annotations

import codecs
import re
import threading
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from enum import IntEnum
from functools import cache
from typing import TYPE_CHECKING, Any

from mlplug.errors import TokenizerError

if TYPE_CHECKING:
    import os

    import tokenizers

    from mlplug.config import Config

__all__ = ["DecodeStream", "TokenType", "Tokenizer", "merges_from_scores"]


class TokenType(IntEnum):
    """``tokenizer.ggml.token_type`` values (llama.cpp's ``llama_token_type``)."""

    UNDEFINED = 0
    NORMAL = 1
    UNKNOWN = 2
    CONTROL = 3
    USER_DEFINED = 4
    UNUSED = 5
    BYTE = 6


SPACE_MARKER = "▁"  # U+2581, SentencePiece's visible space

# Token texts that end generation whatever their id (llama.cpp's ``special_eog_ids`` heuristic).
_EOG_TEXTS = frozenset(
    {"<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|eom_id|>", "<EOT>"}
)
_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")

# Pre-tokenizer regexes per ``tokenizer.ggml.pre`` (from llama.cpp's ``llm_tokenizer_bpe``). Each
# list is applied in order, every regex splitting the pieces left by the previous ones and keeping
# both the matches and the text between them.
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3 = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|"
    r"\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2 = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|"
    r"\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_TEKKEN = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|"
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|"
    r"\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_BLOOM = r" ?[^(\s|.,!?…。，、।۔،)]+"  # noqa: RUF001 - script punctuation
_PRE: dict[str, tuple[str, ...]] = {
    "default": (
        r"[\p{P}\$\+<=>\^~\|]+",
        _GPT2,
        r"\p{N}+",
        r"[0-9][0-9][0-9]",
    ),
    "gpt2": (_GPT2,),
    "llama3": (_LLAMA3,),
    "qwen2": (_QWEN2,),
    "starcoder": (r"\p{N}", _GPT2),
    "falcon": (r"[\p{P}\$\+<=>\^~\|`]+", _GPT2, r"[0-9][0-9][0-9]"),
    "deepseek-coder": (r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", r"[一-龥ࠀ-一가-퟿]+", r"\p{N}"),
    "bloom": (_BLOOM,),
    "viking": (_BLOOM, r"\p{N}"),
    "tekken": (_TEKKEN,),
}
_PRE_ALIASES: dict[str, str] = {
    **dict.fromkeys(
        (
            "gpt-2",
            "phi-2",
            "jina-es",
            "jina-de",
            "gigachat",
            "jina-v1-en",
            "jina-v2-es",
            "jina-v2-de",
            "jina-v2-code",
            "roberta-bpe",
            "mpt",
            "olmo",
            "jais",
        ),
        "gpt2",
    ),
    **dict.fromkeys(
        ("llama3", "llama-v3", "llama-bpe", "falcon3", "dbrx", "smaug-bpe", "chatglm-bpe"),
        "llama3",
    ),
    **dict.fromkeys(("qwen2", "stablelm2", "megrez"), "qwen2"),
    **dict.fromkeys(
        ("starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b"),
        "starcoder",
    ),
    **dict.fromkeys(("poro-chat", "bloom", "gpt3-finnish"), "bloom"),
    "default": "default",
    "falcon": "falcon",
    "deepseek-coder": "deepseek-coder",
    "viking": "viking",
    "tekken": "tekken",
}
# Pre-tokenizers whose vocabulary is matched whole before merging (llama.cpp's ``ignore_merges``).
_IGNORE_MERGES = frozenset({"llama3", "tekken"})
# Pre-tokenizers for which llama.cpp adds BOS unless the file says otherwise.
_ADD_BOS = frozenset({"llama3", "tekken"})

_K = "tokenizer.ggml."


def _normalise_metadata(
    meta: Mapping[str, object] | Callable[[str], object],
) -> Callable[[str], object]:
    if callable(meta):
        getter = meta

        def get(key: str) -> object:
            try:
                return getter(key)
            except KeyError:
                return None

        return get
    return meta.get


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes | bytearray) else str(value)


def _seq(value: object) -> list[Any] | None:
    if value is None:
        return None
    if isinstance(value, str | bytes):
        raise ValueError(f"[tokenizer] expected an array, got {type(value).__name__}")
    items: list[Any] = list(value)  # type: ignore[call-overload]
    return items


_TOKEN_TYPES = {int(t): t for t in TokenType}


def _token_types(values: Sequence[int]) -> list[TokenType]:
    # llama.cpp reads unknown types as undefined.
    get, undefined = _TOKEN_TYPES.get, TokenType.UNDEFINED
    return [get(v, undefined) for v in values]


class Tokenizer:
    """A GGUF model's tokenizer: ``encode`` text to ids and ``decode`` ids to text.

    Build one with :meth:`from_metadata`, :meth:`from_config` or :meth:`from_gguf`.

    Attributes:
        model: ``"gpt2"`` (byte-level BPE) or ``"llama"`` (SentencePiece BPE).
        tokens: The vocabulary, indexed by id.
        token_types: The :class:`TokenType` of every id.
        bos_id: The beginning-of-sequence id, or ``None``.
        eos_id: The end-of-sequence id, or ``None``.
        unk_id: The unknown-token id, or ``None``.
        pad_id: The padding id, or ``None``.
        add_bos: Whether ``encode(..., add_special=True)`` prepends ``bos_id``.
        add_eos: Whether ``encode(..., add_special=True)`` appends ``eos_id``.
        add_space_prefix: Whether a space is prepended to text (SentencePiece style); decoding then
            drops the leading space of the first piece.
    """

    __slots__ = (
        "_eog",
        "_hf",
        "_lock",
        "_per_text",
        "_pieces",
        "add_bos",
        "add_eos",
        "add_space_prefix",
        "bos_id",
        "eos_id",
        "model",
        "pad_id",
        "token_types",
        "tokens",
        "unk_id",
    )

    def __init__(
        self,
        model: str,
        tokens: Sequence[str],
        *,
        token_types: Sequence[int] | None = None,
        scores: Sequence[float] | None = None,
        merges: Sequence[str] | None = None,
        pre: str | None = None,
        bos_id: int | None = None,
        eos_id: int | None = None,
        unk_id: int | None = None,
        pad_id: int | None = None,
        eot_id: int | None = None,
        eom_id: int | None = None,
        add_bos: bool | None = None,
        add_eos: bool | None = None,
        add_space_prefix: bool | None = None,
    ) -> None:
        """Build a tokenizer from the values of the ``tokenizer.ggml.*`` keys.

        ``None`` means "key absent" and picks llama.cpp's default. Raises ``ValueError`` for an
        unknown ``model``, an empty vocabulary or arrays whose lengths disagree.
        """
        if model not in ("gpt2", "llama"):
            raise ValueError(
                f"[tokenizer] unsupported tokenizer.ggml.model {model!r} "
                "(expected 'gpt2' or 'llama')"
            )
        if not tokens:
            raise ValueError("[tokenizer] tokenizer.ggml.tokens is missing or empty")
        n = len(tokens)
        for name, arr in (("token_type", token_types), ("scores", scores)):
            if arr is not None and len(arr) != n:
                raise ValueError(f"[tokenizer] {len(arr)} {name} entries for {n} tokens")
        spm = model == "llama"
        self.model = model
        # llama.cpp renames empty tokens so that every text maps back to one id.
        self.tokens: tuple[str, ...] = tuple(
            t if t else f"[EMPTY_{i}]" for i, t in enumerate(tokens)
        )

        def valid(i: int | None) -> int | None:
            return i if i is not None and 0 <= i < n else None

        self.bos_id = valid(bos_id if bos_id is not None else (1 if spm else None))
        self.eos_id = valid(eos_id if eos_id is not None else (2 if spm else None))
        self.unk_id = valid(unk_id if unk_id is not None else (0 if spm else None))
        self.pad_id = valid(pad_id)

        if token_types is not None:
            types = _token_types(token_types)
        else:
            types = [self._guess_type(i, spm) for i in range(n)]
        self.token_types: tuple[TokenType, ...] = tuple(types)

        pre_name = "" if spm else self._pre_name(pre)
        self.add_bos = bool(add_bos) if add_bos is not None else (spm or pre_name in _ADD_BOS)
        self.add_eos = bool(add_eos) if add_eos is not None else False
        self.add_space_prefix = bool(add_space_prefix) if add_space_prefix is not None else spm

        eog = {i for i in (self.eos_id, valid(eot_id), valid(eom_id)) if i is not None}
        eog.update(i for i, t in enumerate(self.tokens) if t in _EOG_TEXTS)
        self._eog = frozenset(eog)
        self._lock = threading.Lock()

        # Pieces are made on first use: most of a large vocabulary is never decoded.
        self._pieces: dict[int, bytes] = {}
        self._per_text: _PerTextMerges | None = None
        if spm and not merges:
            # Score-only vocabulary: the merges a text needs are derived when it is encoded.
            self._per_text = _PerTextMerges(self, scores)
            self._hf = _build_spm(self, [], self._per_text.base)
        elif spm:
            self._hf = _build_spm(self, _split_merges(merges or ()))
        else:
            if not merges:
                raise ValueError("[tokenizer] a gpt2 tokenizer needs tokenizer.ggml.merges")
            self._hf = _build_bpe(self, _split_merges(merges), pre_name)

    def _guess_type(self, i: int, spm: bool) -> TokenType:
        # Files without token_type: ids named as special are control, <0xXX> are bytes.
        if i == self.unk_id:
            return TokenType.UNKNOWN
        if i in (self.bos_id, self.eos_id):
            return TokenType.CONTROL
        if spm and _BYTE_TOKEN.fullmatch(self.tokens[i]):
            return TokenType.BYTE
        return TokenType.NORMAL

    @staticmethod
    def _pre_name(pre: str | None) -> str:
        if not pre:
            warnings.warn(
                "[tokenizer] tokenizer.ggml.pre is missing: using the 'default' pre-tokenizer; "
                "tokenization may differ from the model's",
                stacklevel=4,
            )
            return "default"
        name = _PRE_ALIASES.get(pre)
        if name is None:
            warnings.warn(
                f"[tokenizer] unknown tokenizer.ggml.pre {pre!r}: using GPT-2's pre-tokenizer; "
                "tokenization may differ from the model's",
                stacklevel=4,
            )
            return "gpt2"
        return name

    def _piece(self, i: int, spm: bool) -> bytes:
        kind = self.token_types[i]
        text = self.tokens[i]
        if kind in (TokenType.CONTROL, TokenType.UNKNOWN, TokenType.USER_DEFINED):
            return text.encode("utf-8")
        if kind == TokenType.BYTE:
            m = _BYTE_TOKEN.fullmatch(text)
            return bytes([int(m.group(1), 16)]) if m else b""
        if kind != TokenType.NORMAL:  # unused and undefined tokens print nothing
            return b""
        if spm:
            return text.replace(SPACE_MARKER, " ").encode("utf-8")
        table = _byte_decoder()
        return b"".join(bytes([table[c]]) if c in table else c.encode("utf-8") for c in text)

    # -- construction from metadata -------------------------------------------------------------

    @classmethod
    def from_metadata(cls, meta: Mapping[str, object] | Callable[[str], object]) -> Tokenizer:
        """Build a tokenizer from GGUF metadata values.

        Args:
            meta: A mapping of full GGUF key (``"tokenizer.ggml.tokens"``) to its Python value
                (arrays as sequences), or a callable ``get(key)`` returning the value or ``None``
                (or raising ``KeyError``) when the key is absent.

        Returns:
            The tokenizer.

        Raises:
            TokenizerError: The metadata has no usable tokenizer, or the ``tokenizers`` library
                rejects it (a ``ValueError``; the library's own exception is the cause).
        """
        try:
            return cls._from_metadata(meta)
        except TokenizerError:
            raise
        except Exception as err:  # tokenizers raises bare Exception on a corrupt vocabulary
            text = str(err)
            if not text.startswith("[tokenizer]"):
                text = f"[tokenizer] the vocabulary is unusable ({type(err).__name__}: {text})"
            raise TokenizerError(text) from err

    @classmethod
    def _from_metadata(cls, meta: Mapping[str, object] | Callable[[str], object]) -> Tokenizer:
        get = _normalise_metadata(meta)
        n_tokens = len(_seq(get(_K + "tokens")) or ())

        def ident(key: str) -> int | None:
            value = get(_K + key)
            if value is None:
                return None
            token: int = int(value)  # type: ignore[call-overload]
            if n_tokens and not 0 <= token < n_tokens:
                # As llama.cpp: a special id outside the vocabulary is ignored, with a warning.
                warnings.warn(
                    f"[tokenizer] {_K + key} = {token} is outside the {n_tokens} tokens: ignored",
                    stacklevel=3,
                )
                return None
            return token

        def flag(key: str) -> bool | None:
            value = get(_K + key)
            return None if value is None else bool(value)

        model = get(_K + "model")
        if model is None:
            raise ValueError("[tokenizer] tokenizer.ggml.model is missing")
        tokens = _seq(get(_K + "tokens")) or []
        merges = _seq(get(_K + "merges"))
        pre = get(_K + "pre")
        return cls(
            _text(model),
            tokens if all(type(t) is str for t in tokens) else [_text(t) for t in tokens],
            token_types=_seq(get(_K + "token_type")),
            scores=_seq(get(_K + "scores")),
            merges=None if merges is None else [_text(m) for m in merges],
            pre=None if pre is None else _text(pre),
            bos_id=ident("bos_token_id"),
            eos_id=ident("eos_token_id"),
            unk_id=ident("unknown_token_id"),
            pad_id=ident("padding_token_id"),
            eot_id=ident("eot_token_id"),
            eom_id=ident("eom_token_id"),
            add_bos=flag("add_bos_token"),
            add_eos=flag("add_eos_token"),
            add_space_prefix=flag("add_space_prefix"),
        )

    @classmethod
    def from_config(cls, config: Config) -> Tokenizer:
        """Build the tokenizer of a loaded model from ``backend.config()``."""

        def get(key: str) -> object:
            item = config.raw(key)
            return None if item is None else item.value

        return cls.from_metadata(get)

    @classmethod
    def from_gguf(cls, path: str | os.PathLike[str]) -> Tokenizer:
        """Read the tokenizer metadata of a GGUF file (no tensor data is read).

        The file is opened and validated by :class:`mlplug.gguf.GGUFFile` (a malformed file is a
        ``GGUFError``; a FIFO or device is refused instead of blocking).
        """
        from mlplug.gguf import GGUFFile

        with GGUFFile.open(path) as file:
            values = {
                name: item.value
                for name, item in file.metadata.items()
                if name.startswith("tokenizer.")
            }
        return cls.from_metadata(values)

    # -- the API --------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """The number of token ids."""
        return len(self.tokens)

    def is_eog(self, token_id: int) -> bool:
        """Return whether ``token_id`` ends generation (EOS, end-of-turn and similar tokens)."""
        return token_id in self._eog

    def is_control(self, token_id: int) -> bool:
        """Return whether ``token_id`` is a control (or unknown) token, hidden when decoding."""
        return self.token_types[token_id] in (TokenType.CONTROL, TokenType.UNKNOWN)

    def encode(self, text: str, add_special: bool = True, parse_special: bool = True) -> list[int]:
        """Return the token ids of ``text``.

        Args:
            text: The text.
            add_special: Add BOS/EOS as the model's metadata asks (``add_bos``/``add_eos``).
            parse_special: Turn the text of control tokens (``"<|im_start|>"``…) into their ids;
                with ``False`` it is tokenized as plain text. User-defined tokens always match.
        """
        with self._lock:  # the model of a score-only vocabulary is set per text
            if self._per_text is not None:
                self._hf.model = self._per_text.model(text)
            self._hf.encode_special_tokens = not parse_special
            ids: list[int] = self._hf.encode(text, add_special_tokens=False).ids
        if add_special:
            if self.add_bos and self.bos_id is not None:
                ids.insert(0, self.bos_id)
            if self.add_eos and self.eos_id is not None:
                ids.append(self.eos_id)
        return ids

    def token_to_piece(self, token_id: int, special: bool = False) -> bytes:
        """Return the bytes that ``token_id`` stands for (llama.cpp's ``token_to_piece``).

        Control and unknown tokens give ``b""`` unless ``special``; a piece may be part of a
        multi-byte UTF-8 character.
        """
        if not 0 <= token_id < len(self.tokens):
            raise IndexError(f"[tokenizer] token id {token_id} outside 0..{len(self.tokens) - 1}")
        if not special and self.is_control(token_id):
            return b""
        piece = self._pieces.get(token_id)
        if piece is None:
            piece = self._pieces[token_id] = self._piece(token_id, self.model == "llama")
        return piece

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        """Return the text of ``ids``; invalid UTF-8 becomes U+FFFD.

        With ``add_space_prefix`` the leading space of the first piece is dropped, so that
        ``decode(encode(text)) == text``. Control tokens are left out when ``skip_special``.
        """
        stream = self.decode_stream(skip_special)
        return "".join(stream.step(i) for i in ids) + stream.flush()

    def decode_stream(self, skip_special: bool = True) -> DecodeStream:
        """Return a :class:`DecodeStream` that turns ids into text one at a time."""
        return DecodeStream(self, skip_special)

    def __repr__(self) -> str:
        return (
            f"Tokenizer(model={self.model!r}, vocab_size={self.vocab_size}, bos_id={self.bos_id}, "
            f"eos_id={self.eos_id})"
        )


class DecodeStream:
    """Incremental detokeniser for streaming generation.

    ``step(id)`` returns the text that became complete with this token: the bytes of a character
    split across tokens are held back until its last byte arrives. ``"".join(steps) + flush()``
    equals :meth:`Tokenizer.decode` of the same ids.
    """

    __slots__ = ("_decoder", "_skip_special", "_started", "_tok")

    def __init__(self, tokenizer: Tokenizer, skip_special: bool = True) -> None:
        self._tok = tokenizer
        self._skip_special = skip_special
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._started = False

    def step(self, token_id: int) -> str:
        """Feed one id; return the newly completed text (possibly ``""``)."""
        piece = self._tok.token_to_piece(token_id, special=not self._skip_special)
        if not piece:
            return ""
        if not self._started:
            self._started = True
            # SentencePiece text starts with the space ``encode`` prepended.
            if self._tok.add_space_prefix and piece.startswith(b" "):
                piece = piece[1:]
        return self._decoder.decode(piece)

    def flush(self) -> str:
        """Return what is left (U+FFFD for an unfinished character) and reset the UTF-8 state."""
        return self._decoder.decode(b"", final=True)


# -- building the ``tokenizers`` pipelines -------------------------------------------------


def _split_merges(merges: Sequence[str]) -> list[tuple[str, str]]:
    pairs = []
    for m in merges:
        # As llama.cpp: split at the first space after the first character.
        pos = m.find(" ", 1)
        if pos < 0:
            raise ValueError(f"[tokenizer] malformed merge {m!r} (expected 'left right')")
        pairs.append((m[:pos], m[pos + 1 :]))
    return pairs


def merges_from_scores(
    tokens: Sequence[str],
    scores: Sequence[float] | None,
    token_types: Sequence[int] | None = None,
) -> list[tuple[str, str]]:
    """Derive BPE merges for a SentencePiece vocabulary that only stores scores.

    SentencePiece (and llama.cpp) merge, at each step, the adjacent pair whose concatenation is the
    vocabulary piece with the highest score. The equivalent BPE merge list holds, for every normal
    piece, each split into two vocabulary pieces, ranked by the piece's score (highest first, ties
    by id, then by split position).

    Args:
        tokens: The vocabulary, indexed by id.
        scores: Per-id scores (``None``: all 0, so ids decide).
        token_types: Per-id :class:`TokenType` values; only normal pieces are merge results.

    Returns:
        ``(left, right)`` pairs, highest priority first.
    """
    ids = {t: i for i, t in enumerate(tokens)}
    ranked: list[tuple[float, int, int, str, str]] = []
    for i, piece in enumerate(tokens):
        if token_types is not None and token_types[i] != TokenType.NORMAL:
            continue
        score = float(scores[i]) if scores is not None else 0.0
        for k in range(1, len(piece)):
            left, right = piece[:k], piece[k:]
            if left in ids and right in ids:
                ranked.append((-score, i, k, left, right))
    ranked.sort()
    return [(left, right) for _, _, _, left, right in ranked]


def _special_tokens(tok: Tokenizer) -> tuple[list[str], list[str]]:
    special = [
        t
        for t, k in zip(tok.tokens, tok.token_types, strict=True)
        if k in (TokenType.CONTROL, TokenType.UNKNOWN)
    ]
    user = [
        t for t, k in zip(tok.tokens, tok.token_types, strict=True) if k == TokenType.USER_DEFINED
    ]
    return special, user


def _add_special(hf: tokenizers.Tokenizer, tok: Tokenizer) -> None:
    from tokenizers import AddedToken

    special, user = _special_tokens(tok)
    if special:
        hf.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
    if user:
        hf.add_tokens([AddedToken(t, special=False, normalized=False) for t in user])


def _vocab(tok: Tokenizer) -> dict[str, int]:
    # A text that occurs twice maps to its last id, as in llama.cpp.
    return {t: i for i, t in enumerate(tok.tokens)}


class _PerTextMerges:
    """The BPE model of a score-only SentencePiece vocabulary, built for each text encoded.

    A merge ``(l, r)`` can only apply to a text of which ``l + r`` is a substring, so encoding a
    text with the merges of the vocabulary pieces found in it (every split of each, ranked as
    :func:`merges_from_scores` ranks them) gives exactly the ids of the full merge list. Deriving
    the full list for a 262,144-piece vocabulary and handing its 513,511 merges to ``tokenizers``
    takes over a second of CPU; a prompt holds a few hundred pieces, found by looking up its
    substrings up to the longest piece's length. Written here because ``tokenizers`` has no BPE
    that merges by piece score.
    """

    __slots__ = ("base", "ids", "longest", "normal", "scores", "space_prefix", "unk")

    def __init__(self, tok: Tokenizer, scores: Sequence[float] | None) -> None:
        self.ids = _vocab(tok)
        self.scores = scores
        self.normal = [t == TokenType.NORMAL for t in tok.token_types]
        self.longest = max(map(len, tok.tokens))
        self.space_prefix = tok.add_space_prefix
        self.unk = tok.tokens[tok.unk_id] if tok.unk_id is not None else None
        # Always in the model: byte-fallback pieces, the unknown piece and special tokens.
        self.base = {
            t: self.ids[t]
            for t, k in zip(tok.tokens, tok.token_types, strict=True)
            if k not in (TokenType.NORMAL, TokenType.UNUSED, TokenType.UNDEFINED)
        }

    def _pieces(self, text: str) -> dict[str, int]:
        norm = text.replace(" ", SPACE_MARKER)
        found: dict[str, int] = {}
        get, longest = self.ids.get, self.longest

        def look(piece: str) -> None:
            if (t := get(piece)) is not None:
                found[piece] = t

        look(SPACE_MARKER)
        for i in range(len(norm)):
            for j in range(i + 1, min(len(norm), i + longest) + 1):
                look(norm[i:j])
            if self.space_prefix:
                # The normalizer prepends the marker to every segment between special tokens:
                # try it before every position too (a superset of what can be formed).
                tail = SPACE_MARKER + norm[i : i + longest - 1]
                for j in range(2, len(tail) + 1):
                    look(tail[:j])
        return found

    def model(self, text: str) -> tokenizers.models.BPE:
        """Return the BPE model that encodes ``text`` as the full merge list would."""
        from tokenizers.models import BPE

        found = self._pieces(text)
        ranked: list[tuple[float, int, int, str, str]] = []
        for piece, i in found.items():
            if len(piece) < 2 or not self.normal[i]:
                continue
            score = -float(self.scores[i]) if self.scores is not None else 0.0
            for k in range(1, len(piece)):
                left, right = piece[:k], piece[k:]
                if left in found and right in found:
                    ranked.append((score, i, k, left, right))
        ranked.sort()
        vocab = {**self.base, **found}
        merges = [(left, right) for _, _, _, left, right in ranked]
        return BPE(vocab, merges, unk_token=self.unk, fuse_unk=True, byte_fallback=True)


def _build_spm(
    tok: Tokenizer, merges: list[tuple[str, str]], vocab: dict[str, int] | None = None
) -> tokenizers.Tokenizer:
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, normalizers
    from tokenizers.models import BPE

    unk = tok.tokens[tok.unk_id] if tok.unk_id is not None else None
    if vocab is None:
        vocab = _vocab(tok)
    hf = HFTokenizer(BPE(vocab, merges, unk_token=unk, fuse_unk=True, byte_fallback=True))
    steps: list[normalizers.Normalizer] = [normalizers.Replace(" ", SPACE_MARKER)]
    if tok.add_space_prefix:
        steps.insert(0, normalizers.Prepend(SPACE_MARKER))
    hf.normalizer = normalizers.Sequence(steps)
    # For users of the HF object only; Tokenizer.decode works on bytes.
    hf.decoder = decoders.Sequence(
        [decoders.Replace(SPACE_MARKER, " "), decoders.ByteFallback(), decoders.Fuse()]
        + ([decoders.Strip(" ", 1, 0)] if tok.add_space_prefix else [])
    )
    _add_special(hf, tok)
    return hf


def _build_bpe(tok: Tokenizer, merges: list[tuple[str, str]], pre: str) -> tokenizers.Tokenizer:
    from tokenizers import Regex, decoders, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers.models import BPE

    hf = HFTokenizer(BPE(_vocab(tok), merges, ignore_merges=pre in _IGNORE_MERGES))
    hf.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in _PRE[pre]]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    hf.decoder = decoders.ByteLevel()
    _add_special(hf, tok)
    return hf


@cache
def _byte_decoder() -> dict[str, int]:
    """Return GPT-2's byte-level alphabet, character → byte.

    Printable Latin-1 bytes stand for themselves; the others are shifted to U+0100 onward in
    byte order (the mapping every byte-level BPE vocabulary is written in).
    """
    keep = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {chr(b): b for b in keep}
    shifted = 0
    for b in range(256):
        if b not in keep:
            table[chr(0x100 + shifted)] = b
            shifted += 1
    return table
