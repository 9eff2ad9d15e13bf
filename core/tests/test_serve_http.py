"""``mlplug serve`` over HTTP: the official ``openai`` client against a live server on 127.0.0.1.

Each server runs in this process (uvicorn in a thread, on a free port, stopped at the end), on
the bundled demo model, so the tests can compare with single-request generation and look into
the scheduler's cache. One test starts the real ``mlplug serve`` command in a subprocess.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("mlplug_cpu")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("openai")

import httpx
import openai
import uvicorn

import mlplug
from mlplug._run import demo_model_path
from mlplug.generate import generate
from mlplug.models import from_backend
from mlplug.serve.command import build_server
from mlplug.tokenizer import Tokenizer

TIMEOUT = 60.0  # seconds any one request may take (the CI machine is small)

CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'assistant' %}"
    "{{ raise_exception('the conversation must start with a user or system message') }}"
    "{% endif %}{{ bos_token }}{% for m in messages %}"
    "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

PROMPTS = [
    "Once upon a time",
    "The cache holds, for every layer,",
    "A tensor is a block of numbers",
    "Backends are plugins.",
    "def add(a, b):",
    "The quick brown fox",
    "Hello! This is the demo model",
    "0 1 2 3 4 5",
]


def _with_chat_template(src: Path, dst: Path, template: str) -> Path:
    """Copy a GGUF file, adding ``tokenizer.chat_template``."""
    from gguf import GGUFReader, GGUFValueType, GGUFWriter

    reader = GGUFReader(src)
    writer = GGUFWriter(dst, arch=reader.fields["general.architecture"].contents())
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        kind = field.types[0]
        sub = field.types[1] if kind is GGUFValueType.ARRAY else None
        writer.add_key_value(name, field.contents(), kind, sub_type=sub)
    writer.add_chat_template(template)
    for t in reader.tensors:
        writer.add_tensor(t.name, t.data, raw_shape=t.data.shape, raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


class LiveServer:
    """``mlplug serve`` in this process: uvicorn in a thread on a free 127.0.0.1 port."""

    def __init__(self, path: Path, **options: Any) -> None:
        args = argparse.Namespace(
            ctx_size=options.get("ctx_size", 256),
            parallel=options.get("parallel", 4),
            queue_size=options.get("queue_size", 0),
            batch_size=options.get("batch_size", 64),
            chat_template_file="",
        )
        self.backend = mlplug.new_backend(
            str(path), mlplug.BackendParams(num_threads=1), backend="cpu"
        )
        self.backend.load()
        app, self.scheduler = build_server(self.backend, args, "demo")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [sock]}, daemon=True
        )
        self.thread.start()
        deadline = time.monotonic() + TIMEOUT
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                self.close()
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)

    def client(self, **kw: Any) -> Any:
        return openai.OpenAI(
            base_url=self.url + "/v1", api_key="none", max_retries=0, timeout=TIMEOUT, **kw
        )

    def health(self) -> dict[str, Any]:
        out: dict[str, Any] = httpx.get(self.url + "/health", timeout=TIMEOUT).json()
        return out

    def wait_idle(self) -> dict[str, Any]:
        """Wait until no request is active or waiting; return /health."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            h = self.health()
            if h["slots_processing"] == 0 and h["requests_waiting"] == 0:
                return h
            assert time.monotonic() < deadline, f"the server stayed busy: {h}"
            time.sleep(0.05)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(TIMEOUT)
        self.scheduler.close()
        self.backend.close()


