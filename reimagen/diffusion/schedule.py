"""The continuous-time cosine noise schedule (docs/design.md §3, paper §3.1).

t ∈ [0, 1]; x_t = √ᾱ(t)·x0 + √(1−ᾱ(t))·ε. The cosine schedule ᾱ(t) = cos²(π/2·t) is written
through its log-SNR, λ(t) = log(ᾱ/(1−ᾱ)) = −2·log tan(π/2·t), clipped to [λ_min, λ_max] so that
both ends stay finite (t=0 is "clean", which is where neighbours are encoded, docs/design.md §4).
Pure numpy: samplers evaluate it on the host and hand scalars to the backends.
"""

from __future__ import annotations

import math

import attrs
import numpy as np

from reimagen.core.config import ConfigMixin, config, in_range


@config
class CosineSchedule(ConfigMixin):
    logsnr_min: float = attrs.field(default=-20.0, validator=in_range(-40.0, 0.0))
    logsnr_max: float = attrs.field(default=20.0, validator=in_range(0.0, 40.0))

    @property
    def _t_bounds(self) -> tuple[float, float]:
        # λ(t) = −2 log tan(a·t + b), with a, b chosen so λ(0)=λ_max and λ(1)=λ_min.
        b = math.atan(math.exp(-0.5 * self.logsnr_max))
        a = math.atan(math.exp(-0.5 * self.logsnr_min)) - b
        return a, b

    def logsnr(self, t):
        """λ(t), the log signal-to-noise ratio; t is a float or numpy array in [0, 1]."""
        a, b = self._t_bounds
        return -2.0 * np.log(np.tan(a * np.asarray(t, dtype=np.float64) + b))

    def t_of_logsnr(self, logsnr):
        """The inverse of :meth:`logsnr`: t with λ(t) = ``logsnr`` (clipped to [λ_min, λ_max])."""
        a, b = self._t_bounds
        lam = np.clip(np.asarray(logsnr, dtype=np.float64), self.logsnr_min, self.logsnr_max)
        return np.clip((np.arctan(np.exp(-0.5 * lam)) - b) / a, 0.0, 1.0)

    def alpha_bar(self, t):
        """ᾱ(t) = sigmoid(λ(t))."""
        return _sigmoid(self.logsnr(t))

    def alpha_sigma(self, t):
        """(√ᾱ(t), √(1−ᾱ(t))), the signal and noise scales of x_t."""
        lam = self.logsnr(t)
        return np.sqrt(_sigmoid(lam)), np.sqrt(_sigmoid(-lam))

    def time_grid(self, steps: int) -> np.ndarray:
        """steps+1 times from 1 (pure noise) down to 0 (clean), float64."""
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        return np.linspace(1.0, 0.0, steps + 1)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))
