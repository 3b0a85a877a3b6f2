"""The noise-level recipe of a training step (TrainConfig.t_shift, loss_weighting; issue #15):
analytic checks of the host-side maths both backends share, and of torch's weighted loss.
(Torch vs JAX on a weighted step: tests/test_jax_parity.py::test_optimizer_step[min-snr].)"""

from __future__ import annotations

import math

import attrs
import numpy as np
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from reimagen.backends.torch.trainer import weighted_mse
from reimagen.core.config import ConfigError
from reimagen.diffusion.schedule import CosineSchedule
from reimagen.training.contract import Batch, TrainConfig
from reimagen.training.loop import training_levels

SCHEDULE = CosineSchedule()
U32, U64 = 2**-24, 2**-53  # float32 and float64 unit roundoff


def logsnr_tol(t: float) -> float:
    """|λ(t32) − λ(t)| when t (float64) is rounded to float32 t32: λ(t) = −2·log tan(a·t + b)
    has |dλ/dt| = 4a / sin(2(a·t + b)) (≈ 2π / sin(πt)), and the rounding moves t by at most
    half its float32 spacing; the float64 t it rounds is itself within 16·u64 (see
    test_t_of_logsnr_inverts_logsnr). The slope changes by < 1e-5 relative over that distance
    (1.001 covers it), and λ's own float64 roundings add < 2^-40.

    This replaces a fixed 1e-5 derived from the unshifted t ∈ [0.02, 0.98] (≤ 7e-6 there): the
    moved t' lies nearer 1 (0.9947 for t = 0.9788, shift 4), where sin(πt') = 0.0166 and half a
    float32 spacing (3e-8) moves λ by 1.12e-5 — the pinned @example below failed the old bound."""
    a, b = SCHEDULE._t_bounds
    slope = 4 * a / math.sin(2 * (a * t + b))
    return 1.001 * slope * (float(np.spacing(np.float32(t))) / 2 + 16 * U64) + 2**-40


def batch_with_t(t) -> Batch:
    t = np.asarray(t, np.float32)
    b = len(t)
    zeros = np.zeros((b, 2, 2, 3), np.float32)
    return Batch(
        images=zeros,
        text=None,
        neighbor_images=zeros[:, None],
        neighbor_text=None,
        t=t,
        noise=zeros,
        use_text=np.ones(b, bool),
        use_neighbors=np.ones(b, bool),
    )


@given(st.floats(0.001, 0.999))
def test_t_of_logsnr_inverts_logsnr(t):
    # float64: a·t + b, tan, log, then exp, arctan, − b, / a: ~8 roundings (u64 = 2^-53), each
    # reaching t damped by |dt/dλ|·|λ| <= 1 (where |λ| is large, sin(2θ) is small): 16·u64 =
    # 1.8e-15 (measured <= 1·u64 over 2,000,001 t in [0.001, 0.999]; it was abs=1e-9).
    assert SCHEDULE.t_of_logsnr(SCHEDULE.logsnr(t)) == pytest.approx(t, rel=0, abs=16 * U64)


def test_t_of_logsnr_clips_to_the_schedule_ends():
    # λ = ±20 after the clip: numpy's arctan/exp against math's (which made a, b) may differ by
    # an ulp, so t = (θ − b)/a lands within 2 ulp of a over a of 1 (4·u64), and within 2 ulp of
    # b (~1e-20) over a of 0; [0, 1] clips the rest (measured exact; it was abs=1e-12).
    got = SCHEDULE.t_of_logsnr([1e3, -1e3]).tolist()
    assert got == pytest.approx([0.0, 1.0], rel=0, abs=4 * U64)


def test_paper_recipe_leaves_the_batch_alone():
    batch = batch_with_t([0.1, 0.5, 0.9])
    same, weights = training_levels(batch, TrainConfig(), SCHEDULE)
    assert same is batch and weights is None


@given(st.floats(0.02, 0.98), st.floats(1.1, 4.0))
@example(0.9788, 4.0)  # regression: 1.12e-5 from the float32 t', over the old fixed 1e-5
def test_t_shift_divides_the_snr_by_the_shift_squared(t, shift):
    """λ(t') = λ(t) − 2·ln s: SNR(t') = SNR(t) / s², and t' > t (more noise)."""
    batch = batch_with_t([t])
    t32 = float(batch.t[0])
    moved, _ = training_levels(batch, TrainConfig(t_shift=shift), SCHEDULE)
    expected = float(SCHEDULE.logsnr(t32)) - 2 * math.log(shift)
    tol = logsnr_tol(float(moved.t[0]))  # <= 1.2e-5 over this domain
    assert float(SCHEDULE.logsnr(moved.t[0])) == pytest.approx(expected, rel=0, abs=tol)
    assert moved.t.dtype == np.float32 and moved.t[0] > batch.t[0]


