"""The noise-level recipe of a training step (TrainConfig.t_shift, loss_weighting; issue #15):
analytic checks of the host-side maths both backends share, and of torch's weighted loss.
(Torch vs JAX on a weighted step: tests/test_jax_parity.py::test_optimizer_step[min-snr].)"""

from __future__ import annotations

import math

import attrs
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from reimagen.backends.torch.trainer import weighted_mse
from reimagen.core.config import ConfigError
from reimagen.core.schedule import CosineSchedule
from reimagen.core.train_loop import training_levels
from reimagen.core.training import Batch, TrainConfig

SCHEDULE = CosineSchedule()
# float32 t: λ(t) = −2·log tan(πt/2) has dλ/dt = −2π / sin(πt), so one float32 ulp of t
# (≤ 6e-8) moves λ by ≤ 4e-7 / sin(πt); over t ∈ [0.02, 0.98] that is ≤ 7e-6.
LOGSNR_TOL = 1e-5


def batch_with_t(t) -> Batch:
    t = np.asarray(t, np.float32)
    b = len(t)
    zeros = np.zeros((b, 2, 2, 3), np.float32)
    return Batch(images=zeros, text=None, neighbor_images=zeros[:, None], neighbor_text=None,
                 t=t, noise=zeros, use_text=np.ones(b, bool), use_neighbors=np.ones(b, bool))


@given(st.floats(0.001, 0.999))
def test_t_of_logsnr_inverts_logsnr(t):
    assert SCHEDULE.t_of_logsnr(SCHEDULE.logsnr(t)) == pytest.approx(t, abs=1e-9)


def test_t_of_logsnr_clips_to_the_schedule_ends():
    assert SCHEDULE.t_of_logsnr([1e3, -1e3]).tolist() == pytest.approx([0.0, 1.0], abs=1e-12)


def test_paper_recipe_leaves_the_batch_alone():
    batch = batch_with_t([0.1, 0.5, 0.9])
    same, weights = training_levels(batch, TrainConfig(), SCHEDULE)
    assert same is batch and weights is None


@given(st.floats(0.02, 0.98), st.floats(1.1, 4.0))
def test_t_shift_divides_the_snr_by_the_shift_squared(t, shift):
    """λ(t') = λ(t) − 2·ln s: SNR(t') = SNR(t) / s², and t' > t (more noise)."""
    batch = batch_with_t([t])
    t32 = float(batch.t[0])
    moved, _ = training_levels(batch, TrainConfig(t_shift=shift), SCHEDULE)
    expected = float(SCHEDULE.logsnr(t32)) - 2 * math.log(shift)
    assert float(SCHEDULE.logsnr(moved.t[0])) == pytest.approx(expected, abs=LOGSNR_TOL)
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
    np.testing.assert_allclose(weights, np.minimum(snr, 5.0) / snr, rtol=1e-6)
    assert weights[2:].tolist() == [1.0, 1.0] and weights[0] == pytest.approx(5 / 161.3, rel=1e-3)


def test_weights_follow_the_shifted_levels():
    """With both knobs, the weights are those of the shifted t (what the network sees)."""
    config = TrainConfig(loss_weighting="min-snr", snr_gamma=2.0, t_shift=2.0)
    moved, weights = training_levels(batch_with_t([0.1, 0.5, 0.9]), config, SCHEDULE)
    snr = np.exp(SCHEDULE.logsnr(moved.t))
    np.testing.assert_allclose(weights, np.minimum(snr, 2.0) / snr, rtol=1e-6)


def test_weighted_mse():
    """Unit weights give Eq. 2's plain mean; otherwise the mean of weight × row mean."""
    rng = np.random.default_rng(0)
    eps, noise = (torch.from_numpy(rng.standard_normal((3, 4, 4, 3), dtype=np.float32))
                  for _ in range(2))
    plain = weighted_mse(eps, noise, None)
    assert plain == torch.mean((eps - noise) ** 2)
    assert float(weighted_mse(eps, noise, np.ones(3, np.float32))) == pytest.approx(
        float(plain), rel=1e-6
    )
    weights = np.array([0.0, 1.0, 0.5], np.float32)
    rows = ((eps - noise) ** 2).mean(dim=(1, 2, 3)).numpy()
    assert float(weighted_mse(eps, noise, weights)) == pytest.approx(
        float((weights * rows).mean()), rel=1e-6
    )


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"loss_weighting": "snr"}, "TrainConfig.loss_weighting must be one of 'uniform', 'min-snr'"),
        ({"snr_gamma": 0.0}, "TrainConfig.snr_gamma must be in (0.0, inf]"),
        ({"t_shift": 0.0}, "TrainConfig.t_shift must be in (0.0, 100.0]"),
    ],
)
def test_bad_recipe_values_are_refused(changes, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")
                       .replace(")", r"\)").replace("]", r"\]")):
        TrainConfig(**changes)


def test_runs_from_before_the_recipe_fields_resume():
    """A checkpoint whose TrainConfig predates loss_weighting / snr_gamma / t_shift had the
    defaults; it resumes with them and refuses another recipe."""
    from reimagen.core.train_loop import check_resumable
    from reimagen.core.unet_config import PRESETS

    model_config = PRESETS["tiny"]
    old = {k: v for k, v in TrainConfig().to_dict().items()
           if k not in ("loss_weighting", "snr_gamma", "t_shift")}
    saved = attrs.make_class("Saved", ["folder", "state"])(
        "run/step-1", {"model_config": model_config.to_dict(), "train_config": old}
    )
    check_resumable(saved, model_config, TrainConfig())
    with pytest.raises(ConfigError, match="differs from the run's in loss_weighting"):
        check_resumable(saved, model_config, TrainConfig(loss_weighting="min-snr"))
