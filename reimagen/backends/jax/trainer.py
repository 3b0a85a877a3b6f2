"""Training of the Re-Imagen U-Net in JAX (paper §3.2 "Model Training", Eq. 2) with optax.

The twin of the torch backend's ``trainer.py``, step for step: the same host batch (t, ε and
the independent text/neighbour drops come from the :class:`~reimagen.training.contract.BatchSource`;
x_t = √ᾱ(t)·x0 + √(1−ᾱ(t))·ε is formed on the host by the same function), one forward pass in
which the noisy rows and their K neighbours share the DStack, the ε-MSE loss, torch's gradient
clipping, AdamW with the same betas/eps/decoupled weight decay and the same host-computed
learning rate (``inject_hyperparams``), and the same EMA update. So one step from the same
weights and batch gives the same loss and weights on both backends (tests/test_jax_parity.py).

The schedule functions (``learning_rate``, ``ema_decay``), the host-side input maths, the run
loop and the checkpoint layout/commit protocol are the backend-neutral ones in
:mod:`reimagen.training.loop` and :mod:`reimagen.training.checkpoint`, shared with the torch
trainer: one copy cannot drift. Checkpoints use the same folder layout and files
(model/ema/optimizer safetensors in canonical torch keys, state.json, ``latest``; this backend's
side is ``checkpoint.py``), so a run started on one backend resumes on the other. Dropout (off
in every preset) draws its mask from ``jax.random`` and is the one thing the backends cannot
share.

Data parallelism (``Trainer(..., data_parallel=True)`` or ``mesh=``): the batch is split over a
1-D ``"batch"`` device mesh and the state replicated (:mod:`reimagen.backends.jax.sharding`);
the same jitted step is partitioned by XLA, so the losses equal the one-device run's up to float
reduction order. Across processes (:mod:`reimagen.backends.jax.distributed`) every process
builds the global batch of a step from the BatchSource and uploads its own rows; process 0
alone writes checkpoints, and process i > 0 logs to ``run_dir/process-<i>/log.jsonl``.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, cast

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from reimagen.backends.jax import checkpoint as ckpt
from reimagen.backends.jax import sharding as shd
from reimagen.backends.jax.denoiser import cast_floats
from reimagen.backends.jax.unet import NeighborInputs, ReImagenUNet, TextInputs, build_unet
from reimagen.core.config import ConfigError
from reimagen.core.unet_config import UNetConfig
from reimagen.diffusion.schedule import CosineSchedule
from reimagen.training.contract import Batch, BatchSource, TrainConfig
from reimagen.training.loop import (  # noqa: F401  (re-exported for this module's callers)
    ADAM_BETAS,
    ADAM_EPS,
    NonFiniteLossError,
    TrainLoop,
    TrainResult,
    ema_decay,
    learning_rate,
    noisy_inputs,
    step_seed,
    training_levels,
)

CLIP_EPS = 1e-6  # torch.nn.utils.clip_grad_norm_: coef = max_norm / (norm + 1e-6), at most 1


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


def _host(array, dtype) -> jax.Array:
    """np.asarray(array, dtype): a numpy leaf of a host TextInputs/NeighborInputs, typed as the
    jax.Array it becomes once train_step maps jnp.asarray over host_inputs' tree."""
    return cast(jax.Array, np.asarray(array, dtype))


def _host_text(text) -> TextInputs:
    return TextInputs(
        _host(text.tokens, np.float32), _host(text.mask, bool), _host(text.pooled, np.float32)
    )


def host_inputs(batch: Batch, schedule: CosineSchedule) -> dict[str, Any]:
    """Keyword arguments of :meth:`ReImagenUNet.__call__` for a training batch, as numpy arrays
    that all lead with the batch axis B (``None`` where absent)."""
    k = batch.neighbor_images.shape[1]
    neighbors = None
    if k:
        neighbors = NeighborInputs(
            _host(batch.neighbor_images, np.float32), _host_text(batch.neighbor_text)
        )
    optional = lambda a: None if a is None else np.asarray(a)
    return {
        "x": noisy_inputs(batch, schedule),
        "t": np.asarray(batch.t, np.float32),
        "text": _host_text(batch.text),
        "use_text": np.asarray(batch.use_text, bool),
        "use_neighbors": np.asarray(batch.use_neighbors, bool),
        "neighbors": neighbors,
        "lowres": optional(batch.lowres),
        "aug_level": optional(batch.aug_level),
    }


def batch_inputs(batch: Batch, schedule: CosineSchedule) -> dict[str, Any]:
    """:func:`host_inputs` on the default device; the twin of torch's ``model_kwargs``."""
    return jax.tree_util.tree_map(jnp.asarray, host_inputs(batch, schedule))


