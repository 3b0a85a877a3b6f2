"""The EntityBench training recipe (docs/design.md §8; paper §3.2 "KNN-ImageText"): its settings
(:class:`DataConfig`) and the records one step of the training stream is made of
(:class:`BatchPlan`, the random choices; :class:`BatchInfo`, the ground truth).

The stream itself is spread over one module per job:

* :mod:`reimagen.training.emoji_batches`: ``EmojiBatchSource`` / ``SRBatchSource``, the batch of
  a step, a pure function of (TrainConfig.seed, step);
* :mod:`reimagen.training.entity_pool`: the fixed pool of scene examples and their prompts;
* :mod:`reimagen.training.pool_triples`: each pool prompt's K retrieved neighbours, cached
  beside the knowledge base;
* :mod:`reimagen.training.neighbor_augment`: the augmented same-style neighbour drawings;
* :mod:`reimagen.training.leak_checks`: no unseen entity ever enters.
"""

from __future__ import annotations

import attrs
import numpy as np

from reimagen.core.config import ConfigMixin, config, in_range
from reimagen.kb import scenes as sc

NEIGHBOR_BACKGROUND = (255, 255, 255)  # KnowledgeBase.rgb's default: what inference shows


@config
class DataConfig(ConfigMixin):
    """How scene examples and their neighbours are made (the training recipe, docs/design.md §8)."""

    pool_size: int = attrs.field(default=50_000, validator=in_range(1, 10**8))
    pool_seed: int = attrs.field(default=0, validator=in_range(0, 2**63 - 1))
    retriever: str = "bm25"
    p_drop_name: float = attrs.field(default=0.5, validator=in_range(0.0, 1.0))
    p_large_centred: float = attrs.field(default=0.5, validator=in_range(0.0, 1.0))
    p_true_neighbor: float = attrs.field(default=0.9, validator=in_range(0.0, 1.0))
    p_same_style: float = attrs.field(default=0.5, validator=in_range(0.0, 1.0))
    aug_scale_min: float = attrs.field(default=0.6, validator=in_range(0.2, 1.0))
    aug_scale_max: float = attrs.field(default=0.95, validator=in_range(0.2, 0.97))
    aug_shift: float = attrs.field(default=0.12, validator=in_range(0.0, 0.5))  # × canvas
    aug_flip: float = attrs.field(default=0.5, validator=in_range(0.0, 1.0))
    aug_gain: float = attrs.field(default=0.15, validator=in_range(0.0, 0.5))  # per channel ±
    aug_brightness: float = attrs.field(default=0.08, validator=in_range(0.0, 0.5))  # ±, [0,1]
    max_aug_level: float = attrs.field(default=0.5, validator=in_range(0.0, 1.0))  # SR stage

    def __attrs_post_init__(self):
        if self.aug_scale_min > self.aug_scale_max:
            raise ValueError(
                f"DataConfig.aug_scale_min {self.aug_scale_min} > aug_scale_max {self.aug_scale_max}"
            )


@attrs.frozen
class BatchPlan:
    """Every random choice of one step, drawn in the fixed order of ``batch_with_info``, before
    any pixel is composed: the host composes a batch from it, and so does the device-side
    composer (reimagen.training.scene_atlas, reimagen.backends.torch.scene_composer)."""

    index: np.ndarray  # [B] int64 pool rows
    rows: np.ndarray  # [B, K] int64 KB row shown in each neighbour slot
    augmented: np.ndarray  # [B, K] bool: the slot shows an augmented same-style drawing
    augmentation: dict[str, np.ndarray]  # draw_augmentation's arrays for the B·K slots
    t: np.ndarray  # [B] float32
    noise: np.ndarray  # [B, S, S, 3] float32
    use_text: np.ndarray  # [B] bool
    use_neighbors: np.ndarray  # [B] bool


@attrs.frozen
class BatchInfo:
    """Ground truth of one batch, for tests, leak checks and logging."""

    pool_index: np.ndarray  # [B] int64
    entity_index: np.ndarray  # [B] index into EmojiBatchSource.entities
    entities: tuple[str, ...]  # [B] target entity names
    target_rows: np.ndarray  # [B] int64 KB row of each target's Twemoji drawing
    prompts: tuple[str, ...]  # [B]
    scenes: tuple[sc.Scene, ...]  # [B]
    neighbor_rows: np.ndarray  # [B, K] int64 KB row shown in each slot (augmented: its source)
    augmented: np.ndarray  # [B, K] bool: the slot shows an augmented same-style drawing


__all__ = ["NEIGHBOR_BACKGROUND", "BatchInfo", "BatchPlan", "DataConfig"]
