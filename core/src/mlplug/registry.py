"""The backend registry and plugin discovery (SEMANTICS §10).

The registry is process-global. Plugins are found lazily: the first ``new_backend`` or
``list_backends`` reads the entry-point group ``mlplug.backends`` once. Each entry point is loaded
on its own, so a broken plugin is listed as unavailable (with the reason, and one warning) while
every other backend keeps working.
"""

from __future__ import annotations

import os
import re
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from typing import TYPE_CHECKING, Any

import pluggy

from mlplug import hookspecs
from mlplug.errors import (
    BackendNotFoundError,
    BackendUnavailableError,
    DuplicateBackendError,
)
from mlplug.params import BackendParams

if TYPE_CHECKING:
    from mlplug.backend import Backend
    from mlplug.device import EnginePlugin

__all__ = [
    "ENTRY_POINT_GROUP",
    "BackendInfo",
    "Registry",
    "list_backends",
    "new_backend",
    "register_backend",
    "registry",
    "unregister_backend",
]

ENTRY_POINT_GROUP = "mlplug.backends"
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_FIRST_PARTY = ("cpu", "cuda", "metal")

Factory = Callable[[Any, BackendParams], "Backend"]
Probe = Callable[[], tuple[bool, str]]


@dataclass(frozen=True, slots=True)
class BackendInfo:
    """What ``list_backends`` reports for one backend name."""

    name: str
    available: bool
    reason: str
    priority: int
    install_hint: str | None
    provider: str


@dataclass(slots=True)
class _Entry:
    name: str
    factory: Factory | None
    priority: int = 0
    probe: Probe | None = None
    install_hint: str | None = None
    provider: str = "register_backend"
    broken: str = ""  # why the plugin cannot be used at all (import failure, conflict…)
    conflict: bool = False


def _hint(name: str) -> str:
    if name in _FIRST_PARTY:
        return f'pip install "mlplug[{name}]"'
    # A name mlplug does not ship: no extra installs it (suggesting mlplug[cpu] was wrong).
    return f"install the plugin that provides {name!r} (`mlplug backends` lists what is installed)"


def _register_engine_plugin(registrar: Registry | _PluginRegistrar, plugin: EnginePlugin) -> None:
    # The engine is imported when a plugin registers, not by ``import mlplug``.
    from mlplug.engine import EngineFactory

    registrar.register_backend(
        plugin.name,
        EngineFactory(plugin),
        priority=plugin.priority,
        probe=plugin.probe,
        install_hint=plugin.install_hint,
    )


class _PluginRegistrar:
    """The object a plugin's hook receives: registers only the entry point's own name."""

    def __init__(self, owner: Registry, ep_name: str, provider: str) -> None:
        self._owner = owner
        self._ep_name = ep_name
        self._provider = provider
        self.registered = False

    def register_backend(
        self,
        name: str,
        factory: Factory,
        *,
        priority: int = 0,
        probe: Probe | None = None,
        install_hint: str | None = None,
    ) -> None:
        if name != self._ep_name:
            raise ValueError(
                f"[registry] entry point {self._ep_name!r} registered a different name {name!r}"
            )
        self._owner._add(
            name, factory, priority, probe, install_hint, self._provider, discovered=True
        )
        self.registered = True

    def register_engine_plugin(self, plugin: EnginePlugin) -> None:
        _register_engine_plugin(self, plugin)