def loss_fn(model: ReImagenUNet, inputs: dict, noise, key, compute_dtype, weights=None):
    """‖ε̂ − ε‖² averaged over every element (paper Eq. 2, ε-prediction), in float32; with
    per-row ``weights`` [B] (TrainConfig.loss_weighting), the mean over rows of weight × the
    row's mean (torch: ``weighted_mse``).

    bf16 (``compute_dtype``) casts the weights and the image/text inputs, as torch's autocast
    runs matmuls and convolutions in bf16; the levels t and aug_level stay float32 (the
    sinusoidal features of 1000·t need float32) and norms compute in float32."""
    if compute_dtype != jnp.float32:
        levels = {k: inputs[k] for k in ("t", "aug_level")}
        model = cast_floats(model, compute_dtype)
        inputs = {**cast_floats(inputs, compute_dtype), **levels}
    eps = model(**inputs, key=key)
    squared = jnp.square(eps.astype(jnp.float32) - noise)
    if weights is None:
        return jnp.mean(squared)
    return jnp.mean(weights * jnp.mean(squared, axis=tuple(range(1, squared.ndim))))


@eqx.filter_jit
def train_step(
    model,
    ema,
    opt_state,
    inputs,
    noise,
    weights,
    lr,
    ema_weight,
    key,
    *,
    optimizer,
    grad_clip,
    compute_dtype,
    state_sharding=None,
):
    """One AdamW update: (model, ema, opt_state, loss, ‖g‖ before clipping). Pure: the caller
    keeps the old state when the loss or norm is not finite. ``state_sharding`` (data parallel:
    the mesh's replicated sharding) pins the new model, EMA and optimizer state to it."""
    loss, grads = eqx.filter_value_and_grad(loss_fn)(
        model, inputs, noise, key, compute_dtype, weights
    )
    grads, grad_norm = clip_by_global_norm(grads, grad_clip)
    opt_state.hyperparams["learning_rate"] = lr  # the host's value, as torch's group["lr"]
    updates, opt_state = optimizer.update(grads, opt_state, model)
    model = eqx.apply_updates(model, updates)
    # ema ← ema + w·(θ − ema), w = 1 − decay (torch: _foreach_lerp_)
    ema = jax.tree_util.tree_map(lambda e, p: e + ema_weight * (p - e), ema, model)
    if state_sharding is not None:
        model, ema, opt_state = shd.constrain((model, ema, opt_state), state_sharding)
    return model, ema, opt_state, loss, grad_norm


# ---- the trainer -------------------------------------------------------------------------------


