"""The backend-neutral half of training (paper §3.2 "Model Training", Eq. 2): everything of a
training run that is not a tensor. The torch and JAX trainers subclass :class:`TrainLoop` and
keep only their framework-specific state and step.

Shared here, so the two backends cannot drift apart:

* the per-step schedules, pure functions of (config, step): :func:`learning_rate` (linear
  warmup), :func:`ema_decay` (EMA warmup) and :func:`step_seed` (the dropout RNG seed), and the
  AdamW constants both optimizers use;
* the noise levels and loss weights of a step (:func:`training_levels`: TrainConfig.t_shift
  and loss_weighting), on the host, so both backends weight the same rows the same way;
* the host-side input maths: x_t = √ᾱ(t)·x0 + √(1−ᾱ(t))·ε (:func:`noisy_inputs`, Eq. 1), so
  both backends train on the same numbers, and the batch checks (:func:`check_batch`);
* the run loop (:meth:`TrainLoop.run`): progress bar, JSON-lines log with running means
  (:mod:`reimagen.training.run_log`), checkpoint cadence, resuming (its config checks:
  :mod:`reimagen.training.resume_check`) and the "stopped before the update" message.

numpy only: no framework is imported here (tests/test_core_imports.py).
"""

from __future__ import annotations

import abc
import contextlib
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from reimagen.core.unet_config import UNetConfig
from reimagen.diffusion.schedule import CosineSchedule
from reimagen.training import checkpoint as ckpt
from reimagen.training import prefetch
from reimagen.training.contract import Batch, BatchSource, TrainConfig
from reimagen.training.resume_check import check_resumable
from reimagen.training.rewind import rewind
from reimagen.training.run_log import JsonlLog, Window, start_log

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
LOG_FILE = "log.jsonl"


class NonFiniteLossError(FloatingPointError):
    """The loss or gradient norm became NaN/Inf; training stopped before applying the step."""


@attrs.frozen
class TrainResult:
    step: int  # optimizer updates applied in total
    loss: float  # the last step's loss
    checkpoint: Path | None  # the committed checkpoint folder
    model: Any = attrs.field(repr=False)  # raw weights: the backend's ReImagenUNet
    ema: Any = attrs.field(repr=False)  # EMA weights: the backend's ReImagenUNet
    images_per_second: float = 0.0  # over this call's steps


# ---- schedules: pure functions of (config, step) ------------------------------------------------


def learning_rate(config: TrainConfig, step: int) -> float:
    """Linear warmup from lr/warmup to lr over ``warmup_steps``, then constant."""
    if config.warmup_steps and step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    return config.lr


def ema_decay(config: TrainConfig, step: int) -> float:
    """EMA decay with the usual warmup: min(decay, (1 + n) / (10 + n))."""
    return min(config.ema_decay, (1.0 + step) / (10.0 + step))


def step_seed(seed: int, step: int) -> int:
    """The RNG seed of one step (dropout): a pure function of (seed, step)."""
    return (seed * 1_000_003 + step) % (2**63 - 1)


# ---- host batch ---------------------------------------------------------------------------------


def noisy_inputs(batch: Batch, schedule: CosineSchedule) -> np.ndarray:
    """x_t = √ᾱ(t)·x0 + √(1−ᾱ(t))·ε (paper Eq. 1), on the host in float32, [B, H, W, C]."""
    alpha, sigma = schedule.alpha_sigma(batch.t)  # [B] float64 each
    shape = (-1,) + (1,) * (batch.images.ndim - 1)
    x_t = alpha.reshape(shape) * batch.images + sigma.reshape(shape) * batch.noise
    return x_t.astype(np.float32)


def training_levels(
    batch: Batch, config: TrainConfig, schedule: CosineSchedule
) -> tuple[Batch, np.ndarray | None]:
    """The batch with its noise levels t moved by ``config.t_shift``, and the per-row loss
    weights of ``config.loss_weighting`` ([B] float32; None for "uniform", where the loss is
    the plain mean of Eq. 2).

    t_shift s: λ(t') = λ(t) − 2·ln s, so SNR(t') = SNR(t)/s² (s = 1: t unchanged).
    min-snr: w = min(SNR(t'), γ)/SNR(t'), i.e. 1 where SNR ≤ γ and γ/SNR above it."""
    t = batch.t
    if config.t_shift != 1.0:
        shifted = schedule.t_of_logsnr(schedule.logsnr(t) - 2.0 * math.log(config.t_shift))
        t = shifted.astype(np.float32)
        batch = attrs.evolve(batch, t=t)
    if config.loss_weighting == "uniform":
        return batch, None
    snr = np.exp(schedule.logsnr(t))  # float64 [B]
    return batch, (np.minimum(snr, config.snr_gamma) / snr).astype(np.float32)


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


