"""The judge's network, its config, its input and its training augmentation (docs/design.md §8).

Seven 3×3 conv + BatchNorm + ReLU layers (widths 16-32-32-64-64-128-128, three stride-2), global
average pooling and a linear head over the entities: logits [B, E] from images [B, 3, S, S] in
[-1, 1]. torch is imported inside the functions: importing this module loads no framework.
"""

from __future__ import annotations

import attrs
import numpy as np

from reimagen.bench.evaluator import EvaluatorError
from reimagen.core.config import ConfigMixin, config, in_range, one_of
from reimagen.core.images import from_uint8


def _positive_tuple(inst, attribute, value):
    if (
        not isinstance(value, tuple)
        or not value
        or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value)
    ):
        raise EvaluatorError(
            f"{type(inst).__name__}.{attribute.name} must be a non-empty tuple of positive ints, "
            f"got {value!r}"
        )


@config
class EvaluatorConfig(ConfigMixin):
    """Network shape, training schedule and augmentation of the evaluator."""

    image_size: int = attrs.field(default=32, validator=in_range(16, 256))
    # (width, stride) of each 3×3 conv; the product of strides must divide image_size.
    widths: tuple[int, ...] = attrs.field(
        default=(16, 32, 32, 64, 64, 128, 128), validator=_positive_tuple
    )
    strides: tuple[int, ...] = attrs.field(default=(1, 2, 1, 2, 1, 2, 1), validator=_positive_tuple)
    steps: int = attrs.field(default=5000, validator=in_range(1, 10**7))
    batch_size: int = attrs.field(default=128, validator=in_range(1, 65536))
    lr: float = attrs.field(default=2e-3, validator=in_range(0.0, 1.0, lo_open=True))
    warmup: int = attrs.field(default=200, validator=in_range(0, 10**7))
    weight_decay: float = attrs.field(default=5e-4, validator=in_range(0.0, 1.0))
    label_smoothing: float = attrs.field(default=0.05, validator=in_range(0.0, 1.0, hi_open=True))
    seed: int = attrs.field(default=0, validator=in_range(0, 2**63 - 1))
    # Augmentation, drawn uniformly in [0, max] per image (what a generator's output looks like).
    max_shift: float = attrs.field(default=0.05, validator=in_range(0.0, 0.5))  # × canvas
    max_scale: float = attrs.field(default=0.1, validator=in_range(0.0, 0.5))  # 1 ± this
    max_blur: float = attrs.field(default=1.0, validator=in_range(0.0, 1.0))  # mix with 3×3 blur
    max_gain: float = attrs.field(default=0.06, validator=in_range(0.0, 0.5))  # per channel
    max_noise: float = attrs.field(default=0.06, validator=in_range(0.0, 1.0))  # σ in [-1, 1]
    pool: str = attrs.field(default="avg", validator=one_of("avg", "max"))  # global pooling
    bf16: bool = True
    threads: int = attrs.field(default=1, validator=in_range(1, 256))

    def __attrs_post_init__(self):
        if len(self.widths) != len(self.strides):
            raise EvaluatorError(
                f"EvaluatorConfig.widths ({len(self.widths)}) and strides ({len(self.strides)}) "
                "must have the same length"
            )
        if self.image_size % int(np.prod(self.strides)):
            raise EvaluatorError(
                f"EvaluatorConfig.image_size {self.image_size} is not divisible by the product "
                f"of strides {int(np.prod(self.strides))}"
            )


def build_network(config: EvaluatorConfig, num_classes: int):
    """conv3×3-BN-ReLU per (width, stride), global average pool, linear -> logits [B, E]."""
    from torch import nn

    layers, channels = [], 3
    for width, stride in zip(config.widths, config.strides):
        layers += [
            nn.Conv2d(channels, width, 3, stride, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        ]
        channels = width
    pool = nn.AdaptiveMaxPool2d(1) if config.pool == "max" else nn.AdaptiveAvgPool2d(1)
    layers += [pool, nn.Flatten(), nn.Linear(channels, num_classes)]
    return nn.Sequential(*layers)


def to_input(images: np.ndarray, image_size: int):
    """uint8 [B, H, W, 3] -> float32 torch [B, 3, S, S] in [-1, 1], channels_last. H = k·S is
    area-averaged down to S (a 64×64 SR output is judged at 32×32)."""
    import torch

    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise EvaluatorError(
            f"images must be uint8 [B, H, W, 3], got {images.dtype} {list(images.shape)}"
        )
    b, h, w = images.shape[:3]
    if h != w or h % image_size:
        raise EvaluatorError(
            f"images must be square with a side that is a multiple of {image_size}, got {h}x{w}"
        )
    x = from_uint8(images)  # [B, H, W, 3]
    if h != image_size:
        f = h // image_size
        x = x.reshape(b, image_size, f, image_size, f, 3).mean(axis=(2, 4))  # area average
    tensor = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2)  # [B, 3, S, S]
    return tensor.contiguous(memory_format=torch.channels_last)


def augment(x, generator, config: EvaluatorConfig):
    """Generator-like corruption of clean scenes x: float [B, 3, S, S] in [-1, 1].

    Per image: a sub-pixel shift and a scale of the whole canvas (bilinear, border padding:
    the background extends), a blend towards a 3×3 Gaussian blur, a per-channel gain and
    Gaussian pixel noise, each magnitude uniform in [0, max]."""
    import torch
    import torch.nn.functional as F

    def uniform(*shape, low=-1.0, high=1.0):
        return low + (high - low) * torch.rand(*shape, generator=generator)

    b = x.shape[0]
    scale = 1.0 + config.max_scale * uniform(b)  # [B]
    shift = 2.0 * config.max_shift * uniform(b, 2)  # [B, 2] in normalised coordinates
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0 / scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    kernel = torch.tensor([1.0, 2.0, 1.0])
    kernel = (kernel[:, None] * kernel[None, :] / 16.0).expand(3, 1, 3, 3)  # [3, 1, 3, 3]
    blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=3)
    x = x + config.max_blur * uniform(b, 1, 1, 1, low=0.0) * (blurred - x)
    gain = 1.0 + config.max_gain * uniform(b, 3, 1, 1)
    x = (x + 1.0) * gain - 1.0
    sigma = config.max_noise * uniform(b, 1, 1, 1, low=0.0)
    x = x + sigma * torch.randn(x.shape, generator=generator)
    return x.clamp(-1.0, 1.0).contiguous(memory_format=torch.channels_last)
