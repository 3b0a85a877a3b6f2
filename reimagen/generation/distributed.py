"""Distributed generation (issue #9): prompts split by global index across processes, each
sample seeded from (seed, global index), the images gathered to rank 0 in global order.

    torchrun --nproc-per-node 4 -m reimagen.cli.main generate --distributed PROMPT ...

How the work is cut, so that any number of processes gives byte-identical images:

* The n prompts are cut into global **micro-batches** of ``batch_size`` consecutive indices,
  ``[0, m), [m, 2m), ...`` (:func:`micro_batches`); every network call sees exactly one of them,
  whatever the world size.
* Each process takes a contiguous run of micro-batches (:func:`shard_indices` over their ids).
* A sample's noise (x_T, every ancestral step, SR augmentation) depends on (seed, its global
  index) only (``SamplerNoise.draw_per_sample``), so it is the same in every layout.

Why micro-batches and not "one batch per process": on a CPU, torch's Linear (MKL) and Conv2d
(oneDNN) pick kernels by batch size, so one row's ε differs in the last float bits between a
batch of 1, 2 or 5 (measured on the shipped base stage: up to 5e-5 after 4 steps, 1-LSB pixel
changes in 2 of 7 images). Fixed, globally aligned micro-batches make every call identical in
shape and content across world sizes; ``batch_size=None`` (one batch per process) is faster but
byte-identical across world sizes only where the network is row-stable.

Communication is torch.distributed (gloo, CPU tensors, no pickle) when a process group is
initialised; otherwise this is one process and nothing is sent.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

import attrs
import numpy as np

from reimagen.generation.pipeline import Generation

SLICED = ("neighbor_rows", "lowres")  # per-prompt keyword arguments, cut with the prompts
# What is gathered of each stage's Generation: (field, ndim, wire dtype); fixed per field so an
# idle rank (fewer micro-batches than processes) sends matching empty tensors.
FIELDS = (
    ("images", 4, np.uint8),
    ("neighbor_rows", 2, np.int64),
    ("neighbor_scores", 2, np.float32),
)
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def shard_indices(n: int, rank: int, world: int) -> range:
    """The contiguous part of ``range(n)`` that process ``rank`` of ``world`` owns.

    Parts are in rank order and differ in size by at most one; the first ``n % world`` ranks
    get the extra item, so rank 0 has work whenever n >= 1. Every index is in exactly one part.
    """
    for name, value in (("n", n), ("world", world), ("rank", rank)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name} must be an integer, got {value!r}")
    if n < 0 or world < 1 or not 0 <= rank < world:
        raise ValueError(
            f"need n >= 0, world >= 1, 0 <= rank < world; got n={n}, rank={rank}, world={world}"
        )
    size, extra = divmod(int(n), int(world))
    start = rank * size + min(rank, extra)
    return range(start, start + size + (1 if rank < extra else 0))


def micro_batches(n: int, batch_size: int | None, world: int = 1) -> list[range]:
    """Global micro-batches ``[0, m), [m, 2m), ...`` of ``range(n)`` (the last may be short).
    ``batch_size=None``: one micro-batch per process (the world's shards)."""
    if batch_size is None:
        return [r for r in (shard_indices(n, rank, world) for rank in range(world)) if len(r)]
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1 or None, got {batch_size!r}")
    return [range(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the initialised torch.distributed group, else (0, 1)."""
    from reimagen.backends.torch import distributed as dist

    return dist.rank(), dist.world_size()


def init_from_env(timeout_s: float = 600.0) -> tuple[int, int]:
    """Join the gloo group torchrun describes (the CPU ranks of
    reimagen.backends.torch.distributed.init); collectives give up after ``timeout_s``.
    Returns (rank, world)."""
    from reimagen.backends.torch import distributed as dist

    missing = [name for name in TORCHRUN_ENV if name not in os.environ]
    if missing:
        raise RuntimeError(
            f"distributed generation needs torchrun's environment; {', '.join(missing)} not set"
        )
    info = dist.init("cpu", timeout_s=timeout_s)
    return info.rank, info.world_size


def generate_distributed(
    model, prompts: Sequence[str], seed: int = 0, *, batch_size: int | None = 8, **kwargs: Any
):
    """Generate ``prompts`` across the process group; on rank 0 return what
    ``model.generate(prompts, seed=seed, **kwargs)`` returns (a Cascade: list of Generation per
    stage; a Pipeline: one Generation) in global prompt order; on other ranks return None.

    ``neighbor_rows`` [n, K] and ``lowres`` [n, h, w, 3] are cut with the prompts. ``seconds`` (every
    stage) is rank 0's wall time for the whole call, gather included; ``nfe`` and ``variants_per_step`` are
    rank 0's (the same on every rank: the guidance draws depend on the seed only).
    """
    prompts = tuple(prompts)
    if not prompts:
        raise ValueError("prompts must be a non-empty list of strings")
    rank, world = rank_and_world()
    chunks = micro_batches(len(prompts), batch_size, world)
    mine = [chunks[c] for c in shard_indices(len(chunks), rank, world)]
    start = time.perf_counter()
    local = [_generate_chunk(model, prompts, seed, chunk, kwargs) for chunk in mine]
    stages = _merge_local(local)  # per stage: (images, rows, scores) of this rank's samples
    indices = np.array([i for chunk in mine for i in chunk], np.int64)
    gathered = _gather(indices, stages, rank, world)
    if rank != 0:
        return None
    all_indices, all_stages = gathered
    order = _check_complete(all_indices, len(prompts))
    out = [
        attrs.evolve(
            template,
            prompts=prompts,
            images=images[order],
            neighbor_rows=rows[order],
            neighbor_scores=scores[order],
            seconds=time.perf_counter() - start,
        )
        for template, (images, rows, scores) in zip(_as_stages(local[0]), all_stages)
    ]
    return out if isinstance(local[0], list) else out[0]


def _generate_chunk(model, prompts, seed, chunk: range, kwargs: dict):
    sliced = {
        k: (np.asarray(v)[chunk.start : chunk.stop] if k in SLICED and v is not None else v)
        for k, v in kwargs.items()
    }
    return model.generate(
        list(prompts[chunk.start : chunk.stop]), seed=seed, indices=chunk, **sliced
    )


def _as_stages(result) -> list[Generation]:
    return result if isinstance(result, list) else [result]


def _merge_local(local: list) -> list[tuple[np.ndarray, ...]] | None:
    """This rank's chunks -> per stage (images [m, H, W, 3] uint8, rows [m, K], scores [m, K]);
    None when the rank has no work."""
    if not local:
        return None
    per_stage = zip(*(_as_stages(result) for result in local))
    return [
        tuple(
            np.concatenate([getattr(g, name) for g in gens]).astype(dtype, copy=False)
            for name, _, dtype in FIELDS
        )
        for gens in per_stage
    ]


def _gather(indices: np.ndarray, stages, rank: int, world: int):
    """Everything to rank 0: (indices [n], per stage (images, rows, scores) [n, ...]) there,
    None elsewhere. One process: the local arrays as they are."""
    if world == 1:
        return indices, stages
    from reimagen.backends.torch import distributed as dist

    count = dist.all_gather_ints([len(indices)])[:, 0]  # [world] samples per rank
    n_stages = int(dist.all_gather_ints([len(stages or [])]).max())
    all_indices = _gather_rows(indices, count, rank, world, 1, np.int64)
    all_stages = []
    for s in range(n_stages):
        arrays = stages[s] if stages else (None,) * len(FIELDS)
        all_stages.append(
            tuple(
                _gather_rows(a, count, rank, world, ndim, dtype)
                for a, (_, ndim, dtype) in zip(arrays, FIELDS)
            )
        )
    dist.barrier()
    return (all_indices, all_stages) if rank == 0 else None


def _gather_rows(array, count: np.ndarray, rank: int, world: int, ndim: int, dtype):
    """Rows of ``array`` [count[rank], ...] (``ndim`` axes, ``dtype``) from every rank,
    concatenated in rank order on rank 0 (padded to the largest count on the wire). A rank
    with no rows passes None."""
    import torch
    import torch.distributed as dist

    from reimagen.backends.torch.distributed import all_gather_ints

    shape = (0,) * ndim if array is None else array.shape
    trailing = tuple(int(v) for v in all_gather_ints(shape[1:] or [0]).max(axis=0))[: ndim - 1]
    if 0 in trailing:  # e.g. K = 0 neighbours: nothing to send
        return np.zeros((int(count.sum()), *trailing), dtype) if rank == 0 else None
    padded = np.zeros((int(count.max()), *trailing), dtype)
    if array is not None and len(array):
        padded[: len(array)] = array
    tensor = torch.from_numpy(padded)
    if rank != 0:
        dist.gather(tensor, None, dst=0)
        return None
    bucket = [torch.zeros_like(tensor) for _ in range(world)]
    dist.gather(tensor, bucket, dst=0)
    return np.concatenate([b.numpy()[: int(c)] for b, c in zip(bucket, count)])


def _check_complete(indices: np.ndarray, n: int) -> np.ndarray:
    """The permutation that sorts the gathered ``indices``; every index in range(n) exactly
    once, or RuntimeError naming the missing and duplicated ones."""
    counts = np.bincount(indices[(indices >= 0) & (indices < n)], minlength=n)
    missing = np.flatnonzero(counts == 0).tolist()
    duplicated = np.flatnonzero(counts > 1).tolist()
    stray = indices[(indices < 0) | (indices >= n)].tolist()
    if missing or duplicated or stray or len(indices) != n:
        raise RuntimeError(
            f"gathered samples are not range({n}): missing {missing}, "
            f"duplicated {duplicated}, out of range {stray}"
        )
    return np.argsort(indices, kind="stable")
