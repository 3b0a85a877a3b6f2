"""Multi-process PyTorch (issue #9, "Scale-out"): join the process group that ``torchrun``
describes in the environment, with the collective backend picked from the device.

``torchrun`` (``python -m torch.distributed.run``) starts one process per rank and sets, in each::

    RANK=0 .. WORLD_SIZE-1     this process's global rank
    WORLD_SIZE=N               processes in the job (all nodes)
    LOCAL_RANK=0 .. n-1        this process's rank on its node (its GPU index)
    MASTER_ADDR, MASTER_PORT   where rank 0's TCP store listens

:func:`init` reads them and calls ``torch.distributed.init_process_group("env://")`` with
**gloo** when the ranks train on the CPU and **nccl** when they train on CUDA (one GPU per
rank, ``cuda:LOCAL_RANK``). ``Trainer(..., distributed=True)`` calls it when no process group
exists yet (``reimagen train --distributed``).

Relaunches (``torchrun --max-restarts N``): with a static rendezvous (``--master-addr``)
torchrun's agent keeps one key-value store for every attempt, so the ranks of attempt 2 would
read the listening addresses that attempt 1's (dead) ranks published and fail to connect. The
process group therefore uses the store under a per-attempt prefix
(``TORCHELASTIC_RESTART_COUNT``).

Only tensors cross the wire here (no ``*_object`` collectives: they pickle).
"""

from __future__ import annotations

import datetime
import os

import attrs
import numpy as np
import torch
import torch.distributed as dist

from reimagen.core.interfaces import TextEncoding
from reimagen.training.contract import Batch
from reimagen.training.loop import step_seed

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@attrs.frozen
class ProcessInfo:
    """Where this process stands in the job once joined."""

    rank: int  # global rank, 0 .. world_size - 1
    world_size: int  # processes in the job
    local_rank: int  # rank on this node (the CUDA device index)
    backend: str  # "gloo" or "nccl"
    device: str  # "cpu" or "cuda:<local_rank>": where this rank trains


def launched() -> bool:
    """True when a launcher (torchrun) set RANK and WORLD_SIZE for this process."""
    return bool(os.environ.get("RANK")) and bool(os.environ.get("WORLD_SIZE"))


def _env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's variables (one-line errors)."""
    missing = [name for name in ENV_VARS if not os.environ.get(name)]
    if missing:
        raise ValueError(
            f"{', '.join(missing)} not set: start the processes with torchrun (it sets "
            f"{', '.join(ENV_VARS)})"
        )
    values = []
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        raw = os.environ[name]
        if not raw.isdigit():
            raise ValueError(f"{name} must be a non-negative integer; got {raw!r}")
        values.append(int(raw))
    rank, world, local = values
    if not 0 <= rank < world:
        raise ValueError(f"RANK must be in [0, {world - 1}] (WORLD_SIZE={world}); got {rank}")
    return rank, world, local


def rank_device(device: str, local_rank: int) -> str:
    """The device of one rank: "cpu", or "cuda:<local_rank>" for "cuda" (and for "auto" when
    CUDA is available). An explicit "cuda:N" is refused: torchrun assigns the GPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return device
    if device != "cuda":
        raise ValueError(
            f"device must be 'cpu', 'cuda' or 'auto' with distributed training (rank i takes "
            f"cuda:LOCAL_RANK); got {device!r}"
        )
    if local_rank >= torch.cuda.device_count():
        raise ValueError(
            f"LOCAL_RANK={local_rank} but this node has {torch.cuda.device_count()} CUDA "
            "devices: start at most one process per GPU (--nproc-per-node)"
        )
    return f"cuda:{local_rank}"


def backend_for(device: str) -> str:
    """The collective backend for a rank's device: nccl on CUDA, gloo on the CPU."""
    return "nccl" if device.startswith("cuda") else "gloo"


