"""Seeded corruption of a small, complete GGUF model, run through the whole pipeline.

Used by ``test_gguf_fuzz.py`` in a child process (``python gguf_fuzz.py SEED COUNT DIR``) so that
a hang, a crash or a runaway allocation is caught by the parent instead of taking pytest down.
For each variant the child writes the corrupted file, then opens it, loads it, builds the model
and the tokenizer and generates two tokens. Every outcome must be success or an ``MlplugError``;
the child prints one JSON line per variant: what was corrupted, the outcome, the seconds taken.
"""

from __future__ import annotations

import json
import random
import resource
import struct
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
from gguf import GGUFReader, GGUFValueType

U32 = [0, 1, 2, 3, 7, 31, 32, 255, 256, 65535, 2**31 - 1, 2**31, 2**32 - 1]
U64 = [*U32, 2**32, 2**40, 2**62, 2**63 - 1, 2**63, 2**64 - 1]
_TENSOR_PARTS = ["name_len", "name", "n_dims", "dims", "type", "offset"]
F32 = [float("nan"), float("inf"), -float("inf"), 0.0, -1.0, 1e38, 1e-45, 3.0e9]


def base_model(path: Path) -> Path:
    """Write a 2-layer llama with a byte-level gpt2 tokenizer (about 60 KB)."""
    from mlplug_conformance import synth

    alphabet = [chr(c) for c in range(33, 127)] + ["Ġ", "Ċ"]
    merges = ["H i", "Ġ t", "h e", "Ġt he"]
    tokens = ["<|endoftext|>", *alphabet, "Hi", "Ġt", "he", "Ġthe"]
    s, arr = GGUFValueType.STRING, GGUFValueType.ARRAY
    meta = {
        "tokenizer.ggml.model": (s, "gpt2"),
        "tokenizer.ggml.pre": (s, "gpt-2"),
        "tokenizer.ggml.tokens": (arr, tokens, s),
        "tokenizer.ggml.merges": (arr, merges, s),
        "tokenizer.ggml.token_type": (arr, [3] + [1] * (len(tokens) - 1), GGUFValueType.INT32),
        "tokenizer.ggml.bos_token_id": (GGUFValueType.UINT32, 0),
        "tokenizer.ggml.eos_token_id": (GGUFValueType.UINT32, 0),
    }
    return synth.write_llama_gguf(
        path,
        n_layers=2,
        n_embd=32,
        n_head=2,
        n_head_kv=1,
        n_ff=64,
        n_vocab=len(tokens),
        context_length=64,
        extra_metadata=meta,
        extra_tensors=[("rope_freqs.weight", np.ones(8, np.float32), _f32())],
    )


def _f32():  # type: ignore[no-untyped-def]
    from mlplug.dtype import DType

    return DType.F32


class Layout:
    """Byte positions of the header, every metadata part and every tensor-info part."""

    def __init__(self, data: bytes, path: Path) -> None:
        reader = GGUFReader(path)
        self.size = len(data)
        self.data_offset = int(reader.data_offset)
        # (what, offset, width, kind) for every number part; kind: u32, u64, i32, f32, bytes.
        self.kv: list[tuple[str, int, int, str]] = []
        self.tensor: list[tuple[str, int, int, str]] = []
        self.values: list[tuple[str, int, int, str]] = []  # scalar metadata values
        for name, field in reader.fields.items():
            offset = field.offset
            for i, part in enumerate(field.parts):
                width = part.nbytes
                kind = _kind(part)
                target = self.kv
                if name.startswith("GGUF."):
                    what = name
                else:
                    what = f"{name}[part {i}]"
                    if i >= 3 and len(field.parts) == 4 and kind != "bytes":
                        self.values.append((name, offset, width, kind))
                target.append((what, offset, width, kind))
                offset += width
        for t in reader.tensors:
            offset = t.field.offset
            for i, part in enumerate(t.field.parts):
                what = (
                    f"tensor {t.name} "
                    + ["name_len", "name", "n_dims", "dims", "type", "offset"][i]
                )
                if i == 3:
                    for d in range(len(part)):
                        self.tensor.append((f"{what}[{d}]", offset + 8 * d, 8, "u64"))
                else:
                    self.tensor.append((what, offset, part.nbytes, _kind(part)))
                offset += part.nbytes


