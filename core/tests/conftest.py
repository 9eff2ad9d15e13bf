"""Fixtures for core tests (the toy device lives in ``toy_device.py``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import mlplug
from mlplug.engine import EngineFactory
from toy_device import toy_plugin


@pytest.fixture
def toy() -> Iterator[mlplug.Backend]:
    """A backend on one toy CPU device."""
    plugin, _ = toy_plugin()
    backend = EngineFactory(plugin)(None, mlplug.BackendParams())
    yield backend
    backend.close()


@pytest.fixture
def ctx(toy: mlplug.Backend) -> Iterator[mlplug.Context]:
    c = toy.new_context()
    yield c
    c.close()
