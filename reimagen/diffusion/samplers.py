"""Samplers (docs/design.md §3; paper Eq. 3–4): ``ddpm``, ``ddim``, ``dpmpp2m``, one shared signature.

    sample(denoiser, guidance, noise, *, steps, schedule=None, thresholding=None, callback=None)
        -> SampleResult

Time runs on the grid t_0 = 1 > t_1 > … > t_steps = 0 of the continuous cosine schedule. Step i
makes ONE batched denoiser call for the variants the guidance strategy asks for, combines them
into ε̂, turns ε̂ into x̂0 = (x_t − σ_t·ε̂)/α_t (Eq. 3), thresholds x̂0 and moves x to t_{i+1}
with the sampler's update rule. The last step returns its (thresholded) x̂0, as k-diffusion does
for the final step to σ = 0.

Notation: α_t = √ᾱ(t), σ_t = √(1−ᾱ(t)), λ_t = log(α_t²/σ_t²) (the schedule's log-SNR).

Everything random comes in through ``noise`` (drawn on the host from one seeded Generator) and
everything about the schedule is computed on the host in float64 and handed to the arrays as
Python floats, so a numpy, torch or JAX denoiser walks the same trajectory. All arguments are
checked (:func:`plan_sampling`) before the first network call.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import numpy as np

from reimagen.core.hookspecs import hookimpl
from reimagen.core.interfaces import (
    Denoiser,
    GuidanceStrategy,
    SampleResult,
    SamplerNoise,
    StepCallback,
    variant_masks,
)
from reimagen.diffusion.schedule import CosineSchedule
from reimagen.diffusion.thresholding import Thresholding, as_thresholding


@attrs.frozen
class SamplingPlan:
    """A validated run, all on the host: the time grid, its schedule scalars, the variants and
    draws of every step, and the thresholding. Index i is grid time t_i (i = 0 … steps)."""

    steps: int
    times: tuple[float, ...]  # [steps+1] t_i, from 1 down to 0
    alpha: tuple[float, ...]  # [steps+1] α_{t_i}
    sigma: tuple[float, ...]  # [steps+1] σ_{t_i}
    logsnr: tuple[float, ...]  # [steps+1] λ_{t_i}
    variants: tuple[tuple[str, ...], ...]  # [steps] the variants evaluated at step i
    draws: tuple[float, ...]  # [steps] the guidance draw R_i of step i
    threshold: Thresholding

    def result(self, x0: Any) -> SampleResult:
        return SampleResult(
            x0=x0,
            calls=self.steps,
            nfe=sum(len(v) for v in self.variants),
            variants_per_step=self.variants,
        )


def plan_sampling(
    guidance: GuidanceStrategy,
    noise: SamplerNoise,
    steps: int,
    schedule: Any = None,
    thresholding: Any = None,
) -> SamplingPlan:
    """Check every argument and precompute the run; raises ValueError naming the bad argument."""
    steps = _check_steps(steps)
    _check_noise(noise, steps)
    threshold = as_thresholding(thresholding)
    schedule = CosineSchedule() if schedule is None else schedule
    for method in ("time_grid", "logsnr", "alpha_sigma"):
        if not callable(getattr(schedule, method, None)):
            got = type(schedule).__name__
            raise TypeError(f"schedule must provide {method}() like CosineSchedule; got {got}")
    times = np.asarray(schedule.time_grid(steps), dtype=np.float64)  # [steps+1]
    alpha, sigma = (np.asarray(a, dtype=np.float64) for a in schedule.alpha_sigma(times))
    logsnr = np.asarray(schedule.logsnr(times), dtype=np.float64)
    draws = tuple(float(r) for r in noise.guidance_draws)
    return SamplingPlan(
        steps=steps,
        times=_floats(times),
        alpha=_floats(alpha),
        sigma=_floats(sigma),
        logsnr=_floats(logsnr),
        variants=tuple(_check_variants(guidance, r, i) for i, r in enumerate(draws)),
        draws=draws,
        threshold=threshold,
    )


def guided_x0(denoiser: Denoiser, guidance: GuidanceStrategy, plan: SamplingPlan, i: int, x):
    """Step i's thresholded x̂0 from one batched denoiser call. x [B, H, W, C] -> [B, H, W, C]."""
    variants = plan.variants[i]
    eps_all = denoiser(x, plan.times[i], variants)  # [V, B, H, W, C]
    if tuple(eps_all.shape) != (len(variants), *tuple(x.shape)):
        raise RuntimeError(
            f"{type(denoiser).__name__} returned ε of shape {tuple(eps_all.shape)} for "
            f"{len(variants)} variant(s) of x {tuple(x.shape)}; expected [V, B, H, W, C]"
        )
    eps = {name: eps_all[k] for k, name in enumerate(variants)}  # variant -> [B, H, W, C]
    eps_hat = guidance.combine(eps, plan.draws[i])  # guided ε̂ (Eq. 5 / Eq. 6)
    x0_hat = (x - plan.sigma[i] * eps_hat) / plan.alpha[i]  # Eq. 3
    return plan.threshold(x0_hat)


