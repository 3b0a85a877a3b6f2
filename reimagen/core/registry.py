"""The component registry (docs/design.md §2): pluggy hooks fill plain dicts; lookups are functions.

    >>> from reimagen.core import registry
    >>> registry.names("guidance")
    ['interleaved', 'joint', 'none', 'weighted']
    >>> strategy = registry.get("guidance", "interleaved")(eta=0.5, w_text=3.0, w_neighbors=3.0)

Set ``REIMAGEN_DISABLE_PLUGIN_AUTOLOAD=1`` to load only the built-ins (no entry points).
"""

from __future__ import annotations

import importlib
import os
import threading
from collections.abc import Callable
from typing import Any

import pluggy

from reimagen.core import hookspecs
from reimagen.core.hookspecs import HOOKS, PROJECT

ENTRY_POINT_GROUP = PROJECT
AUTOLOAD_ENV = "REIMAGEN_DISABLE_PLUGIN_AUTOLOAD"

# Built-ins register through the same hooks as third parties.
DEFAULT_PLUGINS = (
    "reimagen.encoders",
    "reimagen.retrievers",
    "reimagen.diffusion.guidance",
    "reimagen.diffusion.samplers",
    "reimagen.backends",
    "reimagen.kb",
    "reimagen.core.unet_config",
    "reimagen.bench.evaluators",
)


class RegistryError(LookupError):
    """An unknown or duplicate component name."""


class Registry:
    """kind -> {name: factory}. Filled once from the plugin manager, then only read."""

    def __init__(self, manager: pluggy.PluginManager):
        self.manager = manager
        self._table: dict[str, dict[str, Callable]] = {kind: {} for kind in HOOKS}
        self._origin: dict[tuple[str, str], str] = {}
        for kind, hook_name in HOOKS.items():
            hook = getattr(manager.hook, hook_name)
            for impl in hook.get_hookimpls():
                plugin_name = manager.get_name(impl.plugin) or repr(impl.plugin)
                impl.function(register=self._registrar(kind, plugin_name))

    def _registrar(self, kind: str, plugin_name: str) -> Callable[[str, Callable], None]:
        def register(name: str, factory: Callable) -> None:
            if not isinstance(name, str) or not name:
                raise RegistryError(f"{kind} name must be a non-empty string, got {name!r}")
            if name in self._table[kind]:
                first = self._origin[(kind, name)]
                raise RegistryError(
                    f"duplicate {kind} name {name!r}: registered by {first} and by {plugin_name}"
                )
            self._table[kind][name] = factory
            self._origin[(kind, name)] = plugin_name

        return register

    def names(self, kind: str) -> list[str]:
        return sorted(self._kind(kind))

    def get(self, kind: str, name: str) -> Callable:
        table = self._kind(kind)
        if not isinstance(name, str) or name not in table:
            known = ", ".join(sorted(table)) or "(none)"
            raise RegistryError(f"unknown {kind} {name!r}; known {kind} names: {known}")
        return table[name]

    def origin(self, kind: str, name: str) -> str:
        self.get(kind, name)
        return self._origin[(kind, name)]

    def _kind(self, kind: str) -> dict[str, Callable]:
        if not isinstance(kind, str) or kind not in self._table:
            raise RegistryError(f"unknown component kind {kind!r}; known kinds: {', '.join(HOOKS)}")
        return self._table[kind]


def make_manager(extra_plugins: tuple[Any, ...] = (), autoload: bool | None = None):
    """A plugin manager with the built-ins, entry points (unless disabled) and ``extra_plugins``."""
    manager = pluggy.PluginManager(PROJECT)
    manager.add_hookspecs(hookspecs)
    for module_name in DEFAULT_PLUGINS:
        manager.register(importlib.import_module(module_name), name=module_name)
    if autoload is None:
        autoload = not os.environ.get(AUTOLOAD_ENV)
    if autoload:
        manager.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    for plugin in extra_plugins:
        manager.register(plugin)
    manager.check_pending()
    return manager


_lock = threading.Lock()
_registry: Registry | None = None


def default_registry() -> Registry:
    global _registry
    with _lock:
        if _registry is None:
            _registry = Registry(make_manager())
        return _registry


def reset(extra_plugins: tuple[Any, ...] = (), autoload: bool | None = None) -> Registry:
    """Rebuild the process registry (tests use this to add mock plugins)."""
    global _registry
    with _lock:
        _registry = Registry(make_manager(extra_plugins, autoload))
        return _registry


def names(kind: str) -> list[str]:
    """Registered names of one component kind, sorted."""
    return default_registry().names(kind)


def get(kind: str, name: str) -> Callable:
    """The factory registered as ``name`` for ``kind``; unknown name -> RegistryError listing all."""
    return default_registry().get(kind, name)


def kinds() -> list[str]:
    return list(HOOKS)
