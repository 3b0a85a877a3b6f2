"""Validation of a denoiser's bound conditions (docs/design.md §5), shared by both backends.

A denoiser is built for B samples with their prompts (text tokens [B, L, D]), their K retrieved
neighbours ([B, K, H, W, C] images with [B, K, L, D] captions) and, for a super-resolution
stage, the low-resolution image. These checks run on the host arrays, before any network call,
and fail with one line that names the argument and the shape it must have. numpy only.
"""

from __future__ import annotations

import numpy as np

from reimagen.core.interfaces import TextEncoding
from reimagen.core.unet_config import UNetConfig


def check_conditions(
    config: UNetConfig,
    text: TextEncoding,
    neighbor_images: np.ndarray,
    neighbor_text: TextEncoding,
    lowres: np.ndarray | None = None,
) -> None:
    """Shape checks of the conditions a U-Net built from ``config`` is bound to."""
    b = len(text)
    size, channels = config.image_size, config.in_channels
    if text.tokens.ndim != 3 or text.tokens.shape[-1] != config.text_dim:
        raise ValueError(
            f"text.tokens must be [B, L, {config.text_dim}] for this model; got {text.tokens.shape}"
        )
    expected = (b, None, size, size, channels)
    shape = tuple(np.shape(neighbor_images))
    if len(shape) != 5 or any(e is not None and e != s for e, s in zip(expected, shape)):
        raise ValueError(
            f"neighbor_images must be [B={b}, K, {size}, {size}, {channels}]; got {shape}"
        )
    k = shape[1]
    if tuple(neighbor_text.tokens.shape[:2]) != (b, k) or neighbor_text.tokens.ndim != 4:
        raise ValueError(
            f"neighbor_text.tokens must be [B={b}, K={k}, L, D]; got {neighbor_text.tokens.shape}"
        )
    if config.is_super_resolution and lowres is None:
        raise ValueError("lowres [B, H, W, C] is required for a super-resolution model")
