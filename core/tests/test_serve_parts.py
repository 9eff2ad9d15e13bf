"""``mlplug serve`` without HTTP: request checks, stop strings, chat templates, the scheduler."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("mlplug_cpu")
pytest.importorskip("jinja2")

import mlplug
from mlplug._run import demo_model_path
from mlplug.errors import RequestError
from mlplug.generate import Sampling, generate
from mlplug.models import from_backend
from mlplug.nn.transformer import Batch, Decoder
from mlplug.serve.chat import ChatTemplate
from mlplug.serve.protocol import parse_chat, parse_completion
from mlplug.serve.scheduler import Event, Finished, Job, Piece, Scheduler, used_cells
from mlplug.serve.text import TextStream
from mlplug.tokenizer import Tokenizer

# -- request bodies -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": 3}, "prompt"),
        ({"prompt": []}, "prompt"),
        ({"prompt": ["a", "b"]}, "prompt"),
        ({"prompt": "x", "max_tokens": "8"}, "max_tokens"),
        ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "x", "max_tokens": True}, "max_tokens"),
        ({"prompt": "x", "temperature": "hot"}, "temperature"),
        ({"prompt": "x", "temperature": 3}, "temperature"),
        ({"prompt": "x", "top_p": 1.5}, "top_p"),
        ({"prompt": "x", "top_p": 0}, "top_p"),
        ({"prompt": "x", "repeat_penalty": 0}, "repeat_penalty"),
        ({"prompt": "x", "top_k": 1.5}, "top_k"),
        ({"prompt": "x", "min_p": -0.1}, "min_p"),
        ({"prompt": "x", "seed": "1"}, "seed"),
        ({"prompt": "x", "stop": 4}, "stop"),
        ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"prompt": "x", "n": 2}, "n"),
        ({"prompt": "x", "stream": "yes"}, "stream"),
        ({"prompt": "x", "stream_options": {"include_usage": True}}, "stream_options"),
        ({"prompt": "x", "logprobs": 2}, "logprobs"),
        ({"prompt": "x", "echo": True}, "echo"),
        ({"prompt": "x", "ignore_eos": 1}, "ignore_eos"),
        ({"prompt": "x", "presence_penalty": 0.5}, "presence_penalty"),
    ],
)
def test_completion_fields_are_checked(body: dict[str, Any], param: str) -> None:
    with pytest.raises(RequestError) as info:
        parse_completion(body)
    assert info.value.status == 400 and info.value.param == param


def test_completion_fields_are_read() -> None:
    req = parse_completion(
        {
            "model": "anything",
            "prompt": ["Hello"],
            "max_tokens": 7,
            "temperature": 0.5,
            "top_k": 3,
            "top_p": 0.9,
            "min_p": 0.1,
            "seed": -1,
            "stop": "\n",
            "stream": True,
            "stream_options": {"include_usage": True},
            "n": 1,
            "user": "u",
        }
    )
    assert req.prompt == "Hello"
    o = req.options
    assert (o.max_tokens, o.stop, o.stream, o.include_usage) == (7, ("\n",), True, True)
    assert o.sampling == Sampling(0.5, 3, 0.9, 0.1, seed=2**64 - 1)
    assert parse_completion({"prompt": [1, 2, 3]}).prompt == (1, 2, 3)
    sampling = parse_completion({"prompt": "x", "repeat_penalty": 1.3, "repeat_last_n": 0}).options
    assert (sampling.sampling.repeat_penalty, sampling.sampling.repeat_last_n) == (1.3, 0)
    # Without a seed every request draws its own.
    seeds = {parse_completion({"prompt": "x"}).options.sampling.seed for _ in range(4)}
    assert len(seeds) == 4


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ([], None),
        ({}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": ["hi"]}, "messages[0]"),
        ({"messages": [{"content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            "messages[0].content",
        ),
        ({"messages": [{"role": "user", "content": "x"}], "tools": [{}]}, "tools"),
        ({"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": -1}, None),
    ],
)
def test_chat_fields_are_checked(body: Any, param: str | None) -> None:
    with pytest.raises(RequestError) as info:
        parse_chat(body)
    assert info.value.status == 400
    if param is not None:
        assert info.value.param == param


def test_chat_text_parts_are_joined_and_max_completion_tokens_read() -> None:
    req = parse_chat(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                }
            ],
            "max_completion_tokens": 5,
        }
    )
    assert req.messages[0]["content"] == "ab"
    assert req.options.max_tokens == 5


# -- text and chat templates ---------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def exact_cpu_products() -> Iterator[None]:
    """Run the cpu plugin's exact products here, as ``test_serve_http.py`` does.

    Its native kernels round activations to 8 bits, which can turn the 1-ulp difference of a
    batched step into a greedy flip on the random demo model; these tests check isolation.
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLPLUG_CPU_NATIVE", "0")
        yield


