"""Checkpoints of the PyTorch backend: safetensors + JSON only, committed atomically (DESIGN §9).

A run folder looks like::

    run_dir/checkpoints/step-00000200/model.safetensors      raw weights (canonical layout)
                                      ema.safetensors        EMA weights (what inference uses)
                                      optimizer.safetensors  AdamW state, flattened per parameter
                                      state.json             step, configs, determinism facts
    run_dir/checkpoints/latest                               "step-00000200"
    run_dir/log.jsonl

Commit protocol (orbax-style): the step is written into a hidden ``.step-N.partial-PID`` folder,
every file fsynced, the folder renamed to ``step-N``, and only then is ``latest`` replaced
atomically. A crash at any moment leaves ``latest`` pointing at a complete checkpoint; the
previous checkpoint is deleted only after the new one is committed.

Nothing is ever unpickled: weights go through :func:`reimagen.core.io.load_safetensors`, which
refuses any file that is not safetensors (e.g. a pickle renamed ``.safetensors`` or ``.pt``).
The safetensors keys are the torch ``state_dict`` keys; the JAX backend reads the same files.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch

from reimagen.backends.torch.unet import ReImagenUNet, build_unet
from reimagen.core.io import atomic_save_safetensors, atomic_write_text, load_safetensors
from reimagen.core.unet_config import UNetConfig

FORMAT = "reimagen-unet/1"
CONFIG_KEY = "reimagen.unet_config"  # safetensors metadata: the UNetConfig as JSON
MODEL_FILE, EMA_FILE, OPTIM_FILE, STATE_FILE = (
    "model.safetensors",
    "ema.safetensors",
    "optimizer.safetensors",
    "state.json",
)
CHECKPOINTS, LATEST = "checkpoints", "latest"
ADAM_SLOTS = ("exp_avg", "exp_avg_sq", "step")

# Test hook for fault injection: REIMAGEN_TORCH_FAULT="<point>@<step>" makes the process
# SIGKILL itself at that point of the commit protocol (points: written, renamed, committed).
FAULT_ENV = "REIMAGEN_TORCH_FAULT"


class CheckpointError(ValueError):
    """A checkpoint folder that is missing files or does not match the run."""


def fsync_dir(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (POSIX: fsync the directory)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fault_point(point: str, step: int) -> None:
    if os.environ.get(FAULT_ENV) == f"{point}@{step}":
        os.kill(os.getpid(), signal.SIGKILL)


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


def save_model(model: ReImagenUNet, path: str | Path, dtype: str = "float32") -> Path:
    """One self-describing safetensors file: weights + the UNetConfig in its metadata.
    ``dtype="float16"`` halves the file (shipped weights); loading casts back to float32."""
    if dtype not in ("float32", "float16"):
        raise ValueError(f"dtype must be float32 or float16, got {dtype!r}")
    path = Path(path)
    metadata = {"format": FORMAT, CONFIG_KEY: model.config.to_json()}
    tensors = {k: v.astype(dtype) for k, v in weights_to_numpy(model).items()}
    atomic_save_safetensors(path, tensors, metadata=metadata)
    return path


def resolve_weights(path_or_dir: str | Path, ema: bool = True) -> Path:
    """A run folder, a step folder or a .safetensors file -> the weights file to read."""
    path = Path(path_or_dir)
    if path.is_dir():
        if (path / CHECKPOINTS / LATEST).is_file() or (path / LATEST).is_file():
            path = latest_checkpoint(path)
        if not (path / MODEL_FILE).is_file():
            raise FileNotFoundError(f"no {MODEL_FILE} or {CHECKPOINTS}/{LATEST} in {path}")
        return path / (EMA_FILE if ema and (path / EMA_FILE).is_file() else MODEL_FILE)
    if not path.is_file():
        raise FileNotFoundError(f"weights not found: {path}")
    return path


def load_model(path_or_dir: str | Path, ema: bool = True) -> ReImagenUNet:
    """A U-Net for inference from a file or checkpoint folder (EMA weights by default), in
    eval mode. The config comes from the file's metadata; no pickle is involved."""
    source = resolve_weights(path_or_dir, ema)
    tensors, metadata = load_safetensors(source)  # refuses anything but safetensors
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
            state[slot] = value.clone() if slot == "step" else torch.empty_like(param).copy_(value)
        optimizer.state[param] = state


