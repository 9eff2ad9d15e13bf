"""Write the demo model that ``mlplug run`` uses when no model file is given.

The demo is a small llama-architecture GGUF file with **random weights** and a real tokenizer:

* the tokenizer is a GPT-2-style byte-level BPE, trained here with the ``tokenizers`` BPE trainer
  on the text below, so any prompt encodes and every output decodes;
* the weights are drawn from a seeded numpy generator, so the model prints gibberish by design —
  it proves that the whole pipeline (load, placement, KV cache, attention, sampling, streaming
  detokenisation) runs, not that it knows anything.

The output is deterministic: running the script again writes the same bytes (checked by
``core/tests/test_demo_model.py``). It needs ``tokenizers`` (a dev dependency); the generated
file, ``core/src/mlplug/data/demo.gguf``, is committed and shipped as package data.

Usage: ``python scripts/make_demo_model.py [OUTPUT]``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType, GGUFWriter
from gguf import quants as gq

DEFAULT_OUTPUT = Path(__file__).resolve().parents[1] / "core/src/mlplug/data/demo.gguf"

SEED = 20240611
N_LAYER = 4
N_EMBD = 256
N_HEAD = 4
N_HEAD_KV = 2
N_FF = 512
CONTEXT_LENGTH = 1024
VOCAB_TARGET = 1024
WEIGHT_TYPE = GGMLQuantizationType.Q8_0
EOS = "<|endoftext|>"

# Text the tokenizer learns its merges from (written for this script).
CORPUS = """\
Hello! This is the demo model of mlplug. It has random weights, so what it writes is gibberish,
but every step that a real model needs runs here: the GGUF file is read and placed on the
devices, the weights are loaded with a progress bar, the prompt is split into tokens, the tokens
go through the layers in one batch, the keys and values land in the cache, and then new tokens
come one at a time, each one read back from the cache, turned into text and printed at once.

A tensor is a block of numbers with up to four dimensions. Dimension zero is the fastest: its
elements sit next to each other in memory. A matrix with four thousand inputs and eleven thousand
outputs stores one row of four thousand values for every output. Views share storage with their
source; every other operation makes a new tensor. Nothing is computed until the graph runs.

The cache holds, for every layer, the keys and the values of the tokens seen so far. Each cell
holds one position and the sequences that use it. The mask hides the future from every token,
and the cells of other sequences too, so that many sequences can share one batch.

Backends are plugins. The cpu plugin runs on numpy; the cuda plugin on cupy; the metal plugin on
mlx. A plugin says whether it can run here, and if not, why not and what to install. When a
device has too little memory, the backend says how much every layer needed and where it failed,
and the caller can try again with fewer layers on the GPU, a smaller cache or a smaller batch.

Once upon a time, in a small town by the sea, there lived an old clockmaker who kept a hundred
clocks on the walls of his shop. Every morning he wound them one by one, and every evening he
listened to them strike the hour together. The children of the town would stop at his window to
watch the pendulums swing, and he would wave at them and smile. One winter the sea froze, and the
clocks all stopped at the same minute; the clockmaker opened each of them, cleaned the gears,
and by spring the whole shop was ticking again.

The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs. How
vexingly quick daft zebras jump! The five boxing wizards jump quickly. Sphinx of black quartz,
judge my vow. 0 1 2 3 4 5 6 7 8 9 10 100 1000 3.14159 2.71828 42 = 6 * 7; x + y - z / 2.
def add(a, b):
    return a + b
for i in range(10):
    print(i, add(i, i))
"""


def train_tokenizer() -> tuple[list[str], list[str], int, list[int]]:
    """Train the byte-level BPE.

    Returns:
        The tokens by id, the merges, the EOS id and the ids that are not text on their own
        (EOS, and bytes of multi-byte UTF-8 characters).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    # GPT-2's split regex and byte-to-character mapping: what ``tokenizer.ggml.pre = "gpt-2"``
    # means to mlplug's tokenizer.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_TARGET,
        min_frequency=2,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS.splitlines(keepends=True), trainer=trainer)
    vocab = tok.get_vocab()
    tokens = [""] * len(vocab)
    for text, i in vocab.items():
        tokens[i] = text
    merges = [
        m if isinstance(m, str) else " ".join(m)
        for m in json.loads(tok.to_str())["model"]["merges"]
    ]
    silent = [i for i in range(len(tokens)) if i == vocab[EOS] or "\ufffd" in tok.decode([i])]
    return tokens, merges, vocab[EOS], silent


