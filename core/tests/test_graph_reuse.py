"""``Decoder.forward`` keeps the graph of a small batch and refills its inputs (issue #10.4).

Every check compares the kept graph's logits with those of a graph built afresh for the same
batch (``Decoder.build`` on a new context, over a second cache given the same batches), bit for
bit: both run the same plan, so any difference is a stale or missing input. The batches cross a
boundary of the cache's padding (the history view grows: a new structure) and run with flash
attention on and off, on llama (one cache, normal RoPE) and gemma3 (a local and a global cache,
two RoPE tables).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import mlplug
from mlplug.context import Context
from mlplug.dtype import DType
from mlplug.errors import ContextError
from mlplug.tensor import Tensor

synth = pytest.importorskip("mlplug_conformance.synth")
pytest.importorskip("mlplug_cpu")

from mlplug.models import from_backend  # noqa: E402
from mlplug.nn import Batch, Decoder  # noqa: E402
from test_models import F32_TYPES  # noqa: E402
from test_models import write_model as write_gemma3  # noqa: E402

# Padding of the history: 32 without flash attention, 256 with it (SEMANTICS §8.1).
PADDING = {False: 32, True: 256}


def _llama(path: Path) -> Path:
    return synth.write_llama_gguf(
        path, n_layers=2, n_embd=64, n_head=4, n_head_kv=2, n_ff=128, n_vocab=97, seed=5
    )


@pytest.fixture(params=["llama", "gemma3"])
def model_file(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    if request.param == "llama":
        return _llama(tmp_path / "llama.gguf")
    return write_gemma3(tmp_path / "gemma3.gguf", "gemma3", F32_TYPES)


def _open(path: Path, flash: bool) -> tuple[mlplug.Backend, Decoder]:
    backend = mlplug.new_backend(
        str(path), mlplug.BackendParams(flash_attention=flash), backend="cpu"
    )
    backend.load()
    return backend, from_backend(backend)


def _fresh(model: Decoder, cache: object, batch: Batch) -> np.ndarray:
    """The logits of a graph built for this call alone (what forward did before it kept any)."""
    ctx = model.backend.new_context()
    try:
        logits = model.build(ctx, cache, batch)
        ctx.forward(logits).compute(logits)
        return logits.numpy().reshape(-1, model.n_vocab)
    finally:
        ctx.close()


def _tokens(n: int, seed: int) -> list[int]:
    return [int(t) for t in np.random.default_rng(seed).integers(0, 67, n)]


class Counter:
    """Counts the tensors created (graph nodes and input buffers) while it is installed."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.nodes = 0
        self.tensors = 0
        record, init = Context._record, Tensor.__init__

        def counted_record(ctx: Context, *args: object, **kwargs: object) -> Tensor:
            self.nodes += 1
            return record(ctx, *args, **kwargs)  # type: ignore[arg-type]

        def counted_init(t: Tensor, *args: object, **kwargs: object) -> None:
            self.tensors += 1
            init(t, *args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(Context, "_record", counted_record)
        monkeypatch.setattr(Tensor, "__init__", counted_init)

    def reset(self) -> None:
        self.nodes = self.tensors = 0


@pytest.mark.parametrize("flash", [False, True], ids=["no_fa", "fa"])
def test_kept_graph_equals_a_fresh_graph_across_the_padding(model_file: Path, flash: bool) -> None:
    backend, model = _open(model_file, flash)
    pad = PADDING[flash]
    cap = pad + 16
    kept_cache = model.new_cache(capacity=cap, max_batch=pad, dtype=DType.F32)
    fresh_cache = model.new_cache(capacity=cap, max_batch=pad, dtype=DType.F32)
    try:
        # A prompt too large to keep, then single tokens up to and past the padding boundary.
        start = pad - 5
        prompt = Batch.single(_tokens(start, 1), 0)
        np.testing.assert_array_equal(
            model.forward(kept_cache, prompt), _fresh(model, fresh_cache, prompt)
        )
        for i, tok in enumerate(_tokens(10, 2)):
            batch = Batch.single([tok], start + i)
            got = model.forward(kept_cache, batch)
            want = _fresh(model, fresh_cache, batch)
            assert got.shape == (1, model.n_vocab)
            np.testing.assert_array_equal(got, want, err_msg=f"position {start + i}")
        assert kept_cache.layout() == fresh_cache.layout()
    finally:
        kept_cache.close()
        fresh_cache.close()
        backend.close()


@pytest.mark.parametrize("flash", [False, True], ids=["no_fa", "fa"])
def test_batch_of_two_sequences_as_the_server_decodes(model_file: Path, flash: bool) -> None:
    # The server's decode step: one token of each active sequence, outputs in any order.
    backend, model = _open(model_file, flash)
    kw = {"capacity": 48, "max_sequences": 2, "max_batch": 16, "dtype": DType.F32}
    kept_cache, fresh_cache = model.new_cache(**kw), model.new_cache(**kw)
    try:
        a, b = _tokens(12, 3), _tokens(9, 4)
        for batch in (Batch.single(a[:7], 0, 0), Batch.single(b[:4], 0, 1)):
            np.testing.assert_array_equal(
                model.forward(kept_cache, batch), _fresh(model, fresh_cache, batch)
            )
        for i in range(5):
            batch = Batch((a[7 + i], b[4 + i]), (7 + i, 4 + i), (0, 1), (1, 0))
            got = model.forward(kept_cache, batch)
            assert got.shape == (2, model.n_vocab)
            np.testing.assert_array_equal(got, _fresh(model, fresh_cache, batch))
    finally:
        kept_cache.close()
        fresh_cache.close()
        backend.close()


def test_a_second_decode_step_builds_nothing(
    model_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend, model = _open(model_file, flash=False)
    cache = model.new_cache(capacity=64, max_batch=16)
    try:
        model.forward(cache, Batch.single(_tokens(4, 5), 0))
        count = Counter(monkeypatch)
        model.forward(cache, Batch.single([7], 4))  # a new structure: built
        assert count.nodes > 10 * len(model.blocks)
        for pos in range(5, 12):
            count.reset()
            model.forward(cache, Batch.single([7 + pos], pos))
            assert (count.nodes, count.tensors) == (0, 0), f"position {pos}"
    finally:
        cache.close()
        backend.close()


def test_truncating_the_cache_reuses_the_graph_with_the_new_history(model_file: Path) -> None:
    backend, model = _open(model_file, flash=False)
    kept_cache = model.new_cache(capacity=64, max_batch=16, dtype=DType.F32)
    fresh_cache = model.new_cache(capacity=64, max_batch=16, dtype=DType.F32)
    try:
        tokens = _tokens(20, 6)

        def both(batch: Batch) -> None:
            np.testing.assert_array_equal(
                model.forward(kept_cache, batch), _fresh(model, fresh_cache, batch)
            )

        both(Batch.single(tokens[:8], 0))
        for pos in range(8, 14):
            both(Batch.single([tokens[pos]], pos))
        # Drop positions 10.. and decode other tokens there: the same structure (the range
        # still ends in the first 32 cells), so the kept graph runs on a changed history.
        for cache in (kept_cache, fresh_cache):
            cache.remove(0, 10)
        for pos in range(10, 16):
            both(Batch.single([tokens[pos] + 1], pos))
        # Clear it: the history starts again at cell 0.
        for cache in (kept_cache, fresh_cache):
            cache.remove(0, 0)
        both(Batch.single(tokens[:3], 0))
        for pos in range(3, 6):
            both(Batch.single([tokens[pos]], pos))
    finally:
        kept_cache.close()
        fresh_cache.close()
        backend.close()


def test_closed_cache_or_context_is_not_reused(model_file: Path) -> None:
    backend, model = _open(model_file, flash=False)
    try:
        cache = model.new_cache(capacity=32, max_batch=8, dtype=DType.F32)
        model.forward(cache, Batch.single([1, 2, 3], 0))
        model.forward(cache, Batch.single([4], 3))
        cache.close()
        with pytest.raises(ContextError):
            model.forward(cache, Batch.single([5], 4))
        # Another cache of the same shape gets its own graph, not the closed cache's.
        other = model.new_cache(capacity=32, max_batch=8, dtype=DType.F32)
        fresh = model.new_cache(capacity=32, max_batch=8, dtype=DType.F32)
        for batch in (Batch.single([1, 2, 3], 0), Batch.single([4], 3)):
            np.testing.assert_array_equal(model.forward(other, batch), _fresh(model, fresh, batch))
        # A kept graph whose context was closed under it is built again.
        model.close_graphs()
        batch = Batch.single([9], 4)
        np.testing.assert_array_equal(model.forward(other, batch), _fresh(model, fresh, batch))
        other.close()
        fresh.close()
    finally:
        backend.close()


def _live(backend: mlplug.Backend) -> tuple[int, int]:
    cpu = backend.devices[0]  # type: ignore[attr-defined]
    return cpu.allocated, len(backend._families)  # type: ignore[attr-defined]


def _decode(model: Decoder, cache: object, start: int, n: int) -> Iterator[None]:
    for pos in range(start, start + n):
        model.forward(cache, Batch.single([pos % 50], pos))
        yield


def test_many_steps_leak_nothing(model_file: Path) -> None:
    backend, model = _open(model_file, flash=False)
    try:
        cache = model.new_cache(capacity=160, max_batch=16)
        model.forward(cache, Batch.single(_tokens(4, 7), 0))
        for _ in _decode(model, cache, 4, 4):
            pass
        before = _live(backend)
        memory = backend.backend_memory()
        for _ in _decode(model, cache, 8, 20):  # within the first 32 cells: one structure
            pass
        assert _live(backend) == before
        assert backend.backend_memory() == memory
        # Past several paddings: new structures, at most KEEP_GRAPHS kept per cache.
        for _ in _decode(model, cache, 28, 120):
            pass
        allocated, families = _live(backend)
        assert families <= before[1] + 4
        assert allocated <= before[0] + 4 * 64 * 1024  # a few more masks and tables
        cache.close()
        # A collected cache takes its kept graphs with it.
        del cache
        import gc

        gc.collect()
        assert not model._kept  # type: ignore[attr-defined]
    finally:
        backend.close()


def test_cache_refill_refuses_inputs_of_another_layout(tmp_path: Path) -> None:
    backend, model = _open(_llama(tmp_path / "m.gguf"), flash=False)
    cache = model.new_cache(capacity=64, max_batch=8)
    try:
        ctx = backend.new_context()
        cache.place(Batch.single([1, 2], 0))
        two = cache.attach(ctx)
        cache.place(Batch.single([3], 2))
        with pytest.raises(ValueError, match="another layout"):
            cache.refill(two)  # made for a batch of two tokens
        cache.place(Batch.single([1], 0), reserve=True)
        sizing = cache.attach(ctx)
        with pytest.raises(ValueError, match="reserve"):
            cache.refill(sizing)
        ctx.close()
    finally:
        cache.close()
        backend.close()


def test_overwrite_checks_what_it_writes(tmp_path: Path) -> None:
    from mlplug.context import overwrite
    from mlplug.errors import DTypeError, ShapeError

    backend, _ = _open(_llama(tmp_path / "m.gguf"), flash=False)
    try:
        ctx = backend.new_context()
        ids = ctx.input().from_int_slice([1, 2, 3], 3)
        floats = ctx.input().from_float_slice([0.5, 1.5], 2)
        overwrite(ids, [4, 5, 6])
        overwrite(floats, np.array([2.25, -1.0]))
        assert ids.numpy().tolist() == [4, 5, 6]
        assert floats.numpy().tolist() == [2.25, -1.0]
        with pytest.raises(ShapeError, match="2 values for 3"):
            overwrite(ids, [1, 2])
        with pytest.raises(DTypeError, match="integers"):
            overwrite(ids, [1.5, 2.0, 3.0])
        with pytest.raises(ValueError, match="int32"):
            overwrite(ids, [1, 2, 2**31])
        with pytest.raises(DTypeError, match="F16"):
            overwrite(ctx.input().empty(DType.F16, 2), [1.0, 2.0])
        with pytest.raises(ContextError, match="graph node"):
            overwrite(floats.scale(ctx, 2.0), [1.0, 2.0])
        ctx.close()
        with pytest.raises(ContextError, match="closed"):
            overwrite(ids, [1, 2, 3])
    finally:
        backend.close()


def test_computing_again_after_a_read_buffer_was_closed_is_refused(tmp_path: Path) -> None:
    # The engine reuses the device records of a graph computed again without looking at its
    # leaves: a buffer of another context that has been closed since must still be noticed.
    backend, _ = _open(_llama(tmp_path / "m.gguf"), flash=False)
    try:
        source = backend.new_context()
        ctx = backend.new_context()
        x = source.input().from_float_slice([1.0, 2.0, 3.0], 3)
        y = x.scale(ctx, 2.0)
        ctx.forward(y).compute(y)
        assert y.numpy().tolist() == [2.0, 4.0, 6.0]
        ctx.compute(y)
        source.close()
        with pytest.raises(ContextError, match="closed context"):
            ctx.compute(y)
        ctx.close()
    finally:
        backend.close()


def test_the_servers_two_request_decode_steps_build_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The scheduler's own step (mlplug serve): two requests decoded together, one token each
    # per step; after the first such step the graph is kept, except where the history view
    # grows by the cache padding (32 cells without flash attention).
    pytest.importorskip("jinja2")
    import threading

    from mlplug._run import demo_model_path
    from mlplug.generate import Sampling, generate
    from mlplug.serve.scheduler import Finished, Job, Piece, Scheduler
    from mlplug.tokenizer import Tokenizer

    with demo_model_path() as path:
        backend = mlplug.new_backend(str(path), mlplug.BackendParams(num_threads=1), backend="cpu")
    backend.load()
    try:
        model, tok = from_backend(backend), Tokenizer.from_config(backend.config())
        built: list[tuple[int, int]] = []  # (tokens in the step, nodes it recorded)
        count = Counter(monkeypatch)

        class Recorder:
            def new_cache(self, **kw: object) -> object:
                return model.new_cache(**kw)  # type: ignore[arg-type]

            def reserve(self, cache: object, n: int) -> None:
                model.reserve(cache, n)

            def forward(self, cache: object, batch: Batch) -> np.ndarray:
                count.reset()
                logits = model.forward(cache, batch)
                built.append((len(batch.tokens), count.nodes))
                return logits

        sched = Scheduler(Recorder(), tok, parallel=2, ctx_size=64, n_batch=16, queue_size=2)  # type: ignore[arg-type]
        prompts = [tok.encode("Once upon a time"), tok.encode("The cache")]
        texts: dict[int, list[str]] = {0: [], 1: []}
        done = threading.Semaphore(0)

        def emit(key: int) -> object:
            def on(event: object) -> None:
                if isinstance(event, Piece):
                    texts[key].append(event.text)
                elif isinstance(event, Finished):
                    done.release()

            return on

        greedy = Sampling(temperature=0)
        for i, p in enumerate(prompts):
            sched.submit(Job(p, 24, greedy, (), emit(i), ignore_eos=True))  # type: ignore[arg-type]
        sched.start()
        try:
            for _ in prompts:
                assert done.acquire(timeout=60), "a request did not finish"
        finally:
            sched.close()
        steps = [nodes for n, nodes in built if n == 2]
        assert len(steps) >= 20
        assert steps[0] > 0
        assert sum(1 for nodes in steps if nodes) <= 3, steps  # first, and padding boundaries
        # The text is what generate() gives each prompt alone.
        for i, p in enumerate(prompts):
            cache = model.new_cache(capacity=64, max_batch=16)
            ids = list(generate(model, cache, p, 24, sampling=greedy))
            cache.close()
            want = b"".join(tok.token_to_piece(t) for t in ids).decode("utf-8", "replace")
            assert "".join(texts[i]) == want
    finally:
        backend.close()
