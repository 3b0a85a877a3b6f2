"""Samplers and x̂0 thresholding (docs/design.md §3, §5; paper Eq. 3–4).

The oracle: for Gaussian data x0 ~ N(μ, s²I) the ideal ε is closed form,
    E[ε | x_t] = σ_t·(x_t − α_t μ)/(α_t² s² + σ_t²),
and the probability-flow ODE maps each noise sample x_1 to μ + s·z with
z = (x_1 − α_1 μ)/√(α_1² s² + σ_1²) (its z-score is kept along the flow), so deterministic
samplers can be checked per sample and the stochastic one by its exact output moments. The mock
denoisers evaluate that oracle per condition variant, each variant with its own
mean, so guidance too has an exact target (the guided ε is the oracle of the guided mean).
"""

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reimagen.core import registry
from reimagen.core.array_ops import per_sample_quantile, quantile_last_axis, sort_last_axis
from reimagen.core.config import ConfigError
from reimagen.core.interfaces import Denoiser, SamplerNoise
from reimagen.core.registry import RegistryError
from reimagen.diffusion.guidance import (
    InterleavedGuidance,
    JointGuidance,
    NoGuidance,
    WeightedGuidance,
    get_guidance,
)
from reimagen.diffusion.samplers import SAMPLERS, ddim, ddpm, dpmpp2m
from reimagen.diffusion.schedule import CosineSchedule
from reimagen.diffusion.thresholding import Thresholding

SCHEDULE = CosineSchedule()
SAMPLER_NAMES = ("ddpm", "ddim", "dpmpp2m")
MEANS = {"full": 0.4, "text": 0.1, "neighbors": -0.2, "none": -0.5}  # μ_v of each variant
SCALE = 0.5  # s
U64 = 2**-53  # float64 unit roundoff
# α_t, σ_t come from λ(t) = −2·log tan(a·t + b) in float64 (|λ| <= 20): ~8 roundings, each
# <= u·|λ| absolute in λ, and the samplers' coefficients (and the closed forms below) depend on
# e^{±λ/2}, so every evaluation of α, σ or a ratio of them is off by <= δ = 8·u·10 relative.
SCHEDULE_DELTA = 8 * U64 * 10  # 8.9e-15
# The clipped schedule ends at ᾱ(0) = sigmoid(20), not 1: a leak of sigmoid(−20) = 2.1e-9.
ENDPOINT_LEAK = 1.0 / (1.0 + math.exp(20.0))


# ---- mock denoisers: the Gaussian oracle per variant, one subclass per array type -------------


class GaussianOracle(Denoiser):
    """ε_v(x, t) = σ_t·(x − α_t μ_v)/(α_t² s² + σ_t²): the ideal ε for data N(μ_v, s²).

    Records every call (a spy): ``log`` holds (t, variants, x shape) per call.
    """

    def __init__(self, means=MEANS, scale=SCALE):
        self.means, self.scale = dict(means), scale
        self.calls, self.rows, self.log = 0, 0, []

    def __call__(self, x, t, variants):
        assert isinstance(t, float)  # schedule scalars travel as Python floats
        self.calls += 1
        self.rows += len(variants) * int(x.shape[0])
        self.log.append((t, tuple(variants), tuple(x.shape)))
        alpha, sigma = (float(v) for v in SCHEDULE.alpha_sigma(t))
        gain = sigma / (alpha**2 * self.scale**2 + sigma**2)
        return self.stack([gain * (x - alpha * self.means[v]) for v in variants])  # [V,B,H,W,C]

    def asarray(self, array):
        return np.asarray(array, dtype=np.float32)

    def to_numpy(self, array):
        return np.asarray(array)

    def stack(self, arrays):
        return np.stack(arrays)


class Float64Oracle(GaussianOracle):
    """float64 numpy: the sampler's discretisation error alone, no float32 rounding."""

    def asarray(self, array):
        return np.asarray(array, dtype=np.float64)


class TorchOracle(GaussianOracle):
    def asarray(self, array):
        import torch

        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))

    def to_numpy(self, array):
        return array.numpy()

    def stack(self, arrays):
        import torch

        return torch.stack(arrays)


class JaxOracle(GaussianOracle):
    def asarray(self, array):
        import jax.numpy as jnp

        return jnp.asarray(np.asarray(array, dtype=np.float32))

    def to_numpy(self, array):
        return np.asarray(array)

    def stack(self, arrays):
        import jax.numpy as jnp

        return jnp.stack(arrays)


def draw_noise(seed=0, shape=(4, 6, 6, 3), steps=10):
    return SamplerNoise.draw(np.random.default_rng(seed), shape, steps)


def flow_endpoint(x_T, mean, scale=SCALE):
    """Where the exact probability-flow ODE takes x_1 for data N(mean, scale²): the z-score of
    x_1 under its marginal N(α_1 μ, α_1² s² + σ_1²) is kept, so x_0 = μ + s·z."""
    alpha, sigma = (float(v) for v in SCHEDULE.alpha_sigma(1.0))
    z = (np.asarray(x_T, np.float64) - alpha * mean) / math.sqrt(alpha**2 * scale**2 + sigma**2)
    return mean + scale * z


