"""The U-Net's repeated parts in JAX/Equinox (paper §3.2, Fig. 3; docs/design.md §4): a block
(ResBlock, then self- and cross-attention where configured), the DStack and UStack levels, the
middle block, and the two functions that lay the levels out from a :class:`UNetConfig`.

The twin of ``reimagen/backends/torch/blocks.py``: the same classes, attribute names and order
of construction (so of numpy draws), so the parameter paths (``down.1.blocks.0.res.conv1.weight``,
…) are the torch ``state_dict`` keys. ``split_keys`` hands out dropout keys (torch draws dropout
from its global generator and needs no twin).
"""

from __future__ import annotations

import equinox as eqx
import jax
import numpy as np

from reimagen.backends.jax.attention import CrossAttention, SelfAttention
from reimagen.backends.jax.layers import Downsample, ResBlock, Upsample
from reimagen.core.unet_config import UNetConfig


def split_keys(key, n: int):
    """n dropout keys, or n Nones when there is no key (inference)."""
    return [None] * n if key is None else list(jax.random.split(key, n))


class Block(eqx.Module):
    """One U-Net block: a ResBlock, then self-attention and cross-attention where configured."""

    res: ResBlock
    self_attn: SelfAttention | None
    cross_attn: CrossAttention | None

    def __init__(self, in_channels: int, out_channels: int, resolution: int, config, *, rng):
        self.res = ResBlock(in_channels, out_channels, config, rng=rng)
        self.self_attn = (
            SelfAttention(out_channels, config, rng=rng)
            if resolution in config.self_attn_resolutions
            else None
        )
        self.cross_attn = (
            CrossAttention(out_channels, config, rng=rng)
            if resolution in config.cross_attn_resolutions
            else None
        )

    def __call__(self, x, emb, text, key_mask, *, key=None):
        x = self.res(x, emb, key=key)
        if self.self_attn is not None:
            x = self.self_attn(x)
        if self.cross_attn is not None:
            x = self.cross_attn(x, text, key_mask)
        return x


class DownLevel(eqx.Module):
    blocks: tuple[Block, ...]
    downsample: Downsample | None


class UpLevel(eqx.Module):
    blocks: tuple[Block, ...]
    upsample: Upsample | None


class MidBlock(eqx.Module):
    """res1 → (self-attn, cross-attn where configured at F) → res2, at the bottleneck."""

    block: Block
    res2: ResBlock

    def __init__(self, channels: int, config: UNetConfig, *, rng: np.random.Generator | None):
        self.block = Block(channels, channels, config.feature_size, config, rng=rng)
        self.res2 = ResBlock(channels, channels, config, rng=rng)

    def __call__(self, x, emb, text, key_mask, *, key=None):
        k1, k2 = split_keys(key, 2)
        return self.res2(self.block(x, emb, text, key_mask, key=k1), emb, key=k2)


def down_stack(
    config: UNetConfig, *, rng: np.random.Generator | None
) -> tuple[list[DownLevel], list[int], int]:
    """The DStack's levels: ``num_res_blocks`` blocks per level, a downsample after every level
    but the last. Returns (levels, skip_channels, bottleneck width): a skip is kept after the
    stem, each block and each downsample (ADM layout)."""
    widths = config.widths
    skip_channels = [widths[0]]
    ch = widths[0]
    down = []
    for level, (res, width) in enumerate(zip(config.resolutions, widths)):
        blocks = []
        for _ in range(config.num_res_blocks):
            blocks.append(Block(ch, width, res, config, rng=rng))
            ch = width
            skip_channels.append(ch)
        downsample = None
        if level < len(widths) - 1:
            downsample = Downsample(ch, rng=rng)
            skip_channels.append(ch)
        down.append(DownLevel(tuple(blocks), downsample))
    return down, skip_channels, ch


def up_stack(
    config: UNetConfig, ch: int, skip_channels: list[int], *, rng: np.random.Generator | None
) -> list[UpLevel]:
    """The UStack's levels (indexed like the DStack's, built from the bottleneck up): each
    consumes the skips in reverse with ``num_res_blocks + 1`` blocks, then upsamples."""
    widths, skip_channels = config.widths, list(skip_channels)
    up: dict[int, UpLevel] = {}  # built from the bottleneck up, returned in level order
    for level in reversed(range(len(widths))):
        res, width = config.resolutions[level], widths[level]
        blocks = []
        for _ in range(config.num_res_blocks + 1):
            blocks.append(Block(ch + skip_channels.pop(), width, res, config, rng=rng))
            ch = width
        upsample = Upsample(ch, rng=rng) if level > 0 else None
        up[level] = UpLevel(tuple(blocks), upsample)
    return [up[level] for level in range(len(widths))]
