"""Building blocks of the Re-Imagen U-Net in PyTorch (paper §3.2, Fig. 3).

Every layer here has a twin of the same name in ``reimagen/backends/jax/layers.py``; the torch
``state_dict`` keys are the canonical safetensors layout both backends read. To keep the two
numerically equal (≤1e-5) nothing relies on a framework default: norm epsilons come from
``UNetConfig.norm_eps`` and SiLU is exact. The three attentions are in ``attention.py``.

Layout: image tensors are NCHW in ``torch.channels_last`` memory format (physically NHWC), so the
per-pixel LayerNorm's view ``[N, H, W, C]`` is a free permute, not a copy.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reimagen.core.unet_config import UNetConfig
from reimagen.diffusion.time_features import TWO_PI, turn_rates

# The same float32 number as a Python float (exact: multiplying a float32 tensor by it rounds
# it to float32, so bit-identical), which torch.compile folds as a constant; the numpy scalar
# became a tensor guard that fails under inference mode (compiled.py).
_TWO_PI = float(TWO_PI)


@functools.cache
def _turn_rates(half: int, device: torch.device) -> Tensor:
    """The shared constants on ``device``, copied there once (not a host copy per forward).
    Made outside inference mode: a cached inference tensor could not be saved for backward by
    a later training step."""
    with torch.inference_mode(False):
        return torch.tensor(turn_rates(half), device=device)


def sinusoidal_embedding(t: Tensor, dim: int) -> Tensor:
    """t [N] in [0, 1] -> [N, dim] = [sin(TIME_SCALE·t·ω_i), cos(TIME_SCALE·t·ω_i)], evaluated
    as sin/cos of 2π·frac(t·r_i) on shared float32 constants (``reimagen.diffusion.time_features``:
    why, and the error bound)."""
    rates = _turn_rates(dim // 2, t.device)  # [half]
    turns = t.float()[:, None] * rates[None, :]  # [N, half]
    angles = _TWO_PI * (turns - torch.floor(turns))  # [N, half], in [0, 2π)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)  # [N, dim]


def pointwise_conv(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """A 1×1 conv as one GEMM over the channels of the NHWC view (oneDNN sends 1×1 convs to a
    slow im2col path on CPU); same parameters, same result up to rounding."""
    weight = conv.weight.reshape(conv.out_channels, conv.in_channels)  # [Cout, Cin]
    out = F.linear(x.permute(0, 2, 3, 1), weight, conv.bias)
    return out.permute(0, 3, 1, 2)  # [N, Cout, H, W], channels_last


class Norm(nn.Module):
    """GroupNorm (``norm="group"``) or per-pixel LayerNorm over channels (``norm="layer"``) of an
    NCHW image; explicit eps. Parameters: ``weight`` [C], ``bias`` [C]."""

    def __init__(self, channels: int, config: UNetConfig):
        super().__init__()
        self.kind = config.norm
        self.groups = config.norm_groups
        self.eps = config.norm_eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:  # [N, C, H, W]
        if self.kind == "group":
            return F.group_norm(x, self.groups, self.weight, self.bias, self.eps)
        nhwc = x.permute(0, 2, 3, 1)  # a view for channels_last x
        out = F.layer_norm(nhwc, (x.shape[1],), self.weight, self.bias, self.eps)
        return out.permute(0, 3, 1, 2)


class TimeMLP(nn.Module):
    """Sinusoidal features of a level in [0, 1] (time t or SR augmentation level) -> MLP:
    ``fc2(silu(fc1(sin_emb)))``, [N] -> [N, time_dim]."""

    def __init__(self, feature_dim: int, time_dim: int):
        super().__init__()
        self.feature_dim = feature_dim
        self.fc1 = nn.Linear(feature_dim, time_dim)
        self.fc2 = nn.Linear(time_dim, time_dim)

    def forward(self, level: Tensor) -> Tensor:
        features = sinusoidal_embedding(level, self.feature_dim).to(self.fc1.weight.dtype)
        return self.fc2(F.silu(self.fc1(features)))


class ResBlock(nn.Module):
    """norm → SiLU → conv3×3 → FiLM by the embedding (scale, shift) on norm → SiLU → dropout →
    conv3×3, plus a 1×1 ``skip`` conv when the width changes (Imagen/ADM ResBlock)."""

    def __init__(self, in_channels: int, out_channels: int, config: UNetConfig):
        super().__init__()
        self.norm1 = Norm(in_channels, config)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb_proj = nn.Linear(config.time_dim, 2 * out_channels)
        self.norm2 = Norm(out_channels, config)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None
        self.dropout = config.dropout

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:  # x [N, Cin, H, W], emb [N, time_dim]
        h = self.conv1(F.silu(self.norm1(x)))  # [N, Cout, H, W]
        scale, shift = self.emb_proj(F.silu(emb)).chunk(2, dim=1)  # [N, Cout] each
        h = self.norm2(h) * (1 + scale[:, :, None, None]) + shift[:, :, None, None]
        h = F.dropout(F.silu(h), self.dropout, self.training)
        h = self.conv2(h)
        return (x if self.skip is None else pointwise_conv(self.skip, x)) + h


class Downsample(nn.Module):
    """conv3×3, stride 2, padding 1: [N, C, H, W] -> [N, C, H/2, W/2]."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """nearest ×2 then conv3×3: [N, C, H, W] -> [N, C, 2H, 2W]."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
