import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reimagen.diffusion.augment import noise_augment, resize_bilinear
from reimagen.diffusion.schedule import CosineSchedule


@pytest.mark.parametrize("h, size", [(32, 64), (16, 64), (8, 8), (5, 13)])
def test_resize_matches_torch_bilinear(h, size):
    rng = np.random.default_rng(h * size)
    images = rng.standard_normal((2, h, h, 3)).astype(np.float32)
    ours = resize_bilinear(images, size)
    ref = (
        F.interpolate(
            torch.from_numpy(images).permute(0, 3, 1, 2),
            size=(size, size),
            mode="bilinear",
            align_corners=False,
        )
        .permute(0, 2, 3, 1)
        .numpy()
    )
    # Each output: 4 taps, weights in [0, 1] summing to 1, float32 on both sides (the weights may
    # round differently): <= ~10 roundings of max|x|, 10 * 2^-24 * max|x| (2.4e-6; measured 8.9e-7).
    np.testing.assert_allclose(ours, ref, rtol=0, atol=10 * 2**-24 * np.abs(images).max())


def test_noise_augment_endpoints_and_variance():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (4, 8, 8, 3)).astype(np.float32)
    eps = rng.standard_normal(x.shape).astype(np.float32)
    # The schedule is clipped at log-SNR ±20, so a=0 still mixes in σ(0) = sigmoid(-20)^½ = 4.5e-5 of
    # eps (and a=1 keeps α(1) = 4.5e-5 of x): the bound is that leak plus 4 float32 roundings.
    a0, s0 = CosineSchedule().alpha_sigma(0.0)
    a1, s1 = CosineSchedule().alpha_sigma(1.0)
    leak0 = s0 * np.abs(eps).max() + (1 - a0) + 4 * 2**-24  # |x| <= 1; measured 1.45e-4
    leak1 = a1 + (1 - s1) * np.abs(eps).max() + 4 * 2**-24 * np.abs(eps).max()  # measured 4.5e-5
    np.testing.assert_allclose(noise_augment(x, 0.0, eps), x, rtol=0, atol=leak0)  # a=0: clean
    pure = noise_augment(x, 1.0, eps)
    np.testing.assert_allclose(pure, eps, rtol=0, atol=leak1)  # a=1: pure noise
    levels = np.array([0.0, 0.25, 0.5, 1.0])
    mixed = noise_augment(x, levels, eps)
    alpha, sigma = CosineSchedule().alpha_sigma(levels)
    for i in range(4):
        # float32 α·x + σ·ε against float64: α, σ rounded to float32, two products and a sum: <= 4
        # roundings of |αx| + |σε| (measured 1.1e-7 of a ~1e-6 bound).
        want = alpha[i] * x[i] + sigma[i] * eps[i]
        scale = np.abs(alpha[i] * x[i]).max() + np.abs(sigma[i] * eps[i]).max()
        np.testing.assert_allclose(mixed[i], want, rtol=0, atol=4 * 2**-24 * scale)