@pytest.fixture(scope="module", autouse=True)
def exact_cpu_products() -> Iterator[None]:
    """Run the cpu plugin's exact F32 products in this module.

    Its native kernels round each activation row to 8 bits (as llama.cpp does), which turns a
    1-ulp difference upstream (attention over a differently laid-out KV cache in a batched
    server) into a whole rounding step; on the random-weight demo model that flips greedy
    near-ties. These tests check that requests are isolated, not kernel rounding.
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLPLUG_CPU_NATIVE", "0")
        yield


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    with demo_model_path() as path:
        dst = tmp_path_factory.mktemp("serve") / "demo-chat.gguf"
        return _with_chat_template(path, dst, CHAT_TEMPLATE)


@pytest.fixture(scope="module")
def server(chat_model: Path) -> Iterator[LiveServer]:
    live = LiveServer(chat_model, parallel=4, ctx_size=256)
    try:
        yield live
    finally:
        live.close()


@pytest.fixture(scope="module")
def reference(chat_model: Path) -> Iterator[Callable[[list[int], int], list[int]]]:
    """Greedy generation of one request alone, on a backend of its own."""
    backend = mlplug.new_backend(str(chat_model), mlplug.BackendParams(num_threads=1), "cpu")
    backend.load()
    model = from_backend(backend)
    tok = Tokenizer.from_config(backend.config())
    memo: dict[tuple[tuple[int, ...], int], list[int]] = {}

    def run(prompt: list[int], n: int) -> list[int]:
        key = (tuple(prompt), n)
        if key not in memo:
            cache = model.new_cache(capacity=len(prompt) + n, max_batch=len(prompt))
            try:
                memo[key] = list(generate(model, cache, prompt, n, stop=tok.is_eog))
            finally:
                cache.close()
        return memo[key]

    try:
        yield run
    finally:
        backend.close()


def _tok(server: LiveServer) -> Tokenizer:
    return server.scheduler.tokenizer


def _text(tok: Tokenizer, ids: list[int]) -> str:
    return b"".join(tok.token_to_piece(i) for i in ids).decode("utf-8", "replace")


def _expected(server: LiveServer, reference: Any, prompt: str, n: int) -> tuple[str, int, str]:
    tok = _tok(server)
    # Greedy generation of n tokens is the first n of a longer one (up to an end token).
    ids = reference(tok.encode(prompt), max(n, 16))[:n]
    reason = "stop" if tok.is_eog(ids[-1]) else "length"
    return _text(tok, ids), len(ids), reason


# -- endpoints ------------------------------------------------------------------------------------


def test_models_and_health(server: LiveServer) -> None:
    models = server.client().models.list()
    assert [m.id for m in models.data] == ["demo"]
    health = server.health()
    assert health["status"] == "ok" and health["slots_idle"] + health["slots_processing"] == 4


def test_completion_equals_single_request_generation(server: LiveServer, reference: Any) -> None:
    prompt = PROMPTS[0]
    text, n, reason = _expected(server, reference, prompt, 12)
    out = server.client().completions.create(
        model="demo", prompt=prompt, max_tokens=12, temperature=0
    )
    assert out.object == "text_completion" and out.model == "demo"
    assert out.choices[0].text == text
    assert out.choices[0].finish_reason == reason
    assert out.usage is not None
    assert out.usage.prompt_tokens == len(_tok(server).encode(prompt))
    assert out.usage.completion_tokens == n
    assert out.usage.total_tokens == out.usage.prompt_tokens + n


def test_streamed_completion_and_usage(server: LiveServer, reference: Any) -> None:
    prompt = PROMPTS[1]
    text, n, reason = _expected(server, reference, prompt, 10)
    stream = server.client().completions.create(
        model="demo",
        prompt=prompt,
        max_tokens=10,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    pieces = [c.choices[0].text for c in chunks if c.choices]
    assert len(pieces) > 2  # streamed, not sent at once
    assert "".join(pieces) == text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == reason
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == n


def test_prompt_as_token_ids_and_stop_strings(server: LiveServer, reference: Any) -> None:
    tok = _tok(server)
    ids = tok.encode(PROMPTS[2])
    text, _, _ = _expected(server, reference, PROMPTS[2], 16)
    out = server.client().completions.create(model="demo", prompt=ids, max_tokens=16, temperature=0)
    assert out.choices[0].text == text
    stop = text[3:6]
    assert stop and stop not in text[:5]
    for stream in (False, True):
        resp = server.client().completions.create(
            model="demo", prompt=ids, max_tokens=16, temperature=0, stop=[stop], stream=stream
        )
        chunks = list(resp) if stream else [resp]
        got = "".join(c.choices[0].text for c in chunks if c.choices)
        assert got == text[: text.index(stop)]
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"


def test_seeded_sampling_repeats(server: LiveServer) -> None:
    def draw(seed: int) -> str:
        out = server.client().completions.create(
            model="demo",
            prompt=PROMPTS[3],
            max_tokens=8,
            temperature=1.5,
            top_p=0.95,
            seed=seed,
            extra_body={"top_k": 40, "min_p": 0.01},
        )
        return str(out.choices[0].text)

    assert draw(1) == draw(1)
    assert len({draw(s) for s in range(2, 6)}) > 1


def test_chat_uses_the_model_template(server: LiveServer, reference: Any) -> None:
    messages = [
        {"role": "system", "content": "You are a clock."},
        {"role": "user", "content": "What time is it?"},
    ]
    rendered = server.scheduler.tokenizer.tokens[0] + "".join(
        f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages
    )
    rendered += "<|im_start|>assistant\n"
    tok = _tok(server)
    ids = reference(tok.encode(rendered, add_special=False), 10)
    client = server.client()
    out = client.chat.completions.create(
        model="demo", messages=messages, max_tokens=10, temperature=0
    )
    assert out.object == "chat.completion"
    assert out.choices[0].message.role == "assistant"
    assert out.choices[0].message.content == _text(tok, ids)
    assert out.usage is not None
    assert out.usage.prompt_tokens == len(tok.encode(rendered, add_special=False))
    stream = client.chat.completions.create(
        model="demo", messages=messages, max_tokens=10, temperature=0, stream=True
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == _text(tok, ids)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    with pytest.raises(openai.BadRequestError, match="must start with a user"):
        client.chat.completions.create(
            model="demo", messages=[{"role": "assistant", "content": "hi"}], max_tokens=2
        )


# -- errors -----------------------------------------------------------------------------------


def _error(resp: Any) -> dict[str, Any]:
    body: dict[str, Any] = resp.json()["error"]
    assert set(body) == {"message", "type", "param", "code"}
    return body


def test_bad_requests_get_openai_errors(server: LiveServer, monkeypatch: Any) -> None:
    url = server.url
    r = httpx.post(url + "/v1/completions", content=b'{"prompt": ', timeout=TIMEOUT)
    assert r.status_code == 400 and _error(r)["code"] == "invalid_json"
    r = httpx.post(url + "/v1/completions", json=["prompt"], timeout=TIMEOUT)
    assert r.status_code == 400
    r = httpx.get(url + "/v1/completions", timeout=TIMEOUT)
    assert r.status_code == 405 and _error(r)
    r = httpx.get(url + "/v1/nothing", timeout=TIMEOUT)
    assert r.status_code == 404 and _error(r)["type"] == "not_found_error"
    monkeypatch.setattr("mlplug.serve.app.MAX_BODY_BYTES", 100)
    r = httpx.post(url + "/v1/completions", json={"prompt": "x" * 200}, timeout=TIMEOUT)
    assert r.status_code == 413
    monkeypatch.undo()

    client = server.client()
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="demo", prompt="x", temperature="hot")  # type: ignore[arg-type]
    assert info.value.body["param"] == "temperature"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="demo", prompt="x", max_tokens=2, n=2)
    assert info.value.body["param"] == "n"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="demo", prompt=[0, 99999])
    assert info.value.body["param"] == "prompt"  # type: ignore[index]
    long_prompt = " ".join(["clock"] * 300)
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="demo", prompt=long_prompt, max_tokens=1)
    assert info.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="demo", prompt="x", max_tokens=256)
    assert info.value.code == "context_length_exceeded"
    assert info.value.body["param"] == "max_tokens"  # type: ignore[index]
    # Nothing was admitted: no cell is in use.
    assert server.wait_idle()["cells_used"] == 0


def _open_stream(url: str, prompt: str, n: int) -> tuple[Any, Any]:
    client = httpx.Client(timeout=TIMEOUT)
    body = {"prompt": prompt, "max_tokens": n, "temperature": 0, "stream": True}
    resp = client.send(
        client.build_request("POST", url + "/v1/completions", json=body), stream=True
    )
    return client, resp


def test_full_queue_429_and_disconnects_free_cells(chat_model: Path) -> None:
    live = LiveServer(chat_model, parallel=2, queue_size=2, ctx_size=512)
    try:
        before = live.health()
        opened = [_open_stream(live.url, "Once upon a time", 400) for _ in range(4)]
        assert all(resp.status_code == 200 for _, resp in opened)
        deadline = time.monotonic() + TIMEOUT
        while (h := live.health())["slots_processing"] < 2 or h["requests_waiting"] < 2:
            assert time.monotonic() < deadline, h
            time.sleep(0.02)
        with pytest.raises(openai.RateLimitError) as info:
            live.client().completions.create(model="demo", prompt="x", max_tokens=2)
        assert info.value.code == "queue_full"
        # Read a little of the first stream, then every client goes away.
        first = opened[0][1]
        assert next(first.iter_lines()).startswith("data: ")
        for client, resp in opened:
            resp.close()
            client.close()
        after = live.wait_idle()
        assert after["cells_used"] == 0
        assert after["requests_cancelled"] - before["requests_cancelled"] == 4
        assert all(not seqs for _, seqs in live.scheduler.cache.cells())
        # A non-streaming client that gives up is cancelled too.
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(
                live.url + "/v1/completions",
                json={"prompt": "Hello", "max_tokens": 400, "temperature": 0},
                timeout=httpx.Timeout(TIMEOUT, read=0.5),
            )
        after = live.wait_idle()
        assert after["cells_used"] == 0 and after["requests_cancelled"] == 5
    finally:
        live.close()


# -- load ---------------------------------------------------------------------------------------


def test_concurrent_clients_get_single_request_results(server: LiveServer, reference: Any) -> None:
    clients, per_client = 8, 20
    jobs = [
        (c, i, PROMPTS[(c + i) % len(PROMPTS)], 2 + (c * 7 + i * 3) % 11, (c + i) % 2 == 0)
        for c in range(clients)
        for i in range(per_client)
    ]
    expected = {(p, n): _expected(server, reference, p, n) for _, _, p, n, _ in jobs}
    memory_before = server.backend.backend_memory()
    steps_before = server.health()["steps"]

    def client_run(c: int) -> list[tuple[str, int, str, str, int]]:
        client = server.client()
        out = []
        for cc, _, prompt, n, stream in jobs:
            if cc != c:
                continue
            if stream:
                chunks = list(
                    client.completions.create(
                        model="demo",
                        prompt=prompt,
                        max_tokens=n,
                        temperature=0,
                        stream=True,
                        stream_options={"include_usage": True},
                    )
                )
                text = "".join(ch.choices[0].text for ch in chunks if ch.choices)
                reason = [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1]
                used = chunks[-1].usage.completion_tokens
            else:
                resp = client.completions.create(
                    model="demo", prompt=prompt, max_tokens=n, temperature=0
                )
                text, reason = resp.choices[0].text, resp.choices[0].finish_reason
                used = resp.usage.completion_tokens
            out.append((prompt, n, text, reason, used))
        return out

    with ThreadPoolExecutor(clients) as pool:
        results = [r for rs in pool.map(client_run, range(clients)) for r in rs]
    assert len(results) == clients * per_client
    for prompt, n, text, reason, used in results:
        assert (text, used, reason) == expected[(prompt, n)], (prompt, n)
    health = server.wait_idle()
    assert health["cells_used"] == 0
    assert all(not seqs for _, seqs in server.scheduler.cache.cells())
    assert server.backend.backend_memory() == memory_before
    # Requests shared steps: fewer model steps than tokens generated.
    generated = sum(used for *_, used in results)
    assert health["steps"] - steps_before < generated


# -- the command ----------------------------------------------------------------------------------


def _serve_command(*args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mlplug.cli",
        "serve",
        *args,
        "--parallel",
        "2",
        "--ctx-size",
        "128",
        "--threads",
        "1",
    ]


def _lines(proc: subprocess.Popen[str]) -> queue.Queue[str | None]:
    """Return a queue of the process's output lines (None at EOF), filled by a thread."""
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def test_the_serve_command() -> None:
    # --port 0: the server picks a free port and prints the address it listens on.
    env = {**os.environ, "MLPLUG_CPU_THREADS": "1"}
    proc = subprocess.Popen(
        _serve_command("--port", "0"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    output: list[str] = []
    try:
        lines = _lines(proc)
        deadline = time.monotonic() + TIMEOUT
        port = None
        while port is None:
            line = lines.get(timeout=max(deadline - time.monotonic(), 0.1))
            assert line is not None, "".join(output)
            output.append(line)
            if m := re.search(r"OpenAI API at http://127\.0\.0\.1:(\d+)/v1", line):
                port = int(m.group(1))
        assert port != 0
        url = f"http://127.0.0.1:{port}"
        while True:
            assert proc.poll() is None, "".join(output)
            try:
                if httpx.get(url + "/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "mlplug serve did not come up"
            time.sleep(0.1)
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=TIMEOUT)
        out = client.completions.create(model="demo.gguf", prompt="Hello", max_tokens=4)
        assert out.usage is not None and 1 <= out.usage.completion_tokens <= 4
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(
                model="demo.gguf", messages=[{"role": "user", "content": "hi"}]
            )
        assert info.value.code == "no_chat_template"
        assert "--chat-template-file" in json.dumps(info.value.body)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=TIMEOUT) == 0, "".join(output)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_serve_command_on_a_taken_port() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run(
            _serve_command("--port", str(port)),
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            env={**os.environ, "MLPLUG_CPU_THREADS": "1"},
        )
    assert out.returncode == 1, out.stderr
    assert f"mlplug serve: cannot listen on 127.0.0.1:{port}" in out.stderr
    assert "Traceback" not in out.stderr