def flow_error(sampler, steps, guidance=None, target=MEANS["full"]):
    """max |sample − exact flow endpoint| for one fixed noise draw."""
    noise = draw_noise(seed=1, shape=(16, 4, 4, 1), steps=steps)
    result = sampler(Float64Oracle(), guidance or NoGuidance(), noise, steps=steps)
    return float(np.abs(result.x0 - flow_endpoint(noise.x_T, target)).max())


def ddpm_output_moments(steps, guidance=None):
    """Exact mean and standard deviation of ddpm's output under the Gaussian oracle.

    With an affine denoiser the sampler is affine in its noise: x0 = m + a·x_T + Σ_i c_i·z_i,
    the same coefficients for every pixel. One run on impulses reads them off: batch row 0 gets
    all-zero noise (-> m), row 1 x_T = 1 (-> m + a), row 2+i z_i = 1 (-> m + c_i). Hence
    E[x0] = m and Var[x0] = a² + Σ c_i², with no Monte Carlo error.
    """
    rows = steps + 2
    x_T = np.zeros((rows, 1, 1, 1))
    x_T[1] = 1.0
    step_noise = np.zeros((steps, rows, 1, 1, 1))
    for i in range(steps):
        step_noise[i, 2 + i] = 1.0
    noise = SamplerNoise(x_T=x_T, step_noise=step_noise, guidance_draws=np.zeros(steps))
    out = ddpm(Float64Oracle(), guidance or NoGuidance(), noise, steps=steps).x0.reshape(-1)
    mean, coefficients = out[0], out[1:] - out[0]
    return float(mean), float(np.sqrt(np.sum(coefficients**2)))


# ---- registry ------------------------------------------------------------------------------


def test_samplers_registered_under_design_names():
    assert set(SAMPLER_NAMES) <= set(registry.names("sampler"))
    for name in SAMPLER_NAMES:
        assert registry.get("sampler", name) is SAMPLERS[name]
        assert registry.default_registry().origin("sampler", name) == "reimagen.diffusion.samplers"


def test_unknown_sampler_lists_known_names():
    with pytest.raises(RegistryError, match="unknown sampler 'euler'.*ddim, ddpm, dpmpp2m"):
        registry.get("sampler", "euler")


# ---- analytic oracle ----------------------------------------------------------------------


def test_ddim_converges_at_first_order():
    """Error against the exact flow endpoint halves with every doubling of the steps."""
    errors = [flow_error(ddim, n) for n in (16, 32, 64, 128)]
    orders = [math.log2(a / b) for a, b in itertools.pairwise(errors)]
    assert errors[-1] < 0.03
    assert all(0.85 < p < 1.15 for p in orders), (errors, orders)


def test_dpmpp2m_converges_faster_than_ddim():
    steps = (32, 64, 128, 256)
    ddim_errors = [flow_error(ddim, n) for n in steps]
    dpm_errors = [flow_error(dpmpp2m, n) for n in steps]
    assert all(a > b for a, b in itertools.pairwise(dpm_errors)), dpm_errors
    for n, e_ddim, e_dpm in zip(steps, ddim_errors, dpm_errors):
        assert e_dpm < e_ddim / 5, (n, e_ddim, e_dpm)
    # Observed order of accuracy on the last doubling: DDIM 1, DPM-Solver++(2M) towards 2.
    ddim_order = math.log2(ddim_errors[-2] / ddim_errors[-1])
    dpm_order = math.log2(dpm_errors[-2] / dpm_errors[-1])
    assert dpm_order > ddim_order + 0.4 and dpm_order > 1.5, (ddim_order, dpm_order)
    assert dpm_errors[-1] < 1e-3


@pytest.mark.parametrize("sampler", [ddim, dpmpp2m], ids=["ddim", "dpmpp2m"])
def test_deterministic_samplers_reproduce_data_mean_and_variance(sampler):
    noise = draw_noise(seed=2, shape=(64, 16, 16, 1), steps=100)
    x0 = sampler(Float64Oracle(), NoGuidance(), noise, steps=100).x0
    exact = flow_endpoint(noise.x_T, MEANS["full"])
    # Discretisation error, not rounding: under the affine oracle both the sampler and the exact
    # flow map x_T affinely with the same coefficients for every pixel, x0 = m + c·x_T, so the
    # gaps are |Δstd| = |Δc|·std(x_T) and |Δmean| <= |Δm| + |Δc|·|mean(x_T)|. DDIM is first
    # order: |Δc| ≈ C/N, and test_ddim_converges_at_first_order's 128-step error (0.0175 over
    # |x_T| <= 2.93) gives C ≈ 0.77, |Δc| ≈ 7.7e-3 at N = 100 (an impulse run: 7.65e-3; Δm
    # 1.4e-7); dpmpp2m's is 10× smaller. 0.02 is 2.6× DDIM's (measured 1.3e-4 and 7.7e-3).
    tolerance = 0.02
    assert abs(x0.mean() - exact.mean()) < tolerance
    assert abs(x0.std() - exact.std()) < tolerance
    # ... and the exact endpoints are N(μ, s²) to within the Monte Carlo error of 16k samples.
    # A statistical bound: exact = μ + s·z with z the n i.i.d. N(0, 1) noise pixels, so the
    # sample mean is off by N(0, s²/n) and the sample std by ≈ N(0, s²/(2n)); 4σ is a
    # two-sided 6.3e-5 chance for a fresh draw (measured at seed 2: 2.15σ and 0.11σ).
    assert abs(exact.mean() - MEANS["full"]) < 4 * SCALE / np.sqrt(exact.size)
    assert abs(exact.std() - SCALE) < 4 * SCALE / np.sqrt(2 * exact.size)


