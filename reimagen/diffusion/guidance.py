"""Classifier-free guidance strategies for two conditions (paper Eq. 5, Eq. 6, Appendix E).

Re-Imagen's network sees two conditions, the text prompt c_p and the retrieved neighbours c_n,
and was trained with each dropped independently (docs/design.md §4), so it predicts ε under four
condition *variants*: ``full`` (c_p, c_n), ``text`` (c_p), ``neighbors`` (c_n) and ``none``.
A strategy says which variants a step needs and how their predictions combine:

    none         ε̂ = ε(full)                                                     1 variant
    joint        ε̂ = w·ε(full) − (w−1)·ε(none)                          Eq. 5   2 variants
    weighted     ε̂ = η·ε̂_p + (1−η)·ε̂_n                                 App. E  3 variants
    interleaved  ε̂ = ε̂_p if R < η else ε̂_n  (R ~ U[0,1) drawn per step)  §3.2   2 variants
with (Eq. 6) the text-enhanced ε̂_p = w_p·ε(full) − (w_p−1)·ε(neighbors)
     and the neighbour-enhanced ε̂_n = w_n·ε(full) − (w_n−1)·ε(text).

Guidance lives outside the network: the sampler asks ``variants(R)``, evaluates them in one
batched denoiser call and hands the predictions to ``combine``. The arithmetic is written once
with ``*`` and ``-`` only, so it runs unchanged on numpy, torch and jax arrays.

Registered through the same pluggy hook third-party strategies use; build one by name with
``reimagen.core.registry.get("guidance", name)(**weights)`` or :func:`get_guidance`.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import attrs

from reimagen.core.config import ConfigError, ConfigMixin, config, in_range
from reimagen.core.hookspecs import hookimpl
from reimagen.core.interfaces import GuidanceStrategy


def _finite_number(inst, attribute, value):
    # in_range lets NaN through (every comparison with NaN is False), and w = inf turns ε̂ into
    # inf − inf = NaN, so weights must be finite real numbers.
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ConfigError(
            f"{type(inst).__name__}.{attribute.name} must be a finite number, got {value!r}"
        )


def _weight(default: float):
    """A guidance weight w ≥ 1 (w = 1 is no guidance)."""
    return attrs.field(default=default, validator=[_finite_number, in_range(1.0, None)])


@config
class GuidanceConfig(ConfigMixin):
    """Guidance weights shared by every strategy (each reads the ones it needs)."""

    w: float = _weight(3.0)  # joint, Eq. 5
    w_text: float = _weight(3.0)  # w_p, Eq. 6
    w_neighbors: float = _weight(3.0)  # w_n, Eq. 6
    eta: float = attrs.field(default=0.5, validator=[_finite_number, in_range(0.0, 1.0)])  # η


def classifier_free(eps_cond: Any, eps_uncond: Any, w: float) -> Any:
    """w·ε(cond) − (w−1)·ε(uncond) (Eq. 5); w = 1 gives ε(cond) unchanged."""
    return w * eps_cond - (w - 1.0) * eps_uncond


def text_enhanced(eps: dict[str, Any], w_text: float) -> Any:
    """ε̂_p = w_p·ε(full) − (w_p−1)·ε(neighbors) (Eq. 6): pushes towards the text."""
    return classifier_free(eps["full"], eps["neighbors"], w_text)


def neighbor_enhanced(eps: dict[str, Any], w_neighbors: float) -> Any:
    """ε̂_n = w_n·ε(full) − (w_n−1)·ε(text) (Eq. 6): pushes towards the neighbours."""
    return classifier_free(eps["full"], eps["text"], w_neighbors)


class _Strategy(GuidanceStrategy):
    """Holds a validated GuidanceConfig; built from one or from its fields as keywords.

    ``JointGuidance(w=5.0)`` and ``JointGuidance(GuidanceConfig(w=5.0))`` are the same; an
    unknown keyword or a weight out of range is a ConfigError naming it, raised here, before
    any sampling starts.
    """

    name: str  # set by each strategy class; GuidanceStrategy declares it as str

    def __init__(self, config: GuidanceConfig | None = None, /, **weights: float):
        if config is not None and weights:
            raise ConfigError(f"{type(self).__name__}: pass a GuidanceConfig or weights, not both")
        if config is not None and not isinstance(config, GuidanceConfig):
            raise ConfigError(
                f"{type(self).__name__}: expected a GuidanceConfig, got {type(config).__name__}"
            )
        self.config = config if config is not None else GuidanceConfig.from_dict(weights)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.config == other.config

    def __hash__(self) -> int:
        return hash((type(self), self.config))


class NoGuidance(_Strategy):
    """ε̂ = ε(full): the conditional prediction, one network pass per step."""

    name = "none"

    def variants(self, draw: float) -> tuple[str, ...]:
        return ("full",)

    def combine(self, eps: dict[str, Any], draw: float) -> Any:
        return eps["full"]


class JointGuidance(_Strategy):
    """Standard classifier-free guidance on both conditions at once (Eq. 5, App. E "joint")."""

    name = "joint"

    def variants(self, draw: float) -> tuple[str, ...]:
        return ("full", "none")

    def combine(self, eps: dict[str, Any], draw: float) -> Any:
        return classifier_free(eps["full"], eps["none"], self.config.w)


class WeightedGuidance(_Strategy):
    """ε̂ = η·ε̂_p + (1−η)·ε̂_n every step (App. E "weighted"): three passes per step."""

    name = "weighted"

    def variants(self, draw: float) -> tuple[str, ...]:
        return ("full", "text", "neighbors")

    def combine(self, eps: dict[str, Any], draw: float) -> Any:
        cfg = self.config
        return cfg.eta * text_enhanced(eps, cfg.w_text) + (1.0 - cfg.eta) * neighbor_enhanced(
            eps, cfg.w_neighbors
        )


class InterleavedGuidance(_Strategy):
    """Re-Imagen's interleaved guidance (§3.2): per step, R < η → ε̂_p, else ε̂_n.

    Only the two variants the chosen prediction needs are evaluated, so it costs two passes per
    step, like joint guidance. R is the step's host-drawn uniform number (SamplerNoise), which
    makes the torch and JAX runs take the same branch at every step.
    """

    name = "interleaved"

    def _text_step(self, draw: float) -> bool:
        return float(draw) < self.config.eta

    def variants(self, draw: float) -> tuple[str, ...]:
        return ("full", "neighbors") if self._text_step(draw) else ("full", "text")

    def combine(self, eps: dict[str, Any], draw: float) -> Any:
        if self._text_step(draw):
            return text_enhanced(eps, self.config.w_text)
        return neighbor_enhanced(eps, self.config.w_neighbors)


STRATEGIES: dict[str, type[_Strategy]] = {
    cls.name: cls for cls in (NoGuidance, JointGuidance, WeightedGuidance, InterleavedGuidance)
}


def get_guidance(name: str, **weights: float) -> _Strategy:
    """The registered strategy ``name`` built with ``weights`` (GuidanceConfig fields).

    Unknown name -> RegistryError listing the known names; bad weight -> ConfigError naming it.
    """
    from reimagen.core import registry  # lazy: the registry imports this module as a plugin

    return registry.get("guidance", name)(**weights)


@hookimpl
def reimagen_register_guidance(register):
    for name, strategy in STRATEGIES.items():
        register(name, strategy)