# ---- commit protocol ---------------------------------------------------------------------------


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def latest_checkpoint(run_dir: str | Path) -> Path:
    """The committed checkpoint ``latest`` points to (run folder or its checkpoints folder)."""
    run_dir = Path(run_dir)
    root = run_dir / CHECKPOINTS if (run_dir / CHECKPOINTS).is_dir() else run_dir
    pointer = root / LATEST
    if not pointer.is_file():
        raise FileNotFoundError(f"no committed checkpoint: {pointer} does not exist")
    folder = root / pointer.read_text().strip()
    if not (folder / STATE_FILE).is_file():
        raise CheckpointError(f"{pointer} points at {folder.name}, which is incomplete")
    return folder


def has_checkpoint(run_dir: str | Path) -> bool:
    return (Path(run_dir) / CHECKPOINTS / LATEST).is_file()


@attrs.frozen
class Checkpoint:
    """A loaded checkpoint, as host arrays and its JSON state."""

    folder: Path
    model: dict[str, np.ndarray]
    ema: dict[str, np.ndarray]
    optimizer: dict[str, np.ndarray]
    state: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.state["step"])


def read_checkpoint(folder: str | Path) -> Checkpoint:
    folder = Path(folder)
    for name in (MODEL_FILE, EMA_FILE, OPTIM_FILE, STATE_FILE):
        if not (folder / name).is_file():
            raise CheckpointError(f"checkpoint {folder} is missing {name}")
    model, _ = load_safetensors(folder / MODEL_FILE)
    ema, _ = load_safetensors(folder / EMA_FILE)
    optimizer, _ = load_safetensors(folder / OPTIM_FILE)
    state = json.loads((folder / STATE_FILE).read_text())
    return Checkpoint(folder, model, ema, optimizer, state)


def write_checkpoint(
    run_dir: str | Path,
    step: int,
    *,
    model: ReImagenUNet,
    ema: ReImagenUNet,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write step ``step`` and commit it (see the module docstring). Refuses non-finite weights.
    Keeps the newest ``keep`` committed checkpoints (≥1: at least the new one)."""
    weights, ema_weights = weights_to_numpy(model), weights_to_numpy(ema)
    for label, tensors in (("model", weights), ("EMA", ema_weights)):
        bad = [k for k, v in tensors.items() if not np.isfinite(v).all()]
        if bad:
            raise FloatingPointError(
                f"refusing to write a non-finite checkpoint at step {step}: {label} {bad[:3]}"
            )
    root = Path(run_dir) / CHECKPOINTS
    final = root / step_dir_name(step)
    if (root / LATEST).is_file() and (root / LATEST).read_text().strip() == final.name:
        raise CheckpointError(f"step {step} is already the committed checkpoint in {root}")
    partial = root / f".{final.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    metadata = {"format": FORMAT, CONFIG_KEY: model.config.to_json()}
    atomic_save_safetensors(partial / MODEL_FILE, weights, metadata=metadata)
    atomic_save_safetensors(partial / EMA_FILE, ema_weights, metadata=metadata)
    atomic_save_safetensors(partial / OPTIM_FILE, optimizer_to_numpy(optimizer, model))
    atomic_write_text(partial / STATE_FILE, json.dumps({**state, "step": step}, indent=2) + "\n")
    fsync_dir(partial)
    _fault_point("written", step)
    if final.exists():  # committed earlier but never pointed to (a crash before `latest`)
        shutil.rmtree(final)
    os.rename(partial, final)
    fsync_dir(root)
    _fault_point("renamed", step)
    atomic_write_text(root / LATEST, final.name + "\n")
    _fault_point("committed", step)
    _prune(root, keep=max(1, keep), latest=final.name)
    return final


def _prune(root: Path, keep: int, latest: str) -> None:
    """Delete committed step folders beyond the newest ``keep`` and stale partial folders."""
    steps = sorted(p.name for p in root.glob("step-*") if p.is_dir())
    for name in steps[:-keep]:
        if name != latest:
            shutil.rmtree(root / name, ignore_errors=True)
    for partial in root.glob(".step-*.partial-*"):
        if not partial.name.endswith(f"-{os.getpid()}"):
            shutil.rmtree(partial, ignore_errors=True)
