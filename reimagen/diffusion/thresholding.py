"""x̂0 thresholding (docs/design.md §3): static clipping and Imagen's dynamic thresholding.

With a strong guidance weight (the paper uses w = 30 at 64×, §4.2) the guided x̂0 of Eq. 3 leaves
[−1, 1] by a wide margin, and clipping it to [−1, 1] ("static") saturates the samples. Imagen's
dynamic thresholding (Saharia et al. 2022, §2.3) instead picks, per sample, s = the p-quantile of
|x̂0| (at least 1), clips x̂0 to [−s, s] and divides by s, which pulls saturated pixels inwards.

Backend-neutral: the arithmetic is shared operators plus the sort-based quantile of
:mod:`reimagen.core.array_ops`, so numpy, torch and jax arrays go through the same code.
"""

from __future__ import annotations

from typing import Any

import attrs

from reimagen.core.array_ops import per_sample, per_sample_quantile
from reimagen.core.config import ConfigError, ConfigMixin, config, in_range, one_of

KINDS = ("none", "static", "dynamic")


@config
class Thresholding(ConfigMixin):
    """How the sampler clips x̂0 each step; call it on x̂0 [B, H, W, C].

    ``percentile`` is the quantile level p as a fraction (0.995 = Imagen's 99.5th percentile);
    it is used by ``dynamic`` only.
    """

    kind: str = attrs.field(default="dynamic", validator=one_of(*KINDS))
    percentile: float = attrs.field(default=0.995, validator=in_range(0.0, 1.0))

    def __call__(self, x0_hat: Any) -> Any:
        if self.kind == "none":
            return x0_hat
        if self.kind == "static":
            return x0_hat.clip(min=-1.0, max=1.0)
        return dynamic_threshold(x0_hat, self.percentile)


def dynamic_threshold(x0_hat: Any, percentile: float) -> Any:
    """s = max(1, quantile_p(|x̂0|)) per sample; x̂0 ← clip(x̂0, −s, s)/s. [B, ...] -> [B, ...]"""
    s = per_sample_quantile(abs(x0_hat), percentile).clip(min=1.0)  # [B]
    s = per_sample(s, x0_hat.ndim)  # [B, 1, 1, 1]
    return x0_hat.clip(min=-s, max=s) / s


def as_thresholding(value: Any) -> Thresholding:
    """None / a kind name / a Thresholding -> Thresholding; anything else is a ConfigError."""
    if value is None:
        return Thresholding(kind="none")
    if isinstance(value, Thresholding):
        return value
    if isinstance(value, str) and value in KINDS:
        return Thresholding(kind=value)
    raise ConfigError(
        "thresholding must be None, a Thresholding or one of "
        f"{', '.join(map(repr, KINDS))}; got {value!r}"
    )