def test_ddpm_output_moments_converge_to_the_data():
    """Exact output moments (impulse response): the mean is right at any step count, the
    standard deviation error falls ~ linearly with the steps (first order)."""
    results = {n: ddpm_output_moments(n) for n in (8, 32, 128, 512)}
    std_errors = [abs(std - SCALE) for _, std in results.values()]
    for mean, _ in results.values():
        # The ideal denoiser preserves the mean exactly, but the clipped schedule ends at
        # ᾱ(0) = 1 − ENDPOINT_LEAK: the output mean is off by <= ENDPOINT_LEAK·|μ| (8.2e-10;
        # measured a quarter of it, 2.1e-10, at 8–512 steps), + float64 rounding over the steps
        # (<= steps·SCHEDULE_DELTA·|μ|, 1.8e-12 at 512). It was 1e-8.
        assert abs(mean - MEANS["full"]) <= (ENDPOINT_LEAK + 512 * SCHEDULE_DELTA) * MEANS["full"]
    assert all(a > 2.5 * b for a, b in itertools.pairwise(std_errors)), std_errors
    assert std_errors[-1] < 5e-3


def test_ddpm_monte_carlo_matches_its_exact_moments():
    """The impulse trick is checked against plain sampling: 65k float64 pixels, 32 steps."""
    steps = 32
    mean, std = ddpm_output_moments(steps)
    noise = draw_noise(seed=3, shape=(16, 64, 64, 1), steps=steps)
    x0 = ddpm(Float64Oracle(), NoGuidance(), noise, steps=steps).x0
    n = x0.size
    # A statistical bound: ddpm's output is affine in Gaussian noise, so its n pixels are
    # i.i.d. N(mean, std²) (the exact moments above); the sample mean is off by N(0, std²/n),
    # the sample std by ≈ N(0, std²/(2n)): 4σ, a two-sided 6.3e-5 chance (measured at seed 3:
    # 1.55σ and 0.16σ).
    assert abs(x0.mean() - mean) < 4 * std / np.sqrt(n)
    assert abs(x0.std() - std) < 4 * std / np.sqrt(2 * n)


@pytest.mark.parametrize(
    "guidance, guided_mean",
    [
        # Eq. 5: w·μ_full − (w−1)·μ_none
        (JointGuidance(w=3.0), 3.0 * 0.4 - 2.0 * -0.5),
        # App. E: η(w_p μ_full − (w_p−1) μ_neighbors) + (1−η)(w_n μ_full − (w_n−1) μ_text)
        (
            WeightedGuidance(w_text=2.0, w_neighbors=4.0, eta=0.25),
            0.25 * (2.0 * 0.4 - 1.0 * -0.2) + 0.75 * (4.0 * 0.4 - 3.0 * 0.1),
        ),
        (InterleavedGuidance(w_text=3.0, w_neighbors=3.0, eta=1.0), 3.0 * 0.4 - 2.0 * -0.2),
        (InterleavedGuidance(w_text=3.0, w_neighbors=3.0, eta=0.0), 3.0 * 0.4 - 2.0 * 0.1),
    ],
    ids=["joint", "weighted", "interleaved-eta1", "interleaved-eta0"],
)
def test_guided_sampling_lands_on_the_guided_gaussian(guidance, guided_mean):
    """ε is affine in μ, so the guided ε̂ is exactly the oracle of the guided mean μ*: a guided
    run must land where the flow for N(μ*, s²) goes."""
    for sampler in (ddim, dpmpp2m):
        assert flow_error(sampler, 128, guidance, target=guided_mean) < 0.025
    # As in test_ddpm_output_moments_converge_to_the_data: the endpoint leak times |μ*| (up to
    # 4.5e-9 for μ* = 2.2; measured a quarter of it) + float64 rounding. It was 1e-8.
    bound = (ENDPOINT_LEAK + 64 * SCHEDULE_DELTA) * abs(guided_mean)
    assert abs(ddpm_output_moments(64, guidance)[0] - guided_mean) <= bound


# ---- order conditions: exactness where the method's interpolant is exact --------------------


class PrescribedX0(Float64Oracle):
    """A network whose x̂0 is a + b·λ̃(t) whatever x is (λ̃ = log(α/σ), half the log-SNR):
    ε = (x − α·x̂0)/σ. The data-prediction ODE then has the closed form
        x(t) = (σ_t/σ_1)·x_1 + σ_t·∫_{λ̃_1}^{λ̃_t} e^λ (a + bλ) dλ."""

    def __init__(self, a, b):
        super().__init__()
        self.a, self.b = a, b

    def __call__(self, x, t, variants):
        self.calls += 1
        alpha, sigma = (float(v) for v in SCHEDULE.alpha_sigma(t))
        x0 = self.a + self.b * half_logsnr(t)
        return np.stack([(x - alpha * x0) / sigma for _ in variants])

    def exact(self, x_1, t):
        def antiderivative(lam):  # ∫ e^λ (a + bλ) dλ
            return self.a * math.exp(lam) + self.b * (lam - 1.0) * math.exp(lam)

        sigma_1, sigma_t = float(SCHEDULE.alpha_sigma(1.0)[1]), float(SCHEDULE.alpha_sigma(t)[1])
        integral = antiderivative(half_logsnr(t)) - antiderivative(half_logsnr(1.0))
        return (sigma_t / sigma_1) * np.asarray(x_1, np.float64) + sigma_t * integral


