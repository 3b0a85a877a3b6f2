"""The attention layers of the Re-Imagen U-Net in JAX/Equinox (paper §3.2, Fig. 3):
self-attention, cross-attention to the text tokens and neighbour attention, with their
token/head helpers.

The twin of the torch backend's ``attention.py``: every class and every parameter has the same
name. Attention is ``jax.nn.dot_product_attention`` (the library's fused op), in its
[N, L, heads, hd] layout, which is a free reshape of [N, L, C]; masks are True = attend (torch
SDPA's boolean ``attn_mask`` has the same meaning) and the scale is explicit.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from reimagen.backends.jax.layers import LayerNorm, Linear, Norm, normal_init
from reimagen.core.unet_config import UNetConfig


def to_tokens(x: jax.Array) -> jax.Array:
    """[N, H, W, C] -> [N, H·W, C]."""
    n, h, w, c = x.shape
    return x.reshape(n, h * w, c)


def from_tokens(tokens: jax.Array, height: int, width: int) -> jax.Array:
    """[N, H·W, C] -> [N, H, W, C]."""
    n, _, c = tokens.shape
    return tokens.reshape(n, height, width, c)


def split_heads(x: jax.Array, heads: int) -> jax.Array:
    """[N, L, heads·hd] -> [N, L, heads, hd] (the layout of ``jax.nn.dot_product_attention``)."""
    n, length, width = x.shape
    return x.reshape(n, length, heads, width // heads)


def merge_heads(x: jax.Array) -> jax.Array:
    """[N, L, heads, hd] -> [N, L, heads·hd]."""
    n, length, heads, hd = x.shape
    return x.reshape(n, length, heads * hd)


def attend(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array | None = None):
    """Multi-head softmax(q·kᵀ/√hd)·v. q [N, Lq, h, hd], k/v [N, Lk, h, hd], key_mask [N, Lk]
    bool (True = attend). Returns [N, Lq, h, hd]."""
    mask = None if key_mask is None else key_mask[:, None, None, :]  # [N, 1, 1, Lk]
    return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=q.shape[-1] ** -0.5)


class SelfAttention(eqx.Module):
    """Residual multi-head self-attention over the H·W positions of a feature map."""

    norm: Norm
    to_q: Linear
    to_k: Linear
    to_v: Linear
    to_out: Linear
    heads: int = eqx.field(static=True)

    def __init__(self, width: int, config: UNetConfig, *, rng: np.random.Generator | None):
        self.heads = width // config.head_dim
        self.norm = Norm(width, config)
        self.to_q, self.to_k, self.to_v, self.to_out = (
            Linear(width, width, rng=rng) for _ in range(4)
        )

    def __call__(self, x: jax.Array) -> jax.Array:  # [N, H, W, C]
        tokens = to_tokens(self.norm(x))  # [N, H·W, C]
        q, k, v = (split_heads(f(tokens), self.heads) for f in (self.to_q, self.to_k, self.to_v))
        out = self.to_out(merge_heads(attend(q, k, v)))  # [N, H·W, C]
        return x + from_tokens(out, x.shape[1], x.shape[2])


class CrossAttention(eqx.Module):
    """Residual multi-head attention from image positions to the text token states (Imagen).

    A learned null key/value (``null_k``, ``null_v`` [C]) is always attendable, so a row whose
    text is dropped (all tokens masked) attends to the null token only.
    """

    norm: Norm
    to_q: Linear
    to_k: Linear
    to_v: Linear
    null_k: jax.Array
    null_v: jax.Array
    to_out: Linear
    heads: int = eqx.field(static=True)

    def __init__(self, width: int, config: UNetConfig, *, rng: np.random.Generator | None):
        self.heads = width // config.head_dim
        self.norm = Norm(width, config)
        self.to_q = Linear(width, width, rng=rng)
        self.to_k = Linear(config.text_dim, width, rng=rng)
        self.to_v = Linear(config.text_dim, width, rng=rng)
        self.null_k = normal_init(rng, (width,), 0.02)
        self.null_v = normal_init(rng, (width,), 0.02)
        self.to_out = Linear(width, width, rng=rng)

    def __call__(self, x: jax.Array, text: jax.Array, key_mask: jax.Array) -> jax.Array:
        """x [N, H, W, C]; text [N, L, D]; key_mask [N, L] bool (False = padding or dropped)."""
        n = x.shape[0]
        q = split_heads(self.to_q(to_tokens(self.norm(x))), self.heads)  # [N, H·W, h, hd]
        null_k = jnp.broadcast_to(self.null_k.astype(text.dtype), (n, 1, self.null_k.shape[0]))
        null_v = jnp.broadcast_to(self.null_v.astype(text.dtype), (n, 1, self.null_v.shape[0]))
        k = split_heads(jnp.concatenate([null_k, self.to_k(text)], axis=1), self.heads)
        v = split_heads(jnp.concatenate([null_v, self.to_v(text)], axis=1), self.heads)
        mask = jnp.concatenate([jnp.ones((n, 1), bool), key_mask], axis=1)  # [N, 1+L]
        out = self.to_out(merge_heads(attend(q, k.astype(q.dtype), v.astype(q.dtype), mask)))
        return x + from_tokens(out, x.shape[1], x.shape[2])


class NeighborAttention(eqx.Module):
    """Paper Fig. 3: f' = f + Attn(f(x_t, c_p, t), f(c_n, 0)), gated per row.

    Queries come from the noisy image's feature map [N, F, F, C]; keys/values from all K·F·F
    positions of the K neighbours' DStack features [N, K·F·F, C]. ``project`` turns neighbour
    features into keys/values once per sample (they do not depend on t). The branch is zeroed
    for rows with ``use_neighbors`` False, so those rows compute exactly the K=0 network.
    """

    norm: Norm
    norm_ctx: LayerNorm
    to_q: Linear
    to_k: Linear
    to_v: Linear
    to_out: Linear
    pos_q: jax.Array | None  # UNetConfig.neighbor_pos_emb: [F·F, C], zero at the start
    pos_k: jax.Array | None
    heads: int = eqx.field(static=True)

    def __init__(
        self,
        width: int,
        config: UNetConfig,
        resolution: int | None = None,
        *,
        rng: np.random.Generator | None,
    ):
        self.heads = width // config.head_dim
        self.norm = Norm(width, config)
        self.norm_ctx = LayerNorm(width, config.norm_eps)  # per neighbour position
        self.to_q, self.to_k, self.to_v, self.to_out = (
            Linear(width, width, rng=rng) for _ in range(4)
        )
        self.pos_q = self.pos_k = None
        if config.neighbor_pos_emb:
            if resolution is None:
                raise ValueError("neighbor_pos_emb needs the attention's resolution F")
            self.pos_q = jnp.zeros((resolution * resolution, width), jnp.float32)
            self.pos_k = jnp.zeros((resolution * resolution, width), jnp.float32)

    def project(self, features: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Neighbour features [N, K·F·F, C] -> (k, v), each [N, K·F·F, h, hd]."""
        ctx = self.norm_ctx(features)
        k = self.to_k(ctx)  # [N, K·F·F, C]
        if self.pos_k is not None:  # K references, each F·F positions in row-major order
            k = k + jnp.tile(self.pos_k, (features.shape[1] // self.pos_k.shape[0], 1)).astype(
                k.dtype
            )
        return split_heads(k, self.heads), split_heads(self.to_v(ctx), self.heads)

    def __call__(self, x: jax.Array, kv: tuple[jax.Array, jax.Array], use_neighbors: jax.Array):
        """x [N, F, F, C]; kv from ``project``; use_neighbors [N] bool."""
        k, v = kv
        q = self.to_q(to_tokens(self.norm(x)))  # [N, F·F, C]
        if self.pos_q is not None:
            q = q + self.pos_q.astype(q.dtype)
        q = split_heads(q, self.heads)  # [N, F·F, h, hd]
        out = self.to_out(merge_heads(attend(q, k.astype(q.dtype), v.astype(q.dtype))))
        branch = from_tokens(out, x.shape[1], x.shape[2])  # [N, F, F, C]
        return x + jnp.where(use_neighbors[:, None, None, None], branch, 0.0).astype(x.dtype)
