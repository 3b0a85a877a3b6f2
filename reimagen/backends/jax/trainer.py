"""Training of the Re-Imagen U-Net in JAX (paper §3.2 "Model Training", Eq. 2) with optax.

The twin of ``reimagen/backends/torch/trainer.py``, step for step: the same host batch (t, ε and
the independent text/neighbour drops come from the :class:`~reimagen.core.training.BatchSource`;
x_t = √ᾱ(t)·x0 + √(1−ᾱ(t))·ε is formed on the host by the same function), one forward pass in
which the noisy rows and their K neighbours share the DStack, the ε-MSE loss, torch's gradient
clipping, AdamW with the same betas/eps/decoupled weight decay and the same host-computed
learning rate (``inject_hyperparams``), and the same EMA update. So one step from the same
weights and batch gives the same loss and weights on both backends (tests/test_jax_parity.py).

The schedule functions (``learning_rate``, ``ema_decay``), the host-side input maths and the
checkpoint reading/commit conventions are imported from the torch twin rather than copied:
they are framework-free, and one copy cannot drift. Checkpoints use the same folder layout and
files (model/ema/optimizer safetensors in canonical torch keys, state.json, ``latest``), so a
run started on one backend resumes on the other. Dropout (off in every preset) draws its mask
from ``jax.random`` and is the one thing the backends cannot share.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from reimagen.backends.jax import convert
from reimagen.backends.jax.denoiser import cast_floats, text_inputs
from reimagen.backends.jax.unet import NeighborInputs, ReImagenUNet, build_unet
from reimagen.backends.torch import checkpoint as ckpt
from reimagen.backends.torch.trainer import (
    ADAM_BETAS,
    ADAM_EPS,
    LOG_FILE,
    RESUMABLE_CHANGES,
    NonFiniteLossError,
    check_batch,
    ema_decay,
    learning_rate,
    noisy_inputs,
    step_seed,
)
from reimagen.core.config import ConfigError
from reimagen.core.io import atomic_save_safetensors, atomic_write_text
from reimagen.core.schedule import CosineSchedule
from reimagen.core.training import Batch, BatchSource, TrainConfig
from reimagen.core.unet_config import UNetConfig

CLIP_EPS = 1e-6  # torch.nn.utils.clip_grad_norm_: coef = max_norm / (norm + 1e-6), at most 1


@attrs.frozen
class TrainResult:
    step: int  # optimizer updates applied in total
    loss: float  # the last step's loss
    checkpoint: Path | None  # the committed checkpoint folder
    model: ReImagenUNet = attrs.field(repr=False)  # raw weights
    ema: ReImagenUNet = attrs.field(repr=False)  # EMA weights
    images_per_second: float = 0.0  # over this call's steps


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """AdamW as torch.optim.AdamW (decoupled decay p ← p − lr·wd·p); lr is set per step."""
    return _adamw(float(config.weight_decay))


@functools.cache
def _adamw(weight_decay: float) -> optax.GradientTransformation:
    # One object per weight decay: the optimizer is a static argument of the jitted step, so
    # trainers with the same settings share one compiled step (the lr is injected per step).
    return optax.inject_hyperparams(optax.adamw)(
        learning_rate=0.0,
        b1=ADAM_BETAS[0],
        b2=ADAM_BETAS[1],
        eps=ADAM_EPS,
        weight_decay=weight_decay,
    )


def clip_by_global_norm(grads, max_norm: float):
    """torch's clip_grad_norm_: g ← g·min(1, max_norm/(‖g‖ + 1e-6)). Returns (grads, ‖g‖).
    (``optax.clip_by_global_norm`` has no 1e-6, so it differs from torch near the boundary.)"""
    norm = optax.tree.norm(grads)  # the global 2-norm over every gradient
    coef = jnp.minimum(max_norm / (norm + CLIP_EPS), 1.0)
    return jax.tree_util.tree_map(lambda g: g * coef, grads), norm


def batch_inputs(batch: Batch, schedule: CosineSchedule) -> dict[str, Any]:
    """Keyword arguments of :meth:`ReImagenUNet.__call__` for a training batch (device arrays);
    the twin of torch's ``model_kwargs``."""
    k = batch.neighbor_images.shape[1]
    neighbors = None
    if k:
        neighbors = NeighborInputs(
            jnp.asarray(np.asarray(batch.neighbor_images, np.float32)),
            text_inputs(batch.neighbor_text),
        )
    optional = lambda a: None if a is None else jnp.asarray(a)
    return {
        "x": jnp.asarray(noisy_inputs(batch, schedule)),
        "t": jnp.asarray(np.asarray(batch.t, np.float32)),
        "text": text_inputs(batch.text),
        "use_text": jnp.asarray(np.asarray(batch.use_text, bool)),
        "use_neighbors": jnp.asarray(np.asarray(batch.use_neighbors, bool)),
        "neighbors": neighbors,
        "lowres": optional(batch.lowres),
        "aug_level": optional(batch.aug_level),
    }


