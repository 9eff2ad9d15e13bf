"""``mlplug run``, text generation and the shipped demo model."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

import mlplug
from mlplug.cli import main

pytest.importorskip("mlplug_cpu")

from mlplug._run import demo_model_path
from mlplug.generate import GenerationStats, generate, sample
from mlplug.models.llama import Llama
from mlplug.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[2]


def test_demo_model_is_the_output_of_its_script(tmp_path: Path) -> None:
    # The committed file is exactly what scripts/make_demo_model.py writes (deterministic).
    spec = importlib.util.spec_from_file_location(
        "make_demo_model", ROOT / "scripts" / "make_demo_model.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_demo_model"] = module
    try:
        spec.loader.exec_module(module)
        fresh = module.write(tmp_path / "demo.gguf")
    finally:
        del sys.modules["make_demo_model"]
    with demo_model_path() as shipped:
        assert fresh.read_bytes() == shipped.read_bytes()


def test_demo_model_tokenizer_round_trips() -> None:
    with demo_model_path() as path:
        tok = Tokenizer.from_gguf(path)
    text = "Hello, world! The clockmaker wound 100 clocks: ünïcödé 😀"
    ids = tok.encode(text)
    assert ids[0] == tok.bos_id
    assert tok.decode(ids) == text


def test_generate_is_greedy_and_resumable() -> None:
    with demo_model_path() as path:
        backend = mlplug.new_backend(str(path), mlplug.BackendParams(), backend="cpu")
    try:
        backend.load()
        model = Llama(backend)
        tok = Tokenizer.from_config(backend.config())
        prompt = tok.encode("Once upon a time")
        cache = model.new_cache(capacity=32, max_batch=8)
        stats = GenerationStats()
        out = list(generate(model, cache, prompt, 6, n_batch=3, stats=stats))
        cache.close()
        assert len(out) == 6
        assert stats.prompt_tokens == len(prompt) and stats.decode_tokens == 5
        assert stats.generated == 6
        # The same continuation token by token through a fresh cache and plain forward calls.
        from mlplug.models.llama import Batch

        cache = model.new_cache(capacity=32, max_batch=8)
        logits = model.forward(cache, Batch.single(prompt))
        tokens = list(prompt)
        for _ in range(6):
            nxt = int(np.argmax(logits[-1]))
            tokens.append(nxt)
            logits = model.forward(cache, Batch.single([nxt], start=len(tokens) - 1))
        cache.close()
        assert tokens[len(prompt) :] == out
    finally:
        backend.close()


def test_sample() -> None:
    rng = np.random.default_rng(0)
    logits = np.array([0.0, 3.0, 1.0, 3.0], dtype=np.float32)
    assert sample(logits, 0.0, rng) == 1
    draws = {sample(logits, 1.0, rng) for _ in range(200)}
    assert draws <= {0, 1, 2, 3} and {1, 3} <= draws
    assert {sample(logits, 1e-4, rng) for _ in range(50)} <= {1, 3}


def test_run_demo(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(
            [
                "run",
                "-p",
                "Hello",
                "-n",
                "5",
                "--backend",
                "cpu",
                "--seed",
                "1",
                "--temperature",
                "0.8",
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    out = captured.out
    assert "demo model" in captured.err and "random weights" in captured.err
    lines = out.splitlines()
    assert lines[0].split() == ["device", "weights", "kv", "cache", "graph", "total"]
    assert any(line.startswith("CPU") for line in lines)
    assert "\nHello" in out
    assert "prompt: " in out and "tokens/s" in out
    assert "decode: 4 tokens" in out


def test_run_model_file_on_simulated_gpus(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MLPLUG_CPU_SIMULATED_GPUS", "1:64MiB")
    with demo_model_path() as path:
        rc = main(
            [
                "run",
                str(path),
                "-p",
                "The clock",
                "-n",
                "3",
                "--backend",
                "cpu",
                "--num-gpu-layers",
                "99",
                "--flash-attention",
            ]
        )
    assert rc == 0
    out = capsys.readouterr().out
    assert any(line.startswith("SIM0") for line in out.splitlines())
    assert "decode: 2 tokens" in out


def test_run_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(tmp_path / "nope.gguf"), "--backend", "cpu"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_run_reports_an_unsupported_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mlplug_conformance import synth

    path = synth.write_llama_gguf(
        tmp_path / "m.gguf",
        n_layers=1,
        n_embd=32,
        n_head=2,
        n_head_kv=1,
        n_ff=32,
        n_vocab=8,
        arch="gpt2",
    )
    assert main(["run", str(path), "--backend", "cpu"]) == 1
    assert "unsupported architecture 'gpt2'" in capsys.readouterr().err


def test_run_reports_out_of_memory(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MLPLUG_CPU_SIMULATED_GPUS", "1:1MiB")
    assert main(["run", "--backend", "cpu", "--num-gpu-layers", "99"]) == 1
    captured = capsys.readouterr()
    assert "(failed)" in captured.out and "insufficient memory" in captured.err


def test_sampling_filters() -> None:
    from mlplug.generate import Sampler, Sampling

    logits = np.log(np.array([0.05, 0.5, 0.3, 0.15], dtype=np.float64))

    def draws(params: Sampling, n: int = 300, history=()) -> set[int]:
        sampler = Sampler(params, history)
        return {sampler(logits) for _ in range(n)}

    assert draws(Sampling(temperature=1.0, seed=1)) == {0, 1, 2, 3}
    assert draws(Sampling(temperature=1.0, top_k=2, seed=1)) == {1, 2}
    # top_p: 0.5 + 0.3 reaches 0.75; min_p: tokens at least 0.25 x the best (0.125).
    assert draws(Sampling(temperature=1.0, top_p=0.75, seed=1)) == {1, 2}
    assert draws(Sampling(temperature=1.0, top_p=0.5, seed=1)) == {1}
    assert draws(Sampling(temperature=1.0, min_p=0.25, seed=1)) == {1, 2, 3}
    # Greedy after the repeat penalty: the seen token's (negative) logit is multiplied by the
    # penalty, so the next best wins.
    assert draws(Sampling(), 3) == {1}
    assert draws(Sampling(repeat_penalty=2.0), 3, history=[1]) == {2}
    # The penalty only sees the last repeat_last_n tokens.
    assert draws(Sampling(repeat_penalty=2.0, repeat_last_n=1), 3, history=[1, 0]) == {1}
    # The same seed gives the same draws.
    a, b = Sampler(Sampling(temperature=1.0, seed=5)), Sampler(Sampling(temperature=1.0, seed=5))
    assert [a(logits) for _ in range(20)] == [b(logits) for _ in range(20)]
    with pytest.raises(ValueError, match="top_p"):
        Sampling(top_p=0.0)


def test_run_stops_at_end_of_generation(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Make every token an end-of-generation token: one token is generated, then it stops.
    monkeypatch.setattr(Tokenizer, "is_eog", lambda self, token: True)
    assert main(["run", "-p", "Hello", "-n", "8", "--backend", "cpu"]) == 0
    assert "decode: 0 tokens" in capsys.readouterr().out


def test_run_checks_the_architecture_before_allocating(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # With a 1 KiB CPU, allocating the weights would fail with "insufficient memory": the
    # architecture error comes first, so nothing was allocated.
    from mlplug_conformance import synth

    path = synth.write_llama_gguf(
        tmp_path / "m.gguf", n_layers=1, n_embd=64, n_head=2, n_head_kv=1, n_ff=64, n_vocab=8,
        arch="falcon",
    )  # fmt: skip
    monkeypatch.setenv("MLPLUG_CPU_MEMORY_LIMIT", "1KiB")
    assert main(["run", str(path), "--backend", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "unsupported architecture 'falcon'" in err and str(path) in err
    assert "gemma3" in err and "insufficient memory" not in err
    assert main(["info", str(path), "--backend", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "unsupported architecture 'falcon'" in err and "does not fit" not in err
