"""The Re-Imagen U-Net in JAX/Equinox (paper §3.2, Fig. 3; docs/design.md §4).

The twin of the torch backend's ``unet.py``, built from the same ``UNetConfig`` into the
same module tree with the same parameter paths (``down.1.blocks.0.cross_attn.to_k.weight``, …):

    DStack(x_t, c_p, t)  -> f [B, F, F, C] (+ the skip activations for the UStack)
    DStack(c_n images, c_n texts, t=0) -> neighbour features per level [B, K·r·r, C_r]
    f' = f + NeighborAttn(f, neighbour features at F)           (bottleneck, Fig. 3)
    middle(f') -> UStack(skips) -> ε                            (ε-prediction, Eq. 2)

Neighbour attention sits at the bottleneck F (before the middle block, exactly Fig. 3) and, for
higher resolutions r in ``neighbor_attn_resolutions``, in the UStack after the decoder's blocks
at r and before upsampling. See the torch module docstring for the conditioning; this file only
differs in layout (NHWC throughout) and in how a step skips the neighbour branch: torch checks
the ``use_neighbors`` values at run time, which a jitted function cannot, so here the caller
(``JaxDenoiser``) passes ``cache=None`` when no row of the call uses neighbours — the same
result, decided from the variant names on the host.
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from reimagen.backends.jax.attention import CrossAttention, NeighborAttention, SelfAttention
from reimagen.backends.jax.blocks import (
    DownLevel,
    MidBlock,
    UpLevel,
    down_stack,
    split_keys,
    up_stack,
)
from reimagen.backends.jax.layers import Conv2d, Linear, Norm, ResBlock, TimeMLP
from reimagen.core.unet_config import UNetConfig


class TextInputs(NamedTuple):
    """Encoded text as arrays: tokens [..., L, D], mask [..., L] bool, pooled [..., D]."""

    tokens: jax.Array
    mask: jax.Array
    pooled: jax.Array


class NeighborInputs(NamedTuple):
    """The K retrieved ⟨image, text⟩ pairs per example: images [B, K, H, W, C] and text with a
    leading [B, K] (tokens [B, K, L, D], mask [B, K, L], pooled [B, K, D])."""

    images: jax.Array
    text: TextInputs


class NeighborCache(eqx.Module):
    """Neighbour keys/values per neighbour-attention resolution, computed once at t=0.

    kv[r] = (k, v), each [B, K·r·r, heads_r, head_dim]; ``k`` is the number of neighbours K
    (static, so a jitted call specialises on it).
    """

    k: int = eqx.field(static=True)
    kv: dict[int, tuple[jax.Array, jax.Array]]

    @property
    def batch_size(self) -> int:
        return next(iter(self.kv.values()))[0].shape[0] if self.kv else 0

    def tile(self, times: int) -> NeighborCache:
        """Repeat the batch ``times`` times (row v·B + b = example b): for V variants."""
        if times == 1:
            return self
        kv = {
            r: (jnp.tile(k, (times, 1, 1, 1)), jnp.tile(v, (times, 1, 1, 1)))
            for r, (k, v) in self.kv.items()
        }
        return NeighborCache(self.k, kv)


class _Conditioning(NamedTuple):
    """Per-row conditioning of one DStack/UStack pass (N rows)."""

    emb: jax.Array  # [N, time_dim]
    text: jax.Array  # [N, L, D]
    key_mask: jax.Array  # [N, L] bool


class ReImagenUNet(eqx.Module):
    """ε_θ(x_t, t, c_p, c_n) of paper §3.2, built from a :class:`UNetConfig`."""

    time_mlp: TimeMLP
    aug_mlp: TimeMLP | None
    text_pool: Linear
    conv_in: Conv2d
    down: tuple[DownLevel, ...]
    mid: MidBlock
    up: tuple[UpLevel, ...]
    neighbor_attn: dict[str, NeighborAttention]
    norm_out: Norm
    conv_out: Conv2d
    config: UNetConfig = eqx.field(static=True)

    def __init__(self, config: UNetConfig, *, rng: np.random.Generator | None):
        c = config
        if c.is_super_resolution and c.cond_image_channels != c.in_channels:
            raise ValueError(
                f"cond_image_channels ({c.cond_image_channels}) must equal in_channels "
                f"({c.in_channels}): a clean neighbour is fed as its own low-res image"
            )
        self.config = c
        widths = c.widths
        self.time_mlp = TimeMLP(c.base_channels, c.time_dim, rng=rng)
        self.aug_mlp = (
            TimeMLP(c.base_channels, c.time_dim, rng=rng) if c.is_super_resolution else None
        )
        self.text_pool = Linear(c.text_dim, c.time_dim, rng=rng)
        self.conv_in = Conv2d(
            c.in_channels + c.cond_image_channels, widths[0], 3, padding=1, rng=rng
        )

        # DStack, middle block, UStack (ADM layout; the UStack consumes the skips in reverse)
        down, skip_channels, ch = down_stack(c, rng=rng)
        self.down = tuple(down)
        self.mid = MidBlock(ch, c, rng=rng)
        self.up = tuple(up_stack(c, ch, skip_channels, rng=rng))
        self.neighbor_attn = {
            str(r): NeighborAttention(widths[c.resolutions.index(r)], c, r, rng=rng)
            for r in c.neighbor_attn_resolutions
        }
        self.norm_out = Norm(widths[0], c)
        self.conv_out = Conv2d(widths[0], c.in_channels, 3, padding=1, rng=rng)

    # ---- conditioning ------------------------------------------------------------------------

    def _conditioning(self, t, text: TextInputs, use_text, aug_level) -> _Conditioning:
        """emb = MLP(sin(t)) + use_text·W·pooled (+ MLP(sin(aug)) for SR); text mask gated."""
        dtype = self.text_pool.weight.dtype
        emb = self.time_mlp(t)  # [N, time_dim]
        pooled = self.text_pool(text.pooled.astype(dtype))  # [N, time_dim]
        emb = emb + jnp.where(use_text[:, None], pooled, 0.0)
        if self.aug_mlp is not None:
            emb = emb + self.aug_mlp(aug_level)
        key_mask = text.mask & use_text[:, None]  # [N, L]
        return _Conditioning(emb, text.tokens.astype(dtype), key_mask)

    # ---- the two stacks ----------------------------------------------------------------------

    def dstack(self, x, cond: _Conditioning, *, key=None):
        """x [N, H, W, Cin] -> (f [N, F, F, C], skips, {r: level output [N, r, r, C_r]})."""
        keys = iter(split_keys(key, sum(len(level.blocks) for level in self.down)))
        h = self.conv_in(x)
        skips = [h]
        levels = {}
        for res, level in zip(self.config.resolutions, self.down):
            for block in level.blocks:
                h = block(h, cond.emb, cond.text, cond.key_mask, key=next(keys))
                skips.append(h)
            levels[res] = h
            if level.downsample is not None:
                h = level.downsample(h)
                skips.append(h)
        return h, skips, levels

    def ustack(self, h, skips, cond: _Conditioning, neighbors, use_neighbors, *, key=None):
        """Decoder from f' [N, F, F, C] and the DStack skips to the output features."""
        keys = iter(split_keys(key, sum(len(level.blocks) for level in self.up)))
        skips = list(skips)
        for level in reversed(range(len(self.up))):
            up = self.up[level]
            for block in up.blocks:
                h = jnp.concatenate([h, skips.pop()], axis=-1)
                h = block(h, cond.emb, cond.text, cond.key_mask, key=next(keys))
            res = self.config.resolutions[level]
            if level < len(self.up) - 1:  # the bottleneck's attention sits before `mid`
                h = self._neighbor_attend(h, res, neighbors, use_neighbors)
            if up.upsample is not None:
                h = up.upsample(h)
        return h

    def _neighbor_attend(self, h, res: int, neighbors: NeighborCache | None, use_neighbors):
        key = str(res)
        if key not in self.neighbor_attn or neighbors is None or neighbors.k == 0:
            return h  # no neighbours at all (or no row uses them): the K=0 network
        return self.neighbor_attn[key](h, neighbors.kv[res], use_neighbors)

    # ---- neighbours --------------------------------------------------------------------------

    def _neighbor_rows(self, images, text: TextInputs):
        """Flatten [B, K, ...] neighbours into B·K DStack rows at t=0 with their own text.
        Returns (x [B·K, H, W, Cin], t, text, use_text, aug_level)."""
        b, k, height, width, channels = images.shape
        x = images.reshape(b * k, height, width, channels)
        if self.config.is_super_resolution:
            x = jnp.concatenate([x, x], axis=-1)  # a clean neighbour is its own low-res image
        zeros = jnp.zeros((b * k,), jnp.float32)
        flat_text = TextInputs(
            text.tokens.reshape(b * k, *text.tokens.shape[2:]),
            text.mask.reshape(b * k, -1),
            text.pooled.reshape(b * k, -1),
        )
        use_text = jnp.ones((b * k,), bool)
        aug = zeros if self.config.is_super_resolution else None
        return x, zeros, flat_text, use_text, aug

    def _project_neighbors(self, levels, b: int, k: int) -> NeighborCache:
        """Level outputs [B·K, r, r, C] -> keys/values over all K·r·r positions per example."""
        kv = {}
        for res in self.config.neighbor_attn_resolutions:
            feats = levels[res]  # [B·K, r, r, C]
            tokens = feats.reshape(b, k * res * res, feats.shape[-1])  # [B, K·r·r, C]
            kv[res] = self.neighbor_attn[str(res)].project(tokens)
        return NeighborCache(k, kv)

    def encode_neighbors(self, images, tokens, mask, pooled) -> NeighborCache:
        """Run the K neighbours through the DStack once, at t=0 (paper §3.2, docs/design.md §4).

        images [B, K, H, W, C]; tokens [B, K, L, D]; mask [B, K, L] bool; pooled [B, K, D].
        The result is reused for every sampling step and every guidance variant.
        """
        b, k = images.shape[:2]
        if k == 0:
            return NeighborCache(0, {})
        x, t, text, use_text, aug = self._neighbor_rows(images, TextInputs(tokens, mask, pooled))
        _, _, levels = self.dstack(x, self._conditioning(t, text, use_text, aug))
        return self._project_neighbors(levels, b, k)

    # ---- forward -----------------------------------------------------------------------------

    def __call__(
        self,
        x,
        t,
        text: TextInputs,
        *,
        use_text,
        use_neighbors,
        cache: NeighborCache | None = None,
        neighbors: NeighborInputs | None = None,
        lowres=None,
        aug_level=None,
        key: jax.Array | None = None,
    ):
        """ε prediction. x [B, H, W, C]; t [B] (or a scalar) in [0, 1]; text tokens [B, L, D],
        mask [B, L], pooled [B, D]; use_text / use_neighbors [B] bool.

        Neighbours come either as a ``cache`` from :meth:`encode_neighbors` (sampling) or raw as
        ``neighbors`` (training): then the noisy rows and the B·K neighbour rows share ONE DStack
        pass, as in torch. SR stages also take ``lowres`` [B, H, W, C] and ``aug_level`` [B].
        ``key`` turns on dropout. Returns ε [B, H, W, C].
        """
        if cache is not None and neighbors is not None:
            raise ValueError("pass either cache= or neighbors=, not both")
        b = x.shape[0]
        x_in = self._stem_input(x, lowres)  # [B, H, W, Cin]
        t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (b,))
        aug = self._aug_input(aug_level, b)
        kd, ku, km = split_keys(key, 3)
        if neighbors is not None and neighbors.images.shape[1] > 0:
            h, skips, cond, cache = self._joint_dstack(
                x_in, t, text, use_text, aug, neighbors, key=kd
            )
        else:
            cond = self._conditioning(t, text, use_text, aug)
            h, skips, _ = self.dstack(x_in, cond, key=kd)
        h = self._neighbor_attend(h, self.config.feature_size, cache, use_neighbors)
        h = self.mid(h, cond.emb, cond.text, cond.key_mask, key=km)
        h = self.ustack(h, skips, cond, cache, use_neighbors, key=ku)
        return self.conv_out(jax.nn.silu(self.norm_out(h)))  # [B, H, W, C]

    def _joint_dstack(self, x_in, t, text: TextInputs, use_text, aug, neighbors, *, key=None):
        """ONE DStack pass over the B noisy rows and their B·K neighbour rows (t=0, own text),
        as in torch. Returns the noisy rows' (f, skips, conditioning) and the neighbours'
        keys/values (a NeighborCache)."""
        b, k = x_in.shape[0], neighbors.images.shape[1]
        nx, nt, ntext, nuse, naug = self._neighbor_rows(neighbors.images, neighbors.text)
        cond = self._conditioning(
            jnp.concatenate([t, nt]),
            TextInputs(*(jnp.concatenate([a, n]) for a, n in zip(text, ntext))),
            jnp.concatenate([use_text, nuse]),
            None if aug is None else jnp.concatenate([aug, naug]),
        )
        h, skips, levels = self.dstack(
            jnp.concatenate([x_in, nx.astype(x_in.dtype)]), cond, key=key
        )
        cache = self._project_neighbors({r: f[b:] for r, f in levels.items()}, b, k)
        cond = _Conditioning(cond.emb[:b], cond.text[:b], cond.key_mask[:b])
        return h[:b], [s[:b] for s in skips], cond, cache

    def _stem_input(self, x, lowres):
        if self.config.is_super_resolution:
            if lowres is None:
                raise ValueError(
                    "lowres is required for a super-resolution U-Net (cond_image_channels > 0)"
                )
            x = jnp.concatenate([x, lowres.astype(x.dtype)], axis=-1)
        return x

    def _aug_input(self, aug_level, b: int):
        if not self.config.is_super_resolution:
            return None
        if aug_level is None:
            return jnp.zeros((b,), jnp.float32)
        return jnp.broadcast_to(jnp.asarray(aug_level, jnp.float32), (b,))