def _matrix(rng: np.random.Generator, n_out: int, n_in: int, scale: float) -> np.ndarray:
    # numpy (n_out, n_in) is the ggml [n_in, n_out] weight of a linear layer.
    values = rng.standard_normal((n_out, n_in), dtype=np.float32) * np.float32(scale)
    return gq.quantize(values, WEIGHT_TYPE)


def _norm(rng: np.random.Generator) -> np.ndarray:
    return (1.0 + 0.1 * rng.standard_normal(N_EMBD, dtype=np.float32)).astype(np.float32)


def write(path: Path) -> Path:
    """Write the demo model to ``path``; return it."""
    tokens, merges, eos, silent = train_tokenizer()
    n_vocab = len(tokens)
    head_dim = N_EMBD // N_HEAD
    n_embd_kv = head_dim * N_HEAD_KV
    rng = np.random.default_rng(SEED)

    path.parent.mkdir(parents=True, exist_ok=True)
    w = GGUFWriter(path, "llama")
    w.add_name("mlplug demo (random weights)")
    w.add_description(
        "Random-weight llama model shipped with mlplug to demonstrate the pipeline; "
        "its output is gibberish by design. Generated by scripts/make_demo_model.py."
    )
    w.add_block_count(N_LAYER)
    w.add_context_length(CONTEXT_LENGTH)
    w.add_embedding_length(N_EMBD)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD_KV)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(head_dim)
    w.add_vocab_size(n_vocab)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types([3 if t == EOS else 1 for t in tokens])  # control / normal
    w.add_token_merges(merges)
    w.add_bos_token_id(eos)
    w.add_eos_token_id(eos)
    w.add_add_bos_token(True)
    w.add_key_value("tokenizer.ggml.add_eos_token", False, GGUFValueType.BOOL)

    embd = rng.standard_normal((n_vocab, N_EMBD), dtype=np.float32)
    w.add_tensor("token_embd.weight", gq.quantize(embd, WEIGHT_TYPE), raw_dtype=WEIGHT_TYPE)
    s_embd, s_ff = N_EMBD**-0.5, N_FF**-0.5
    for i in range(N_LAYER):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", _norm(rng))
        for name, n_out in (
            ("attn_q", N_EMBD),
            ("attn_k", n_embd_kv),
            ("attn_v", n_embd_kv),
            ("attn_output", N_EMBD),
        ):
            w.add_tensor(
                p + name + ".weight", _matrix(rng, n_out, N_EMBD, s_embd), raw_dtype=WEIGHT_TYPE
            )
        w.add_tensor(p + "ffn_norm.weight", _norm(rng))
        for name in ("ffn_gate", "ffn_up"):
            w.add_tensor(
                p + name + ".weight", _matrix(rng, N_FF, N_EMBD, s_embd), raw_dtype=WEIGHT_TYPE
            )
        w.add_tensor(p + "ffn_down.weight", _matrix(rng, N_EMBD, N_FF, s_ff), raw_dtype=WEIGHT_TYPE)
    w.add_tensor("output_norm.weight", _norm(rng))
    # Untied output with zero rows for EOS (with random weights it would end the demo after a
    # random handful of tokens) and for the lone bytes of multi-byte characters (which would
    # print as U+FFFD): the demo's gibberish is made of the tokenizer's words.
    out = rng.standard_normal((n_vocab, N_EMBD), dtype=np.float32) * np.float32(s_embd * 4)
    out[silent] = 0.0
    w.add_tensor("output.weight", gq.quantize(out, WEIGHT_TYPE), raw_dtype=WEIGHT_TYPE)
    try:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
    finally:
        w.close()
    return path


def main(argv: list[str]) -> int:
    """Write the demo model to ``argv[0]`` or the package's data folder."""
    path = write(Path(argv[0]) if argv else DEFAULT_OUTPUT)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.2f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
