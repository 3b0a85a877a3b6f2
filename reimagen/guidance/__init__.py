"""Guidance strategies (DESIGN §5): ``none``, ``joint``, ``weighted``, ``interleaved``.

Registered through the same pluggy hook third-party strategies use; build one by name with
``reimagen.core.registry.get("guidance", name)(**weights)`` or :func:`get_guidance`.
"""

from __future__ import annotations

from reimagen.core.hookspecs import hookimpl
from reimagen.guidance.strategies import (
    STRATEGIES,
    GuidanceConfig,
    InterleavedGuidance,
    JointGuidance,
    NoGuidance,
    WeightedGuidance,
    classifier_free,
    neighbor_enhanced,
    text_enhanced,
)

__all__ = [
    "GuidanceConfig",
    "InterleavedGuidance",
    "JointGuidance",
    "NoGuidance",
    "WeightedGuidance",
    "classifier_free",
    "get_guidance",
    "neighbor_enhanced",
    "text_enhanced",
]


def get_guidance(name: str, **weights: float):
    """The registered strategy ``name`` built with ``weights`` (GuidanceConfig fields).

    Unknown name -> RegistryError listing the known names; bad weight -> ConfigError naming it.
    """
    from reimagen.core import registry

    return registry.get("guidance", name)(**weights)


@hookimpl
def reimagen_register_guidance(register):
    for name, strategy in STRATEGIES.items():
        register(name, strategy)
