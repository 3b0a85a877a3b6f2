"""Batches of a training run made ahead, in worker processes (numpy only).

A :class:`~reimagen.training.contract.BatchSource` is a pure function of the step, so the batches
of steps ``start, start+1, …`` can be made in any process, in any order, and handed to the
trainer in step order: a resumed or prefetched run trains on exactly the batches an inline one
would. :func:`batches` is that iterator. With ``workers=0`` it calls ``source.batch(step)``
inline; with ``workers=N`` N forked processes make them (reimagen.training.step_workers) (a GPU step is far faster
than the host composing a batch of scenes, docs/design.md §8).

``compact=True`` shrinks what crosses the process pipe, keeping the network's inputs the same:
text and caption tokens are cut to the longest real sequence of the batch (the cut positions
are masked out, so attention gives the same result) and stored as float16 (the EncodingTable
stores pool prompts in float16 already; captions round by < 5e-4 relative).

Why multiprocessing and not torch's DataLoader: reimagen.core imports no framework, and the
JAX trainer uses the same iterator.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import attrs
import numpy as np

from reimagen.core.interfaces import TextEncoding
from reimagen.training.contract import Batch, BatchSource


def batches(
    source: BatchSource, start: int, stop: int, *, workers: int = 0, compact: bool = False
) -> Generator[Batch, None, None]:
    """The batches of steps ``start`` … ``stop - 1``, in step order."""
    if isinstance(workers, bool) or not isinstance(workers, int) or not 0 <= workers <= 256:
        raise ValueError(f"workers must be an int in [0, 256], got {workers!r}")
    if workers == 0 or stop - start <= 1:
        for step in range(start, stop):
            batch = source.batch(step)
            yield compact_batch(batch) if compact else batch
        return
    yield from _pooled(source, start, stop, workers, compact)


def _pooled(
    source, start: int, stop: int, workers: int, compact: bool
) -> Generator[Batch, None, None]:
    """Batches made by ``workers`` forked processes, in step order (reimagen.training.step_workers:
    one pipe per worker, so stopping early cannot deadlock as ``Pool.terminate`` could while a
    worker was part-way through sending a batch larger than the pipe buffer)."""
    from reimagen.training import step_workers

    warm = getattr(source, "warm", None)
    if warm is not None:
        warm()  # fill the source's caches once, shared copy-on-write by every worker
    yield from step_workers.ordered(_Compacted(source, compact), start, stop, workers)


class _Compacted:
    """``source`` whose batches are compacted (``compact_batch``) in the worker, when asked."""

    def __init__(self, source, compact: bool):
        self.source, self.compact = source, compact

    def batch(self, step: int) -> Batch:
        batch = self.source.batch(step)
        return compact_batch(batch) if self.compact else batch


def compact_batch(batch: Batch) -> Batch:
    """The same batch with its text and caption tokens cut to one common length, the longest
    real sequence of either (the network concatenates both along the batch), in float16."""
    texts = {"text": batch.text}
    if batch.neighbor_images.shape[1]:
        texts["neighbor_text"] = batch.neighbor_text
    length = max(real_length(text.mask) for text in texts.values())
    # Any: mypy checks a ** dict's value type against every Batch field, not just these keys
    cut: dict[str, Any] = {k: cut_text(text, length) for k, text in texts.items()}
    return attrs.evolve(batch, **cut)


def real_length(mask: np.ndarray) -> int:
    """1 + the last position any row of ``mask`` [..., L] marks real (at least 1)."""
    mask = np.asarray(mask, bool)
    used = mask.reshape(-1, mask.shape[-1]).any(axis=0)  # [L]
    return int(np.flatnonzero(used).max(initial=0)) + 1


def cut_text(text: TextEncoding, length: int) -> TextEncoding:
    """tokens [..., L, D] -> [..., length, D] float16, mask cut alike (positions cut are
    padding, masked out of attention)."""
    tokens = np.asarray(text.tokens)[..., :length, :].astype(np.float16)
    return TextEncoding(
        tokens=tokens, mask=np.asarray(text.mask)[..., :length].copy(), pooled=text.pooled
    )


__all__ = ["batches", "compact_batch", "cut_text", "real_length"]