class Trainer(TrainLoop):
    """Owns the model, EMA and optax state of one JAX training run; the run folder, log, resume
    checks and loop are :class:`~reimagen.training.loop.TrainLoop`'s."""

    def __init__(
        self,
        model_config: UNetConfig,
        train_config: TrainConfig,
        batch_source: BatchSource,
        run_dir: str | Path,
        *,
        model: ReImagenUNet | None = None,
        data_parallel: bool = False,
        mesh: jax.sharding.Mesh | None = None,
        **options,
    ):
        """``options``: resume, progress, callback, keep (see TrainLoop); ``model``: start from
        these weights instead of ``build_unet(model_config, seed)``; ``data_parallel``: split
        each batch over every device of every process (``mesh``: over this mesh's ``"batch"``
        axis instead). Several processes (``jax.process_count() > 1``) need one of the two."""
        if data_parallel and mesh is None:
            mesh = shd.batch_mesh()
        if mesh is None and jax.process_count() > 1:
            raise ValueError(
                f"jax.process_count() is {jax.process_count()}: pass data_parallel=True (or a "
                "mesh) so the processes train one model together"
            )
        if mesh is not None:
            shd.check_batch_size(train_config.batch_size, mesh)
        self.mesh = mesh
        super().__init__(model_config, train_config, batch_source, run_dir, **options)
        if jax.process_count() > 1 and getattr(self, "time_limit", None) is not None:
            raise ValueError(
                "time_limit must be None when jax.process_count() > 1 (each process would "
                "stop at its own step and the others would wait for it forever)"
            )
        self.compute_dtype = jnp.bfloat16 if train_config.bf16 else jnp.float32
        self.model = model if model is not None else build_unet(model_config, train_config.seed)
        if self.model.config != model_config:
            raise ConfigError("the model passed to Trainer was built from a different UNetConfig")
        self.ema = self.model
        self.optimizer = make_optimizer(train_config)
        self.opt_state = self.optimizer.init(self.model)
        self.resume_latest()
        if mesh is not None:
            self._replicate_state(mesh)
        if jax.process_count() > 1:
            self._join_processes()

    # ---- data parallel -------------------------------------------------------------------

    def _replicate_state(self, mesh: jax.sharding.Mesh) -> None:
        """Model, EMA and optimizer state -> one full copy on every device of ``mesh``."""
        put = functools.partial(shd.replicate, mesh=mesh)
        self.model, self.ema, self.opt_state = put(self.model), put(self.ema), put(self.opt_state)

    def _join_processes(self) -> None:
        """All processes resumed at the same step (else the checkpoints are not on a filesystem
        they all see); process i > 0 logs beside the run instead of into its log.jsonl."""
        from jax.experimental import multihost_utils

        steps = multihost_utils.process_allgather(np.int64(self.step)).reshape(-1).tolist()
        if len(set(steps)) != 1:
            raise ckpt.CheckpointError(
                f"processes resumed {self.run_dir} at different steps {steps}: run_dir must be "
                "on a filesystem that every process sees"
            )
        self.shared_run_dir = self.run_dir
        if jax.process_index() > 0:
            self.run_dir = self.run_dir / f"process-{jax.process_index()}"
            self.progress = False

    def save(self, loss: float) -> Path:
        """Process 0 commits the checkpoint (TrainLoop.save); other processes wait until it is
        committed and return its folder."""
        if jax.process_count() == 1:
            return super().save(loss)
        from jax.experimental import multihost_utils

        if jax.process_index() == 0:
            folder = super().save(loss)
        else:
            folder = self.shared_run_dir / ckpt.CHECKPOINTS / ckpt.step_dir_name(self.step)
            self.checkpoint = folder
        multihost_utils.sync_global_devices(f"reimagen checkpoint {self.step}")
        return folder

    def _backend_state(self) -> dict:
        return {
            "backend": "jax",
            "rng": "jax.random.PRNGKey(step_seed(seed, step)) for dropout; no other state",
            "jax_version": jax.__version__,
        }

    def _load_state(self, saved: ckpt.Checkpoint) -> None:
        folder = saved.folder
        self.model = ckpt.load_weights(self.model, saved.model, folder / ckpt.MODEL_FILE)
        self.ema = ckpt.load_weights(self.ema, saved.ema, folder / ckpt.EMA_FILE)
        optimizer_file = folder / ckpt.OPTIM_FILE
        self.opt_state = ckpt.load_optimizer(self.opt_state, saved.optimizer, optimizer_file)
        if self.mesh is not None:
            self._replicate_state(self.mesh)

    # ---- one step ------------------------------------------------------------------------

    def train_step(self, batch: Batch) -> tuple[float, float]:
        """One AdamW update on ``batch`` (the batch of step ``self.step``). Returns (loss,
        gradient norm before clipping). NaN/Inf -> NonFiniteLossError, nothing applied.
        Data parallel: ``batch`` is the global batch; this process uploads its own rows."""
        batch, weights = training_levels(batch, self.config, self.schedule)
        rows = host_inputs(batch, self.schedule), np.asarray(batch.noise, np.float32), weights
        scalars: tuple[np.floating, np.floating, np.ndarray | None] = (
            np.float32(learning_rate(self.config, self.step)),
            np.float32(1.0 - ema_decay(self.config, self.step)),
            None,
        )
        if self.model_config.dropout > 0:
            key = jax.random.PRNGKey(step_seed(self.config.seed, self.step))  # uint32 [2]
            scalars = (*scalars[:2], np.asarray(key))
        if self.mesh is None:
            (inputs, noise, weights), (lr, ema_weight, key) = jax.tree_util.tree_map(
                jnp.asarray, (rows, scalars)
            )
            state_sharding = None
        else:
            inputs, noise, weights = shd.shard_rows(rows, self.mesh, self.config.batch_size)
            lr, ema_weight, key = shd.replicate(scalars, self.mesh)
            state_sharding = shd.replicated(self.mesh)
        model, ema, opt_state, loss, grad_norm = train_step(
            self.model,
            self.ema,
            self.opt_state,
            inputs,
            noise,
            weights,
            lr,
            ema_weight,
            key,
            optimizer=self.optimizer,
            grad_clip=self.config.grad_clip,
            compute_dtype=self.compute_dtype,
            state_sharding=state_sharding,
        )
        loss, grad_norm = float(loss), float(grad_norm)
        self.check_finite(loss, grad_norm)  # NonFiniteLossError; the new state is dropped
        self.model, self.ema, self.opt_state = model, ema, opt_state
        self.step += 1
        return loss, grad_norm

    # ---- the loop ------------------------------------------------------------------------

    def _host_arrays(self) -> tuple[dict, dict, dict]:
        weights, ema = ckpt.weights_to_numpy(self.model), ckpt.weights_to_numpy(self.ema)
        return weights, ema, ckpt.optimizer_to_numpy(self.opt_state)


# The module-level entry point: train(model_config, train_config, batch_source, run_dir,
# resume=True, *, progress=True, callback=None) -> TrainResult.
train = Trainer.train