def init(device: str = "auto", *, timeout_s: float = 1800.0) -> ProcessInfo:
    """Join the job torchrun started (once per process; a second call returns the same info).
    ``device``: "cpu", "cuda" or "auto". ``timeout_s``: how long a collective (and the first
    rendezvous) may wait for the other ranks before failing."""
    rank, world, local = _env()
    device = rank_device(device, local)
    backend = backend_for(device)
    if dist.is_initialized():
        if dist.get_backend() != backend:
            raise ValueError(
                f"the process group uses {dist.get_backend()}, but device {device!r} needs "
                f"{backend}"
            )
    else:
        if device.startswith("cuda"):
            torch.cuda.set_device(device)
        timeout = datetime.timedelta(seconds=timeout_s)
        dist.init_process_group(
            backend,
            store=_attempt_store(rank, world, timeout),
            rank=rank,
            world_size=world,
            timeout=timeout,
            device_id=torch.device(device) if backend == "nccl" else None,  # None: the default
        )
    return ProcessInfo(rank, world, local, backend, device)


def _attempt_store(rank: int, world: int, timeout: datetime.timedelta) -> dist.Store:
    """The rendezvous store at MASTER_ADDR:MASTER_PORT (torchrun's agent hosts it; without an
    agent, rank 0 does), under a prefix naming this launch attempt (module docstring)."""
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        world,
        is_master=not agent and rank == 0,
        timeout=timeout,
    )
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"reimagen/attempt-{attempt}", store)


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's global rank (0 without a process group)."""
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    """Processes in the job (1 without a process group)."""
    return dist.get_world_size() if is_initialized() else 1


def comm_device() -> torch.device:
    """Where tensors of a collective must live: the current GPU for nccl, else the CPU."""
    if is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    """Wait until every rank gets here (no-op without a process group)."""
    if not is_initialized():
        return
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def mean(value: torch.Tensor) -> torch.Tensor:
    """The mean of a float tensor over the ranks (a new float64 tensor on ``value``'s
    device; ``value`` itself on one process)."""
    if world_size() == 1:
        return value
    total = value.detach().to(comm_device(), torch.float64).clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return (total / world_size()).to(value.device)


def all_gather_ints(values) -> np.ndarray:
    """Every rank's ``values`` (a sequence of ints, the same length on every rank) ->
    int64 [world_size, len(values)] in rank order (one row without a process group)."""
    mine = torch.tensor([int(v) for v in values], dtype=torch.int64)
    if world_size() == 1:
        return mine.numpy()[None]
    mine = mine.to(comm_device())
    out = [torch.empty_like(mine) for _ in range(world_size())]
    dist.all_gather(out, mine)
    return torch.stack(out).cpu().numpy()


def gather_ints(value: int) -> list[int]:
    """``value`` of every rank, in rank order (``[value]`` without a process group)."""
    return all_gather_ints([value])[:, 0].tolist()


def shutdown() -> None:
    """Leave the job (``destroy_process_group``); no-op without a process group."""
    if is_initialized():
        dist.destroy_process_group()


# ---- which rows a rank trains on ---------------------------------------------------------------


def check_world_size(batch_size: int, world_size: int) -> None:
    """The global batch splits evenly over the ranks (one-line ValueError)."""
    if batch_size % world_size:
        raise ValueError(
            f"TrainConfig.batch_size={batch_size} must be divisible by the world size "
            f"{world_size} (torchrun processes)"
        )


def shard_batch(batch: Batch, rank: int, world_size: int) -> Batch:
    """Rows [rank·b, (rank+1)·b) of a global batch, b = batch.size / world_size."""
    check_world_size(batch.size, world_size)
    b = batch.size // world_size
    rows = slice(rank * b, (rank + 1) * b)

    def take(value):  # every Batch field is per-row: an array, a TextEncoding or None
        if value is None:
            return None
        return value.take(rows) if isinstance(value, TextEncoding) else value[rows]

    return attrs.evolve(
        batch, **{field.name: take(getattr(batch, field.name)) for field in attrs.fields(Batch)}
    )


def rank_step_seed(seed: int, step: int, rank: int) -> int:
    """The dropout seed of one rank at one step, a pure function of (seed, step, rank); rank 0
    (and a single process) uses :func:`step_seed`, so one-process runs keep their numbers."""
    return (step_seed(seed, step) + rank * 0x9E3779B97F4A7C15) % (2**63 - 1)


__all__ = [
    "ENV_VARS",
    "ProcessInfo",
    "all_gather_ints",
    "backend_for",
    "barrier",
    "check_world_size",
    "comm_device",
    "gather_ints",
    "init",
    "is_initialized",
    "launched",
    "mean",
    "rank",
    "rank_device",
    "rank_step_seed",
    "shard_batch",
    "shutdown",
    "world_size",
]