def half_logsnr(t):
    return 0.5 * float(SCHEDULE.logsnr(t))


class UnevenGrid:
    """The cosine schedule on a grid with irregular steps (widths cycle 1, 3, 2), to exercise
    DPM-Solver++(2M)'s step-ratio r = h_{i−1}/h_i."""

    def time_grid(self, steps):
        widths = np.array([1.0, 3.0, 2.0])[np.arange(steps) % 3]
        return 1.0 - np.concatenate([[0.0], np.cumsum(widths)]) / widths.sum()

    def logsnr(self, t):
        return SCHEDULE.logsnr(t)

    def alpha_sigma(self, t):
        return SCHEDULE.alpha_sigma(t)


def trajectory(sampler, denoiser, noise, steps, schedule=None):
    """x at every grid time the sampler visited: {t_i: x_{t_i}}."""
    seen = {}
    sampler(
        denoiser,
        NoGuidance(),
        noise,
        steps=steps,
        schedule=schedule,
        callback=lambda i, t, x, x0_hat, v: seen.__setitem__(t, x),
    )
    return seen


def test_ddim_is_exact_when_x0_is_constant():
    """DDIM's exponential-integrator step assumes x̂0 constant over the step: then no error."""
    denoiser = PrescribedX0(a=0.3, b=0.0)
    noise = draw_noise(seed=9, shape=(2, 3, 3, 1), steps=10)
    # Exact in exact arithmetic, so only float64 rounding: each step and the closed form use
    # ~4 evaluations of α, σ (SCHEDULE_DELTA each) on values <= max|x| (the steps are
    # contractions, σ_s/σ_t <= 1, so errors add up): (4·steps + 3)·δ·max|x| = 1.4e-12 (measured
    # 4.0e-13; it was rtol=1e-10, atol=1e-12).
    seen = trajectory(ddim, denoiser, noise, 10, UnevenGrid())
    atol = (4 * 10 + 3) * SCHEDULE_DELTA * max(np.abs(x).max() for x in seen.values())
    for t, x in seen.items():
        np.testing.assert_allclose(x, denoiser.exact(noise.x_T, t), rtol=0, atol=atol)


def local_errors(sampler, denoiser, noise, steps, schedule):
    """Per-step errors against the closed form: x̂0 here ignores x, so an error e_i in x_{t_i}
    is only carried to the next time scaled by σ_{i+1}/σ_i, and the rest is what step i adds:
    local_i = e_{i+1} − (σ_{i+1}/σ_i)·e_i.  Returns (t_{i+1}, h_i, local_i) per step."""
    seen = trajectory(sampler, denoiser, noise, steps, schedule)
    times = sorted(seen, reverse=True)  # t_0 = 1 > t_1 > … > t_{steps−1}
    sigma = {t: float(SCHEDULE.alpha_sigma(t)[1]) for t in times}
    error = {t: seen[t] - denoiser.exact(noise.x_T, t) for t in times}
    return [
        (s, half_logsnr(s) - half_logsnr(t), error[s] - (sigma[s] / sigma[t]) * error[t])
        for t, s in itertools.pairwise(times)
    ]


def test_dpmpp2m_local_error_for_x0_linear_in_lambda_is_its_closed_form():
    """For x̂0 = a + bλ̃ the exact step adds α_s·b·(h − 1 + e^{−h}) (∫ of the slope term); the
    first step (first order) drops it, and 2M replaces it by (1 − e^{−h})·(h/2)·b since its
    slope estimate (x̂0_i − x̂0_{i−1})/h_{i−1} is exact here. So its local error is known in
    closed form, O(h³) (the φ₂ ≈ h/2 approximation of Lu et al.'s Algorithm 2), on any grid;
    a wrong step ratio r = h_{i−1}/h_i would leave an O(h²) error on this irregular grid."""
    b = 0.05
    denoiser = PrescribedX0(a=0.3, b=b)
    noise = draw_noise(seed=9, shape=(2, 3, 3, 1), steps=12)
    steps = local_errors(dpmpp2m, denoiser, noise, 12, UnevenGrid())
    # local_i is a difference of errors whose carried part cancels, leaving float64 rounding
    # of one step and two closed forms: ~10 evaluations of α, σ (SCHEDULE_DELTA each) on
    # values <= |x_1| + |a| + |b|·max λ̃ = max|x_T| + 0.8: 3.2e-13; the closed-form terms
    # themselves are a few operations, 8·u relative (measured 6.0e-15; it was rtol=1e-7,
    # atol=1e-13, which allowed 2e-9 on the largest term).
    rounding = 10 * SCHEDULE_DELTA * (np.abs(noise.x_T).max() + 0.8)
    for i, (s, h, local) in enumerate(steps):
        alpha_s = float(SCHEDULE.alpha_sigma(s)[0])
        exact_slope_term = alpha_s * b * (h - 1.0 + math.exp(-h))
        solver_slope_term = 0.0 if i == 0 else alpha_s * b * -math.expm1(-h) * h / 2.0
        np.testing.assert_allclose(
            local, solver_slope_term - exact_slope_term, rtol=8 * U64, atol=rounding
        )
        if i > 0:  # third order: |(1 − e^{−h})h/2 − (h − 1 + e^{−h})| ≤ h³/12
            assert np.abs(local).max() <= alpha_s * b * h**3 / 12 + rounding
    # DDIM keeps dropping the slope term: its local error stays second order, far larger.
    ddim_steps = local_errors(ddim, denoiser, noise, 12, UnevenGrid())
    for (s, h, ddim_local), (_, _, dpm_local) in list(zip(ddim_steps, steps))[1:]:
        assert np.abs(ddim_local).max() > 3 * np.abs(dpm_local).max()


