"""The backend's settings: ``MLPLUG_RAY_*`` environment variables, read when it is built."""

from __future__ import annotations

import os

from mlplug.device import parse_size

__all__ = [
    "ENV_ADDRESS",
    "ENV_MEMORY_LIMIT",
    "ENV_MODEL_PATHS",
    "ENV_NODES",
    "ENV_TIMEOUT",
    "ENV_WEIGHTS",
    "env_int",
    "env_size",
    "model_paths",
    "weights_pushed",
]

ENV_ADDRESS = "MLPLUG_RAY_ADDRESS"
ENV_NODES = "MLPLUG_RAY_NODES"
ENV_MEMORY_LIMIT = "MLPLUG_RAY_MEMORY_LIMIT"
ENV_TIMEOUT = "MLPLUG_RAY_TIMEOUT"
ENV_MODEL_PATHS = "MLPLUG_RAY_MODEL_PATHS"
ENV_WEIGHTS = "MLPLUG_RAY_WEIGHTS"


def env_size(name: str) -> int | None:
    """Return a size variable in bytes (``512MiB``, ``2G``...), ``None`` when unset.

    Raises:
        ValueError: Not a size (naming the variable).
    """
    text = os.environ.get(name, "").strip()
    if not text:
        return None
    try:
        return parse_size(text)
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from err


def env_int(name: str, default: int | None) -> int | None:
    """Return a positive integer variable, ``default`` when unset.

    Raises:
        ValueError: Not a positive integer (naming the variable).
    """
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{name}={text!r}: expected a positive integer")
    return value


def model_paths(count: int) -> dict[int, str]:
    """Parse ``MLPLUG_RAY_MODEL_PATHS``: one path for every node, or ``RAY0=PATH,RAY1=PATH``.

    Raises:
        ValueError: An entry names no node device of this backend.
    """
    text = os.environ.get(ENV_MODEL_PATHS, "").strip()
    if not text:
        return {}
    if "=" not in text:
        return dict.fromkeys(range(count), text)
    paths: dict[int, str] = {}
    for entry in text.split(","):
        name, _, path = entry.strip().partition("=")
        index = name.strip().upper().removeprefix("RAY")
        if not index.isdigit() or int(index) >= count or not path.strip():
            raise ValueError(
                f"{ENV_MODEL_PATHS}: {entry.strip()!r}: expected RAY<i>=PATH with i < {count}"
            )
        paths[int(index)] = path.strip()
    return paths


def weights_pushed() -> bool:
    """Return whether weights are pushed from the coordinator (``MLPLUG_RAY_WEIGHTS``).

    Raises:
        ValueError: Neither ``file`` nor ``push``.
    """
    mode = os.environ.get(ENV_WEIGHTS, "").strip().lower() or "file"
    if mode not in ("file", "push"):
        raise ValueError(f"{ENV_WEIGHTS}={mode!r}: expected 'file' or 'push'")
    return mode == "push"
