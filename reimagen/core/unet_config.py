"""The Re-Imagen U-Net config (paper §3.2, Fig. 3), shared by both backends, and its presets.

One config builds the same module tree in PyTorch and JAX. Resolutions are image side lengths:
with ``image_size=32`` and ``channel_mults=(1, 2, 2)`` the DStack runs at 32, 16, 8 and its
output feature map f has F=8; ``neighbor_attn_resolutions=(8,)`` lets the noisy image attend
to all K·F·F neighbour positions there (optionally also one resolution up).

Presets register as the ``preset`` component kind: ``registry.get("preset", name)()`` is a
UNetConfig.
"""

from __future__ import annotations

import attrs

from reimagen.core.config import ConfigError, ConfigMixin, config, in_range, one_of
from reimagen.core.hookspecs import hookimpl


def _positive_tuple(inst, attribute, value):
    if not isinstance(value, tuple) or any((not isinstance(v, int)) or v < 1 for v in value):
        raise ConfigError(
            f"{type(inst).__name__}.{attribute.name} must be a tuple of positive ints, got {value!r}"
        )


@config
class UNetConfig(ConfigMixin):
    image_size: int = attrs.field(default=32, validator=in_range(4, 4096))
    in_channels: int = attrs.field(default=3, validator=in_range(1, 64))
    base_channels: int = attrs.field(default=64, validator=in_range(8, 4096))
    channel_mults: tuple[int, ...] = attrs.field(default=(1, 2, 2), validator=_positive_tuple)
    num_res_blocks: int = attrs.field(default=2, validator=in_range(1, 16))
    self_attn_resolutions: tuple[int, ...] = attrs.field(default=(8,))
    cross_attn_resolutions: tuple[int, ...] = attrs.field(default=(16, 8))
    neighbor_attn_resolutions: tuple[int, ...] = attrs.field(default=(8,))
    # Learned absolute 2-D position tables added to the neighbour attention's queries (one per
    # noisy-image position) and keys (one per reference position, shared by the K references),
    # zero-initialised so that a network grown from one without them starts as the same
    # function. Attention alone is content-addressed: without positions a query cannot ask for
    # "the reference's top-left", which is what redrawing a reference at a new place and scale
    # needs (our addition; the paper's U-Net has no such table).
    neighbor_pos_emb: bool = attrs.field(default=False, validator=one_of(False, True))
    head_dim: int = attrs.field(default=32, validator=in_range(4, 512))
    text_dim: int = attrs.field(default=384, validator=in_range(1, 16384))
    norm: str = attrs.field(default="group", validator=one_of("group", "layer"))
    norm_groups: int = attrs.field(default=32, validator=in_range(1, 1024))
    norm_eps: float = attrs.field(default=1e-5, validator=in_range(0.0, 1e-2, lo_open=True))
    dropout: float = attrs.field(default=0.0, validator=in_range(0.0, 1.0, hi_open=True))
    # Super-resolution stages: the low-res image (upsampled to image_size) is concatenated to
    # x_t, and the noise-augmentation level enters like a second time embedding (Imagen).
    cond_image_channels: int = attrs.field(default=0, validator=in_range(0, 64))
    lowres_size: int = attrs.field(default=0, validator=in_range(0, 4096))

    def __attrs_post_init__(self):
        sizes = self.resolutions
        if self.image_size % (2 ** (len(self.channel_mults) - 1)):
            raise ConfigError(
                f"UNetConfig.image_size {self.image_size} is not divisible by "
                f"2**{len(self.channel_mults) - 1} (one halving per extra channel_mults entry)"
            )
        for name in (
            "self_attn_resolutions",
            "cross_attn_resolutions",
            "neighbor_attn_resolutions",
        ):
            bad = [r for r in getattr(self, name) if r not in sizes]
            if bad:
                raise ConfigError(
                    f"UNetConfig.{name} has {bad}, not among the U-Net resolutions {sizes}"
                )
        for width in self.widths:
            if width % self.head_dim:
                raise ConfigError(f"UNetConfig.head_dim {self.head_dim} must divide width {width}")
            if self.norm == "group" and width % self.norm_groups:
                raise ConfigError(
                    f"UNetConfig.norm_groups {self.norm_groups} must divide width {width}"
                )
        if self.cond_image_channels and not self.lowres_size:
            raise ConfigError("UNetConfig.lowres_size must be set when cond_image_channels > 0")

    @property
    def resolutions(self) -> tuple[int, ...]:
        """Side length at each DStack level, e.g. (32, 16, 8)."""
        return tuple(self.image_size // 2**i for i in range(len(self.channel_mults)))

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(self.base_channels * m for m in self.channel_mults)

    @property
    def feature_size(self) -> int:
        """F: side of the DStack output feature map."""
        return self.resolutions[-1]

    @property
    def time_dim(self) -> int:
        return 4 * self.base_channels

    @property
    def is_super_resolution(self) -> bool:
        return self.cond_image_channels > 0


_CPU_BASE = UNetConfig(
    image_size=32,
    base_channels=32,
    channel_mults=(1, 2, 4),
    num_res_blocks=2,
    self_attn_resolutions=(8,),
    cross_attn_resolutions=(16, 8),
    neighbor_attn_resolutions=(16, 8),
    head_dim=32,
    norm="layer",
)

PRESETS: dict[str, UNetConfig] = {
    # Unit tests: 0.33M parameters (327,459), 16×16.
    "tiny": UNetConfig(
        image_size=16,
        base_channels=16,
        channel_mults=(1, 2),
        num_res_blocks=1,
        self_attn_resolutions=(8,),
        cross_attn_resolutions=(8,),
        neighbor_attn_resolutions=(8,),
        head_dim=8,
        norm_groups=8,
    ),
    # The CPU model (docs/design.md §8): 32×32 base, neighbour attention at 8×8 and 16×16.
    "small": UNetConfig(
        image_size=32,
        base_channels=64,
        channel_mults=(1, 2, 2),
        num_res_blocks=2,
        self_attn_resolutions=(8,),
        cross_attn_resolutions=(16, 8),
        neighbor_attn_resolutions=(16, 8),
        head_dim=32,
        norm="layer",
    ),
    # The trained default base (docs/design.md §8): ~4× fewer FLOPs per image than `small` (0.8 vs
    # 3.0 GFLOP), so a CPU can afford the tens of thousands of steps identity needs; neighbour
    # attention at 16×16 and 8×8 lets the noisy image read a reference at two scales.
    "cpu-base": _CPU_BASE,
    # cpu-base with position tables in its neighbour attention (identity A/B, issue #15).
    "cpu-base-pos": _CPU_BASE.replace(neighbor_pos_emb=True),
    # CPU super-resolution stage 32 -> 64.
    "sr-small": UNetConfig(
        image_size=64,
        base_channels=32,
        channel_mults=(1, 2, 4),
        num_res_blocks=2,
        self_attn_resolutions=(),
        cross_attn_resolutions=(16,),
        neighbor_attn_resolutions=(16,),
        head_dim=32,
        norm="layer",
        cond_image_channels=3,
        lowres_size=32,
    ),
    # The paper's 64× base (2.5B; Imagen-style widths with T5-XXL text states, d=4096).
    "paper-64": UNetConfig(
        image_size=64,
        base_channels=512,
        channel_mults=(1, 2, 3, 4),
        num_res_blocks=3,
        self_attn_resolutions=(32, 16, 8),
        cross_attn_resolutions=(32, 16, 8),
        neighbor_attn_resolutions=(8,),
        head_dim=64,
        text_dim=4096,
    ),
    # The paper's 256× (750M) and 1024× (400M) super-resolution stages.
    "paper-sr256": UNetConfig(
        image_size=256,
        base_channels=128,
        channel_mults=(1, 2, 4, 8, 8),
        num_res_blocks=3,
        self_attn_resolutions=(),
        cross_attn_resolutions=(32, 16),
        neighbor_attn_resolutions=(16,),
        head_dim=64,
        text_dim=4096,
        cond_image_channels=3,
        lowres_size=64,
    ),
    "paper-sr1024": UNetConfig(
        image_size=1024,
        base_channels=128,
        channel_mults=(1, 2, 4, 8, 8),
        num_res_blocks=2,
        self_attn_resolutions=(),
        cross_attn_resolutions=(64,),
        neighbor_attn_resolutions=(),
        head_dim=64,
        text_dim=4096,
        cond_image_channels=3,
        lowres_size=256,
    ),
}


def grows_position_tables(source: UNetConfig, target: UNetConfig) -> bool:
    """True when ``target`` is ``source`` with ``neighbor_pos_emb`` turned on: weights of
    ``source`` start a ``target`` network (``--init-from``), its tables at their zero init."""
    return (
        not source.neighbor_pos_emb
        and target.neighbor_pos_emb
        and target.replace(neighbor_pos_emb=False) == source
    )


@hookimpl
def reimagen_register_presets(register):
    for name, cfg in PRESETS.items():
        register(name, lambda cfg=cfg: cfg)