def test_min_snr_weights_are_min_snr_gamma_over_snr():
    """w = min(SNR, γ)/SNR: 1 at and below SNR = γ, γ/SNR above. SNR(t) = cot²(a·t + b), the
    cosine schedule with λ clipped to ±20: b = atan(e^−10), a = atan(e^10) − b."""
    t = np.array([0.05, 0.2, 0.5, 0.9], np.float32)
    config = TrainConfig(loss_weighting="min-snr", snr_gamma=5.0)
    _, weights = training_levels(batch_with_t(t), config, SCHEDULE)
    b = math.atan(math.exp(-10.0))
    a = math.atan(math.exp(10.0)) - b
    snr = 1.0 / np.tan(a * t.astype(np.float64) + b) ** 2  # 161.3, 9.47, 1.0002, 0.0249
    # The library works in float64 (exp of −2·log tan instead of 1/tan²: ~1e-14 apart) and
    # returns float32: 2^-24 relative, + 2^-40 for the float64 paths (measured 2.4e-8; it was
    # rtol=1e-6).
    np.testing.assert_allclose(weights, np.minimum(snr, 5.0) / snr, rtol=U32 + 2**-40, atol=0)
    # 161.3 is the SNR at t = 0.05 to 4 significant figures: <= 0.05/161.3 = 3.1e-4 relative
    # (measured 1.3e-4; it was rel=1e-3).
    assert weights[2:].tolist() == [1.0, 1.0]
    assert weights[0] == pytest.approx(5 / 161.3, rel=0.05 / 161.3 + U32, abs=0)


def test_weights_follow_the_shifted_levels():
    """With both knobs, the weights are those of the shifted t (what the network sees)."""
    config = TrainConfig(loss_weighting="min-snr", snr_gamma=2.0, t_shift=2.0)
    moved, weights = training_levels(batch_with_t([0.1, 0.5, 0.9]), config, SCHEDULE)
    snr = np.exp(SCHEDULE.logsnr(moved.t))
    # The same float64 SNR on both sides; the library's float32 cast: 2^-24 relative (measured
    # 1.6e-8; it was rtol=1e-6).
    np.testing.assert_allclose(weights, np.minimum(snr, 2.0) / snr, rtol=U32, atol=0)


def test_weighted_mse():
    """Unit weights give Eq. 2's plain mean; otherwise the mean of weight × row mean."""
    rng = np.random.default_rng(0)
    eps, noise = (
        torch.from_numpy(rng.standard_normal((3, 4, 4, 3), dtype=np.float32)) for _ in range(2)
    )
    plain = weighted_mse(eps, noise, None)
    assert plain == torch.mean((eps - noise) ** 2)
    # The same 144 non-negative squares summed in two groupings (all at once; 3 rows of 48):
    # a reordered float32 sum of n terms moves by ≲ √n·u relative (random rounding, as in
    # tests/parity.py; the worst case is (n − 1)·u), 2·√144 for the two sides, + 3 roundings of
    # the divisions: 27·u = 1.6e-6. (Measured 6.7e-8; the old rel=1e-6 was under the estimate,
    # loosened to it.)
    assert float(weighted_mse(eps, noise, np.ones(3, np.float32))) == pytest.approx(
        float(plain), rel=(2 * math.sqrt(eps.numel()) + 3) * U32, abs=0
    )
    weights = np.array([0.0, 1.0, 0.5], np.float32)
    rows = ((eps - noise) ** 2).mean(dim=(1, 2, 3)).numpy()
    # The same row means and products (torch, float32) on both sides; only the mean of 3
    # non-negative terms may add in another order: <= 2 roundings each side: 4·u = 2.4e-7
    # (measured 0; it was rel=1e-6).
    assert float(weighted_mse(eps, noise, weights)) == pytest.approx(
        float((weights * rows).mean()), rel=4 * U32, abs=0
    )


@pytest.mark.parametrize(
    "changes, message",
    [
        (
            {"loss_weighting": "snr"},
            "TrainConfig.loss_weighting must be one of 'uniform', 'min-snr'",
        ),
        ({"snr_gamma": 0.0}, "TrainConfig.snr_gamma must be in (0.0, inf]"),
        ({"t_shift": 0.0}, "TrainConfig.t_shift must be in (0.0, 100.0]"),
    ],
)
def test_bad_recipe_values_are_refused(changes, message):
    with pytest.raises(
        ConfigError,
        match=message.replace("(", r"\(")
        .replace("[", r"\[")
        .replace(")", r"\)")
        .replace("]", r"\]"),
    ):
        TrainConfig(**changes)


def test_runs_from_before_the_recipe_fields_resume():
    """A checkpoint whose TrainConfig predates loss_weighting / snr_gamma / t_shift had the
    defaults; it resumes with them and refuses another recipe."""
    from reimagen.core.unet_config import PRESETS
    from reimagen.training.resume_check import check_resumable

    model_config = PRESETS["tiny"]
    old = {
        k: v
        for k, v in TrainConfig().to_dict().items()
        if k not in ("loss_weighting", "snr_gamma", "t_shift")
    }
    saved = attrs.make_class("Saved", ["folder", "state"])(
        "run/step-1", {"model_config": model_config.to_dict(), "train_config": old}
    )
    check_resumable(saved, model_config, TrainConfig())
    with pytest.raises(ConfigError, match="differs from the run's in loss_weighting"):
        check_resumable(saved, model_config, TrainConfig(loss_weighting="min-snr"))
