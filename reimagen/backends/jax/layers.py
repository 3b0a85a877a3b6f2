"""Building blocks of the Re-Imagen U-Net in JAX/Equinox (paper §3.2, Fig. 3).

The twin of the torch backend's ``layers.py``: every class and every parameter has the same
name, so the torch ``state_dict`` keys (the canonical safetensors layout) are also the paths of
this module tree, and ``convert.py`` is a path -> array mapping.

Why Equinox: a module is a plain pytree of arrays, so ``jax.jit`` / ``jax.grad`` apply to the
model itself, there is no hidden mutable state (no variable collections, no ``init``/``apply``
split), and the parameter names are ordinary attribute paths. Flax NNX would do too, but is not
installed here.

Layout and conventions (the torch twin runs NCHW channels_last, physically the same memory):
  * images are NHWC; a conv kernel is HWIO ``[kh, kw, in, out]`` (torch OIHW ``[out, in, kh, kw]``);
  * a ``Linear`` weight is ``[out, in]`` as in torch (and ``eqx.nn.Linear``): ``y = x·Wᵀ + b``;
  * attention masks are True = attend (torch SDPA boolean ``attn_mask`` has the same meaning);
  * nothing relies on a framework default: norm epsilons come from ``UNetConfig.norm_eps``, the
    attention scale is explicit, SiLU is exact.

The layers are written here rather than taken from ``eqx.nn`` because ``eqx.nn.Conv2d`` and
``eqx.nn.GroupNorm`` act on one channels-first sample (CHW) and are vmapped; the U-Net runs on
batched NHWC arrays, which is one ``lax.conv_general_dilated`` call and two reductions.
The three attentions are in ``attention.py``.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from reimagen.core.unet_config import UNetConfig
from reimagen.diffusion.time_features import TWO_PI, turn_rates


def sinusoidal_embedding(t: jax.Array, dim: int) -> jax.Array:
    """t [N] in [0, 1] -> [N, dim] = [sin(TIME_SCALE·t·ω_i), cos(TIME_SCALE·t·ω_i)], evaluated
    as sin/cos of 2π·frac(t·r_i): the same float32 operations on the same constants as torch
    (``reimagen.diffusion.time_features``)."""
    rates = jnp.asarray(turn_rates(dim // 2))  # [half]
    turns = t.astype(jnp.float32)[:, None] * rates[None, :]  # [N, half]
    angles = TWO_PI * (turns - jnp.floor(turns))  # [N, half], in [0, 2π)
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=1)  # [N, dim]


def _uniform(rng: np.random.Generator | None, shape: tuple[int, ...], fan_in: int) -> jax.Array:
    """U(−1/√fan_in, 1/√fan_in): PyTorch's default Linear/Conv init (kaiming_uniform, a=√5).

    Initial values are drawn on the host with numpy: building a model is then one transfer per
    array instead of one compiled ``jax.random`` call per shape (minutes for a U-Net on CPU).
    ``rng=None`` builds the structure only, for ``eqx.filter_eval_shape`` (nothing allocated)."""
    if rng is None:
        return jnp.zeros(shape, jnp.float32)
    bound = 1.0 / math.sqrt(fan_in)
    return jnp.asarray(rng.uniform(-bound, bound, shape).astype(np.float32))


def normal_init(rng: np.random.Generator | None, shape: tuple[int, ...], std: float) -> jax.Array:
    if rng is None:
        return jnp.zeros(shape, jnp.float32)
    return jnp.asarray((rng.standard_normal(shape) * std).astype(np.float32))


def _const(value: float, channels: int) -> jax.Array:
    return jnp.asarray(np.full((channels,), value, np.float32))


class Linear(eqx.Module):
    """y = x·Wᵀ + b over the last axis. ``weight`` [out, in], ``bias`` [out] (torch layout)."""

    weight: jax.Array
    bias: jax.Array

    def __init__(self, in_features: int, out_features: int, *, rng: np.random.Generator | None):
        self.weight = _uniform(rng, (out_features, in_features), in_features)
        self.bias = _uniform(rng, (out_features,), in_features)

    def __call__(self, x: jax.Array) -> jax.Array:  # [..., in] -> [..., out]
        return x @ self.weight.T.astype(x.dtype) + self.bias.astype(x.dtype)


class Conv2d(eqx.Module):
    """NHWC 2-D convolution, symmetric zero padding. ``weight`` HWIO [kh, kw, in, out]."""

    weight: jax.Array
    bias: jax.Array
    stride: int = eqx.field(static=True)
    padding: int = eqx.field(static=True)

    def __init__(
        self, in_channels: int, out_channels: int, kernel: int, *, stride=1, padding=0, rng
    ):
        fan_in = in_channels * kernel * kernel
        self.weight = _uniform(rng, (kernel, kernel, in_channels, out_channels), fan_in)
        self.bias = _uniform(rng, (out_channels,), fan_in)
        self.stride = stride
        self.padding = padding

    def __call__(self, x: jax.Array) -> jax.Array:  # [N, H, W, Cin] -> [N, H', W', Cout]
        out = lax.conv_general_dilated(
            x,
            self.weight.astype(x.dtype),
            window_strides=(self.stride, self.stride),
            padding=((self.padding, self.padding), (self.padding, self.padding)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        return out + self.bias.astype(x.dtype)


def _normalize(x: jax.Array, axes: tuple[int, ...], eps: float) -> jax.Array:
    """(x − mean)/√(var + eps) over ``axes`` with the biased variance, computed in float32
    (torch's group_norm/layer_norm accumulate in float32 too)."""
    x32 = x.astype(jnp.float32)
    mean = x32.mean(axis=axes, keepdims=True)
    var = jnp.square(x32 - mean).mean(axis=axes, keepdims=True)
    return (x32 - mean) * lax.rsqrt(var + eps)


class LayerNorm(eqx.Module):
    """LayerNorm over the last axis (torch ``nn.LayerNorm(C, eps)``): ``weight``, ``bias`` [C]."""

    weight: jax.Array
    bias: jax.Array
    eps: float = eqx.field(static=True)

    def __init__(self, channels: int, eps: float):
        self.weight = _const(1.0, channels)
        self.bias = _const(0.0, channels)
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:  # [..., C]
        out = _normalize(x, (-1,), self.eps) * self.weight + self.bias
        return out.astype(x.dtype)


class Norm(eqx.Module):
    """GroupNorm (``norm="group"``) or per-pixel LayerNorm over channels (``norm="layer"``) of an
    NHWC image; explicit eps. Parameters: ``weight`` [C], ``bias`` [C]."""

    weight: jax.Array
    bias: jax.Array
    kind: str = eqx.field(static=True)
    groups: int = eqx.field(static=True)
    eps: float = eqx.field(static=True)

    def __init__(self, channels: int, config: UNetConfig):
        self.weight = _const(1.0, channels)
        self.bias = _const(0.0, channels)
        self.kind = config.norm
        self.groups = config.norm_groups
        self.eps = config.norm_eps

    def __call__(self, x: jax.Array) -> jax.Array:  # [N, H, W, C]
        if self.kind == "group":
            n, h, w, c = x.shape
            grouped = x.reshape(n, h, w, self.groups, c // self.groups)  # [N, H, W, G, C/G]
            normed = _normalize(grouped, (1, 2, 4), self.eps).reshape(n, h, w, c)
        else:
            normed = _normalize(x, (-1,), self.eps)
        return (normed * self.weight + self.bias).astype(x.dtype)


class TimeMLP(eqx.Module):
    """Sinusoidal features of a level in [0, 1] (time t or SR augmentation level) -> MLP:
    ``fc2(silu(fc1(sin_emb)))``, [N] -> [N, time_dim]."""

    fc1: Linear
    fc2: Linear
    feature_dim: int = eqx.field(static=True)

    def __init__(self, feature_dim: int, time_dim: int, *, rng: np.random.Generator | None):
        self.fc1 = Linear(feature_dim, time_dim, rng=rng)
        self.fc2 = Linear(time_dim, time_dim, rng=rng)
        self.feature_dim = feature_dim

    def __call__(self, level: jax.Array) -> jax.Array:
        features = sinusoidal_embedding(level, self.feature_dim).astype(self.fc1.weight.dtype)
        return self.fc2(jax.nn.silu(self.fc1(features)))


class ResBlock(eqx.Module):
    """norm → SiLU → conv3×3 → FiLM by the embedding (scale, shift) on norm → SiLU → dropout →
    conv3×3, plus a 1×1 ``skip`` conv when the width changes (Imagen/ADM ResBlock)."""

    norm1: Norm
    conv1: Conv2d
    emb_proj: Linear
    norm2: Norm
    conv2: Conv2d
    skip: Conv2d | None
    dropout: float = eqx.field(static=True)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        config: UNetConfig,
        *,
        rng: np.random.Generator | None,
    ):
        self.norm1 = Norm(in_channels, config)
        self.conv1 = Conv2d(in_channels, out_channels, 3, padding=1, rng=rng)
        self.emb_proj = Linear(config.time_dim, 2 * out_channels, rng=rng)
        self.norm2 = Norm(out_channels, config)
        self.conv2 = Conv2d(out_channels, out_channels, 3, padding=1, rng=rng)
        self.skip = (
            Conv2d(in_channels, out_channels, 1, rng=rng) if in_channels != out_channels else None
        )
        self.dropout = config.dropout

    def __call__(self, x: jax.Array, emb: jax.Array, *, key: jax.Array | None = None):
        """x [N, H, W, Cin], emb [N, time_dim]; ``key`` enables dropout (training only)."""
        h = self.conv1(jax.nn.silu(self.norm1(x)))  # [N, H, W, Cout]
        scale, shift = jnp.split(self.emb_proj(jax.nn.silu(emb)), 2, axis=1)  # [N, Cout] each
        h = self.norm2(h) * (1 + scale[:, None, None, :]) + shift[:, None, None, :]
        h = _dropout(jax.nn.silu(h), self.dropout, key)
        h = self.conv2(h)
        return (x if self.skip is None else self.skip(x)) + h


def _dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
    """Inverted dropout (as ``F.dropout``); the identity without a key or with rate 0."""
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


class Downsample(eqx.Module):
    """conv3×3, stride 2, padding 1: [N, H, W, C] -> [N, H/2, W/2, C]."""

    conv: Conv2d

    def __init__(self, channels: int, *, rng: np.random.Generator | None):
        self.conv = Conv2d(channels, channels, 3, stride=2, padding=1, rng=rng)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.conv(x)


class Upsample(eqx.Module):
    """nearest ×2 then conv3×3: [N, H, W, C] -> [N, 2H, 2W, C]."""

    conv: Conv2d

    def __init__(self, channels: int, *, rng: np.random.Generator | None):
        self.conv = Conv2d(channels, channels, 3, padding=1, rng=rng)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.conv(jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2))