def loss_fn(model: ReImagenUNet, inputs: dict, noise, key, compute_dtype) -> jax.Array:
    """‖ε̂ − ε‖² averaged over every element (paper Eq. 2, ε-prediction), in float32.

    bf16 (``compute_dtype``) casts the weights and the image/text inputs, as torch's autocast
    runs matmuls and convolutions in bf16; the levels t and aug_level stay float32 (the
    sinusoidal features of 1000·t need float32) and norms compute in float32."""
    if compute_dtype != jnp.float32:
        levels = {k: inputs[k] for k in ("t", "aug_level")}
        model = cast_floats(model, compute_dtype)
        inputs = {**cast_floats(inputs, compute_dtype), **levels}
    eps = model(**inputs, key=key)
    return jnp.mean(jnp.square(eps.astype(jnp.float32) - noise))


@eqx.filter_jit
def train_step(
    model,
    ema,
    opt_state,
    inputs,
    noise,
    lr,
    ema_weight,
    key,
    *,
    optimizer,
    grad_clip,
    compute_dtype,
):
    """One AdamW update: (model, ema, opt_state, loss, ‖g‖ before clipping). Pure: the caller
    keeps the old state when the loss or norm is not finite."""
    loss, grads = eqx.filter_value_and_grad(loss_fn)(model, inputs, noise, key, compute_dtype)
    grads, grad_norm = clip_by_global_norm(grads, grad_clip)
    opt_state.hyperparams["learning_rate"] = lr  # the host's value, as torch's group["lr"]
    updates, opt_state = optimizer.update(grads, opt_state, model)
    model = eqx.apply_updates(model, updates)
    # ema ← ema + w·(θ − ema), w = 1 − decay (torch: _foreach_lerp_)
    ema = jax.tree_util.tree_map(lambda e, p: e + ema_weight * (p - e), ema, model)
    return model, ema, opt_state, loss, grad_norm


# ---- optimizer state <-> the torch checkpoint layout ------------------------------------------


def optimizer_to_numpy(opt_state) -> dict[str, np.ndarray]:
    """AdamW state -> {"<param key>.exp_avg" | ".exp_avg_sq" | ".step"}, torch's layout."""
    adam = opt_state.inner_state[0]
    step = np.asarray(float(adam.count), np.float32)
    out = {}
    for slot, tree in (("exp_avg", adam.mu), ("exp_avg_sq", adam.nu)):
        for key, value in convert.state_dict(tree).items():
            out[f"{key}.{slot}"] = value
    for key in convert.state_dict(adam.mu):
        out[f"{key}.step"] = step
    return out


def optimizer_from_numpy(opt_state, tensors: dict[str, np.ndarray], source: Path):
    """Rebuild the AdamW state from a checkpoint written by either backend."""
    adam = opt_state.inner_state[0]
    slots = {}
    for slot in ("exp_avg", "exp_avg_sq"):
        suffix = f".{slot}"
        state = {k[: -len(suffix)]: v for k, v in tensors.items() if k.endswith(suffix)}
        try:
            slots[slot] = convert.load_state_dict(adam.mu, state)
        except convert.KeyMismatchError as err:
            raise ckpt.CheckpointError(f"{source}: optimizer {slot}: {err}") from None
    # one count per parameter; the files hold it as shape (1,) (io saves 0-d arrays as 1-d)
    steps = {float(np.asarray(v).reshape(-1)[0]) for k, v in tensors.items() if k.endswith(".step")}
    if len(steps) != 1:
        raise ckpt.CheckpointError(f"{source}: optimizer step counts disagree: {sorted(steps)}")
    count = jnp.asarray(int(steps.pop()), jnp.int32)
    adam = adam._replace(count=count, mu=slots["exp_avg"], nu=slots["exp_avg_sq"])
    return opt_state._replace(count=count, inner_state=(adam, *opt_state.inner_state[1:]))


