"""Model files that lie or change under us (issue #12): refused with ``GGUFError``, never a hang,
a crash or a huge allocation."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mlplug.errors import GGUFError
from mlplug.gguf import GGUFFile
from mlplug_conformance import synth


@pytest.fixture
def llama(tmp_path: Path) -> Path:
    return synth.write_llama_gguf(
        tmp_path / "llama.gguf", n_layers=2, n_embd=64, n_head=4, n_head_kv=2, n_ff=96, n_vocab=40
    )


def run_python(code: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter (a crash or a hang must not take pytest with it)."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# -- not a regular file ---------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")
def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "model.gguf"
    os.mkfifo(fifo)
    # Without a writer, a plain open() of a FIFO blocks for ever: run it where a hang is caught.
    out = run_python(
        f"""
        from mlplug.cli import main
        from mlplug.errors import GGUFError
        from mlplug.gguf import GGUFFile
        from mlplug.tokenizer import Tokenizer
        for read in (GGUFFile.open, Tokenizer.from_gguf):
            try:
                read({str(fifo)!r})
            except GGUFError as err:
                print(err)
        print("info", main(["info", {str(fifo)!r}]))
        """,
        timeout=60,
    )
    assert out.stdout.count("not a regular file (a FIFO)") == 2, out.stderr
    assert "info 1" in out.stdout and "not a regular file (a FIFO)" in out.stderr


def test_socket_directory_and_device_are_refused(tmp_path: Path) -> None:
    sock_path = tmp_path / "s.gguf"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.bind(str(sock_path))
        kinds = {sock_path: "a socket", tmp_path: "a directory", Path("/dev/zero"): "device"}
        for path, kind in kinds.items():
            with pytest.raises((GGUFError, OSError)) as info:
                GGUFFile.open(path)
            assert isinstance(info.value, GGUFError) or path == sock_path  # ENXIO on some kernels
            if isinstance(info.value, GGUFError):
                assert kind in str(info.value) and str(path) in str(info.value)
    finally:
        server.close()


# -- a file that changes under us -----------------------------------------------------------------


def test_truncating_the_file_during_load_is_a_gguf_error(llama: Path) -> None:
    # Before the fix this killed the process with SIGBUS (the loader read the memory map).
    out = run_python(
        f"""
        import os
        import mlplug
        path = {str(llama)!r}
        backend = mlplug.new_backend(path, mlplug.BackendParams(), backend="cpu")
        calls = []

        def progress(fraction):
            calls.append(fraction)
            if len(calls) == 1:
                os.truncate(path, 4096)  # inside the first tensor's data

        try:
            backend.load(progress)
        except mlplug.GGUFError as err:
            print("GGUFError", err)
        backend.close()
        print("alive")
        """
    )
    assert out.returncode == 0, out.stderr
    assert "GGUFError" in out.stdout and "shrank" in out.stdout and "alive" in out.stdout


def test_the_file_replaced_after_open_is_read_as_opened(llama: Path, tmp_path: Path) -> None:
    import mlplug

    backend = mlplug.new_backend(llama, mlplug.BackendParams(), backend="cpu")
    with GGUFFile.open(llama) as f:
        expected = {t.name: bytes(f.view(t.offset, t.nbytes)) for t in f.tensors}
    other = tmp_path / "other.gguf"
    other.write_bytes(b"GGUF" + bytes(100))
    os.replace(other, llama)  # a new file at the path: the open one is still read
    backend.load()
    weight = backend.get("blk.1.ffn_up.weight")
    assert weight is not None and weight.bytes() == expected["blk.1.ffn_up.weight"]
    backend.close()


# -- metadata that lies ---------------------------------------------------------------------------

_BOUNDED = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))  # 2 GiB: sizing by a lie fails
import mlplug
try:
    mlplug.new_backend(sys.argv[1], mlplug.BackendParams(), backend="cpu").close()
    print("accepted")
except mlplug.GGUFError as err:
    print("GGUFError", err)
"""


def open_bounded(path: Path) -> str:
    """Construct a backend on ``path`` in a process limited to 2 GiB and 60 s."""
    out = subprocess.run(
        [sys.executable, "-c", _BOUNDED, str(path)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def lying_llama(tmp_path: Path, blocks: int, **kwargs: object) -> Path:
    from gguf import GGUFValueType

    return synth.write_llama_gguf(
        tmp_path / "lies.gguf",
        n_layers=2,
        n_embd=64,
        n_head=4,
        n_head_kv=2,
        n_ff=96,
        n_vocab=40,
        extra_metadata={"llama.block_count": (GGUFValueType.UINT32, blocks)},
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("blocks", [10**8, 2**31, 2**32 - 1, 513])
def test_block_count_beyond_the_tensors_is_refused_naming_the_key(
    tmp_path: Path, blocks: int
) -> None:
    out = open_bounded(lying_llama(tmp_path, blocks))
    assert out.startswith("GGUFError") and f"llama.block_count = {blocks}" in out, out


def test_vocabulary_only_file_may_declare_blocks(tmp_path: Path) -> None:
    from gguf import GGUFValueType

    import mlplug

    meta = {"llama.block_count": (GGUFValueType.UINT32, 32)}
    path = synth.write_gguf(tmp_path / "vocab.gguf", [], arch="llama", metadata=meta)
    with mlplug.new_backend(path, mlplug.BackendParams(), backend="cpu") as backend:
        assert len(backend.backend_memory().cpu.weights) == 33


def test_rope_table_copied_past_the_file_size_is_refused(tmp_path: Path) -> None:
    import numpy as np

    from mlplug.dtype import DType

    big_rope = ("rope_freqs.weight", np.ones(1 << 16, np.float32), DType.F32)  # 256 KiB
    ok = lying_llama(tmp_path, 2, extra_tensors=[big_rope])
    assert open_bounded(ok).startswith("accepted")
    # 22 tensors allow 22 blocks; 22 copies of 256 KiB are more than the ~0.5 MB file.
    out = open_bounded(lying_llama(tmp_path, 22, extra_tensors=[big_rope]))
    assert out.startswith("GGUFError") and "'rope_freqs.weight'" in out, out
    assert "llama.block_count" in out
