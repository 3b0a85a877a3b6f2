"""Training of the Re-Imagen U-Net in PyTorch (paper §3.2 "Model Training", Eq. 2).

Each step: a host batch from the :class:`~reimagen.training.contract.BatchSource` (it already
carries t ~ U[0,1], the noise ε and the independent 10% drops of text and neighbours), the
noisy image x_t = √ᾱ(t)·x0 + √(1−ᾱ(t))·ε on the host (so both backends see the same numbers),
one forward pass in which the noisy rows and their K neighbours (t = 0, own captions) share the
DStack, the ε-MSE loss ‖ε̂ − ε‖², AdamW with linear warmup, gradient-norm clipping, and an EMA
of the weights.

Resume is bit-identical: the batch, the learning rate, the EMA decay and the torch RNG (dropout)
are pure functions of (seed, step); model, EMA and AdamW moments are restored exactly from
safetensors; deterministic algorithms are on. The one thing outside the checkpoint is the
thread count (oneDNN may split reductions differently), so it is recorded and a resume on a
different count warns.

Data parallel (``distributed=True``, under ``torchrun``; issue #9 "Scale-out"): every rank
builds the same model, wraps it in DistributedDataParallel and takes rows [r·b, (r+1)·b) of the
step's *global* batch (b = batch_size / world size: the data is sharded by global example
index). Each rank's loss is the mean over its rows and DDP averages the gradients over the
ranks, so with equal shards the update is the single-process one up to float reduction order;
the logged loss is the all-reduced global mean, the same on every rank. Gradient clipping runs
after DDP's all-reduce, on identical gradients, so it uses the global norm; AdamW and the EMA
then run identically on every rank. Dropout is seeded from (seed, step, rank). Rank 0 alone
commits checkpoints (the atomic protocol of core.checkpoint); the other ranks wait at a barrier
until it is committed, and every rank resumes from the same ``latest``, so a job relaunched
after a crash continues exactly where the last checkpoint left it. Rank i > 0 logs to
``run_dir/process-<i>/log.jsonl``. See :mod:`reimagen.backends.torch.distributed`.

What is not torch-specific (the schedules, x_t on the host, the batch checks, the run loop, log,
resume checks and checkpoint commit) lives in :mod:`reimagen.training.loop` and
:mod:`reimagen.training.checkpoint`, shared with the JAX trainer.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from reimagen.backends.torch import checkpoint as ckpt
from reimagen.backends.torch import distributed as dist
from reimagen.backends.torch.denoiser import autocast, text_inputs
from reimagen.backends.torch.unet import NeighborInputs, build_unet
from reimagen.core.unet_config import UNetConfig, grows_position_tables
from reimagen.diffusion.schedule import CosineSchedule
from reimagen.training.contract import Batch, BatchSource, TrainConfig
from reimagen.training.loop import (  # noqa: F401  (re-exported for this module's callers)
    ADAM_BETAS,
    ADAM_EPS,
    LOG_FILE,
    NonFiniteLossError,
    TrainLoop,
    TrainResult,
    check_batch,
    ema_decay,
    learning_rate,
    noisy_inputs,
    step_seed,
    training_levels,
)

# ---- host batch -> tensors ---------------------------------------------------------------------


def model_kwargs(batch: Batch, schedule: CosineSchedule, device: str = "cpu") -> dict:
    """Keyword arguments of :meth:`ReImagenUNet.forward` for a training batch, on ``device``."""
    if isinstance(batch.images, torch.Tensor):  # composed on the device (--composer device)
        from reimagen.backends.torch.scene_composer import device_model_kwargs

        return device_model_kwargs(batch, schedule)
    k = batch.neighbor_images.shape[1]
    neighbors = None
    if k:
        neighbors = NeighborInputs(
            torch.from_numpy(np.asarray(batch.neighbor_images, np.float32)),
            text_inputs(batch.neighbor_text),
        )
    kwargs = {
        "x": torch.from_numpy(noisy_inputs(batch, schedule)),
        "t": torch.from_numpy(np.asarray(batch.t, np.float32)),
        "text": text_inputs(batch.text),
        "use_text": torch.from_numpy(np.asarray(batch.use_text, bool)),
        "use_neighbors": torch.from_numpy(np.asarray(batch.use_neighbors, bool)),
        "neighbors": neighbors,
        "lowres": None if batch.lowres is None else torch.from_numpy(batch.lowres),
        "aug_level": None if batch.aug_level is None else torch.from_numpy(batch.aug_level),
    }
    return kwargs if device == "cpu" else to_device(kwargs, device)


def to_device(value, device: str):
    """Tensors (also inside NamedTuples / dicts) moved to ``device`` (asynchronous copies)."""
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, dict):
        return {key: to_device(item, device) for key, item in value.items()}
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # NamedTuple
        return type(value)(*(to_device(item, device) for item in value))
    return value


def resolve_device(device: str) -> str:
    """ "cpu", "cuda", "cuda:N" or "auto" (cuda when available) -> a torch device string."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: torch {torch.__version__} sees no CUDA device")
    return device


