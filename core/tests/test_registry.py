"""The registry and plugin discovery, with fake entry points (SEMANTICS §10)."""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from importlib import metadata

import pytest

import mlplug
from mlplug import (
    BackendNotFoundError,
    BackendParams,
    BackendUnavailableError,
    DuplicateBackendError,
)
from mlplug.device import hookimpl
from mlplug.engine import EngineFactory
from mlplug.registry import Registry
from toy_device import toy_plugin

TOY, _ = toy_plugin()
TOY_FACTORY = EngineFactory(TOY)


def _module(name: str, **attrs: object) -> str:
    mod = types.ModuleType(name)
    for key, value in attrs.items():
        setattr(mod, key, value)
    sys.modules[name] = mod
    return name


@pytest.fixture
def fake_eps(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[metadata.EntryPoint]]:
    eps: list[metadata.EntryPoint] = []

    def entry_points(group: str) -> list[metadata.EntryPoint]:
        assert group == "mlplug.backends"
        return list(eps)

    monkeypatch.setattr(metadata, "entry_points", entry_points)
    monkeypatch.delenv("MLPLUG_BACKEND", raising=False)
    yield eps
    for name in [m for m in sys.modules if m.startswith("fakeplug_")]:
        del sys.modules[name]


def ep(name: str, value: str) -> metadata.EntryPoint:
    return metadata.EntryPoint(name=name, value=value, group="mlplug.backends")


def hook_module(modname: str, backend: str, factory=TOY_FACTORY, **kw: object) -> str:
    @hookimpl
    def mlplug_register_backends(registry):  # type: ignore[no-untyped-def]
        registry.register_backend(backend, factory, **kw)

    return _module(modname, mlplug_register_backends=mlplug_register_backends)


def test_discovery_is_lazy_and_happens_once(fake_eps: list) -> None:
    reg = Registry()
    fake_eps.append(ep("toy", hook_module("fakeplug_a", "toy")))
    assert reg._entries == {}
    assert [i.name for i in reg.list_backends()] == ["toy"]
    fake_eps.append(ep("late", hook_module("fakeplug_b", "late")))
    assert [i.name for i in reg.list_backends()] == ["toy"]  # read once per process
    backend = reg.new_backend(None, BackendParams(), "toy")
    assert isinstance(backend, mlplug.Backend)
    backend.close()


def test_plain_callable_entry_point(fake_eps: list) -> None:
    def register(registry):  # type: ignore[no-untyped-def]
        registry.register_backend("plain", EngineFactory(TOY), priority=3)

    mod = _module("fakeplug_plain", register=register)
    fake_eps.append(ep("plain", f"{mod}:register"))
    info = Registry().list_backends()[0]
    assert (info.name, info.available, info.priority, info.provider) == (
        "plain",
        True,
        3,
        "fakeplug_plain:register",
    )


def test_broken_plugins_are_listed_with_reasons(fake_eps: list) -> None:
    def boom(registry):  # type: ignore[no-untyped-def]
        raise RuntimeError("driver missing")

    fake_eps.extend(
        [
            ep("missing", "fakeplug_does_not_exist"),
            ep("boom", f"{_module('fakeplug_boom', register=boom)}:register"),
            ep("liar", hook_module("fakeplug_liar", "other")),
            ep("good", hook_module("fakeplug_good", "good")),
        ]
    )
    reg = Registry()
    with pytest.warns(RuntimeWarning) as caught:
        infos = {i.name: i for i in reg.list_backends()}
    assert len(caught) == 3  # one warning per broken plugin
    assert not infos["missing"].available and "cannot import" in infos["missing"].reason
    assert not infos["boom"].available and "driver missing" in infos["boom"].reason
    assert not infos["liar"].available and "different name" in infos["liar"].reason
    assert infos["good"].available
    with pytest.raises(BackendUnavailableError, match="driver missing"):
        reg.new_backend(None, BackendParams(), "boom")
    reg.new_backend(None, BackendParams(), "good").close()


def test_conflicting_distributions(fake_eps: list) -> None:
    other, _ = toy_plugin()
    fake_eps.extend(
        [
            ep("dup", hook_module("fakeplug_d1", "dup")),
            ep("dup", hook_module("fakeplug_d2", "dup", factory=EngineFactory(other))),
        ]
    )
    reg = Registry()
    info = reg.list_backends()[0]
    assert not info.available and "fakeplug_d1" in info.reason and "fakeplug_d2" in info.reason
    with pytest.raises(DuplicateBackendError):
        reg.new_backend(None, BackendParams(), "dup")


