import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reimagen.core.augment import noise_augment, resize_bilinear
from reimagen.core.schedule import CosineSchedule


@pytest.mark.parametrize("h, size", [(32, 64), (16, 64), (8, 8), (5, 13)])
def test_resize_matches_torch_bilinear(h, size):
    rng = np.random.default_rng(h * size)
    images = rng.standard_normal((2, h, h, 3)).astype(np.float32)
    ours = resize_bilinear(images, size)
    ref = F.interpolate(
        torch.from_numpy(images).permute(0, 3, 1, 2), size=(size, size), mode="bilinear",
        align_corners=False,
    ).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_noise_augment_endpoints_and_variance():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (4, 8, 8, 3)).astype(np.float32)
    eps = rng.standard_normal(x.shape).astype(np.float32)
    np.testing.assert_allclose(noise_augment(x, 0.0, eps), x, atol=5e-4)  # a=0: clean
    pure = noise_augment(x, 1.0, eps)
    np.testing.assert_allclose(pure, eps, atol=5e-4)  # a=1: pure noise
    levels = np.array([0.0, 0.25, 0.5, 1.0])
    mixed = noise_augment(x, levels, eps)
    alpha, sigma = CosineSchedule().alpha_sigma(levels)
    for i in range(4):
        np.testing.assert_allclose(mixed[i], alpha[i] * x[i] + sigma[i] * eps[i], rtol=1e-5, atol=1e-6)
