"""reimagen: Re-Imagen (retrieval-augmented cascaded text-to-image diffusion) as composable parts.

    import reimagen
    cascade = reimagen.load("default")   # the shipped base + SR cascade, tuned sampling
    base, sr = cascade.generate(["a large beaver in the centre on a yellow background"])

What a user needs is importable from here. ``import reimagen`` stays cheap: the names below are
imported on first use (no numpy, torch or JAX until then; tests/test_core_imports.py).
"""

import importlib

from reimagen.core.hookspecs import hookimpl
from reimagen.core.registry import get, names

# name -> module that defines it, imported on first attribute access (PEP 562)
_LAZY = {
    "load": "reimagen.generation.pretrained",
    "Cascade": "reimagen.generation.cascade",
    "Stage": "reimagen.generation.cascade",
    "Pipeline": "reimagen.generation.pipeline",
    "Generation": "reimagen.generation.pipeline",
    "SamplingConfig": "reimagen.diffusion.sampling_config",
    "KnowledgeBase": "reimagen.kb.knowledge_base",
}

__all__ = [
    "Cascade",
    "Generation",
    "KnowledgeBase",
    "Pipeline",
    "SamplingConfig",
    "Stage",
    "__version__",
    "get",
    "hookimpl",
    "load",
    "names",
]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'reimagen' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # cached: the next access is a plain lookup
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