# ---- the samplers ----------------------------------------------------------------------------


def ddpm(
    denoiser: Denoiser,
    guidance: GuidanceStrategy,
    noise: SamplerNoise,
    *,
    steps: int,
    schedule: Any = None,
    thresholding: Any = None,
    callback: StepCallback | None = None,
) -> SampleResult:
    """Ancestral sampling, paper Eq. 4 (Ho et al. 2020) between grid times t > s.

    Eq. 4 draws x_s from the posterior q(x_s | x_t, x0 = x̂0): with β = 1 − ᾱ_t/ᾱ_s,
        x_s = √ᾱ_s·β/(1−ᾱ_t)·x̂0 + √(ᾱ_t/ᾱ_s)·(1−ᾱ_s)/(1−ᾱ_t)·x_t + √((1−ᾱ_s)·β/(1−ᾱ_t))·z.
    Written with the SNR ratio r = e^{λ_t − λ_s} (so 1 − r = β/(1−ᾱ_t)) it reads
        x_s = α_s(1−r)·x̂0 + (α_t σ_s²)/(α_s σ_t²)·x_t + σ_s√(1−r)·z,
    which stays accurate in float64 at both ends of the schedule. z is ``noise.step_noise[i]``.
    """
    plan = plan_sampling(guidance, noise, steps, schedule, thresholding)
    x = denoiser.asarray(noise.x_T)  # x_{t_0} [B, H, W, C]
    for i in range(plan.steps):
        x0_hat = guided_x0(denoiser, guidance, plan, i, x)
        _notify(callback, plan, i, x, x0_hat)
        if i + 1 < plan.steps:
            (a_t, s_t, l_t), (a_s, s_s, l_s) = _scalars(plan, i), _scalars(plan, i + 1)
            one_minus_r = -math.expm1(l_t - l_s)  # 1 − SNR_t/SNR_s
            c_x0 = a_s * one_minus_r
            c_x = (a_t * s_s**2) / (a_s * s_t**2)
            std = s_s * math.sqrt(one_minus_r)
            z = denoiser.asarray(noise.step_noise[i])  # [B, H, W, C]
            x = c_x0 * x0_hat + c_x * x + std * z  # Eq. 4
    return plan.result(x0_hat)


def ddim(
    denoiser: Denoiser,
    guidance: GuidanceStrategy,
    noise: SamplerNoise,
    *,
    steps: int,
    schedule: Any = None,
    thresholding: Any = None,
    callback: StepCallback | None = None,
) -> SampleResult:
    """Deterministic DDIM (η = 0; Song et al. 2021): x_s = α_s·x̂0 + σ_s·ε̂.

    ε̂ is re-derived from the thresholded x̂0, ε̂ = (x_t − α_t·x̂0)/σ_t, which gives the
    first-order exponential-integrator form of DPM-Solver++ (Lu et al. 2022, Eq. 9):
        x_s = (σ_s/σ_t)·x_t + α_s·(1 − e^{−h})·x̂0,   h = (λ_s − λ_t)/2.
    Without thresholding it is exactly DDIM's update. Uses no step noise.
    """
    plan = plan_sampling(guidance, noise, steps, schedule, thresholding)
    x = denoiser.asarray(noise.x_T)  # x_{t_0} [B, H, W, C]
    for i in range(plan.steps):
        x0_hat = guided_x0(denoiser, guidance, plan, i, x)
        _notify(callback, plan, i, x, x0_hat)
        if i + 1 < plan.steps:
            x = _first_order_step(plan, i, x, x0_hat)
    return plan.result(x0_hat)