def test_register_backend_rules(fake_eps: list) -> None:
    reg = Registry()
    reg.register_backend("toy", EngineFactory(TOY))
    reg.register_backend("toy", EngineFactory(TOY))  # same factory: no-op
    other, _ = toy_plugin()
    with pytest.raises(DuplicateBackendError):
        reg.register_backend("toy", EngineFactory(other))
    for bad in ("Toy", "1x", "a-b", ""):
        with pytest.raises(ValueError):
            reg.register_backend(bad, EngineFactory(TOY))
    assert reg.list_backends()[0].provider == "register_backend"
    reg.unregister_backend("toy")
    assert reg.list_backends() == []


def test_selection_order(fake_eps: list, monkeypatch: pytest.MonkeyPatch) -> None:
    reg = Registry()
    made: list[str] = []

    def factory_for(name: str):  # type: ignore[no-untyped-def]
        def factory(path, params):  # type: ignore[no-untyped-def]
            made.append(name)
            return EngineFactory(TOY)(path, params)

        return factory

    reg.register_backend("bbb", factory_for("bbb"), priority=5)
    reg.register_backend("aaa", factory_for("aaa"), priority=5)
    reg.register_backend("low", factory_for("low"), priority=0)
    reg.register_backend(
        "off", factory_for("off"), priority=99, probe=lambda: (False, "no device here")
    )
    reg.new_backend().close()
    assert made[-1] == "aaa"  # highest available priority, ties by name
    monkeypatch.setenv("MLPLUG_BACKEND", "low")
    reg.new_backend().close()
    assert made[-1] == "low"
    reg.new_backend(None, None, "bbb").close()  # the argument beats the environment
    assert made[-1] == "bbb"
    with pytest.raises(BackendUnavailableError, match="no device here") as info:
        reg.new_backend(None, None, "off")
    assert info.value.reason == "no device here"
    monkeypatch.setenv("MLPLUG_BACKEND", "nosuch")
    with pytest.raises(BackendNotFoundError, match="available: aaa, bbb, low") as err:
        reg.new_backend()
    assert not isinstance(err.value, BackendUnavailableError)


def test_nothing_available(fake_eps: list) -> None:
    reg = Registry()
    reg.register_backend("off", EngineFactory(TOY), probe=lambda: (False, "absent"))
    with pytest.raises(BackendNotFoundError, match=r'off \(absent\).*pip install "mlplug\[cpu\]"'):
        reg.new_backend()


def test_probe_that_raises_counts_as_unavailable(fake_eps: list) -> None:
    reg = Registry()

    def probe() -> tuple[bool, str]:
        raise OSError("libcuda.so not found")

    reg.register_backend("cuda", EngineFactory(TOY), probe=probe)
    info = reg.list_backends()[0]
    assert not info.available and "libcuda.so" in info.reason
    assert info.install_hint == 'pip install "mlplug[cuda]"'


def test_factory_import_error_becomes_unavailable(fake_eps: list) -> None:
    reg = Registry()

    def factory(path, params):  # type: ignore[no-untyped-def]
        raise ImportError("No module named 'cupy'")

    reg.register_backend("cuda", factory)
    with pytest.raises(BackendUnavailableError, match="cupy"):
        reg.new_backend(None, None, "cuda")


def test_a_misspelt_hook_makes_the_plugin_unavailable(fake_eps: list) -> None:
    # pluggy ignores an implementation whose name matches no spec unless asked (check_pending):
    # without the check the typo below would silently never be called.
    @hookimpl
    def mlplug_memory_setting(backend, gpus, gpu_memory, cpu_memory):  # type: ignore[no-untyped-def]
        return None

    typo = hook_module("fakeplug_typo", "typo")
    sys.modules[typo].mlplug_memory_setting = mlplug_memory_setting  # type: ignore[attr-defined]
    fake_eps.extend([ep("typo", typo), ep("good", hook_module("fakeplug_fine", "good"))])
    reg = Registry()
    with pytest.warns(RuntimeWarning, match="mlplug_memory_setting") as caught:
        infos = {i.name: i for i in reg.list_backends()}
    assert len(caught) == 1
    assert not infos["typo"].available
    assert "unknown hook 'mlplug_memory_setting'" in infos["typo"].reason
    assert infos["good"].available
    with pytest.raises(BackendUnavailableError, match="mlplug_memory_setting"):
        reg.new_backend(None, BackendParams(), "typo")
    assert reg.plugin_manager.get_plugin("typo") is None  # its hooks are never called
