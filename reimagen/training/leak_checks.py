"""No unseen entity ever enters training (docs/design.md §8): the pool samples seen entities only, the
retriever indexes the training view only, and the true-entity slot comes from the training
view. :func:`check_no_leak` re-checks targets, view and triples when a source is made (a leak
raises :class:`DataLeakError`); :func:`find_leaks` checks one batch's ground truth.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from reimagen.kb.splits import EntitySplit
from reimagen.training.data import BatchInfo

if TYPE_CHECKING:
    from reimagen.training.emoji_batches import EmojiBatchSource


class DataLeakError(RuntimeError):
    """An unseen entity (or a row outside the training view) reached a training target,
    the pool or a training triple."""


def check_no_leak(source: EmojiBatchSource) -> None:
    """Raise DataLeakError if an unseen (or unknown) entity is a target, a pool example, a
    training-view row or a triple neighbour, or a triple returns the example's own image."""
    split, kb = source.split, source.kb
    bad_targets = [e for e in source.entities if not _seen(split, e)]
    if bad_targets:
        raise DataLeakError(f"training targets include non-seen entities {bad_targets[:5]}")
    bad_view = sorted(
        {kb.records[r].entity for r in source.view if not _seen(split, kb.records[r].entity)}
    )
    if bad_view:
        raise DataLeakError(f"the training view holds rows of non-seen entities {bad_view[:5]}")
    if source.triples is not None:
        outside = np.setdiff1d(source.triples, source.view)
        if outside.size:
            names = sorted({kb.records[int(r)].entity for r in outside})
            raise DataLeakError(
                f"training triples hold rows outside the training view: {names[:5]}"
            )
        own = source.target_row[source.pool.entity][:, None]  # [N, 1]
        if (source.triples == own).any():
            raise DataLeakError("a training triple contains the example's own target image")


def find_leaks(split: EntitySplit, kb, info: BatchInfo) -> list[str]:
    """Entities of a batch (targets and every neighbour slot) that are not seen entities."""
    names = list(info.entities) + [kb.records[int(r)].entity for r in info.neighbor_rows.ravel()]
    return sorted({n for n in names if not _seen(split, n)})


def _seen(split: EntitySplit, name: str) -> bool:
    return name in split and split.tier(name) != "unseen"


__all__ = ["DataLeakError", "check_no_leak", "find_leaks"]
