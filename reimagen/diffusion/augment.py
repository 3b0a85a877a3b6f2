"""Super-resolution conditioning (Imagen §2.5, docs/design.md §4, §7): upsample the low-res image, then
corrupt it with Gaussian noise at an augmentation level a ∈ [0, 1] (noise-conditioning
augmentation). The corruption uses the same cosine schedule as the diffusion itself:
    lowres_aug = α(a)·up(lowres) + σ(a)·ε,
and the level a is given to the network (like t). Training draws a at random; sampling fixes it.
numpy only, so both backends and the data pipeline share it.
"""

from __future__ import annotations

import numpy as np

from reimagen.diffusion.schedule import CosineSchedule


def _linear_weights(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] bilinear interpolation weights, half-pixel centres (align_corners=False)."""
    centres = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    centres = np.clip(centres, 0.0, n_in - 1)
    lo = np.floor(centres).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = centres - lo
    weights = np.zeros((n_out, n_in), np.float64)
    weights[np.arange(n_out), lo] += 1.0 - frac
    weights[np.arange(n_out), hi] += frac
    return weights


def resize_bilinear(images: np.ndarray, size: int) -> np.ndarray:
    """[B, h, w, C] -> [B, size, size, C] bilinear (as torch's interpolate, align_corners=False,
    for upsampling), float32."""
    images = np.asarray(images, np.float32)
    _, h, w, _ = images.shape
    rows = _linear_weights(h, size)  # [size, h]
    cols = _linear_weights(w, size)  # [size, w]
    return np.einsum("yh,bhwc,xw->byxc", rows, images, cols, optimize=True).astype(np.float32)


def noise_augment(
    lowres_up: np.ndarray, level, noise: np.ndarray, schedule: CosineSchedule | None = None
) -> np.ndarray:
    """α(a)·x + σ(a)·ε with a per batch element ([B] or scalar); x, ε [B, H, W, C]."""
    schedule = schedule or CosineSchedule()
    level = np.broadcast_to(np.asarray(level, np.float64), (lowres_up.shape[0],))
    alpha, sigma = schedule.alpha_sigma(level)
    alpha = alpha.reshape(-1, 1, 1, 1)
    sigma = sigma.reshape(-1, 1, 1, 1)
    return (alpha * lowres_up + sigma * noise).astype(np.float32)