def weighted_mse(eps: torch.Tensor, noise: torch.Tensor, weights: np.ndarray | None):
    """‖ε̂ − ε‖² averaged over every element (paper Eq. 2); with per-row ``weights`` [B]
    (TrainConfig.loss_weighting), the mean over rows of weight × the row's mean."""
    if weights is None:
        return torch.mean((eps - noise) ** 2)
    per_row = torch.mean((eps - noise) ** 2, dim=tuple(range(1, eps.ndim)))  # [B]
    return torch.mean(torch.from_numpy(weights).to(per_row.device) * per_row)


# ---- the trainer -------------------------------------------------------------------------------


class Trainer(TrainLoop):
    """Owns the model, EMA and AdamW of one torch training run; the run folder, log, resume
    checks and loop are :class:`~reimagen.training.loop.TrainLoop`'s."""

    def __init__(
        self,
        model_config: UNetConfig,
        train_config: TrainConfig,
        batch_source: BatchSource,
        run_dir: str | Path,
        *,
        device: str = "cpu",
        init_weights: str | Path | None = None,
        distributed: bool = False,
        **options,
    ):
        """``device``: "cpu", "cuda[:N]" or "auto". ``init_weights``: a weights file (e.g. an
        exported EMA) to start a NEW run from (fresh AdamW; ignored when the run folder
        already has a checkpoint to resume). ``distributed``: data parallel over the ranks
        torchrun started (joins the process group when none exists; on CUDA each rank takes
        cuda:LOCAL_RANK, so ``device`` is "cpu", "cuda" or "auto"). ``options``: resume,
        progress, callback, keep, workers, time_limit (see TrainLoop)."""
        self.distributed = bool(distributed)
        if self.distributed:
            device = self._join(train_config, device, options.get("time_limit"))
        elif dist.world_size() > 1:
            raise ValueError(
                f"the process group has {dist.world_size()} ranks: pass distributed=True so "
                "they train one model together"
            )
        self.rank, self.world_size = dist.rank(), dist.world_size()
        super().__init__(model_config, train_config, batch_source, run_dir, **options)
        self.device = resolve_device(device)
        self.dtype = torch.bfloat16 if train_config.bf16 else torch.float32
        # Initialised on the CPU (the same weights for a seed on any device), then moved.
        self.model = build_unet(model_config, seed=train_config.seed).train().to(self.device)
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=train_config.lr,
            betas=ADAM_BETAS,
            eps=ADAM_EPS,
            weight_decay=train_config.weight_decay,
            fused=True,
        )
        self.init_weights = None if init_weights is None else Path(init_weights)
        self.resume_latest()
        if self.checkpoint is None and self.init_weights is not None:
            self._load_init_weights(self.init_weights)
        self.network: torch.nn.Module = (
            self.model
        )  # what the step calls: the model, or its DDP wrapper
        if self.distributed:
            self._wrap_ddp()

    # ---- data parallel -------------------------------------------------------------------

    def _join(self, train_config: TrainConfig, device: str, time_limit) -> str:
        """Checks, then join the job (before anything is built or written); this rank's
        device."""
        if time_limit is not None:
            raise ValueError(
                "time_limit must be None with distributed=True (each rank would stop at its "
                "own step and the others would wait for it forever)"
            )
        if not dist.is_initialized():
            world = int(os.environ.get("WORLD_SIZE") or 1)
            dist.check_world_size(train_config.batch_size, world)
        info = dist.init(device)
        dist.check_world_size(train_config.batch_size, info.world_size)
        return info.device

    def _wrap_ddp(self) -> None:
        """All ranks resumed at the same step (else the checkpoints are not on a filesystem
        they all see); rank i > 0 logs beside the run; the model wrapped in DDP."""
        steps = dist.gather_ints(self.step)
        if len(set(steps)) != 1:
            raise ckpt.CheckpointError(
                f"ranks resumed {self.run_dir} at different steps {steps}: run_dir must be on "
                "a filesystem that every rank sees"
            )
        self.shared_run_dir = self.run_dir
        if self.rank > 0:
            self.run_dir = self.run_dir / f"process-{self.rank}"
            self.progress = False
        cuda = self.device.startswith("cuda")
        self.network = torch.nn.parallel.DistributedDataParallel(
            self.model,
            device_ids=[torch.device(self.device).index] if cuda else None,
            # K = 0: the neighbour-attention weights take no part in the forward pass
            find_unused_parameters=self.config.neighbors == 0,
        )

    def save(self, loss: float) -> Path:
        """Rank 0 commits the checkpoint (TrainLoop.save); the other ranks wait until it is
        committed and return its folder."""
        if not self.distributed:
            return super().save(loss)
        if self.rank == 0:
            folder = super().save(loss)
        else:
            folder = self.shared_run_dir / ckpt.CHECKPOINTS / ckpt.step_dir_name(self.step)
            self.checkpoint = folder
        dist.barrier()
        return folder

    # ---- state ---------------------------------------------------------------------------

    def _backend_state(self) -> dict:
        return {
            "backend": "torch",
            "rng": "torch.manual_seed(rank_step_seed(seed, step, rank)) before every step "
            "(rank 0: step_seed(seed, step)); no other state",
            "num_threads": torch.get_num_threads(),
            "world_size": self.world_size,
            "device": self.device,
            "init_weights": None if self.init_weights is None else str(self.init_weights),
            "torch_version": torch.__version__,
            "composer": getattr(self.source, "composer", "host"),  # where batches are composed
        }

    def _load_init_weights(self, path: Path) -> None:
        """Model and EMA from a weights file with this run's UNetConfig."""
        source = ckpt.load_model(path)  # checks the file's own config and keys
        state = ckpt.weights_to_numpy(source)
        if grows_position_tables(source.config, self.model_config):
            # the same network plus neighbour position tables: they start at their zero init,
            # so the grown network computes exactly what the file's network computes
            own = ckpt.weights_to_numpy(self.model)
            state.update({k: own[k] for k in own if k.endswith((".pos_q", ".pos_k"))})
        elif source.config != self.model_config:
            raise ValueError(f"init_weights {path}: trained with a different UNetConfig")
        ckpt.load_weights(self.model, state, path)
        ckpt.load_weights(self.ema, state, path)

    def _load_state(self, saved: ckpt.Checkpoint) -> None:
        folder = saved.folder
        if saved.state.get("num_threads") != torch.get_num_threads():
            warnings.warn(
                f"resuming with {torch.get_num_threads()} threads, the run used "
                f"{saved.state.get('num_threads')}: the continuation may not be bit-identical",
                stacklevel=5,  # the caller of Trainer(...)
            )
        if saved.state.get("world_size", 1) != self.world_size:
            warnings.warn(
                f"resuming on {self.world_size} ranks, the run used "
                f"{saved.state.get('world_size', 1)}: gradients are reduced in another order, "
                "so the continuation may not be bit-identical",
                stacklevel=5,
            )
        # The run's lineage is the weights its first start was initialised from (a resume
        # ignores init_weights), so every later checkpoint, and the export, records those.
        recorded = saved.state.get("init_weights")
        self.init_weights = None if recorded is None else Path(recorded)
        # host and device composers make bit-identical batches (tests/test_device_composer.py):
        # a resume may switch; the switch is logged as a config change
        composer = getattr(self.source, "composer", "host")
        if saved.state.get("composer", "host") != composer:
            self.resume_changes["composer"] = [saved.state.get("composer", "host"), composer]
        ckpt.load_weights(self.model, saved.model, folder / ckpt.MODEL_FILE)
        ckpt.load_weights(self.ema, saved.ema, folder / ckpt.EMA_FILE)
        ckpt.load_optimizer(self.optimizer, self.model, saved.optimizer, folder / ckpt.OPTIM_FILE)

    # ---- one step ------------------------------------------------------------------------

    def train_step(self, batch: Batch) -> tuple[float, float]:
        """One AdamW update on ``batch`` (the batch of step ``self.step``). Returns (loss,
        gradient norm before clipping). NaN/Inf -> NonFiniteLossError, nothing applied.
        Distributed: ``batch`` is the global batch; this rank trains on its rows, and the
        loss returned is the global mean."""
        if self.distributed:
            batch = dist.shard_batch(batch, self.rank, self.world_size)
        batch, weights = training_levels(batch, self.config, self.schedule)
        kwargs = model_kwargs(batch, self.schedule, self.device)
        noise = to_device(torch.as_tensor(batch.noise), self.device)
        lr = learning_rate(self.config, self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        # all devices' generators
        torch.manual_seed(dist.rank_step_seed(self.config.seed, self.step, self.rank))
        with autocast(self.dtype, self.device):
            eps = self.network(**kwargs)
        loss = weighted_mse(eps.float(), noise, weights)  # paper Eq. 2, ε-prediction
        # the global mean; a NaN on any rank stops every rank here, before the backward pass
        loss_value = dist.mean(loss.detach()).item() if self.distributed else loss.item()
        if not math.isfinite(loss_value):
            raise NonFiniteLossError(self.stop_message("loss", loss_value))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # after DDP's all-reduce the gradients are the same on every rank: the global norm
        grad_norm = float(
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        )
        if not math.isfinite(grad_norm):
            raise NonFiniteLossError(self.stop_message("gradient norm", grad_norm))
        self.optimizer.step()
        self._update_ema()
        self.step += 1
        return loss_value, grad_norm

    @torch.no_grad()
    def _update_ema(self) -> None:
        """ema ← ema + (1 − d)·(θ − ema), with d from :func:`ema_decay`."""
        weight = 1.0 - ema_decay(self.config, self.step)
        torch._foreach_lerp_(list(self.ema.parameters()), list(self.model.parameters()), weight)

    # ---- the loop ------------------------------------------------------------------------

    def _host_arrays(self) -> tuple[dict, dict, dict]:
        weights, ema = ckpt.weights_to_numpy(self.model), ckpt.weights_to_numpy(self.ema)
        return weights, ema, ckpt.optimizer_to_numpy(self.optimizer, self.model)

    @contextlib.contextmanager
    def _loop_context(self):
        """Deterministic algorithms on (CPU) and the caller's RNG kept, while the loop runs.
        On CUDA the run is reproducible only up to cuBLAS/cuDNN reduction order: deterministic
        mode there would need CUBLAS_WORKSPACE_CONFIG and slower kernels, for a run that
        cannot be bit-identical to the CPU's anyway."""
        devices = [] if self.device == "cpu" else [torch.device(self.device)]
        exact = _deterministic() if self.device == "cpu" else contextlib.nullcontext()
        with exact, torch.random.fork_rng(devices=devices), warnings.catch_warnings():
            # DDP: a 1×1 kernel's gradient comes contiguous while its channels_last bucket view
            # has other strides for the size-1 axes; the same memory order, nothing to fix.
            warnings.filterwarnings("ignore", message="Grad strides do not match bucket view")
            yield


# The module-level entry point: train(model_config, train_config, batch_source, run_dir,
# resume=True, *, progress=True, callback=None) -> TrainResult.
train = Trainer.train


class _deterministic:
    """torch.use_deterministic_algorithms(True) for the loop, restored afterwards."""

    def __enter__(self):
        self.previous = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(True)

    def __exit__(self, *exc):
        torch.use_deterministic_algorithms(self.previous)