def _kind(part: np.ndarray) -> str:
    return {
        np.dtype(np.uint32): "u32",
        np.dtype(np.uint64): "u64",
        np.dtype(np.int32): "i32",
        np.dtype(np.float32): "f32",
        np.dtype(np.uint8): "bytes",
    }.get(part.dtype, "bytes")


def _value(rng: random.Random, kind: str, width: int) -> bytes:
    if kind == "u32":
        return struct.pack("<I", rng.choice(U32) if rng.random() < 0.8 else rng.getrandbits(32))
    if kind == "i32":
        return struct.pack("<i", rng.choice([-1, -(2**31), 0, 2**31 - 1, 1, 1000]))
    if kind == "u64":
        return struct.pack("<Q", rng.choice(U64) if rng.random() < 0.8 else rng.getrandbits(64))
    if kind == "f32":
        return struct.pack("<f", rng.choice(F32))
    return bytes(rng.getrandbits(8) for _ in range(width))


def mutate(rng: random.Random, base: bytes, layout: Layout) -> tuple[str, bytes]:
    """Return a description and the corrupted bytes of one variant."""
    data = bytearray(base)

    def put(entry: tuple[str, int, int, str]) -> str:
        what, offset, width, kind = entry
        value = _value(rng, kind, width)
        data[offset : offset + len(value)] = value[:width]
        return f"{what} <- {value.hex()}"

    kind = rng.choice(["header", "kv", "value", "value", "tensor", "tensor", "data", "cut", "flip"])
    if kind == "header":
        what = put(rng.choice(layout.kv[:4]))
    elif kind == "kv":
        what = put(rng.choice(layout.kv[4:]))
    elif kind == "value":
        what = put(rng.choice(layout.values))
    elif kind == "tensor":
        what = put(rng.choice(layout.tensor))
    elif kind == "data":
        start = rng.randrange(layout.data_offset, layout.size)
        n = rng.randrange(1, 4096)
        fill = rng.choice([b"\xff", b"\x00", b"\x7f\x80"])
        data[start : start + n] = (fill * n)[: len(data[start : start + n])]
        what = f"data [{start}, {start + n}) <- {fill.hex()}"
    elif kind == "cut":
        end = rng.randrange(0, layout.size)
        del data[end:]
        what = f"truncated to {end}"
    else:
        spots = [rng.randrange(layout.size) for _ in range(rng.randrange(1, 9))]
        for spot in spots:
            data[spot] ^= 1 << rng.randrange(8)
        what = f"bits flipped at {spots}"
    return f"{kind}: {what}", bytes(data)


def pipeline(path: Path) -> str:
    """Open, load, build model and tokenizer, generate 2 tokens; return what happened."""
    import mlplug
    from mlplug.generate import generate
    from mlplug.models import check_file, from_backend
    from mlplug.tokenizer import Tokenizer

    check_file(path)
    backend = mlplug.new_backend(str(path), mlplug.BackendParams(), backend="cpu")
    cache = None
    try:
        backend.load()
        model = from_backend(backend)
        tokenizer = Tokenizer.from_config(backend.config())
        prompt = tokenizer.encode("Hi the")
        if not prompt:
            return "ran (empty prompt)"
        cache = model.new_cache(capacity=len(prompt) + 2, max_batch=len(prompt))
        tokens = list(generate(model, cache, prompt, 2))
        return f"ran {len(tokens)} tokens"
    finally:
        if cache is not None:
            cache.close()
        backend.close()


def main() -> int:
    seed, count, folder = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    limit = 3 << 30  # a runaway allocation fails here instead of exhausting the machine
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    warnings.simplefilter("ignore")  # tokenizer fallbacks warn; outcomes are what is checked
    import mlplug

    base_path = base_model(folder / "base.gguf")
    base = base_path.read_bytes()
    layout = Layout(base, base_path)
    rng = random.Random(seed)
    target = folder / "variant.gguf"
    run: Callable[[Path], str] = pipeline
    print(json.dumps({"base": run(base_path)}), flush=True)
    for i in range(count):
        what, data = mutate(rng, base, layout)
        target.write_bytes(data)
        start = time.perf_counter()
        try:
            outcome, ok = run(target), True
        except mlplug.MlplugError as err:
            outcome, ok = f"{type(err).__name__}: {err}", True
        except BaseException as err:  # anything else is the failure this test looks for
            outcome, ok = f"{type(err).__name__}: {err}", False
        seconds = time.perf_counter() - start
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        line = {"i": i, "what": what, "ok": ok, "outcome": outcome[:300], "s": seconds, "rss": rss}
        print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
