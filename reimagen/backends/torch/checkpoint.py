"""Checkpoints of the PyTorch backend: torch tensors <-> the numpy dicts that
:mod:`reimagen.training.checkpoint` writes and reads (docs/design.md §9).

The folder layout, the atomic commit protocol (``.partial`` -> ``step-N`` -> ``latest``), the
readers and the fault-injection hook live in core, shared with the JAX backend; their names are
re-exported here for the callers of this module. What is torch's own: ``state_dict`` <-> arrays
(keeping each parameter's channels_last format) and AdamW's per-parameter state <-> the
flattened ``<param name>.exp_avg`` / ``.exp_avg_sq`` / ``.step`` arrays.

Nothing is ever unpickled: weights go through :func:`reimagen.core.io.load_safetensors`, which
refuses any file that is not safetensors (e.g. a pickle renamed ``.safetensors`` or ``.pt``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from reimagen.backends.torch.unet import ReImagenUNet, build_unet
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


def weights_to_numpy(model: torch.nn.Module) -> dict[str, np.ndarray]:
    """state_dict -> float32 numpy arrays in the standard (contiguous NCHW-kernel) layout."""
    return {
        key: value.detach().cpu().float().contiguous().numpy()
        for key, value in model.state_dict().items()
    }


def load_weights(model: torch.nn.Module, tensors: dict[str, np.ndarray], source: Path) -> None:
    """Copy arrays into the model's parameters (keeping their channels_last format); the key
    sets must match exactly."""
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: weights do not match the model (missing {missing[:5]}, "
            f"unexpected {unexpected[:5]})"
        )
    with torch.no_grad():
        for key, target in own.items():
            value = torch.from_numpy(np.ascontiguousarray(tensors[key]))
            if tuple(value.shape) != tuple(target.shape):
                raise CheckpointError(
                    f"{source}: {key} has shape {tuple(value.shape)}, the model expects "
                    f"{tuple(target.shape)}"
                )
            target.copy_(value)


def save_model(
    model: ReImagenUNet, path: str | Path, dtype: str = "float32", metadata: dict | None = None
) -> Path:
    """One self-describing safetensors file: weights + the UNetConfig in its metadata (plus
    ``metadata``, e.g. the text encoder). ``dtype="float16"`` halves the file (shipped
    weights); loading casts back to float32."""
    if dtype not in ("float32", "float16"):
        raise ValueError(f"dtype must be float32 or float16, got {dtype!r}")
    path = Path(path)
    tensors = {k: v.astype(dtype) for k, v in weights_to_numpy(model).items()}
    atomic_save_safetensors(path, tensors, weights_metadata(model.config.to_json(), metadata))
    return path


def load_model(path_or_dir: str | Path, ema: bool = True) -> ReImagenUNet:
    """A U-Net for inference from a file or checkpoint folder (EMA weights by default), in
    eval mode. The config comes from the file's metadata; no pickle is involved."""
    source = resolve_weights(path_or_dir, ema)
    tensors, metadata = read_weights(source)  # safetensors only, checked against its sha256
    if CONFIG_KEY not in metadata:
        raise CheckpointError(f"{source} has no {CONFIG_KEY!r} metadata; not a reimagen U-Net")
    config = UNetConfig.from_dict(json.loads(metadata[CONFIG_KEY]))
    model = build_unet(config)
    load_weights(model, tensors, source)
    return model.eval()


# ---- optimizer state ---------------------------------------------------------------------------


def optimizer_to_numpy(
    optimizer: torch.optim.Optimizer, model: torch.nn.Module
) -> dict[str, np.ndarray]:
    """AdamW state -> {"<param name>.exp_avg" | ".exp_avg_sq" | ".step": array}."""
    out = {}
    for name, param in model.named_parameters():
        state = optimizer.state.get(param, {})
        for slot in ADAM_SLOTS:
            if slot in state:
                value = state[slot]
                value = value if torch.is_tensor(value) else torch.tensor(float(value))
                out[f"{name}.{slot}"] = value.detach().cpu().contiguous().numpy()
    return out


def load_optimizer(
    optimizer: torch.optim.Optimizer,
    model: torch.nn.Module,
    tensors: dict[str, np.ndarray],
    source: Path,
) -> None:
    """Rebuild AdamW's per-parameter state; moments take each parameter's memory format."""
    for name, param in model.named_parameters():
        keys = [f"{name}.{slot}" for slot in ADAM_SLOTS]
        present = [k in tensors for k in keys]
        if not any(present):
            continue
        if not all(present):
            raise CheckpointError(f"{source}: incomplete optimizer state for {name}")
        state = {}
        for slot, key in zip(ADAM_SLOTS, keys):
            value = torch.from_numpy(np.ascontiguousarray(tensors[key]))
            state[slot] = (
                value.clone().to(param.device)  # fused AdamW keeps step beside the parameter
                if slot == "step"
                else torch.empty_like(param).copy_(value)
            )
        optimizer.state[param] = state