def test_ddpm_marginals_are_exact_for_point_mass_data():
    """For data x0 = μ (s = 0) the posterior q(x_s | x_t, x0) of Eq. 4 is the true reverse
    step, so every x_t the sampler visits is exactly N(α_t μ, σ_t²), at any step count.
    Moments read off by impulses, as in ddpm_output_moments, starting from x_1's marginal."""
    steps, mu = 6, 0.7
    alpha_1, sigma_1 = (float(v) for v in SCHEDULE.alpha_sigma(1.0))
    rows = steps + 2
    x_T = np.full((rows, 1, 1, 1), alpha_1 * mu)
    x_T[1] += sigma_1
    step_noise = np.zeros((steps, rows, 1, 1, 1))
    for i in range(steps):
        step_noise[i, 2 + i] = 1.0
    noise = SamplerNoise(x_T=x_T, step_noise=step_noise, guidance_draws=np.zeros(steps))
    seen = trajectory(
        ddpm, Float64Oracle(means={"full": mu}, scale=0.0), noise, steps, UnevenGrid()
    )
    for t, x in seen.items():
        alpha, sigma = (float(v) for v in SCHEDULE.alpha_sigma(t))
        mean, coefficients = x[0].item(), x[1:].reshape(-1) - x[0].item()
        # Exact in exact arithmetic (Eq. 4 is the true reverse step); float64 rounding of ~4
        # evaluations of α, σ per step and 3 here: (4·steps + 3)·δ = 2.4e-13 relative
        # (measured 2.2e-16; it was rel=1e-9, abs=1e-12).
        rel = (4 * steps + 3) * SCHEDULE_DELTA
        assert mean == pytest.approx(alpha * mu, rel=rel, abs=0)
        assert np.sqrt(np.sum(coefficients**2)) == pytest.approx(sigma, rel=rel, abs=0)


def test_ddpm_step_i_uses_step_noise_i():
    """Step i moves to t_{i+1} with step_noise[i]; the last step returns x̂0, so the last
    slice is never read (NaN there changes nothing) while the first one matters."""
    noise = draw_noise(seed=10, steps=5)
    base = ddpm(GaussianOracle(), NoGuidance(), noise, steps=5).x0
    last = noise.step_noise.copy()
    last[-1] = np.nan
    first = noise.step_noise.copy()
    first[0] *= -1.0
    same = ddpm(
        GaussianOracle(), NoGuidance(), SamplerNoise(noise.x_T, last, noise.guidance_draws), steps=5
    ).x0
    changed = ddpm(
        GaussianOracle(),
        NoGuidance(),
        SamplerNoise(noise.x_T, first, noise.guidance_draws),
        steps=5,
    ).x0
    np.testing.assert_array_equal(same, base)
    assert np.abs(changed - base).max() > 1e-3


# ---- pass counts: one batched call per step ------------------------------------------------


@pytest.mark.parametrize("sampler_name", SAMPLER_NAMES)
@pytest.mark.parametrize(
    "guidance, per_step",
    [
        (NoGuidance(), 1),
        (JointGuidance(w=3.0), 2),
        (WeightedGuidance(), 3),
        (InterleavedGuidance(eta=0.5), 2),
    ],
    ids=["none", "joint", "weighted", "interleaved"],
)
def test_one_batched_call_per_step_with_the_strategys_variants(sampler_name, guidance, per_step):
    steps, batch = 12, 4
    noise = draw_noise(seed=4, shape=(batch, 5, 5, 3), steps=steps)
    spy = GaussianOracle()
    result = registry.get("sampler", sampler_name)(spy, guidance, noise, steps=steps)
    assert spy.calls == result.calls == steps
    assert result.nfe == per_step * steps
    assert spy.rows == per_step * steps * batch
    expected = tuple(guidance.variants(r) for r in noise.guidance_draws)
    assert result.variants_per_step == expected == tuple(v for _, v, _ in spy.log)
    assert all(len(v) == per_step for v in expected)
    assert [shape for _, _, shape in spy.log] == [(batch, 5, 5, 3)] * steps