def write_checkpoint(run_dir, step: int, *, model, ema, opt_state, state: dict, keep: int = 2):
    """Write and commit step ``step`` exactly as torch's ``checkpoint.write_checkpoint`` does
    (hidden partial folder, fsync, rename, then ``latest``), from JAX state."""
    weights, ema_weights = convert.state_dict(model), convert.state_dict(ema)
    for label, tensors in (("model", weights), ("EMA", ema_weights)):
        bad = [k for k, v in tensors.items() if not np.isfinite(v).all()]
        if bad:
            raise FloatingPointError(
                f"refusing to write a non-finite checkpoint at step {step}: {label} {bad[:3]}"
            )
    root = Path(run_dir) / ckpt.CHECKPOINTS
    final = root / ckpt.step_dir_name(step)
    if (root / ckpt.LATEST).is_file() and (root / ckpt.LATEST).read_text().strip() == final.name:
        raise ckpt.CheckpointError(f"step {step} is already the committed checkpoint in {root}")
    partial = root / f".{final.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    metadata = {"format": ckpt.FORMAT, ckpt.CONFIG_KEY: model.config.to_json()}
    atomic_save_safetensors(partial / ckpt.MODEL_FILE, weights, metadata=metadata)
    atomic_save_safetensors(partial / ckpt.EMA_FILE, ema_weights, metadata=metadata)
    atomic_save_safetensors(partial / ckpt.OPTIM_FILE, optimizer_to_numpy(opt_state))
    atomic_write_text(partial / ckpt.STATE_FILE, json.dumps({**state, "step": step}, indent=2))
    ckpt.fsync_dir(partial)
    if final.exists():  # committed earlier but never pointed to (a crash before `latest`)
        shutil.rmtree(final)
    os.rename(partial, final)
    ckpt.fsync_dir(root)
    atomic_write_text(root / ckpt.LATEST, final.name + "\n")
    committed = sorted(p.name for p in root.glob("step-*") if p.is_dir())
    for name in committed[: -max(1, keep)]:
        if name != final.name:
            shutil.rmtree(root / name, ignore_errors=True)
    return final


# ---- the trainer -------------------------------------------------------------------------------


