"""Sampling settings of one stage (docs/design.md §5, §7), validated before any network is touched."""

from __future__ import annotations

import attrs

from reimagen.core.config import ConfigMixin, config, in_range, one_of


@config
class SamplingConfig(ConfigMixin):
    """How one stage samples: sampler, steps, guidance strategy and weights, x̂0 thresholding."""

    sampler: str = "dpmpp2m"
    steps: int = attrs.field(default=25, validator=in_range(1, 100_000))
    guidance: str = "interleaved"
    w: float = attrs.field(default=3.0, validator=in_range(1.0, None))  # joint (Eq. 5)
    w_text: float = attrs.field(default=3.0, validator=in_range(1.0, None))  # w_p (Eq. 6)
    w_neighbors: float = attrs.field(default=3.0, validator=in_range(1.0, None))  # w_n (Eq. 6)
    eta: float = attrs.field(default=0.5, validator=in_range(0.0, 1.0))  # interleave ratio η
    thresholding: str = attrs.field(
        default="dynamic", validator=one_of("none", "static", "dynamic")
    )
    percentile: float = attrs.field(default=0.995, validator=in_range(0.5, 1.0))
    aug_level: float = attrs.field(default=0.0, validator=in_range(0.0, 1.0))  # SR stages