@pytest.fixture(scope="module")
def demo() -> Iterator[tuple[mlplug.Backend, Decoder, Tokenizer]]:
    with demo_model_path() as path:
        backend = mlplug.new_backend(str(path), mlplug.BackendParams(num_threads=1), backend="cpu")
    backend.load()
    try:
        yield backend, from_backend(backend), Tokenizer.from_config(backend.config())
    finally:
        backend.close()


def test_text_stream_holds_back_what_may_start_a_stop_string(demo: Any) -> None:
    tok = demo[2]
    ids = tok.encode("Once upon a time, in a small town", add_special=False)
    whole = tok.decode(ids)
    stream = TextStream(tok, ["small", "zzz"])
    out = "".join(stream.push(i) for i in ids) + stream.finish()
    assert out == whole[: whole.index("small")] and stream.stopped
    stream = TextStream(tok, ["town!"])
    released = [stream.push(i) for i in ids]
    assert "".join(released) == whole[: -len("town")]  # "town" may start "town!": held back
    assert stream.finish() == "town" and not stream.stopped


def test_chat_template_renders_in_a_sandbox(demo: Any) -> None:
    tok = demo[2]
    template = ChatTemplate(
        "{{ bos_token }}{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}"
        "{% if add_generation_prompt %}[assistant]{% endif %}",
        tok,
    )
    messages = [{"role": "user", "content": "hi"}]
    assert template.render(messages) == "<|endoftext|>[user] hi\n[assistant]"
    assert template.encode(messages)[:2] == [tok.bos_id, *tok.encode("[", add_special=False)]
    assert template.encode(messages).count(tok.bos_id) == 1
    with pytest.raises(RequestError, match="must alternate"):
        ChatTemplate("{{ raise_exception('roles must alternate') }}", tok).render(messages)
    # The sandbox refuses attribute access to Python internals.
    with pytest.raises(RequestError, match=r"SecurityError|unsafe"):
        ChatTemplate("{{ messages.__class__.__mro__ }}", tok).render(messages)
    with pytest.raises(RequestError, match=r"SecurityError|unsafe"):
        ChatTemplate("{{ messages.append(1) }}", tok).render(messages)
    with pytest.raises(ValueError, match="does not compile"):
        ChatTemplate("{% for %}", tok)


# -- the scheduler ------------------------------------------------------------------------------


class _Recorder:
    """A model wrapper that records every batch the scheduler runs."""

    def __init__(self, model: Decoder) -> None:
        self.model = model
        self.batches: list[Batch] = []

    def new_cache(self, **kw: Any) -> Any:
        return self.model.new_cache(**kw)

    def reserve(self, cache: Any, n: int) -> None:
        self.model.reserve(cache, n)

    def forward(self, cache: Any, batch: Batch) -> Any:
        self.batches.append(batch)
        return self.model.forward(cache, batch)


