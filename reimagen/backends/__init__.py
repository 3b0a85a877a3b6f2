"""Array backends. Each is a sub-package with the same files (torch/, jax/) and is imported only
when asked for by name, so listing components never imports a framework."""

from __future__ import annotations

import importlib

from reimagen.core.hookspecs import hookimpl


def _lazy(module_name: str):
    def factory():
        return importlib.import_module(module_name).BACKEND

    return factory


@hookimpl
def reimagen_register_backends(register):
    register("torch", _lazy("reimagen.backends.torch"))
    register("jax", _lazy("reimagen.backends.jax"))
