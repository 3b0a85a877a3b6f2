"""Training of the Re-Imagen U-Net in PyTorch (paper §3.2 "Model Training", Eq. 2).

Each step: a host batch from the :class:`~reimagen.core.training.BatchSource` (it already
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
"""

from __future__ import annotations

import copy
import json
import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import attrs
import numpy as np
import torch

from reimagen.backends.torch import checkpoint as ckpt
from reimagen.backends.torch.denoiser import autocast, text_inputs
from reimagen.backends.torch.unet import NeighborInputs, ReImagenUNet, build_unet
from reimagen.core.config import ConfigError
from reimagen.core.schedule import CosineSchedule
from reimagen.core.training import Batch, BatchSource, TrainConfig
from reimagen.core.unet_config import UNetConfig

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
LOG_FILE = "log.jsonl"
# TrainConfig fields that may change between a run and its resumption.
RESUMABLE_CHANGES = ("steps", "checkpoint_every", "log_every")


class NonFiniteLossError(FloatingPointError):
    """The loss or gradient norm became NaN/Inf; training stopped before applying the step."""


@attrs.frozen
class TrainResult:
    step: int  # optimizer updates applied in total
    loss: float  # the last step's loss
    checkpoint: Path | None  # the committed checkpoint folder
    model: ReImagenUNet  # raw weights
    ema: ReImagenUNet  # EMA weights
    images_per_second: float  # over this call's steps


def learning_rate(config: TrainConfig, step: int) -> float:
    """Linear warmup from lr/warmup to lr over ``warmup_steps``, then constant."""
    if config.warmup_steps and step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    return config.lr


def ema_decay(config: TrainConfig, step: int) -> float:
    """EMA decay with the usual warmup: min(decay, (1 + n) / (10 + n))."""
    return min(config.ema_decay, (1.0 + step) / (10.0 + step))


def step_seed(seed: int, step: int) -> int:
    """The torch RNG seed of one step (dropout): a pure function of (seed, step)."""
    return (seed * 1_000_003 + step) % (2**63 - 1)


# ---- host batch -> tensors ---------------------------------------------------------------------


def noisy_inputs(batch: Batch, schedule: CosineSchedule) -> np.ndarray:
    """x_t = √ᾱ(t)·x0 + √(1−ᾱ(t))·ε (paper Eq. 1), on the host in float32, [B, H, W, C]."""
    alpha, sigma = schedule.alpha_sigma(batch.t)  # [B] float64 each
    shape = (-1,) + (1,) * (batch.images.ndim - 1)
    x_t = alpha.reshape(shape) * batch.images + sigma.reshape(shape) * batch.noise
    return x_t.astype(np.float32)


def model_kwargs(batch: Batch, schedule: CosineSchedule) -> dict:
    """Keyword arguments of :meth:`ReImagenUNet.forward` for a training batch."""
    k = batch.neighbor_images.shape[1]
    neighbors = None
    if k:
        neighbors = NeighborInputs(
            torch.from_numpy(np.asarray(batch.neighbor_images, np.float32)),
            text_inputs(batch.neighbor_text),
        )
    return {
        "x": torch.from_numpy(noisy_inputs(batch, schedule)),
        "t": torch.from_numpy(np.asarray(batch.t, np.float32)),
        "text": text_inputs(batch.text),
        "use_text": torch.from_numpy(np.asarray(batch.use_text, bool)),
        "use_neighbors": torch.from_numpy(np.asarray(batch.use_neighbors, bool)),
        "neighbors": neighbors,
        "lowres": None if batch.lowres is None else torch.from_numpy(batch.lowres),
        "aug_level": None if batch.aug_level is None else torch.from_numpy(batch.aug_level),
    }


def check_batch(batch: Batch, model_config: UNetConfig, train_config: TrainConfig) -> None:
    """The batch stream fits the model and the config (one-line errors, before any update)."""
    s, c = model_config.image_size, model_config.in_channels
    expect = (train_config.batch_size, s, s, c)
    if tuple(batch.images.shape) != expect:
        raise ValueError(
            f"batch.images must be {list(expect)} (B, H, W, C); got {list(batch.images.shape)}"
        )
    k = batch.neighbor_images.shape[1]
    if k != train_config.neighbors:
        raise ValueError(
            f"batch has K={k} neighbours, TrainConfig.neighbors is {train_config.neighbors}"
        )
    if batch.text.tokens.shape[-1] != model_config.text_dim:
        raise ValueError(
            f"text dim {batch.text.tokens.shape[-1]} != UNetConfig.text_dim {model_config.text_dim}"
        )
    if model_config.is_super_resolution and batch.lowres is None:
        raise ValueError("a super-resolution model needs batch.lowres and batch.aug_level")