class _Results:
    def __init__(self) -> None:
        self.events: dict[int, list[Event]] = {}
        self.done = threading.Semaphore(0)

    def emit(self, key: int) -> Any:
        self.events[key] = []

        def emit(event: Event) -> None:
            self.events[key].append(event)
            if isinstance(event, Finished):
                self.done.release()

        return emit

    def wait(self, n: int) -> None:
        for _ in range(n):
            assert self.done.acquire(timeout=60), "a request did not finish"

    def text(self, key: int) -> str:
        return "".join(e.text for e in self.events[key] if isinstance(e, Piece))

    def finished(self, key: int) -> Finished:
        last = self.events[key][-1]
        assert isinstance(last, Finished)
        return last


def _reference(model: Decoder, tok: Tokenizer, prompt: list[int], n: int) -> list[int]:
    cache = model.new_cache(capacity=len(prompt) + n, max_batch=len(prompt))
    try:
        return list(generate(model, cache, prompt, n, stop=tok.is_eog))
    finally:
        cache.close()


def _text(tok: Tokenizer, ids: list[int]) -> str:
    return b"".join(tok.token_to_piece(i) for i in ids).decode("utf-8", "replace")


def test_requests_decode_together_one_step_per_token(demo: Any) -> None:
    _, model, tok = demo
    rec = _Recorder(model)
    sched = Scheduler(rec, tok, parallel=4, ctx_size=64, n_batch=32, queue_size=4)  # type: ignore[arg-type]
    res = _Results()
    prompts = [tok.encode(t) for t in ("Once upon a time", "The cache", "A tensor is", "Hello")]
    greedy = Sampling(temperature=0)
    for i, p in enumerate(prompts):
        sched.submit(Job(p, 6, greedy, (), res.emit(i)))
    sched.start()
    try:
        res.wait(4)
        # One step reads the four prompts, then five steps decode the four requests together.
        assert len(rec.batches) == 6
        assert [len(b.tokens) for b in rec.batches] == [sum(map(len, prompts)), 4, 4, 4, 4, 4]
        assert all(len(b.outputs) == 4 for b in rec.batches)
        for i, p in enumerate(prompts):
            ref = _reference(model, tok, p, 6)
            done = res.finished(i)
            assert res.text(i) == _text(tok, ref)
            assert (done.prompt_tokens, done.completion_tokens) == (len(p), len(ref))
            assert done.reason == ("stop" if tok.is_eog(ref[-1]) else "length")
        assert sched.stats().cells_used == 0
        assert used_cells(sched.cache) == 0
    finally:
        sched.close()


def test_a_long_prompt_shares_steps_with_decoding_requests(demo: Any) -> None:
    _, model, tok = demo
    rec = _Recorder(model)
    sched = Scheduler(rec, tok, parallel=2, ctx_size=128, n_batch=8, queue_size=2)  # type: ignore[arg-type]
    res = _Results()
    greedy = Sampling(temperature=0)
    short = tok.encode("Hi")
    long = tok.encode("The quick brown fox jumps over the lazy dog. " * 3)
    assert len(long) > 3 * 8
    sched.submit(Job(short, 20, greedy, (), res.emit(0)))
    sched.submit(Job(long, 3, greedy, (), res.emit(1)))
    sched.start()
    try:
        res.wait(2)
        # Every step holds at most n_batch tokens, and while the long prompt is read in chunks
        # of 7, the short request decodes a token in each of those steps.
        assert max(len(b.tokens) for b in rec.batches) <= 8
        reading = [b for b in rec.batches if 1 in b.sequences and len(b.tokens) > 2]
        assert len(reading) >= 3
        assert all(b.sequences[0] == 0 and b.sequences.count(0) == 1 for b in reading[1:])
        for key, prompt, n in ((0, short, 20), (1, long, 3)):
            assert res.text(key) == _text(tok, _reference(model, tok, prompt, n))
    finally:
        sched.close()


