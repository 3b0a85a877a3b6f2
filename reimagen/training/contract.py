"""Backend-neutral training contract: the config and the host-side batch (docs/design.md §4, paper Eq. 2).

Every random number of a training step is drawn on the host by the data pipeline as a pure
function of (seed, step): the targets, t ~ U[0,1], the noise ε, and the independent 10% drops of
text and neighbours. So a resumed run sees exactly the batches an uninterrupted one would, and
the torch and JAX trainers see identical inputs.
"""

from __future__ import annotations

from typing import Any, Protocol

import attrs
import numpy as np

from reimagen.core.config import ConfigMixin, config, in_range, one_of
from reimagen.core.interfaces import TextEncoding


@config
class TrainConfig(ConfigMixin):
    steps: int = attrs.field(default=20_000, validator=in_range(1, 10**9))
    batch_size: int = attrs.field(default=64, validator=in_range(1, 1 << 16))
    neighbors: int = attrs.field(default=2, validator=in_range(0, 64))  # K
    lr: float = attrs.field(default=2e-4, validator=in_range(0.0, 1.0, lo_open=True))
    weight_decay: float = attrs.field(default=0.0, validator=in_range(0.0, 1.0))
    warmup_steps: int = attrs.field(default=500, validator=in_range(0, 10**9))
    grad_clip: float = attrs.field(default=1.0, validator=in_range(0.0, None, lo_open=True))
    ema_decay: float = attrs.field(default=0.999, validator=in_range(0.0, 1.0))
    p_drop_text: float = attrs.field(default=0.1, validator=in_range(0.0, 1.0))
    p_drop_neighbors: float = attrs.field(default=0.1, validator=in_range(0.0, 1.0))
    bf16: bool = False
    seed: int = attrs.field(default=0, validator=in_range(0, 2**63 - 1))
    checkpoint_every: int = attrs.field(default=200, validator=in_range(1, 10**9))
    log_every: int = attrs.field(default=10, validator=in_range(1, 10**9))
    # Where the ε-MSE spends its weight over noise levels (issue #15, the recipe A/B). The
    # defaults are the paper's (Eq. 2): every row weighted 1, t ~ U[0, 1].
    # loss_weighting "min-snr": row weight min(SNR(t), γ) / SNR(t) (Min-SNR-γ, Hang et al. 2023,
    # ε-prediction form), which caps the weight of the low-noise levels (SNR > γ) whose ε-loss
    # is large but which only refine detail; identity is decided at the high-noise levels.
    loss_weighting: str = attrs.field(default="uniform", validator=one_of("uniform", "min-snr"))
    snr_gamma: float = attrs.field(default=5.0, validator=in_range(0.0, None, lo_open=True))
    # t_shift s: the batch's t is moved to t' with λ(t') = λ(t) − 2·ln s (a log-SNR shift, as
    # "simple diffusion" / SD3 shift the schedule); s > 1 draws more high-noise levels.
    t_shift: float = attrs.field(default=1.0, validator=in_range(0.0, 100.0, lo_open=True))


@attrs.frozen
class Batch:
    """One training batch on the host (numpy), NHWC images in [-1, 1]."""

    # images, neighbor_images, noise (and text's arrays): numpy, or torch tensors on the device
    # in a batch composed there (reimagen/backends/torch/scene_composer.py), hence Any
    images: Any  # [B, H, W, C] x0 targets
    text: TextEncoding  # tokens [B, L, D], mask [B, L], pooled [B, D]
    neighbor_images: Any  # [B, K, H, W, C] (K may be 0)
    neighbor_text: TextEncoding  # tokens [B, K, L, D], mask [B, K, L], pooled [B, K, D]
    t: np.ndarray  # [B] float32 ~ U[0, 1]
    noise: Any  # [B, H, W, C] float32 ε ~ N(0, I)
    use_text: np.ndarray  # [B] bool (False with probability p_drop_text)
    use_neighbors: np.ndarray  # [B] bool (False with probability p_drop_neighbors)
    lowres: np.ndarray | None = None  # [B, H, W, C] SR stages: corrupted, upsampled low-res
    aug_level: np.ndarray | None = None  # [B] float32 noise-conditioning augmentation level

    @property
    def size(self) -> int:
        return int(self.images.shape[0])


class BatchSource(Protocol):
    """A deterministic batch stream: ``batch(step)`` is a pure function of (seed, step).

    A structural ``typing.Protocol``, not an ABC: any object with this method is a batch source
    (the built-ins in reimagen.training.data and .folder_data, and the tests' small fakes).
    The trainers (subclasses of the ABC :class:`reimagen.training.loop.TrainLoop`) consume it.
    """

    def batch(self, step: int) -> Batch: ...


def draw_diffusion_inputs(
    rng: np.random.Generator, shape: tuple[int, ...], p_drop_text: float, p_drop_neighbors: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(t [B], noise [B,H,W,C], use_text [B], use_neighbors [B]) in one fixed draw order."""
    b = shape[0]
    t = rng.random(b, dtype=np.float32)
    noise = rng.standard_normal(shape, dtype=np.float32)
    use_text = rng.random(b) >= p_drop_text
    use_neighbors = rng.random(b) >= p_drop_neighbors
    return t, noise, use_text, use_neighbors
