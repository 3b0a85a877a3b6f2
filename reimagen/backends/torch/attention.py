"""The attention layers of the Re-Imagen U-Net in PyTorch (paper §3.2, Fig. 3): self-attention,
cross-attention to the text tokens and neighbour attention, with their token/head helpers.

Every class here has a twin of the same name in ``reimagen/backends/jax/attention.py``. Attention
is ``F.scaled_dot_product_attention`` with an explicit ``scale``, and q/k/v/out are separate
``nn.Linear`` layers named ``to_q/to_k/to_v/to_out`` (the canonical state_dict keys).

Layout: image tensors are NCHW in ``torch.channels_last`` memory format (physically NHWC), so the
attention token view ``[N, H·W, C]`` is a free permute, not a copy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reimagen.backends.torch.layers import Norm
from reimagen.core.unet_config import UNetConfig


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
    features into keys/values once per sample (they do not depend on t, docs/design.md §4), so a
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
            if resolution is None:
                raise ValueError("neighbor_pos_emb needs the attention's resolution F")
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