def test_the_queue_is_bounded_and_cancelled_requests_free_their_cells(demo: Any) -> None:
    _, model, tok = demo
    sched = Scheduler(model, tok, parallel=2, ctx_size=64, n_batch=16, queue_size=1)
    res = _Results()
    greedy = Sampling(temperature=0)
    prompt = tok.encode("Once upon a time")
    first = Job(prompt, 50, greedy, (), res.emit(0))
    sched.submit(first)
    # Two free slots and a queue of one.
    sched.submit(Job(prompt, 4, greedy, (), res.emit(1)))
    sched.submit(Job(prompt, 4, greedy, (), res.emit(2)))
    with pytest.raises(RequestError) as info:
        sched.submit(Job(prompt, 4, greedy, (), res.emit(3)))
    assert info.value.status == 429
    with pytest.raises(RequestError) as info:
        sched.submit(Job(prompt, 64 - len(prompt) + 1, greedy, (), res.emit(3)))
    assert info.value.code == "context_length_exceeded" and info.value.param == "max_tokens"
    with pytest.raises(RequestError) as info:
        sched.submit(Job(list(range(64)), 1, greedy, (), res.emit(3)))
    assert info.value.code == "context_length_exceeded" and info.value.param == "prompt"
    sched.start()
    try:
        res.wait(2)
        assert res.finished(1).reason in ("stop", "length")
        assert res.finished(2).reason in ("stop", "length")
        first.cancel()
        res.wait(1)
        assert res.finished(0).reason == "cancelled"
        assert res.finished(0).completion_tokens < 50
        assert sched.stats().cells_used == 0
        assert used_cells(sched.cache) == 0
    finally:
        sched.close()


class _FailOnce(_Recorder):
    def forward(self, cache: Any, batch: Batch) -> Any:
        if len(self.batches) == 2:
            self.batches.append(batch)
            raise RuntimeError("device lost")
        return super().forward(cache, batch)


def test_a_failed_step_ends_its_requests_and_the_server_goes_on(demo: Any) -> None:
    _, model, tok = demo
    sched = Scheduler(_FailOnce(model), tok, parallel=2, ctx_size=64, n_batch=16, queue_size=2)  # type: ignore[arg-type]
    res = _Results()
    greedy = Sampling(temperature=0)
    prompt = tok.encode("Once upon a time")
    sched.submit(Job(prompt, 8, greedy, (), res.emit(0)))
    sched.start()
    try:
        res.wait(1)
        done = res.finished(0)
        assert done.reason == "error" and "device lost" in done.error
        assert sched.stats().cells_used == 0
        sched.submit(Job(prompt, 8, greedy, (), res.emit(1)))
        res.wait(1)
        assert res.text(1) == _text(tok, _reference(model, tok, prompt, 8))
        assert sched.stats().cells_used == 0
    finally:
        sched.close()


class _AlwaysEos(_Recorder):
    def __init__(self, model: Decoder, eos: int) -> None:
        super().__init__(model)
        self.eos = eos

    def forward(self, cache: Any, batch: Batch) -> Any:
        logits = super().forward(cache, batch)
        logits[:, self.eos] = logits.max() + 1.0
        return logits


def test_end_tokens_stop_unless_ignore_eos(demo: Any) -> None:
    _, model, tok = demo
    assert tok.eos_id is not None
    rec = _AlwaysEos(model, tok.eos_id)
    sched = Scheduler(rec, tok, parallel=2, ctx_size=64, n_batch=16, queue_size=2)  # type: ignore[arg-type]
    res = _Results()
    prompt = tok.encode("Once upon a time")
    sched.submit(Job(prompt, 5, Sampling(), (), res.emit(0)))
    sched.submit(Job(prompt, 5, Sampling(), (), res.emit(1), ignore_eos=True))
    sched.start()
    try:
        res.wait(2)
        assert (res.finished(0).reason, res.finished(0).completion_tokens) == ("stop", 1)
        assert (res.finished(1).reason, res.finished(1).completion_tokens) == ("length", 5)
        assert res.text(0) == res.text(1) == ""
    finally:
        sched.close()