class Trainer:
    """Owns the model, EMA, optimizer state and run folder of one JAX training run."""

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
        model: ReImagenUNet | None = None,
    ):
        self.model_config = model_config
        self.config = train_config
        self.source = batch_source
        self.run_dir = Path(run_dir)
        self.progress = progress
        self.callback = callback
        self.keep = keep
        self.schedule = CosineSchedule()
        self.compute_dtype = jnp.bfloat16 if train_config.bf16 else jnp.float32
        if ckpt.has_checkpoint(self.run_dir) and not resume:
            raise ValueError(
                f"run_dir {self.run_dir} already holds checkpoints; pass resume=True to continue "
                "it or choose an empty folder"
            )
        self.model = model if model is not None else build_unet(model_config, train_config.seed)
        if self.model.config != model_config:
            raise ConfigError("the model passed to Trainer was built from a different UNetConfig")
        self.ema = self.model
        self.optimizer = make_optimizer(train_config)
        self.opt_state = self.optimizer.init(self.model)
        self.step = 0
        self.checkpoint: Path | None = None
        self.last_loss = float("nan")
        if ckpt.has_checkpoint(self.run_dir):
            self._restore(ckpt.latest_checkpoint(self.run_dir))

    def _state(self, loss: float) -> dict:
        return {
            "format": ckpt.FORMAT,
            "backend": "jax",
            "loss": loss,
            "model_config": self.model_config.to_dict(),
            "train_config": self.config.to_dict(),
            "optimizer": {"name": "AdamW", "betas": list(ADAM_BETAS), "eps": ADAM_EPS},
            "rng": "jax.random.PRNGKey(step_seed(seed, step)) for dropout; no other state",
            "jax_version": jax.__version__,
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
        try:
            self.model = convert.load_state_dict(self.model, saved.model)
            self.ema = convert.load_state_dict(self.ema, saved.ema)
        except convert.KeyMismatchError as err:
            raise ckpt.CheckpointError(f"{folder}: {err}") from None
        self.opt_state = optimizer_from_numpy(self.opt_state, saved.optimizer, folder)
        self.step = saved.step
        self.checkpoint = folder
        self.last_loss = float(saved.state.get("loss", float("nan")))

    # ---- one step ------------------------------------------------------------------------

    def train_step(self, batch: Batch) -> tuple[float, float]:
        """One AdamW update on ``batch`` (the batch of step ``self.step``). Returns (loss,
        gradient norm before clipping). NaN/Inf -> NonFiniteLossError, nothing applied."""
        inputs = batch_inputs(batch, self.schedule)
        key = None
        if self.model_config.dropout > 0:
            key = jax.random.PRNGKey(step_seed(self.config.seed, self.step))
        model, ema, opt_state, loss, grad_norm = train_step(
            self.model,
            self.ema,
            self.opt_state,
            inputs,
            jnp.asarray(batch.noise),
            jnp.float32(learning_rate(self.config, self.step)),
            jnp.float32(1.0 - ema_decay(self.config, self.step)),
            key,
            optimizer=self.optimizer,
            grad_clip=self.config.grad_clip,
            compute_dtype=self.compute_dtype,
        )
        loss, grad_norm = float(loss), float(grad_norm)
        for what, value in (("loss", loss), ("gradient norm", grad_norm)):
            if not math.isfinite(value):
                last = "none" if self.checkpoint is None else self.checkpoint.name
                raise NonFiniteLossError(
                    f"{what} is {value} at step {self.step}; stopped before the update "
                    f"(last committed checkpoint: {last})"
                )
        self.model, self.ema, self.opt_state = model, ema, opt_state
        self.step += 1
        return loss, grad_norm

    # ---- the loop ------------------------------------------------------------------------

    def save(self, loss: float) -> Path:
        self.checkpoint = write_checkpoint(
            self.run_dir,
            self.step,
            model=self.model,
            ema=self.ema,
            opt_state=self.opt_state,
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
        log = self.run_dir / LOG_FILE
        _log(log, {"event": "start", "step": start_step, "resumed": self.checkpoint is not None})
        bar = tqdm(total=config.steps, initial=start_step, disable=not self.progress, unit="step")
        loss, window, started = self.last_loss, [], time.perf_counter()
        while self.step < config.steps:
            tick = time.perf_counter()
            loss, grad_norm = self.train_step(self.source.batch(self.step))
            window.append((loss, grad_norm, time.perf_counter() - tick))
            bar.update(1)
            if self.callback is not None:
                self.callback(self.step, loss)
            if self.step % config.log_every == 0 or self.step == config.steps:
                losses, norms, seconds = (np.asarray(col) for col in zip(*window))
                record = {
                    "step": self.step,
                    "loss": float(losses.mean()),
                    "grad_norm": float(norms.mean()),
                    "lr": learning_rate(config, self.step - 1),
                    "images_per_s": len(window) * config.batch_size / float(seconds.sum()),
                }
                bar.set_postfix(loss=f"{record['loss']:.4f}", img_s=f"{record['images_per_s']:.1f}")
                _log(log, record)
                window = []
            if self.step % config.checkpoint_every == 0 or self.step == config.steps:
                _log(
                    log, {"event": "checkpoint", "step": self.step, "folder": self.save(loss).name}
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


def _log(path: Path, record: dict) -> None:
    """Append one JSON line (flushed per line, as torch's log)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps({**record, "time": time.time()}) + "\n")