def test_interleaved_run_follows_the_host_draws():
    noise = draw_noise(seed=5, steps=200)
    result = ddim(GaussianOracle(), InterleavedGuidance(eta=0.3), noise, steps=200)
    text_steps = [v == ("full", "neighbors") for v in result.variants_per_step]
    assert text_steps == list(noise.guidance_draws < 0.3)
    # A statistical bound: Binomial(200, 0.3)/200 has standard deviation 0.032, so 0.15 is
    # 4.6σ (two-sided 4e-6 for a fresh draw).
    assert 0.3 - 0.15 < np.mean(text_steps) < 0.3 + 0.15


@pytest.mark.parametrize("sampler_name", SAMPLER_NAMES)
def test_callback_sees_every_step_on_a_descending_grid(sampler_name):
    steps = 7
    seen = []
    result = registry.get("sampler", sampler_name)(
        GaussianOracle(),
        JointGuidance(w=5.0),
        draw_noise(steps=steps),
        steps=steps,
        thresholding="static",
        callback=lambda step, t, x, x0_hat, variants: seen.append((step, t, x, x0_hat, variants)),
    )
    assert [s[0] for s in seen] == list(range(steps))
    times = [s[1] for s in seen]
    # Exact: the callback gets the grid's own float64 times (was rtol=1e-7).
    np.testing.assert_array_equal(times, SCHEDULE.time_grid(steps)[:-1])
    assert all(s[4] == ("full", "none") for s in seen)
    # The final step returns the (thresholded) x̂0 it showed the callback.
    assert seen[-1][3] is result.x0 and np.abs(result.x0).max() <= 1.0
    assert seen[0][2].shape == result.x0.shape


# ---- validation before any network call -----------------------------------------------------


@pytest.mark.parametrize("sampler_name", SAMPLER_NAMES)
@pytest.mark.parametrize(
    "change, message",
    [
        ({"steps": 0}, "steps must be an integer >= 1, got 0"),
        ({"steps": -3}, "steps must be an integer >= 1"),
        ({"steps": 2.5}, "steps must be an integer >= 1, got 2.5"),
        ({"steps": True}, "steps must be an integer >= 1"),
        ({"steps": 9}, r"noise.step_noise must have shape \(9, 2, 4, 4, 3\) for steps=9"),
        ({"thresholding": "dynamc"}, "thresholding must be None, a Thresholding or one of"),
        ({"thresholding": 0.995}, "thresholding must be None"),
    ],
)
def test_bad_arguments_fail_before_the_first_call(sampler_name, change, message):
    spy = GaussianOracle()
    kwargs = {"steps": 6, **change}
    with pytest.raises(ValueError, match=message):
        registry.get("sampler", sampler_name)(
            spy, JointGuidance(), draw_noise(shape=(2, 4, 4, 3), steps=6), **kwargs
        )
    assert spy.calls == 0


@pytest.mark.parametrize(
    "noise, message",
    [
        (
            SamplerNoise(np.zeros((2, 4, 4)), np.zeros((5, 2, 4, 4)), np.zeros(5)),
            r"noise.x_T must be \[B, H, W, C\]",
        ),
        (
            SamplerNoise(np.zeros((2, 4, 4, 3)), np.zeros((5, 2, 4, 4, 1)), np.zeros(5)),
            "noise.step_noise must have shape",
        ),
        (
            SamplerNoise(np.zeros((2, 4, 4, 3)), np.zeros((5, 2, 4, 4, 3)), np.zeros(4)),
            r"noise.guidance_draws must have shape \(5,\)",
        ),
        (
            SamplerNoise(np.zeros((2, 4, 4, 3)), np.zeros((5, 2, 4, 4, 3)), np.full(5, 1.0)),
            r"noise.guidance_draws must lie in \[0, 1\)",
        ),
    ],
)
def test_bad_noise_fails_before_the_first_call(noise, message):
    spy = GaussianOracle()
    with pytest.raises(ValueError, match=message):
        ddpm(spy, NoGuidance(), noise, steps=5)
    assert spy.calls == 0


class _UnknownVariantGuidance(NoGuidance):
    def variants(self, draw):
        return ("full",) if draw < 0.9 else ("full", "image-only")


def test_wrong_types_fail_before_the_first_call():
    spy = GaussianOracle()
    noise = draw_noise(steps=4)
    with pytest.raises(TypeError, match="noise must be a SamplerNoise, got str"):
        ddim(spy, NoGuidance(), "seed=3", steps=4)
    with pytest.raises(TypeError, match=r"schedule must provide time_grid\(\) like CosineSchedule"):
        dpmpp2m(spy, NoGuidance(), noise, steps=4, schedule="cosine")
    assert spy.calls == 0


def test_unknown_variant_from_a_strategy_fails_before_the_first_call():
    noise = SamplerNoise(np.zeros((1, 2, 2, 1)), np.zeros((3, 1, 2, 2, 1)), np.array([0, 0, 0.95]))
    spy = GaussianOracle()
    with pytest.raises(ValueError, match="unknown condition variant.*image-only.*allowed: full"):
        ddim(spy, _UnknownVariantGuidance(), noise, steps=3)
    assert spy.calls == 0


