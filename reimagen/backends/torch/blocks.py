"""The U-Net's repeated parts in PyTorch (paper §3.2, Fig. 3; docs/design.md §4): a block (ResBlock,
then self- and cross-attention where configured), the DStack and UStack levels, the middle
block, and the two functions that lay the levels out from a :class:`UNetConfig`.

The twin of ``reimagen/backends/jax/blocks.py``: the same classes, attribute names and order of
construction, so the parameter paths (``down.1.blocks.0.res.conv1.weight``, …) are the same.
"""

from __future__ import annotations

from torch import Tensor, nn

from reimagen.backends.torch.attention import CrossAttention, SelfAttention
from reimagen.backends.torch.layers import Downsample, ResBlock, Upsample
from reimagen.core.unet_config import UNetConfig


class Block(nn.Module):
    """One U-Net block: a ResBlock, then self-attention and cross-attention where configured."""

    def __init__(self, in_channels: int, out_channels: int, resolution: int, config: UNetConfig):
        super().__init__()
        self.res = ResBlock(in_channels, out_channels, config)
        self.self_attn = (
            SelfAttention(out_channels, config)
            if resolution in config.self_attn_resolutions
            else None
        )
        self.cross_attn = (
            CrossAttention(out_channels, config)
            if resolution in config.cross_attn_resolutions
            else None
        )

    def forward(self, x: Tensor, emb: Tensor, text: Tensor, key_mask: Tensor) -> Tensor:
        x = self.res(x, emb)
        if self.self_attn is not None:
            x = self.self_attn(x)
        if self.cross_attn is not None:
            x = self.cross_attn(x, text, key_mask)
        return x


class DownLevel(nn.Module):
    def __init__(self, blocks: list[Block], downsample: Downsample | None):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample


class UpLevel(nn.Module):
    def __init__(self, blocks: list[Block], upsample: Upsample | None):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.upsample = upsample


class MidBlock(nn.Module):
    """res1 → (self-attn, cross-attn where configured at F) → res2, at the bottleneck."""

    def __init__(self, channels: int, config: UNetConfig):
        super().__init__()
        self.block = Block(channels, channels, config.feature_size, config)
        self.res2 = ResBlock(channels, channels, config)

    def forward(self, x: Tensor, emb: Tensor, text: Tensor, key_mask: Tensor) -> Tensor:
        return self.res2(self.block(x, emb, text, key_mask), emb)


def down_stack(config: UNetConfig) -> tuple[list[DownLevel], list[int], int]:
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
            blocks.append(Block(ch, width, res, config))
            ch = width
            skip_channels.append(ch)
        downsample = None
        if level < len(widths) - 1:
            downsample = Downsample(ch)
            skip_channels.append(ch)
        down.append(DownLevel(blocks, downsample))
    return down, skip_channels, ch


def up_stack(config: UNetConfig, ch: int, skip_channels: list[int]) -> list[UpLevel]:
    """The UStack's levels (indexed like the DStack's, built from the bottleneck up): each
    consumes the skips in reverse with ``num_res_blocks + 1`` blocks, then upsamples."""
    widths, skip_channels = config.widths, list(skip_channels)
    up: dict[int, UpLevel] = {}  # built from the bottleneck up, returned in level order
    for level in reversed(range(len(widths))):
        res, width = config.resolutions[level], widths[level]
        blocks = []
        for _ in range(config.num_res_blocks + 1):
            blocks.append(Block(ch + skip_channels.pop(), width, res, config))
            ch = width
        up[level] = UpLevel(blocks, Upsample(ch) if level > 0 else None)
    return [up[level] for level in range(len(widths))]