# ---- the trainer -------------------------------------------------------------------------------


class Trainer:
    """Owns the model, EMA, optimizer and run folder of one training run."""

    def __init__(
        self,
        model_config: UNetConfig,
        train_config: TrainConfig,
        batch_source: BatchSource,
        run_dir: str | Path,
        *,
        resume: bool = True,
        progress: bool = True,
        callback: Callable[[int, float], None] | None = None,
        keep: int = 2,
    ):
        self.model_config = model_config
        self.config = train_config
        self.source = batch_source
        self.run_dir = Path(run_dir)
        self.progress = progress
        self.callback = callback
        self.keep = keep
        self.schedule = CosineSchedule()
        self.dtype = torch.bfloat16 if train_config.bf16 else torch.float32
        if ckpt.has_checkpoint(self.run_dir) and not resume:
            raise ValueError(
                f"run_dir {self.run_dir} already holds checkpoints; pass resume=True to continue "
                "it or choose an empty folder"
            )
        self.model = build_unet(model_config, seed=train_config.seed).train()
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=train_config.lr,
            betas=ADAM_BETAS,
            eps=ADAM_EPS,
            weight_decay=train_config.weight_decay,
            fused=True,
        )
        self.step = 0
        self.checkpoint: Path | None = None
        self.last_loss = float("nan")
        if ckpt.has_checkpoint(self.run_dir):
            self._restore(ckpt.latest_checkpoint(self.run_dir))

    # ---- state ---------------------------------------------------------------------------

    def _state(self, loss: float) -> dict:
        return {
            "format": ckpt.FORMAT,
            "loss": loss,
            "model_config": self.model_config.to_dict(),
            "train_config": self.config.to_dict(),
            "optimizer": {"name": "AdamW", "betas": list(ADAM_BETAS), "eps": ADAM_EPS},
            "rng": "torch.manual_seed(step_seed(seed, step)) before every step; no other state",
            "num_threads": torch.get_num_threads(),
            "torch_version": torch.__version__,
        }

    def _restore(self, folder: Path) -> None:
        saved = ckpt.read_checkpoint(folder)
        if saved.state["model_config"] != self.model_config.to_dict():
            raise ConfigError(f"{folder}: the run was trained with a different UNetConfig")
        old, new = saved.state["train_config"], self.config.to_dict()
        changed = sorted(k for k in new if k not in RESUMABLE_CHANGES and old.get(k) != new[k])
        if changed:
            raise ConfigError(
                f"{folder}: TrainConfig differs from the run's in {', '.join(changed)}; only "
                f"{', '.join(RESUMABLE_CHANGES)} may change on resume"
            )
        if saved.state.get("num_threads") != torch.get_num_threads():
            warnings.warn(
                f"resuming with {torch.get_num_threads()} threads, the run used "
                f"{saved.state.get('num_threads')}: the continuation may not be bit-identical",
                stacklevel=3,
            )
        ckpt.load_weights(self.model, saved.model, folder / ckpt.MODEL_FILE)
        ckpt.load_weights(self.ema, saved.ema, folder / ckpt.EMA_FILE)
        ckpt.load_optimizer(self.optimizer, self.model, saved.optimizer, folder / ckpt.OPTIM_FILE)
        self.step = saved.step
        self.checkpoint = folder
        self.last_loss = float(saved.state.get("loss", float("nan")))

    # ---- one step ------------------------------------------------------------------------

    def train_step(self, batch: Batch) -> tuple[float, float]:
        """One AdamW update on ``batch`` (the batch of step ``self.step``). Returns (loss,
        gradient norm before clipping). NaN/Inf -> NonFiniteLossError, nothing applied."""
        kwargs = model_kwargs(batch, self.schedule)
        noise = torch.from_numpy(batch.noise)
        lr = learning_rate(self.config, self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        torch.manual_seed(step_seed(self.config.seed, self.step))
        with autocast(self.dtype):
            eps = self.model(**kwargs)
        loss = torch.mean((eps.float() - noise) ** 2)  # paper Eq. 2, ε-prediction
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise NonFiniteLossError(self._stop_message("loss", loss_value))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = float(
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        )
        if not math.isfinite(grad_norm):
            raise NonFiniteLossError(self._stop_message("gradient norm", grad_norm))
        self.optimizer.step()
        self._update_ema()
        self.step += 1
        return loss_value, grad_norm

    def _stop_message(self, what: str, value: float) -> str:
        last = "none" if self.checkpoint is None else self.checkpoint.name
        return (
            f"{what} is {value} at step {self.step}; stopped before the update "
            f"(last committed checkpoint: {last})"
        )

    @torch.no_grad()
    def _update_ema(self) -> None:
        """ema ← ema + (1 − d)·(θ − ema), with d from :func:`ema_decay`."""
        weight = 1.0 - ema_decay(self.config, self.step)
        torch._foreach_lerp_(list(self.ema.parameters()), list(self.model.parameters()), weight)

    # ---- the loop ------------------------------------------------------------------------

    def save(self, loss: float) -> Path:
        self.checkpoint = ckpt.write_checkpoint(
            self.run_dir,
            self.step,
            model=self.model,
            ema=self.ema,
            optimizer=self.optimizer,
            state=self._state(loss),
            keep=self.keep,
        )
        return self.checkpoint

    def run(self) -> TrainResult:
        """Train until ``config.steps`` updates, checkpointing every ``checkpoint_every``."""
        from tqdm.auto import tqdm

        config = self.config
        start_step = self.step
        if start_step < config.steps:
            check_batch(self.source.batch(start_step), self.model_config, config)
        log = _JsonlLog(self.run_dir / LOG_FILE)
        log.write({"event": "start", "step": start_step, "resumed": self.checkpoint is not None})
        bar = tqdm(
            total=config.steps,
            initial=start_step,
            disable=not self.progress,
            unit="step",
            dynamic_ncols=True,
        )
        loss, window, started = self.last_loss, _Window(), time.perf_counter()
        with _deterministic(), torch.random.fork_rng(devices=[]):  # the caller's RNG is kept
            while self.step < config.steps:
                tick = time.perf_counter()
                loss, grad_norm = self.train_step(self.source.batch(self.step))
                window.add(loss, grad_norm, config.batch_size, time.perf_counter() - tick)
                bar.update(1)
                if self.callback is not None:
                    self.callback(self.step, loss)
                if self.step % config.log_every == 0 or self.step == config.steps:
                    record = window.flush(self.step, learning_rate(config, self.step - 1))
                    bar.set_postfix(
                        loss=f"{record['loss']:.4f}", img_s=f"{record['images_per_s']:.1f}"
                    )
                    log.write(record)
                if self.step % config.checkpoint_every == 0 or self.step == config.steps:
                    log.write(
                        {"event": "checkpoint", "step": self.step, "folder": self.save(loss).name}
                    )
        bar.close()
        seconds = time.perf_counter() - started
        done = self.step - start_step
        return TrainResult(
            step=self.step,
            loss=loss,
            checkpoint=self.checkpoint,
            model=self.model,
            ema=self.ema,
            images_per_second=done * config.batch_size / seconds if done else 0.0,
        )


def train(
    model_config: UNetConfig,
    train_config: TrainConfig,
    batch_source: BatchSource,
    run_dir: str | Path,
    resume: bool = True,
    *,
    progress: bool = True,
    callback: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Train (or continue training) a U-Net in ``run_dir``; see :class:`Trainer`."""
    trainer = Trainer(
        model_config,
        train_config,
        batch_source,
        run_dir,
        resume=resume,
        progress=progress,
        callback=callback,
    )
    return trainer.run()


class _Window:
    """Running means between two log lines."""

    def __init__(self):
        self.losses, self.norms, self.images, self.seconds = [], [], 0, 0.0

    def add(self, loss: float, grad_norm: float, images: int, seconds: float) -> None:
        self.losses.append(loss)
        self.norms.append(grad_norm)
        self.images += images
        self.seconds += seconds

    def flush(self, step: int, lr: float) -> dict:
        record = {
            "step": step,
            "loss": float(np.mean(self.losses)),
            "grad_norm": float(np.mean(self.norms)),
            "lr": lr,
            "images_per_s": self.images / self.seconds if self.seconds else 0.0,
        }
        self.__init__()
        return record


class _JsonlLog:
    """Append-only JSON lines, flushed per line (a crash loses at most the line being written)."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path

    def write(self, record: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({**record, "time": time.time()}) + "\n")


class _deterministic:
    """torch.use_deterministic_algorithms(True) for the loop, restored afterwards."""

    def __enter__(self):
        self.previous = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(True)

    def __exit__(self, *exc):
        torch.use_deterministic_algorithms(self.previous)