# ---- the loop -----------------------------------------------------------------------------------


class TrainLoop(abc.ABC):
    """The run folder, resume, log and checkpoint cadence of one training run.

    A backend's trainer sets up ``self.model``, ``self.ema`` and its optimizer after
    ``super().__init__`` and then calls :meth:`resume_latest`; it implements :meth:`train_step`
    (one update on the batch of ``self.step``, which it advances), :meth:`_load_state` (arrays
    of a :class:`~reimagen.training.checkpoint.Checkpoint` -> its state) and :meth:`_host_arrays`
    (its state -> those arrays);
    optionally :meth:`_backend_state` (extra state.json facts) and :meth:`_loop_context` (what
    must hold while the loop runs)."""

    model: Any  # the backend's network (raw weights), set by the subclass
    ema: Any  # its EMA copy, likewise

    @classmethod
    def train(
        cls,
        model_config: UNetConfig,
        train_config: TrainConfig,
        batch_source: BatchSource,
        run_dir: str | Path,
        resume: bool = True,
        *,
        progress: bool = True,
        callback: Callable[[int, float], None] | None = None,
        **options: Any,
    ) -> TrainResult:
        """Train (or continue training) a U-Net in ``run_dir``: ``cls(...).run()``.
        ``options``: workers, time_limit, keep, and the backend's own (e.g. torch's device)."""
        options.update(resume=resume, progress=progress, callback=callback)
        return cls(model_config, train_config, batch_source, run_dir, **options).run()

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
        workers: int = 0,
        time_limit: float | None = None,
        resume_from: int | None = None,
    ):
        """``workers``: processes making batches ahead (reimagen.training.prefetch; 0 = inline).
        ``time_limit``: seconds after which the loop checkpoints and returns early (a lease on
        a borrowed GPU, a CI budget); the run resumes from there. ``resume_from``: a committed
        step to resume from instead of the latest (:func:`rewind`: the later steps are
        moved aside, not deleted); one process only, not with a distributed run."""
        if time_limit is not None and not time_limit > 0:
            raise ValueError(f"time_limit must be > 0 seconds or None, got {time_limit}")
        self.workers = workers
        self.time_limit = time_limit
        self.model_config = model_config
        self.config = train_config
        self.source = batch_source
        self.run_dir = Path(run_dir)
        self.progress = progress
        self.callback = callback
        self.keep = keep
        self.schedule = CosineSchedule()
        if (ckpt.has_checkpoint(self.run_dir) or ckpt.step_folders(self.run_dir)) and not resume:
            raise ValueError(
                f"run_dir {self.run_dir} already holds checkpoints; pass resume=True to continue "
                "it or choose an empty folder"
            )
        self.step = 0
        self.resume_from = resume_from
        self.rewound: dict[str, Any] | None = None  # what resume_from moved aside
        self.resume_changes: dict[str, list] = {}  # resumable TrainConfig fields that changed
        self.resume_skipped: list[str] = []  # checkpoints passed over on resume, and why
        self.checkpoint: Path | None = None
        self.last_loss = float("nan")

    # ---- what a backend provides ---------------------------------------------------------

    @abc.abstractmethod
    def train_step(self, batch: Batch) -> tuple[float, float]:
        """One update on ``batch``; returns (loss, gradient norm before clipping)."""

    @abc.abstractmethod
    def _host_arrays(self) -> tuple[dict, dict, dict]:
        """(model, EMA, optimizer state) as ``{canonical key: np.ndarray}`` dicts, the layout
        of :mod:`reimagen.training.checkpoint`."""

    @abc.abstractmethod
    def _load_state(self, saved: ckpt.Checkpoint) -> None:
        """Restore model, EMA and optimizer from the checkpoint's arrays."""

    def _backend_state(self) -> dict[str, Any]:
        return {}

    def _loop_context(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    # ---- shared ------------------------------------------------------------------------------

    def _state(self, loss: float) -> dict[str, Any]:
        """state.json of a checkpoint (the step is added by the writer)."""
        return {
            "format": ckpt.FORMAT,
            "loss": loss,
            "model_config": self.model_config.to_dict(),
            "train_config": self.config.to_dict(),
            "optimizer": {"name": "AdamW", "betas": list(ADAM_BETAS), "eps": ADAM_EPS},
            **self._backend_state(),
        }

    def save(self, loss: float) -> Path:
        """Commit a checkpoint of step ``self.step``; sets and returns ``self.checkpoint``."""
        model, ema, optimizer = self._host_arrays()
        self.checkpoint = ckpt.write_checkpoint(
            self.run_dir,
            self.step,
            model=model,
            ema=ema,
            optimizer=optimizer,
            config_json=self.model_config.to_json(),
            state=self._state(loss),
            keep=self.keep,
        )
        return self.checkpoint

    def resume_latest(self) -> None:
        """Continue from the run folder's newest checkpoint that reads back intact, if it has
        one (``latest``, else an earlier step: :func:`ckpt.load_resumable`, which warns; what
        it skipped also goes into log.jsonl when the run starts). With ``resume_from``, that
        step is made the latest first."""
        if self.resume_from is not None:
            folder, moved, aside = rewind(self.run_dir, self.resume_from)
            self.rewound = {
                "to": folder.name,
                "moved": moved,
                "aside": None if aside is None else aside.name,
            }
        saved, self.resume_skipped = ckpt.load_resumable(self.run_dir)
        if saved is not None:
            self._restore(saved)

    def _restore(self, saved: ckpt.Checkpoint) -> None:
        self.resume_changes = check_resumable(saved, self.model_config, self.config)
        self._load_state(saved)
        self.step = saved.step
        self.checkpoint = saved.folder
        self.last_loss = float(saved.state.get("loss", float("nan")))

    def stop_message(self, what: str, value: float) -> str:
        """The NonFiniteLossError message: what was not finite, where, and what is safe."""
        last = "none" if self.checkpoint is None else self.checkpoint.name
        return (
            f"{what} is {value} at step {self.step}; stopped before the update "
            f"(last committed checkpoint: {last})"
        )

    def check_finite(self, loss: float, grad_norm: float) -> None:
        """NonFiniteLossError unless both are finite (call before applying the update)."""
        for what, value in (("loss", loss), ("gradient norm", grad_norm)):
            if not math.isfinite(value):
                raise NonFiniteLossError(self.stop_message(what, value))

    def run(self) -> TrainResult:
        """Train until ``config.steps`` updates, checkpointing every ``checkpoint_every``."""
        start_step = self.step
        log = start_log(
            self.run_dir / LOG_FILE,
            start_step,
            resumed=self.checkpoint is not None,
            skipped=self.resume_skipped,
            rewound=self.rewound,
            changes=self.resume_changes,
        )
        bar = self._progress_bar(start_step)
        started = time.perf_counter()
        stream = prefetch.batches(
            self.source,
            start_step,
            self.config.steps,
            workers=self.workers,
            compact=self.workers > 0,
        )
        with self._loop_context(), contextlib.closing(stream):  # closing: stops the workers
            loss = self._train_stream(stream, start_step, log, bar, started)
        bar.close()
        seconds = time.perf_counter() - started
        done = self.step - start_step
        return TrainResult(
            step=self.step,
            loss=loss,
            checkpoint=self.checkpoint,
            model=self.model,
            ema=self.ema,
            images_per_second=done * self.config.batch_size / seconds if done else 0.0,
        )

    def _progress_bar(self, start_step: int):
        from tqdm.auto import tqdm

        return tqdm(
            total=self.config.steps,
            initial=start_step,
            disable=not self.progress,
            unit="step",
            dynamic_ncols=True,
        )

    def _train_stream(self, stream, start_step: int, log: JsonlLog, bar, started: float) -> float:
        """One update per batch of ``stream`` until it ends or the time limit passes; returns
        the last loss (the resumed one when no update ran)."""
        loss, window, tick = self.last_loss, Window(), time.perf_counter()
        for batch in stream:
            if self.step == start_step:  # one-line errors before any update
                check_batch(batch, self.model_config, self.config)
            loss, grad_norm = self.train_step(batch)
            now = time.perf_counter()
            window.add(loss, grad_norm, self.config.batch_size, now - tick)
            tick = now
            bar.update(1)
            if self.callback is not None:
                self.callback(self.step, loss)
            out_of_time = self.time_limit is not None and now - started > self.time_limit
            self._log_and_checkpoint(loss, window, log, bar, out_of_time)
            if out_of_time:
                log.write({"event": "time-limit", "step": self.step, "seconds": now - started})
                break
        return loss

    def _log_and_checkpoint(
        self, loss: float, window: Window, log: JsonlLog, bar, out_of_time: bool
    ) -> None:
        """After an update: a log line every ``log_every`` steps and a checkpoint every
        ``checkpoint_every``, both also at the last step (the end of the run or of its time)."""
        config = self.config
        last = self.step == config.steps or out_of_time
        if self.step % config.log_every == 0 or last:
            record = window.flush(self.step, learning_rate(config, self.step - 1))
            bar.set_postfix(loss=f"{record['loss']:.4f}", img_s=f"{record['images_per_s']:.1f}")
            log.write(record)
        if self.step % config.checkpoint_every == 0 or last:
            folder = self.save(loss).name
            log.write({"event": "checkpoint", "step": self.step, "folder": folder})
