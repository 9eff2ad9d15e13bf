"""The command line under hostile or careless use (issue #12.4, #12.6, #12.7): one-line errors,
no tracebacks, no raw control characters, documented options."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import mlplug
from mlplug._terminal import visible
from mlplug.cli import build_parser, main

pytest.importorskip("mlplug_cpu")

MLPLUG = [sys.executable, "-m", "mlplug.cli"]


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"mlplug {mlplug.__version__}"


@pytest.mark.parametrize("command", ["run", "info"])
def test_help_documents_every_option_with_its_default(command: str) -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, type(parser._subparsers._actions[-1])))
    help_text = sub.choices[command].format_help()  # type: ignore[union-attr]
    for action in sub.choices[command]._actions:  # type: ignore[union-attr]
        if action.dest in ("help", "model"):
            continue
        assert action.help, f"--{action.dest} has no help"
        option = action.option_strings[-1]
        # The option's help block (up to the next option) names its default.
        options = help_text.split("options:")[1]
        block = options[options.index(option + " ") :].split("\n  -")[0]
        assert "default" in block, f"{option}: {block!r}"


def test_info_on_a_missing_file_or_a_directory_is_one_line(tmp_path: Path) -> None:
    for target in (tmp_path / "nope.gguf", tmp_path):
        out = subprocess.run([*MLPLUG, "info", str(target)], capture_output=True, text=True)
        assert out.returncode == 1
        assert out.stdout == ""
        assert out.stderr.count("\n") == 1 and out.stderr.startswith("mlplug info: "), out.stderr
        assert "Traceback" not in out.stderr


def test_backends_into_a_closed_pipe_ends_quietly() -> None:
    # `mlplug backends | head -0`: the reader is gone before the first line.
    code = (
        "import os, sys; from mlplug.cli import main; r, w = os.pipe(); os.close(r); "
        "os.dup2(w, 1); sys.exit(main(['backends', '--no-devices']))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 141, out.stderr
    assert "BrokenPipeError" not in out.stderr and "Traceback" not in out.stderr


def test_run_refuses_a_nan_temperature_before_loading(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--temperature", "nan", "-n", "2"]) == 1
    err = capsys.readouterr().err
    assert "temperature nan" in err and "loading" not in err


def test_unknown_backend_does_not_suggest_the_cpu_extra() -> None:
    with pytest.raises(mlplug.BackendNotFoundError) as info:
        mlplug.new_backend(None, mlplug.BackendParams(), backend="nosuch")
    assert "mlplug[cpu]" not in str(info.value)
    assert "install the plugin that provides 'nosuch'" in str(info.value)


# -- terminal safety ------------------------------------------------------------------------------


def test_visible_escapes_control_characters() -> None:
    text = "ok\tline\n\x1b[2J\x07bell\x00\x7f\x9b\u202eevil\u2066"
    assert visible(text) == "ok\tline\n\\x1b[2J\\x07bell\\x00\\x7f\\x9b\\u202eevil\\u2066"
    assert visible("héllo 😀 你好") == "héllo 😀 你好"


def test_run_never_prints_raw_control_characters(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from mlplug import tokenizer

    # Whatever the model generates, make it decode to terminal escape sequences.
    monkeypatch.setattr(tokenizer.DecodeStream, "step", lambda self, t: "\x1b]0;pwned\x07\x1b[2J")
    assert main(["run", "-p", "Hi", "-n", "3", "--backend", "cpu"]) == 0
    out = capsys.readouterr().out
    assert not re.search("[\x00-\x08\x0b-\x1f\x7f]", out)
    assert "\\x1b]0;pwned\\x07\\x1b[2J" in out


# -- errors from deeper libraries -----------------------------------------------------------------


def test_corrupt_vocabulary_is_a_tokenizer_error() -> None:
    from mlplug.errors import TokenizerError
    from mlplug.tokenizer import Tokenizer

    meta = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "gpt-2",
        "tokenizer.ggml.tokens": ["a", "b", "ab"],
        "tokenizer.ggml.merges": ["x y"],  # tokens the vocabulary does not have
    }
    with pytest.raises(TokenizerError, match="vocabulary is unusable") as info:
        Tokenizer.from_metadata(meta)
    assert isinstance(info.value, ValueError) and isinstance(info.value, mlplug.MlplugError)
    assert type(info.value.__cause__) is Exception  # the tokenizers library's own error


def test_special_token_id_outside_the_vocabulary_is_ignored() -> None:
    from mlplug.tokenizer import Tokenizer

    meta = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "gpt-2",
        "tokenizer.ggml.tokens": ["a", "b", "ab"],
        "tokenizer.ggml.merges": ["a b"],
        "tokenizer.ggml.bos_token_id": 99,
    }
    with pytest.warns(UserWarning, match="bos_token_id = 99 is outside the 3 tokens"):
        tok = Tokenizer.from_metadata(meta)
    assert tok.bos_id is None and tok.encode("ab") == [2]


# -- info shows what a run needs ------------------------------------------------------------------


def test_info_shows_the_cache_and_graph_a_run_needs(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from mlplug._run import demo_model_path

    with demo_model_path() as path:
        assert main(["info", str(path), "-c", "256", "--json"]) == 0
        small = json.loads(capsys.readouterr().out)
        assert main(["info", str(path), "-c", "512", "--json"]) == 0
        big = json.loads(capsys.readouterr().out)
    assert small["ctx_size"] == 256 and big["ctx_size"] == 512
    cpu_small, cpu_big = small["memory"]["CPU"], big["memory"]["CPU"]
    assert "Cache" in cpu_small and "Graph" in cpu_small  # not 0 B any more
    # Twice the context, twice the cache: sizes are the cache's, not a constant.
    size = lambda text: sum(int(m[:-1]) for m in text.strip("[]").split())  # noqa: E731
    assert size(cpu_big["Cache"]) == 2 * size(cpu_small["Cache"])