def dpmpp2m(
    denoiser: Denoiser,
    guidance: GuidanceStrategy,
    noise: SamplerNoise,
    *,
    steps: int,
    schedule: Any = None,
    thresholding: Any = None,
    callback: StepCallback | None = None,
) -> SampleResult:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): second-order multistep, data prediction,
    in half log-SNR λ/2 = log(α/σ).

    The first step is the first-order (DDIM) step. Later steps replace x̂0 by a linear
    extrapolation through the previous step's x̂0:
        r = h_{i−1}/h_i,   D = (1 + 1/(2r))·x̂0_i − 1/(2r)·x̂0_{i−1},
        x_s = (σ_s/σ_t)·x_t + α_s·(1 − e^{−h_i})·D.
    Second order in the step size (DDIM is first order). Uses no step noise.
    """
    plan = plan_sampling(guidance, noise, steps, schedule, thresholding)
    x = denoiser.asarray(noise.x_T)  # x_{t_0} [B, H, W, C]
    previous = None  # (x̂0, h) of the step before
    for i in range(plan.steps):
        x0_hat = guided_x0(denoiser, guidance, plan, i, x)
        _notify(callback, plan, i, x, x0_hat)
        if i + 1 < plan.steps:
            h = _half_logsnr_step(plan, i)
            if previous is None:
                x = _first_order_step(plan, i, x, x0_hat)  # DDIM step
            else:
                x0_prev, h_prev = previous
                k = h / (2.0 * h_prev)  # 1/(2r)
                x = _first_order_step(plan, i, x, (1.0 + k) * x0_hat - k * x0_prev)
            previous = (x0_hat, h)
    return plan.result(x0_hat)


SAMPLERS: dict[str, Callable[..., SampleResult]] = {
    "ddpm": ddpm,
    "ddim": ddim,
    "dpmpp2m": dpmpp2m,
}


@hookimpl
def reimagen_register_samplers(register):
    for name, sampler in SAMPLERS.items():
        register(name, sampler)


# ---- host-side helpers -----------------------------------------------------------------------


def _scalars(plan: SamplingPlan, i: int) -> tuple[float, float, float]:
    return plan.alpha[i], plan.sigma[i], plan.logsnr[i]


def _half_logsnr_step(plan: SamplingPlan, i: int) -> float:
    """h_i = λ_{t_{i+1}}/2 − λ_{t_i}/2 > 0, the step in log(α/σ)."""
    return 0.5 * (plan.logsnr[i + 1] - plan.logsnr[i])


def _first_order_step(plan: SamplingPlan, i: int, x, x0_estimate):
    """x_{t_{i+1}} = (σ_s/σ_t)·x_t + α_s·(1 − e^{−h})·x̂0 (DDIM / DPM-Solver++ 1)."""
    h = _half_logsnr_step(plan, i)
    keep = plan.sigma[i + 1] / plan.sigma[i]
    pull = plan.alpha[i + 1] * -math.expm1(-h)
    return keep * x + pull * x0_estimate


def _notify(callback, plan: SamplingPlan, i: int, x, x0_hat) -> None:
    if callback is not None:
        callback(i, plan.times[i], x, x0_hat, plan.variants[i])


def _floats(values: np.ndarray) -> tuple[float, ...]:
    return tuple(float(v) for v in values)


def _check_steps(steps) -> int:
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    return int(steps)


def _check_noise(noise: SamplerNoise, steps: int) -> None:
    if not isinstance(noise, SamplerNoise):
        raise TypeError(f"noise must be a SamplerNoise, got {type(noise).__name__}")
    shape = tuple(np.shape(noise.x_T))
    if len(shape) != 4:
        raise ValueError(f"noise.x_T must be [B, H, W, C], got shape {shape}")
    if tuple(np.shape(noise.step_noise)) != (steps, *shape):
        raise ValueError(
            f"noise.step_noise must have shape {(steps, *shape)} for steps={steps}, "
            f"got {tuple(np.shape(noise.step_noise))}"
        )
    draws = np.asarray(noise.guidance_draws)
    if draws.shape != (steps,):
        raise ValueError(
            f"noise.guidance_draws must have shape ({steps},) for steps={steps}, got {draws.shape}"
        )
    if not np.all((draws >= 0.0) & (draws < 1.0)):
        raise ValueError("noise.guidance_draws must lie in [0, 1)")


def _check_variants(guidance: GuidanceStrategy, draw: float, step: int) -> tuple[str, ...]:
    variants = tuple(guidance.variants(draw))
    if not variants or len(set(variants)) != len(variants):
        raise ValueError(
            f"{type(guidance).__name__}.variants({draw}) at step {step} must name distinct "
            f"variants, got {variants}"
        )
    variant_masks(variants)  # unknown names -> ValueError listing the allowed ones
    return variants


__all__: Sequence[str] = [
    "SAMPLERS",
    "SamplingPlan",
    "ddim",
    "ddpm",
    "dpmpp2m",
    "guided_x0",
    "plan_sampling",
]
