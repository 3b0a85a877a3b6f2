"""Sinusoidal time features shared by both backends (Ho et al. 2020, §B; Vaswani et al. 2017).

    features(t) = [sin(TIME_SCALE·t·ω_i), cos(TIME_SCALE·t·ω_i)],  ω_i = MAX_PERIOD^(−i/half)

for t ∈ [0, 1] and i = 0 … half−1. TIME_SCALE·t spans 0 … 1000 (DDPM's integer steps), so the
argument of the fastest feature reaches 1000 rad. In float32 one ulp at 1000 is 6.1e-5, and
two backends that round ω_i or the product differently (``exp`` differs by an ulp between
libraries) disagree by that much in the features: far above a 1e-5 parity budget.

So both backends evaluate the *same float32 operations on the same constants*:

    x_i  = t · r_i            r_i = TIME_SCALE·ω_i / 2π, rounded once to float32 here, on the host
    f_i  = x_i − floor(x_i)   the phase in turns, in [0, 1): exact in float32 (Sterbenz)
    θ_i  = 2π · f_i           θ_i ∈ [0, 2π)

x_i, f_i and θ_i are then bit-identical in torch and JAX (one IEEE multiply, an exact subtract,
one multiply), and only sin/cos of a small argument may differ: each library is faithful to
≤ 2 ulp of 1 there (≤ 2.4e-7), with no large-argument range reduction left to disagree on.

Against exact arithmetic the phase carries the rounding of x_i (≤ ½ ulp(159) = 7.6e-6 turns,
4.8e-5 rad at the fastest feature): the same order as the direct form's ½ ulp(1000) = 3.1e-5
rad, so the features (and networks trained with the direct form) are unchanged to that level.
"""

from __future__ import annotations

from functools import cache

import numpy as np

TIME_SCALE = 1000.0
MAX_PERIOD = 10_000.0
TWO_PI = np.float32(2.0 * np.pi)  # rounded once; both backends multiply by this float32


@cache
def turn_rates(half: int) -> np.ndarray:
    """[half] float32 r_i = TIME_SCALE·MAX_PERIOD^(−i/half) / 2π, computed in float64 and
    rounded once, so every backend multiplies t by the same numbers. Computed once per width
    (every network forward asks for it) and read-only, since the cached array is shared."""
    i = np.arange(half, dtype=np.float64)
    omega = MAX_PERIOD ** (-i / half)
    rates = (TIME_SCALE * omega / (2.0 * np.pi)).astype(np.float32)
    rates.flags.writeable = False
    return rates