def test_bad_guidance_and_sampler_names_fail_before_any_network_exists():
    with pytest.raises(ConfigError, match="GuidanceConfig.w must be in"):
        get_guidance("joint", w=0.0)
    with pytest.raises(ConfigError, match=r"GuidanceConfig.eta must be in \[0.0, 1.0\]"):
        get_guidance("interleaved", eta=2.0)
    with pytest.raises(RegistryError, match="known sampler names: ddim, ddpm, dpmpp2m"):
        registry.get("sampler", "dpm++")


def test_wrong_epsilon_shape_from_a_denoiser_is_named():
    class Squeezed(GaussianOracle):
        def __call__(self, x, t, variants):
            return super().__call__(x, t, variants)[0]

    with pytest.raises(RuntimeError, match=r"Squeezed returned ε of shape \(2, 4, 4, 3\)"):
        ddim(Squeezed(), NoGuidance(), draw_noise(shape=(2, 4, 4, 3), steps=3), steps=3)


# ---- seeds and backends --------------------------------------------------------------------


@pytest.mark.parametrize("sampler_name", SAMPLER_NAMES)
def test_same_seed_same_sample_different_seed_different(sampler_name):
    sampler = registry.get("sampler", sampler_name)

    def run(seed):
        noise = draw_noise(seed=seed, steps=8)
        return sampler(GaussianOracle(), InterleavedGuidance(eta=0.5), noise, steps=8).x0

    a, b, c = run(0), run(0), run(1)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 0.1


def test_ddpm_uses_step_noise_and_deterministic_samplers_do_not():
    noise = draw_noise(seed=6, steps=8)
    other = SamplerNoise(noise.x_T, noise.step_noise[::-1].copy(), noise.guidance_draws)
    for sampler, changes in ((ddpm, True), (ddim, False), (dpmpp2m, False)):
        a = sampler(GaussianOracle(), NoGuidance(), noise, steps=8).x0
        b = sampler(GaussianOracle(), NoGuidance(), other, steps=8).x0
        assert (np.abs(a - b).max() > 1e-3) == changes, sampler.__name__


@pytest.mark.parametrize("sampler_name", SAMPLER_NAMES)
@pytest.mark.parametrize("thresholding", ["none", Thresholding(kind="dynamic", percentile=0.9)])
def test_numpy_torch_and_jax_walk_the_same_trajectory(sampler_name, thresholding):
    """Interleaved guidance with w = 4 (x̂0 leaves [−1, 1], so dynamic thresholding acts)."""
    pytest.importorskip("torch")
    pytest.importorskip("jax")
    steps = 16
    noise = draw_noise(seed=7, shape=(3, 8, 8, 3), steps=steps)
    guidance = InterleavedGuidance(w_text=4.0, w_neighbors=4.0, eta=0.5)
    outputs, trajectories = {}, {}
    for backend in (GaussianOracle(), TorchOracle(), JaxOracle()):
        name = type(backend).__name__
        trajectories[name] = []

        def record(step, t, x, x0_hat, variants, store=trajectories[name], den=backend):
            store.append(den.to_numpy(x0_hat))

        result = registry.get("sampler", sampler_name)(
            backend, guidance, noise, steps=steps, thresholding=thresholding, callback=record
        )
        outputs[name] = backend.to_numpy(result.x0)
        assert outputs[name].dtype == np.float32
    reference = outputs["GaussianOracle"]
    if thresholding != "none":
        # Exact: dynamic thresholding returns clip(x̂0, −s, s)/s, and |x| <= s gives
        # fl(|x|/s) <= fl(s/s) = 1 (rounding is monotone). It was 1 + 1e-6.
        assert np.abs(reference).max() <= 1.0
        assert np.abs(trajectories["GaussianOracle"][0]).max() <= 1.0
    # torch: exact. Eager torch does the same correctly rounded float32 operations as numpy, in
    # the same order, with the Python scalars cast to float32 alike (measured 0 in all 6 cases;
    # it was rtol=1e-5, atol=1e-5).
    np.testing.assert_array_equal(outputs["TorchOracle"], reference)
    for got, want in zip(trajectories["TorchOracle"], trajectories["GaussianOracle"]):
        np.testing.assert_array_equal(got, want)
    # JAX: XLA's compiled kernels may round an elementwise step differently (measured 2–4 units
    # of 2^-24 at the first x̂0). Not derived: a difference in x − σ·ε̂ (which cancels) is
    # divided by α_t, 4.5e-5 at t = 1, and carried on by α_s at the next step, so no useful
    # worst case exists; the bound is stated as measured: at most 62·2^-24 = 3.7e-6 on x̂0 and
    # 1.4e-6 on the output over the 6 cases, against rtol=1e-5 + atol=1e-5 (4e-5 at |x| = 3).
    np.testing.assert_allclose(outputs["JaxOracle"], reference, rtol=1e-5, atol=1e-5)
    for got, want in zip(trajectories["JaxOracle"], trajectories["GaussianOracle"]):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# ---- thresholding --------------------------------------------------------------------------