class Registry:
    """A set of backends by name, with entry-point discovery."""

    def __init__(self, group: str = ENTRY_POINT_GROUP) -> None:
        self._group = group
        self._entries: dict[str, _Entry] = {}
        self._discovered = False
        self._lock = threading.RLock()
        self.plugin_manager = pluggy.PluginManager("mlplug")
        self.plugin_manager.add_hookspecs(hookspecs)

    # -- registration ---------------------------------------------------------------------------

    def register_backend(
        self,
        name: str,
        factory: Factory,
        *,
        priority: int = 0,
        probe: Probe | None = None,
        install_hint: str | None = None,
    ) -> None:
        """Register ``factory(model_path, params) -> Backend`` under ``name``.

        Registering a name again with the same factory is a no-op; with a different one it
        raises ``DuplicateBackendError``.
        """
        self._add(
            name, factory, priority, probe, install_hint, "register_backend", discovered=False
        )

    def register_engine_plugin(self, plugin: EnginePlugin) -> None:
        """Register a device plugin: the core engine over the devices ``plugin.load`` returns."""
        _register_engine_plugin(self, plugin)

    def _add(
        self,
        name: str,
        factory: Factory,
        priority: int,
        probe: Probe | None,
        install_hint: str | None,
        provider: str,
        *,
        discovered: bool,
    ) -> None:
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"[registry] backend name must match [a-z][a-z0-9_]*, got {name!r}")
        if not callable(factory):
            raise TypeError(f"[registry] factory for {name!r} is not callable")
        with self._lock:
            old = self._entries.get(name)
            if old is not None and not old.broken:
                if old.factory is factory or old.factory == factory:
                    return
                if discovered:
                    old.broken = (
                        f"conflict: {name!r} is provided by both {old.provider} and {provider}"
                    )
                    old.conflict = True
                    return
                raise DuplicateBackendError(
                    f"[registry] {name!r} is already registered by {old.provider} with another "
                    "factory"
                )
            if old is not None and old.conflict:
                return
            self._entries[name] = _Entry(
                name, factory, int(priority), probe, install_hint, provider
            )

    def unregister_backend(self, name: str) -> None:
        """Remove ``name`` (for tests). Unknown names are ignored."""
        with self._lock:
            self._entries.pop(name, None)

    # -- discovery ------------------------------------------------------------------------------

    def discover(self) -> None:
        """Read the entry-point group once per registry (later calls do nothing)."""
        with self._lock:
            if self._discovered:
                return
            self._discovered = True
            for ep in metadata.entry_points(group=self._group):
                self._load_entry_point(ep)
            self._check_pending()

    def _check_pending(self) -> None:
        """Make a plugin with a hook implementation no spec knows (a misspelt name) unavailable.

        pluggy only checks hook names on request (``PluginManager.check_pending``); without it
        ``@hookimpl def mlplug_memory_setting(...)`` would be ignored without a word.
        """
        while True:
            try:
                self.plugin_manager.check_pending()
                return
            except pluggy.PluginValidationError as err:
                name = self.plugin_manager.get_name(err.plugin) or repr(err.plugin)
                self.plugin_manager.unregister(err.plugin)
                entry = self._entries.get(name)
                provider = entry.provider if entry is not None else name
                reason = f"{err} (no such hook: see mlplug.hookspecs)"
                warnings.warn(
                    f"mlplug plugin {name!r} ({provider}) is unavailable: {reason}",
                    RuntimeWarning,
                    stacklevel=4,
                )
                self._entries[name] = _Entry(name, None, provider=provider, broken=reason)

    def _load_entry_point(self, ep: metadata.EntryPoint) -> None:
        dist = getattr(ep, "dist", None)
        provider = f"{dist.name} {dist.version}" if dist is not None else ep.value
        try:
            plugin = ep.load()
        except Exception as err:
            self._broken(ep.name, provider, f"cannot import {ep.value}: {err!r}")
            return
        registrar = _PluginRegistrar(self, ep.name, provider)
        try:
            hook = getattr(plugin, "mlplug_register_backends", None)
            if hook is not None:
                if self.plugin_manager.get_plugin(ep.name) is None:
                    self.plugin_manager.register(plugin, name=ep.name)
                hook(registry=registrar)
            elif callable(plugin):
                plugin(registrar)
            else:
                raise TypeError("entry point object has no mlplug_register_backends hook")
        except Exception as err:
            self._broken(ep.name, provider, f"registration failed: {err}")
            return
        if not registrar.registered and ep.name not in self._entries:
            self._broken(ep.name, provider, "the plugin registered no backend")

    def _broken(self, name: str, provider: str, reason: str) -> None:
        warnings.warn(
            f"mlplug plugin {name!r} ({provider}) is unavailable: {reason}",
            RuntimeWarning,
            stacklevel=3,
        )
        if name not in self._entries:
            self._entries[name] = _Entry(name, None, provider=provider, broken=reason)

    # -- queries --------------------------------------------------------------------------------

    def _availability(self, entry: _Entry) -> tuple[bool, str]:
        if entry.broken:
            return False, entry.broken
        if entry.probe is None:
            return True, ""
        try:
            ok, reason = entry.probe()
        except Exception as err:
            return False, f"probe raised {err!r}"
        return bool(ok), str(reason)

    def list_backends(self) -> list[BackendInfo]:
        """Return every backend known, sorted by name, with availability and reasons."""
        self.discover()
        with self._lock:
            entries = sorted(self._entries.values(), key=lambda e: e.name)
        infos = []
        for e in entries:
            ok, reason = self._availability(e)
            infos.append(
                BackendInfo(
                    e.name, ok, reason, e.priority, e.install_hint or _hint(e.name), e.provider
                )
            )
        return infos

    def _describe(self, infos: list[BackendInfo]) -> str:
        ok = [i.name for i in infos if i.available]
        bad = [f"{i.name} ({i.reason})" for i in infos if not i.available]
        text = f"available: {', '.join(ok) or 'none'}"
        if bad:
            text += f"; unavailable: {'; '.join(bad)}"
        return text

    def new_backend(
        self,
        model_path: Any = None,
        params: BackendParams | None = None,
        backend: str | None = None,
    ) -> Backend:
        """Construct a backend chosen by argument, ``MLPLUG_BACKEND``, or highest priority."""
        params = BackendParams() if params is None else params
        infos = self.list_backends()
        name = backend or os.environ.get("MLPLUG_BACKEND") or None
        if name is None:
            candidates = sorted(
                (i for i in infos if i.available), key=lambda i: (-i.priority, i.name)
            )
            if not candidates:
                raise BackendNotFoundError(
                    f"[registry] no backend is available ({self._describe(infos)}); "
                    f"install one: {_hint('cpu')}"
                )
            name = candidates[0].name
        with self._lock:
            entry = self._entries.get(name)
        if entry is None:
            raise BackendNotFoundError(
                f"[registry] unknown backend {name!r} ({self._describe(infos)}); {_hint(name)}"
            )
        if entry.conflict:
            raise DuplicateBackendError(f"[registry] {entry.broken}")
        ok, reason = self._availability(entry)
        hint = entry.install_hint or _hint(name)
        if not ok:
            raise BackendUnavailableError(
                f"[registry] backend {name!r} is unavailable: {reason} ({hint})",
                reason=reason,
                install_hint=hint,
            )
        assert entry.factory is not None
        try:
            return entry.factory(None if model_path is None else os.fspath(model_path), params)
        except ImportError as err:
            raise BackendUnavailableError(
                f"[registry] backend {name!r} is unavailable: {err} ({hint})",
                reason=str(err),
                install_hint=hint,
            ) from err

    def hook(self) -> Any:
        """Return the plugin manager's hook relay (after discovery)."""
        self.discover()
        return self.plugin_manager.hook


registry = Registry()
"""The process-global registry."""


def register_backend(
    name: str,
    factory: Factory,
    *,
    priority: int = 0,
    probe: Probe | None = None,
    install_hint: str | None = None,
) -> None:
    """Register a backend factory in the global registry (see :meth:`Registry.register_backend`)."""
    registry.register_backend(
        name, factory, priority=priority, probe=probe, install_hint=install_hint
    )


def unregister_backend(name: str) -> None:
    """Remove a backend name from the global registry."""
    registry.unregister_backend(name)


def list_backends() -> list[BackendInfo]:
    """Return every known backend, sorted by name."""
    return registry.list_backends()


def new_backend(
    model_path: Any = None, params: BackendParams | None = None, backend: str | None = None
) -> Backend:
    """Construct a new backend (SEMANTICS §10 selection rules)."""
    return registry.new_backend(model_path, params, backend)
