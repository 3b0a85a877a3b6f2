"""Building blocks of the Re-Imagen U-Net in PyTorch (paper §3.2, Fig. 3).

Every layer here has a twin of the same name in ``reimagen/backends/jax/layers.py``; the torch
``state_dict`` keys are the canonical safetensors layout both backends read. To keep the two
numerically equal (≤1e-5) nothing relies on a framework default: norm epsilons come from
``UNetConfig.norm_eps``, SiLU is exact, attention is ``F.scaled_dot_product_attention`` with an
explicit ``scale``, and q/k/v/out are separate ``nn.Linear`` layers named ``to_q/to_k/to_v/to_out``.

Layout: image tensors are NCHW in ``torch.channels_last`` memory format (physically NHWC), so the
per-pixel LayerNorm and the attention token view ``[N, H·W, C]`` are free permutes, not copies.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reimagen.diffusion.time_features import TWO_PI, turn_rates
from reimagen.core.unet_config import UNetConfig

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


def to_tokens(x: Tensor) -> Tensor:
    """[N, C, H, W] (channels_last) -> [N, H·W, C]; a view when x is channels_last."""
    n, c, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(n, h * w, c)


def from_tokens(tokens: Tensor, height: int, width: int) -> Tensor:
    """[N, H·W, C] -> [N, C, H, W] with channels_last strides (a view)."""
    n, _, c = tokens.shape
    return tokens.reshape(n, height, width, c).permute(0, 3, 1, 2)


def split_heads(x: Tensor, heads: int) -> Tensor:
    """[N, L, heads·hd] -> [N, heads, L, hd]."""
    n, length, width = x.shape
    return x.reshape(n, length, heads, width // heads).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """[N, heads, L, hd] -> [N, L, heads·hd]."""
    n, heads, length, hd = x.shape
    return x.transpose(1, 2).reshape(n, length, heads * hd)


def attend(q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None = None) -> Tensor:
    """Multi-head softmax(q·kᵀ/√hd)·v. q [N, h, Lq, hd], k/v [N, h, Lk, hd], key_mask [N, Lk]
    bool (True = attend). Returns [N, h, Lq, hd]."""
    mask = None if key_mask is None else key_mask[:, None, None, :]  # [N, 1, 1, Lk]
    if q.dtype == torch.bfloat16 and q.device.type == "cpu" and torch.is_grad_enabled():
        # The CPU SDPA kernel's bf16 backward ran 4-10x slower than its fp32 one (AMD EPYC, no
        # AMX; docs/results/profile.md), so bf16 training attends in fp32 (autocast off, or it
        # would cast back): the same function, rounded less. q/k/v are small next to the
        # convolutions' activations. The forward alone runs as fast in bf16: sampling keeps it.
        with torch.autocast("cpu", enabled=False):
            out = F.scaled_dot_product_attention(
                q.float(), k.float(), v.float(), attn_mask=mask, scale=q.shape[-1] ** -0.5
            )
        return out.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=q.shape[-1] ** -0.5)


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


class SelfAttention(nn.Module):
    """Residual multi-head self-attention over the H·W positions of a feature map."""

    def __init__(self, width: int, config: UNetConfig):
        super().__init__()
        self.heads = width // config.head_dim
        self.norm = Norm(width, config)
        self.to_q = nn.Linear(width, width)
        self.to_k = nn.Linear(width, width)
        self.to_v = nn.Linear(width, width)
        self.to_out = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:  # [N, C, H, W]
        tokens = to_tokens(self.norm(x))  # [N, H·W, C]
        q, k, v = (split_heads(f(tokens), self.heads) for f in (self.to_q, self.to_k, self.to_v))
        out = self.to_out(merge_heads(attend(q, k, v)))  # [N, H·W, C]
        return x + from_tokens(out, x.shape[2], x.shape[3])


class CrossAttention(nn.Module):
    """Residual multi-head attention from image positions to the text token states (Imagen).

    A learned null key/value (``null_k``, ``null_v`` [C]) is always attendable, so a row whose
    text is dropped (all tokens masked) attends to the null token only: "no text" is well
    defined and differentiable.
    """

    def __init__(self, width: int, config: UNetConfig):
        super().__init__()
        self.heads = width // config.head_dim
        self.norm = Norm(width, config)
        self.to_q = nn.Linear(width, width)
        self.to_k = nn.Linear(config.text_dim, width)
        self.to_v = nn.Linear(config.text_dim, width)
        self.null_k = nn.Parameter(torch.randn(width) * 0.02)
        self.null_v = nn.Parameter(torch.randn(width) * 0.02)
        self.to_out = nn.Linear(width, width)

    def forward(self, x: Tensor, text: Tensor, key_mask: Tensor) -> Tensor:
        """x [N, C, H, W]; text [N, L, D]; key_mask [N, L] bool (False = padding or dropped)."""
        n = x.shape[0]
        q = split_heads(self.to_q(to_tokens(self.norm(x))), self.heads)  # [N, h, H·W, hd]
        null_k = self.null_k.to(text.dtype).expand(n, 1, -1)  # [N, 1, C]
        null_v = self.null_v.to(text.dtype).expand(n, 1, -1)
        k = split_heads(torch.cat([null_k, self.to_k(text)], dim=1), self.heads)  # [N,h,1+L,hd]
        v = split_heads(torch.cat([null_v, self.to_v(text)], dim=1), self.heads)
        mask = torch.cat([key_mask.new_ones(n, 1), key_mask], dim=1)  # [N, 1+L]
        out = self.to_out(merge_heads(attend(q, k.to(q.dtype), v.to(q.dtype), mask)))
        return x + from_tokens(out, x.shape[2], x.shape[3])


class NeighborAttention(nn.Module):
    """Paper Fig. 3: f' = f + Attn(f(x_t, c_p, t), f(c_n, 0)), gated per row.

    Queries come from the noisy image's feature map [N, C, F, F]; keys/values from all K·F·F
    positions of the K neighbours' DStack features [N, K·F·F, C]. ``project`` turns neighbour
    features into keys/values once per sample (they do not depend on t, DESIGN §4), so a
    sampling step only pays for q, the attention and ``to_out``. The branch is zeroed for rows
    with ``use_neighbors`` False, so those rows compute exactly the K=0 network.
    """

    def __init__(self, width: int, config: UNetConfig, resolution: int | None = None):
        super().__init__()
        self.heads = width // config.head_dim
        self.norm = Norm(width, config)
        self.norm_ctx = nn.LayerNorm(width, eps=config.norm_eps)  # per neighbour position
        self.to_q = nn.Linear(width, width)
        self.to_k = nn.Linear(width, width)
        self.to_v = nn.Linear(width, width)
        self.to_out = nn.Linear(width, width)
        # UNetConfig.neighbor_pos_emb: [F·F, C] tables added to q (noisy-image position) and to
        # k (reference position, the same for each of the K references); zero at the start.
        self.pos_q = self.pos_k = None
        if config.neighbor_pos_emb:
            self.pos_q = nn.Parameter(torch.zeros(resolution * resolution, width))
            self.pos_k = nn.Parameter(torch.zeros(resolution * resolution, width))

    def project(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """Neighbour features [N, K·F·F, C] -> (k, v), each [N, h, K·F·F, hd]."""
        ctx = self.norm_ctx(features)
        k = self.to_k(ctx)  # [N, K·F·F, C]
        if self.pos_k is not None:  # K references, each F·F positions in row-major order
            k = k + self.pos_k.repeat(features.shape[1] // self.pos_k.shape[0], 1).to(k.dtype)
        return split_heads(k, self.heads), split_heads(self.to_v(ctx), self.heads)

    def forward(self, x: Tensor, kv: tuple[Tensor, Tensor], use_neighbors: Tensor) -> Tensor:
        """x [N, C, F, F]; kv from ``project``; use_neighbors [N] bool."""
        k, v = kv
        q = self.to_q(to_tokens(self.norm(x)))  # [N, F·F, C]
        if self.pos_q is not None:
            q = q + self.pos_q.to(q.dtype)
        q = split_heads(q, self.heads)  # [N, h, F·F, hd]
        out = self.to_out(merge_heads(attend(q, k.to(q.dtype), v.to(q.dtype))))  # [N, F·F, C]
        branch = from_tokens(out, x.shape[2], x.shape[3])
        return x + torch.where(use_neighbors[:, None, None, None], branch, 0.0)
