"""Models written against the public API, chosen by a GGUF file's ``general.architecture``.

* :func:`from_backend` returns the model for a backend's file;
* :func:`check_file` checks a file (architecture, hyperparameters, every tensor's name and shape)
  from its header alone, before a backend allocates or loads anything;
* :data:`ARCHITECTURES` maps each supported architecture to its module and class: ``llama`` and
  ``qwen2`` (:mod:`mlplug.models.llama`), ``qwen3`` (:mod:`mlplug.models.qwen3`), ``gemma3``
  (:mod:`mlplug.models.gemma3`).

Every model is an :class:`mlplug.nn.Decoder`: ``new_cache(...)``, ``build``, ``reserve``,
``forward(cache, Batch) -> numpy (len(outputs), n_vocab)`` and ``n_vocab``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from importlib import import_module
from typing import TYPE_CHECKING

from mlplug.errors import UnsupportedModelError

if TYPE_CHECKING:
    from mlplug.backend import Backend
    from mlplug.config import Config
    from mlplug.nn.transformer import Decoder, TransformerConfig

__all__ = ["ARCHITECTURES", "check_file", "from_backend", "model_class"]

ARCHITECTURES: dict[str, tuple[str, str]] = {
    "llama": ("mlplug.models.llama", "Llama"),
    "qwen2": ("mlplug.models.llama", "Llama"),
    "qwen3": ("mlplug.models.qwen3", "Qwen3"),
    "gemma3": ("mlplug.models.gemma3", "Gemma3"),
}
"""``general.architecture`` → (module, class) of the model that runs it."""


def model_class(architecture: str, where: str = "the model") -> type[Decoder]:
    """Return the model class for ``architecture``.

    Raises:
        UnsupportedModelError: No model runs it; the message lists those that do.
    """
    entry = ARCHITECTURES.get(architecture)
    if entry is None:
        shown = repr(architecture) if architecture else "(general.architecture missing)"
        raise UnsupportedModelError(
            f"[models] {where}: unsupported architecture {shown} (supported: "
            f"{', '.join(ARCHITECTURES)})"
        )
    module, name = entry
    cls: type[Decoder] = getattr(import_module(module), name)
    return cls


def from_backend(backend: Backend) -> Decoder:
    """Return the model of ``backend``'s file, built on its weights.

    Raises:
        UnsupportedModelError: The file's architecture has no model here.
        ModelFileError: A required key or tensor is missing, or a tensor has the wrong shape.
    """
    from mlplug.nn.transformer import model_source

    config = backend.config()
    return model_class(config.architecture(), model_source(backend))(backend)


def check_file(path: str | os.PathLike[str]) -> TransformerConfig:
    """Check that a model of this package can run the GGUF file ``path``, reading only its header.

    The architecture, the hyperparameters and every weight's name and shape are checked, so that
    a file no model can run fails before a backend allocates or loads anything.

    Returns:
        The hyperparameters.

    Raises:
        FileNotFoundError: No such file.
        GGUFError: The file is not valid GGUF.
        UnsupportedModelError: The architecture has no model here.
        ModelFileError: A required key or tensor is missing, or a tensor has the wrong shape.
    """
    from mlplug.config import Config
    from mlplug.gguf import GGUFFile

    where = os.fspath(path)
    with GGUFFile.open(where) as file:
        config = Config(dict(file.metadata))
        shapes = {t.name: t.ne for t in file.tensors}
    return check_config(config, shapes, where)


def check_config(
    config: Config, shapes: Mapping[str, Sequence[int]], where: str = "the model"
) -> TransformerConfig:
    """Check metadata and tensor shapes (name → ggml extents) as :func:`check_file` does."""
    from mlplug.nn.transformer import check_weights

    cls = model_class(config.architecture(), where)
    cfg = cls.read_config(config, where)
    check_weights(cfg.architecture, cls.weight_specs(cfg), shapes.get, where)
    return cfg