def zero_last_layers(model: ReImagenUNet) -> ReImagenUNet:
    """Zero the last layer of every residual branch and of the output (ADM), as torch's
    ``reset_parameters``: each block starts as the identity and the neighbour path as a no-op."""

    branches = (ResBlock, SelfAttention, CrossAttention, NeighborAttention)

    def last_layers(m):
        found = [m.conv_out]
        for node in jax.tree_util.tree_leaves(m, is_leaf=lambda n: isinstance(n, branches)):
            if isinstance(node, ResBlock):
                found.append(node.conv2)
            elif isinstance(node, branches):
                found.append(node.to_out)
        return [p for layer in found for p in (layer.weight, layer.bias)]

    return eqx.tree_at(last_layers, model, replace_fn=jnp.zeros_like)


def build_unet(config: UNetConfig, seed: int = 0) -> ReImagenUNet:
    """A freshly initialised U-Net (fp32), reproducible from ``seed``: PyTorch's default
    distributions (not its numbers: weights move between backends through ``convert.py``)."""
    return zero_last_layers(ReImagenUNet(config, rng=np.random.default_rng(seed)))


def param_count(config: UNetConfig) -> int:
    """Number of parameters, from shapes only (``eqx.filter_eval_shape``: nothing allocated)."""
    shapes = eqx.filter_eval_shape(ReImagenUNet, config, rng=None)
    return sum(int(a.size) for a in jax.tree_util.tree_leaves(shapes))