def test_dynamic_thresholding_hand_computed_example():
    """Sample 0: |x̂0| sorted = [0.5, 1, 2, 3]; p = 0.5 -> position 1.5 -> s = (1 + 2)/2 = 1.5,
    so x̂0 = clip(x̂0, −1.5, 1.5)/1.5. Sample 1 has quantile 0.25 < 1 -> s = 1 (plain clip)."""
    x = np.array([[-3.0, 0.5, 2.0, -1.0], [0.2, -0.3, 0.25, 4.0]]).reshape(2, 1, 2, 2)
    out = Thresholding(kind="dynamic", percentile=0.5)(x)
    want = np.array([[-1.0, 0.5 / 1.5, 1.0, -1.0 / 1.5], [0.2, -0.3, 0.25, 1.0]]).reshape(
        2, 1, 2, 2
    )
    # Exact: s = 1 + 0.5·(2 − 1) = 1.5 exactly, and clip(x)/s is the same single float64
    # division as the literal (measured 0; it was rtol=1e-15).
    np.testing.assert_array_equal(out, want)


def test_static_and_none_thresholding():
    x = np.array([-2.0, -0.5, 0.0, 0.7, 3.0]).reshape(1, 1, 5, 1)
    np.testing.assert_array_equal(Thresholding(kind="static")(x).ravel(), [-1, -0.5, 0, 0.7, 1])
    assert Thresholding(kind="none")(x) is x


def test_thresholding_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="Thresholding.kind must be one of 'none', 'static'"):
        Thresholding(kind="percentile")
    with pytest.raises(ConfigError, match=r"Thresholding.percentile must be in \[0.0, 1.0\]"):
        Thresholding(percentile=99.5)
    assert Thresholding.from_json(Thresholding(percentile=0.9).to_json()).percentile == 0.9


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    q=st.floats(0.0, 1.0),
    size=st.integers(1, 40),
    spread=st.floats(0.1, 10.0),
)
def test_quantile_matches_numpy_linear(seed, q, size, spread):
    x = np.random.default_rng(seed).standard_normal((3, size)) * spread
    # Both interpolate between the same two order statistics, v_lo + f·(v_hi − v_lo), numpy
    # perhaps in another form (it has used (1 − f)·v_lo + f·v_hi): <= 4 roundings (u = 2^-53)
    # of max|v| each side, 8·u·max|x| (measured 8.9e-16; it was rtol=1e-12, atol=1e-12).
    np.testing.assert_allclose(
        quantile_last_axis(x, q),
        np.quantile(x, q, axis=-1),
        rtol=0,
        atol=8 * U64 * np.abs(x).max(),
    )


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), p=st.floats(0.5, 1.0), spread=st.floats(0.1, 20.0))
def test_dynamic_thresholding_properties(seed, p, spread):
    x = np.random.default_rng(seed).standard_normal((3, 4, 4, 2)) * spread
    out = Thresholding(kind="dynamic", percentile=p)(x)
    s = np.maximum(1.0, np.quantile(np.abs(x).reshape(3, -1), p, axis=-1))[:, None, None, None]
    # The two thresholds differ by <= 8·u·max|x| (the quantile check above); clip(x, −s, s)/s
    # moves by <= 2·Δs/s (1/s <= 1), and the division rounds: 16·u·max|x| + u (measured 0;
    # it was rtol=1e-12, atol=1e-12).
    atol = 16 * U64 * np.abs(x).max() + U64
    np.testing.assert_allclose(out, np.clip(x, -s, s) / s, rtol=0, atol=atol)
    assert np.abs(out).max() <= 1.0  # exact: fl(|x|/s) <= fl(s/s) = 1 (was 1 + 1e-12)
    inside = np.clip(x, -1, 1)  # already in [−1, 1]: s = 1, unchanged
    np.testing.assert_array_equal(Thresholding(kind="dynamic", percentile=p)(inside), inside)


def test_array_ops_agree_across_numpy_torch_and_jax():
    torch = pytest.importorskip("torch")
    jnp = pytest.importorskip("jax.numpy")
    x = np.random.default_rng(8).standard_normal((2, 5, 5, 3)).astype(np.float32) * 3
    want_sorted = np.sort(x.reshape(2, -1), axis=-1)
    for convert, back in ((torch.from_numpy, lambda a: a.numpy()), (jnp.asarray, np.asarray)):
        arr = convert(x)
        np.testing.assert_array_equal(back(sort_last_axis(arr.reshape(2, -1))), want_sorted)
        # Exact: the same sort and the same float32 v_lo + f·(v_hi − v_lo) with a host-computed
        # f (measured 0; it was rtol=1e-6).
        np.testing.assert_array_equal(
            back(per_sample_quantile(arr, 0.95)), per_sample_quantile(x, 0.95)
        )
        # Then the same s and clip, and a division by s that XLA may evaluate as a product
        # with a rounded reciprocal: fl(x·fl(1/s)) is within 2 roundings of x/s and numpy's
        # fl(x/s) within 1, so <= 3·2^-24 relative (measured: torch exact, JAX one ulp,
        # 6.0e-8; it was rtol=1e-6, atol=1e-7).
        np.testing.assert_allclose(
            back(Thresholding(percentile=0.9)(arr)),
            Thresholding(percentile=0.9)(x),
            rtol=3 * 2**-24,
            atol=0,
        )
    with pytest.raises(TypeError, match="unsupported array type"):
        sort_last_axis([3, 1, 2])
