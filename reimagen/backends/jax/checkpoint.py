"""Checkpoints of the JAX backend: Equinox modules and optax state <-> the numpy dicts that
:mod:`reimagen.training.checkpoint` writes and reads (docs/design.md §9). The twin of the torch
backend's ``checkpoint.py``, name for name.

The folder layout, the atomic commit protocol (``.partial`` -> ``step-N`` -> ``latest``), the
readers and the fault-injection hook live in :mod:`reimagen.training.checkpoint`, shared with
the torch backend; their names are re-exported here for the callers of this module. What is
JAX's own: module <-> the canonical torch-layout arrays (through :mod:`.convert`, which maps
pytree paths to ``state_dict`` keys and HWIO to OIHW kernels) and optax AdamW's state <-> the
flattened ``<param name>.exp_avg`` / ``.exp_avg_sq`` / ``.step`` arrays. Equinox modules are
immutable, so the loaders return the filled module or state rather than filling it in place.

Both backends read and write the same safetensors files, so a checkpoint trained on either one
loads on the other. Nothing is ever unpickled (:func:`reimagen.core.io.load_safetensors`).
"""

from __future__ import annotations

import json
from pathlib import Path

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from reimagen.backends.jax import convert
from reimagen.backends.jax.unet import ReImagenUNet
from reimagen.core.io import atomic_save_safetensors, load_safetensors  # noqa: F401 (re-exported)
from reimagen.core.unet_config import UNetConfig
from reimagen.training.checkpoint import (  # noqa: F401  (re-exported: the shared layout and readers)
    ADAM_SLOTS,
    CHECKPOINTS,
    CONFIG_KEY,
    EMA_FILE,
    FAULT_ENV,
    FORMAT,
    LATEST,
    MODEL_FILE,
    OPTIM_FILE,
    STATE_FILE,
    Checkpoint,
    CheckpointError,
    has_checkpoint,
    latest_checkpoint,
    read_checkpoint,
    read_weights,
    resolve_weights,
    step_dir_name,
    weights_metadata,
)

# ---- model weights -----------------------------------------------------------------------------


def weights_to_numpy(model: eqx.Module) -> dict[str, np.ndarray]:
    """The module's parameters -> float arrays in the canonical (torch ``state_dict``) layout."""
    return convert.state_dict(model)


def load_weights(
    model: convert.ModuleT, tensors: dict[str, np.ndarray], source: Path
) -> convert.ModuleT:
    """A copy of ``model`` holding the canonical-layout ``tensors`` (dtypes follow ``model``);
    the key sets and shapes must match exactly."""
    try:
        return convert.load_state_dict(model, tensors)
    except convert.KeyMismatchError as err:
        raise CheckpointError(f"{source}: {err}") from None


def save_model(
    model: ReImagenUNet, path: str | Path, dtype: str = "float32", metadata: dict | None = None
) -> Path:
    """One self-describing safetensors file, the same as the torch backend's ``save_model``:
    canonical keys and layouts, the UNetConfig (plus ``metadata``) in the metadata.
    ``dtype="float16"`` halves the file (shipped weights); loading casts back to float32."""
    if dtype not in ("float32", "float16"):
        raise ValueError(f"dtype must be float32 or float16, got {dtype!r}")
    path = Path(path)
    tensors = {k: v.astype(dtype) for k, v in weights_to_numpy(model).items()}
    atomic_save_safetensors(path, tensors, weights_metadata(model.config.to_json(), metadata))
    return path


def load_model(path_or_dir: str | Path, ema: bool = True) -> ReImagenUNet:
    """A float32 JAX U-Net from a file or checkpoint folder written by either backend (EMA
    weights by default). The config comes from the file's metadata; no pickle is involved."""
    source = resolve_weights(path_or_dir, ema)
    tensors, metadata = read_weights(source)  # safetensors only, checked against its sha256
    if CONFIG_KEY not in metadata:
        raise CheckpointError(f"{source} has no {CONFIG_KEY!r} metadata; not a reimagen U-Net")
    config = UNetConfig.from_dict(json.loads(metadata[CONFIG_KEY]))
    return load_weights(convert.skeleton(config), tensors, source)


# ---- optimizer state ---------------------------------------------------------------------------


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


def load_optimizer(opt_state, tensors: dict[str, np.ndarray], source: Path):
    """The AdamW state ``opt_state`` rebuilt from a checkpoint written by either backend."""
    adam = opt_state.inner_state[0]
    slots = {}
    for slot in ("exp_avg", "exp_avg_sq"):
        suffix = f".{slot}"
        state = {k[: -len(suffix)]: v for k, v in tensors.items() if k.endswith(suffix)}
        try:
            slots[slot] = convert.load_state_dict(adam.mu, state)
        except convert.KeyMismatchError as err:
            raise CheckpointError(f"{source}: optimizer {slot}: {err}") from None
    # one count per parameter; the files hold it as shape (1,) (io saves 0-d arrays as 1-d)
    steps = {float(np.asarray(v).reshape(-1)[0]) for k, v in tensors.items() if k.endswith(".step")}
    if len(steps) != 1:
        raise CheckpointError(f"{source}: optimizer step counts disagree: {sorted(steps)}")
    count = jnp.asarray(int(steps.pop()), jnp.int32)
    adam = adam._replace(count=count, mu=slots["exp_avg"], nu=slots["exp_avg_sq"])
    return opt_state._replace(count=count, inner_state=(adam, *opt_state.inner_state[1:]))
