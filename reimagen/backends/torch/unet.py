"""The Re-Imagen U-Net in PyTorch (paper §3.2, Fig. 3; docs/design.md §4).

    DStack(x_t, c_p, t)  -> f [B, C, F, F] (+ the skip activations for the UStack)
    DStack(c_n images, c_n texts, t=0) -> neighbour features per level [B, K·r·r, C_r]
    f' = f + NeighborAttn(f, neighbour features at F)           (bottleneck, Fig. 3)
    middle(f') -> UStack(skips) -> ε                            (ε-prediction, Eq. 2)

Where neighbour attention sits (``UNetConfig.neighbor_attn_resolutions``):
  * at the bottleneck resolution F: between the DStack and the middle block, exactly Fig. 3;
  * at any higher resolution r (e.g. 16 in the ``small`` preset): in the UStack, after the
    decoder's blocks at r and before upsampling, attending to the neighbours' DStack features
    at r. The DStack itself never sees neighbours, so it is literally the same function for the
    noisy image and the neighbours.

Conditioning: the time embedding (sinusoidal t -> MLP) plus the pooled text projection (zeroed
for rows with ``use_text`` False) plus, for super-resolution stages, the embedded augmentation
level, FiLM every ResBlock. Text token states enter by cross-attention with a learned null
token. SR stages concatenate the low-res image (already upsampled to image_size) to x_t; a
neighbour (clean, t=0) is its own low-res image, with augmentation level 0.

The module speaks NHWC at its boundary (like the host arrays and the JAX twin); inside it runs
NCHW in ``torch.channels_last`` memory, so converting is a free permute.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, cast

import torch
from torch import Tensor, nn

from reimagen.backends.torch.attention import CrossAttention, NeighborAttention, SelfAttention
from reimagen.backends.torch.blocks import DownLevel, MidBlock, UpLevel, down_stack, up_stack
from reimagen.backends.torch.layers import Norm, ResBlock, TimeMLP
from reimagen.core.unet_config import UNetConfig


class TextInputs(NamedTuple):
    """Encoded text as tensors: tokens [..., L, D], mask [..., L] bool, pooled [..., D]."""

    tokens: Tensor
    mask: Tensor
    pooled: Tensor


class NeighborInputs(NamedTuple):
    """The K retrieved ⟨image, text⟩ pairs per example: images [B, K, H, W, C] and text with a
    leading [B, K] (tokens [B, K, L, D], mask [B, K, L], pooled [B, K, D])."""

    images: Tensor
    text: TextInputs


class NeighborCache(NamedTuple):
    """Neighbour keys/values per neighbour-attention resolution, computed once at t=0.

    kv[r] = (k, v), each [B, heads_r, K·r·r, head_dim]; ``k`` is the number of neighbours K.
    """

    k: int
    kv: dict[int, tuple[Tensor, Tensor]]

    @property
    def batch_size(self) -> int:
        return next(iter(self.kv.values()))[0].shape[0] if self.kv else 0

    def tile(self, times: int) -> NeighborCache:
        """Repeat the batch ``times`` times (row v·B + b = example b): for V variants."""
        if times == 1:
            return self
        kv = {
            r: (k.repeat(times, 1, 1, 1), v.repeat(times, 1, 1, 1)) for r, (k, v) in self.kv.items()
        }
        return NeighborCache(self.k, kv)


class _Conditioning(NamedTuple):
    """Per-row conditioning of one DStack/UStack pass (N rows)."""

    emb: Tensor  # [N, time_dim]
    text: Tensor  # [N, L, D]
    key_mask: Tensor  # [N, L] bool


class ReImagenUNet(nn.Module):
    """ε_θ(x_t, t, c_p, c_n) of paper §3.2, built from a :class:`UNetConfig`."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        c = config
        widths = c.widths
        if c.is_super_resolution and c.cond_image_channels != c.in_channels:
            raise ValueError(
                f"cond_image_channels ({c.cond_image_channels}) must equal in_channels "
                f"({c.in_channels}): a clean neighbour is fed as its own low-res image"
            )
        self.time_mlp = TimeMLP(c.base_channels, c.time_dim)
        self.aug_mlp = TimeMLP(c.base_channels, c.time_dim) if c.is_super_resolution else None
        self.text_pool = nn.Linear(c.text_dim, c.time_dim)
        self.conv_in = nn.Conv2d(c.in_channels + c.cond_image_channels, widths[0], 3, padding=1)

        # DStack, middle block, UStack (ADM layout; the UStack consumes the skips in reverse)
        down, skip_channels, ch = down_stack(c)
        self.down = nn.ModuleList(down)
        self.mid = MidBlock(ch, c)
        self.up = nn.ModuleList(up_stack(c, ch, skip_channels))
        self.neighbor_attn = nn.ModuleDict(
            {
                str(r): NeighborAttention(widths[c.resolutions.index(r)], c, r)
                for r in c.neighbor_attn_resolutions
            }
        )
        self.norm_out = Norm(widths[0], c)
        self.conv_out = nn.Conv2d(widths[0], c.in_channels, 3, padding=1)
        self.reset_parameters()

    # ---- initialisation ----------------------------------------------------------------------

    def reset_parameters(self) -> None:
        """PyTorch default init, then zero the last layer of every residual branch and of the
        output (ADM): each block starts as the identity and the neighbour path as a no-op."""
        zero: list[nn.Conv2d | nn.Linear] = [self.conv_out]
        for module in self.modules():
            if isinstance(module, ResBlock):
                zero.append(module.conv2)
            elif isinstance(module, (SelfAttention, CrossAttention, NeighborAttention)):
                zero.append(module.to_out)
        for layer in zero:
            nn.init.zeros_(layer.weight)
            if layer.bias is not None:  # all of them have one
                nn.init.zeros_(layer.bias)

    # ---- conditioning ------------------------------------------------------------------------

    def _conditioning(
        self,
        t: Tensor,
        text: TextInputs,
        use_text: Tensor,
        aug_level: Tensor | None,
    ) -> _Conditioning:
        """emb = MLP(sin(t)) + use_text·W·pooled (+ MLP(sin(aug)) for SR); text mask gated."""
        dtype = self.text_pool.weight.dtype
        emb = self.time_mlp(t)  # [N, time_dim]
        pooled = self.text_pool(text.pooled.to(dtype))  # [N, time_dim]
        emb = emb + torch.where(use_text[:, None], pooled, 0.0)
        if self.aug_mlp is not None:
            emb = emb + self.aug_mlp(aug_level)
        key_mask = text.mask & use_text[:, None]  # [N, L]
        return _Conditioning(emb, text.tokens.to(dtype), key_mask)

    # ---- the two stacks ----------------------------------------------------------------------

    def dstack(
        self, x: Tensor, cond: _Conditioning
    ) -> tuple[Tensor, list[Tensor], dict[int, Tensor]]:
        """x [N, Cin, H, W] -> (f [N, C, F, F], skips, {r: level output [N, C_r, r, r]})."""
        h = self.conv_in(x)
        skips = [h]
        levels = {}
        # nn.ModuleList is typed as holding plain Modules; self.down holds DownLevels
        down = cast(Sequence[DownLevel], self.down)
        for res, level in zip(self.config.resolutions, down):
            for block in level.blocks:
                h = block(h, cond.emb, cond.text, cond.key_mask)
                skips.append(h)
            levels[res] = h
            if level.downsample is not None:
                h = level.downsample(h)
                skips.append(h)
        return h, skips, levels

    def ustack(
        self,
        h: Tensor,
        skips: list[Tensor],
        cond: _Conditioning,
        neighbors: NeighborCache | None,
        use_neighbors: Tensor,
    ) -> Tensor:
        """Decoder from f' [N, C, F, F] and the DStack skips to the output features."""
        skips = list(skips)
        for level in reversed(range(len(self.up))):
            up = cast(UpLevel, self.up[level])  # nn.ModuleList items are typed as Module
            for block in up.blocks:
                h = block(torch.cat([h, skips.pop()], dim=1), cond.emb, cond.text, cond.key_mask)
            res = self.config.resolutions[level]
            if level < len(self.up) - 1:  # the bottleneck's attention sits before `mid`
                h = self._neighbor_attend(h, res, neighbors, use_neighbors)
            if up.upsample is not None:
                h = up.upsample(h)
        return h

    def _neighbor_attend(
        self, h: Tensor, res: int, neighbors: NeighborCache | None, use_neighbors: Tensor
    ) -> Tensor:
        key = str(res)
        if key not in self.neighbor_attn or neighbors is None or neighbors.k == 0:
            return h  # no neighbours at all: the K=0 network
        if not torch.is_grad_enabled() and not bool(use_neighbors.any()):
            return h  # every row masked: identical result, skip the work
        return self.neighbor_attn[key](h, neighbors.kv[res], use_neighbors)

    # ---- neighbours --------------------------------------------------------------------------

    def _neighbor_rows(
        self, images: Tensor, text: TextInputs
    ) -> tuple[Tensor, Tensor, TextInputs, Tensor, Tensor | None]:
        """Flatten [B, K, ...] neighbours into B·K DStack rows at t=0 with their own text.
        Returns (x [B·K, Cin, H, W] channels_last, t, text, use_text, aug_level)."""
        b, k, height, width, channels = images.shape
        nhwc = images.reshape(b * k, height, width, channels)
        if self.config.is_super_resolution:
            nhwc = torch.cat([nhwc, nhwc], dim=-1)  # a clean neighbour is its own low-res image
        x = nhwc.permute(0, 3, 1, 2)  # channels_last view
        zeros = torch.zeros(b * k, dtype=torch.float32, device=images.device)
        flat_text = TextInputs(
            text.tokens.reshape(b * k, *text.tokens.shape[2:]),
            text.mask.reshape(b * k, -1),
            text.pooled.reshape(b * k, -1),
        )
        use_text = torch.ones(b * k, dtype=torch.bool, device=images.device)
        aug = zeros if self.config.is_super_resolution else None
        return x, zeros, flat_text, use_text, aug

    def _project_neighbors(self, levels: dict[int, Tensor], b: int, k: int) -> NeighborCache:
        """Level outputs [B·K, C, r, r] -> keys/values over all K·r·r positions per example."""
        kv = {}
        for res in self.config.neighbor_attn_resolutions:
            feats = levels[res]  # [B·K, C, r, r]
            c = feats.shape[1]
            tokens = feats.permute(0, 2, 3, 1).reshape(b, k * res * res, c)  # [B, K·r·r, C]
            attend = cast(NeighborAttention, self.neighbor_attn[str(res)])  # a ModuleDict item
            kv[res] = attend.project(tokens)
        return NeighborCache(k, kv)

    def encode_neighbors(
        self, images: Tensor, tokens: Tensor, mask: Tensor, pooled: Tensor
    ) -> NeighborCache:
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

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        text: TextInputs,
        *,
        use_text: Tensor,
        use_neighbors: Tensor,
        cache: NeighborCache | None = None,
        neighbors: NeighborInputs | None = None,
        lowres: Tensor | None = None,
        aug_level: Tensor | None = None,
    ) -> Tensor:
        """ε prediction. x [B, H, W, C] (NHWC); t [B] in [0, 1]; text tokens [B, L, D],
        mask [B, L], pooled [B, D]; use_text / use_neighbors [B] bool.

        Neighbours come either as a ``cache`` from :meth:`encode_neighbors` (sampling) or raw as
        ``neighbors`` (training): then the noisy rows and the B·K neighbour rows share ONE DStack
        pass, which is the same function and keeps the gradient flowing into the DStack.
        Neither (or K=0) is the network without retrieval. SR stages also take ``lowres``
        [B, H, W, C] (upsampled to H) and ``aug_level`` [B]. Returns ε [B, H, W, C].
        """
        if cache is not None and neighbors is not None:
            raise ValueError("pass either cache= or neighbors=, not both")
        b = x.shape[0]
        x_in = self._stem_input(x, lowres)  # [B, Cin, H, W] channels_last
        t = t.float().expand(b) if t.dim() == 0 else t.float()
        aug = self._aug_input(aug_level, b, x.device)
        if neighbors is not None and neighbors.images.shape[1] > 0:
            h, skips, cond, cache = self._joint_dstack(x_in, t, text, use_text, aug, neighbors)
        else:
            cond = self._conditioning(t, text, use_text, aug)
            h, skips, _ = self.dstack(x_in, cond)
        h = self._neighbor_attend(h, self.config.feature_size, cache, use_neighbors)
        h = self.mid(h, cond.emb, cond.text, cond.key_mask)
        h = self.ustack(h, skips, cond, cache, use_neighbors)
        eps = self.conv_out(torch.nn.functional.silu(self.norm_out(h)))  # [B, C, H, W]
        return eps.permute(0, 2, 3, 1)  # NHWC

    def _joint_dstack(
        self,
        x_in: Tensor,
        t: Tensor,
        text: TextInputs,
        use_text: Tensor,
        aug: Tensor | None,
        neighbors: NeighborInputs,
    ) -> tuple[Tensor, list[Tensor], _Conditioning, NeighborCache]:
        """ONE DStack pass over the B noisy rows and their B·K neighbour rows (t=0, own text):
        the same function for both, and the gradient reaches the DStack through both. Returns
        the noisy rows' (f, skips, conditioning) and the neighbours' keys/values."""
        b, k = x_in.shape[0], neighbors.images.shape[1]
        nx, nt, ntext, nuse, naug = self._neighbor_rows(neighbors.images, neighbors.text)
        cond = self._conditioning(
            torch.cat([t, nt]),
            TextInputs(*(torch.cat([a, n]) for a, n in zip(text, ntext))),
            torch.cat([use_text, nuse]),
            None if aug is None or naug is None else torch.cat([aug, naug]),  # both set for SR
        )
        h, skips, levels = self.dstack(torch.cat([x_in, nx.to(x_in.dtype)]), cond)
        cache = self._project_neighbors({r: f[b:] for r, f in levels.items()}, b, k)
        cond = _Conditioning(cond.emb[:b], cond.text[:b], cond.key_mask[:b])
        return h[:b], [s[:b] for s in skips], cond, cache

    def _stem_input(self, x: Tensor, lowres: Tensor | None) -> Tensor:
        if self.config.is_super_resolution:
            if lowres is None:
                raise ValueError(
                    "lowres is required for a super-resolution U-Net (cond_image_channels > 0)"
                )
            x = torch.cat([x, lowres.to(x.dtype)], dim=-1)
        return x.permute(0, 3, 1, 2)  # NHWC -> NCHW view with channels_last strides

    def _aug_input(self, aug_level: Tensor | None, b: int, device) -> Tensor | None:
        if not self.config.is_super_resolution:
            return None
        if aug_level is None:
            return torch.zeros(b, device=device)
        aug_level = aug_level.float()
        return aug_level.expand(b) if aug_level.dim() == 0 else aug_level


def build_unet(config: UNetConfig, seed: int = 0) -> ReImagenUNet:
    """A freshly initialised U-Net (fp32, channels_last), reproducible from ``seed`` without
    touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ReImagenUNet(config)
    # Module.to's stubs omit the memory_format keyword it accepts
    return model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]


def param_count(config: UNetConfig) -> int:
    """Number of parameters, counted on the meta device (nothing is allocated)."""
    with torch.device("meta"):
        model = ReImagenUNet(config)
    return sum(p.numel() for p in model.parameters())
