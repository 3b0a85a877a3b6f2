"""Training checkpoints on disk, for both backends: safetensors + JSON, committed atomically
(docs/design.md §9). This module knows the folder layout and the commit protocol and moves numpy
arrays only; each backend converts its tensors to and from the ``{key: np.ndarray}`` dicts
(``reimagen/backends/torch/checkpoint.py``, ``reimagen/backends/jax/checkpoint.py``).

A run folder looks like::

    run_dir/checkpoints/step-00000200/model.safetensors      raw weights (canonical layout)
                                      ema.safetensors        EMA weights (what inference uses)
                                      optimizer.safetensors  AdamW state, flattened per parameter
                                      state.json             step, configs, determinism facts
    run_dir/checkpoints/latest                               "step-00000200"
    run_dir/checkpoints/rewound-100-1/step-00000200          moved aside by rewind.rewind(run, 100)
    run_dir/log.jsonl

The safetensors keys are the torch ``state_dict`` keys ("canonical layout"); AdamW's moments are
``<param key>.exp_avg`` / ``.exp_avg_sq`` / ``.step``. Either backend reads what the other wrote.

Commit protocol (orbax-style): the step is written into a hidden ``.step-N.partial-PID`` folder,
every file fsynced, the folder renamed to ``step-N``, and only then is ``latest`` replaced
atomically. A crash at any moment leaves ``latest`` pointing at a complete checkpoint; the
previous checkpoint is deleted only after the new one is committed.

Nothing is ever unpickled: every file goes through :func:`reimagen.core.io.load_safetensors`,
which refuses anything that is not safetensors (e.g. a pickle renamed ``.safetensors``).

Integrity (issue #14): each step folder holds ``SHA256SUMS`` over its files, written last before
the rename, and :func:`read_checkpoint` checks it (a flipped bit in a tensor is otherwise
invisible: safetensors only notices truncation). A committed step folder without it was written
by a reimagen from before checksums (a run that began then and resumes now): it is read with a
warning, unverified. :func:`load_resumable` falls back past a damaged or unreadable checkpoint
to the newest one that reads back intact, with a warning naming what it skipped; a missing or
garbage ``latest`` no longer sends a run back to step 0 over its saved steps.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from reimagen.core import digests
from reimagen.core.digests import IntegrityError, MissingChecksumError
from reimagen.core.folder_swap import fsync_dir
from reimagen.core.io import (
    atomic_save_safetensors,
    atomic_write_text,
    load_safetensors,
    load_safetensors_metadata,
)

FORMAT = "reimagen-unet/1"
CONFIG_KEY = "reimagen.unet_config"  # safetensors metadata: the UNetConfig as JSON
ENCODER_KEY = "reimagen.encoder"  # safetensors metadata: the text encoder it was trained with
DEFAULT_ENCODER = "minilm"  # weights that do not say
RECIPE_KEY = "reimagen.recipe"  # safetensors metadata of an export: how it was trained (JSON)
MODEL_FILE, EMA_FILE = "model.safetensors", "ema.safetensors"
OPTIM_FILE, STATE_FILE = "optimizer.safetensors", "state.json"
CHECKPOINTS, LATEST = "checkpoints", "latest"
ADAM_SLOTS = ("exp_avg", "exp_avg_sq", "step")
STEP_DIR = re.compile(r"^step-(\d{8,})$")
LOG = logging.getLogger(__name__)

# Test hook for fault injection: REIMAGEN_CHECKPOINT_FAULT="<point>@<step>" makes the process
# SIGKILL itself at that point of the commit protocol (points: written, renamed, committed).
# REIMAGEN_TORCH_FAULT, its name from before the backends shared this module, still works.
FAULT_ENV = "REIMAGEN_CHECKPOINT_FAULT"
FAULT_ENVS = (FAULT_ENV, "REIMAGEN_TORCH_FAULT")


class CheckpointError(ValueError):
    """A checkpoint folder that is missing files or does not match the run."""


def _fault_point(point: str, step: int) -> None:
    if any(os.environ.get(name) == f"{point}@{step}" for name in FAULT_ENVS):
        os.kill(os.getpid(), signal.SIGKILL)


def weights_metadata(config_json: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The metadata of a self-describing weights file: the format, the UNetConfig JSON and
    ``extra`` facts (e.g. {ENCODER_KEY: "hash"})."""
    return {**(extra or {}), "format": FORMAT, CONFIG_KEY: config_json}


def training_recipe(path: str | Path) -> dict | None:
    """The recipe an exported weights file records (see :func:`recipe_record`); None for a
    file exported before recipes were recorded."""
    text = load_safetensors_metadata(resolve_weights(path)).get(RECIPE_KEY)
    return None if text is None else json.loads(text)


def recipe_record(state: dict, data: dict | None, encoder: str) -> dict:
    """What an export records of its training (issue #15: the shipped weights say how they
    were made): the latest checkpoint's TrainConfig and step, the run's DataConfig and
    encoder, and the examples seen — this run's (step × batch) plus, for a run started with
    --init-from, the examples its initial weights record ("examples_total": the lineage)."""
    config = state["train_config"]
    examples = int(state["step"]) * int(config["batch_size"])
    init = state.get("init_weights")
    before = None
    if init is not None and Path(init).is_file():
        previous = training_recipe(init)
        before = None if previous is None else previous.get("examples_total")
    return {
        "encoder": encoder,
        "train_config": config,
        "data": data,
        "step": int(state["step"]),
        "examples": examples,
        "init_from": None if init is None else {"path": str(init), "examples_total": before},
        # unknown (None) when the initial weights do not record theirs
        "examples_total": examples
        if init is None
        else (None if before is None else before + examples),
    }


def stamp_recipe(path: str | Path, recipe: dict) -> None:
    """Record ``recipe`` in a weights file exported before recipes were recorded (tensors and
    other metadata unchanged; the file's checksum rewritten; atomic)."""
    tensors, metadata = load_safetensors(path)  # checked against its sha256 first
    recipe_text = json.dumps(recipe, sort_keys=True)
    atomic_save_safetensors(path, tensors, {**metadata, RECIPE_KEY: recipe_text})


def trained_encoder(path: str | Path) -> str:
    """The registered name of the text encoder a weights file (or run folder) was trained with."""
    return load_safetensors_metadata(resolve_weights(path)).get(ENCODER_KEY, DEFAULT_ENCODER)


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def checkpoints_root(run_dir: str | Path) -> Path:
    """The checkpoints folder of a run folder (or the folder itself when it is one)."""
    run_dir = Path(run_dir)
    return run_dir / CHECKPOINTS if (run_dir / CHECKPOINTS).is_dir() else run_dir


def latest_checkpoint(run_dir: str | Path) -> Path:
    """The committed checkpoint ``latest`` points to (run folder or its checkpoints folder)."""
    root = checkpoints_root(run_dir)
    pointer = root / LATEST
    if not pointer.is_file():
        raise FileNotFoundError(f"no committed checkpoint: {pointer} does not exist")
    name = pointer.read_bytes().decode("ascii", errors="replace").strip()
    if not STEP_DIR.match(name):
        raise CheckpointError(f"{pointer}: damaged (holds {name[:40]!r}, not a step folder name)")
    folder = root / name
    if not (folder / STATE_FILE).is_file():
        raise CheckpointError(f"{pointer} points at {folder.name}, which is incomplete")
    return folder


def step_folders(run_dir: str | Path) -> list[Path]:
    """The run's committed step folders, newest first (by step number, not by ``latest``)."""
    root = checkpoints_root(run_dir)
    found = [p for p in root.glob("step-*") if STEP_DIR.match(p.name) and p.is_dir()]
    return sorted(found, key=step_of, reverse=True)


def step_of(folder: Path) -> int:
    """The step number in a step folder's name (``step-00000200`` -> 200)."""
    match = STEP_DIR.match(folder.name)
    if match is None:
        raise CheckpointError(f"{folder.name} is not a step folder name")
    return int(match[1])


def load_resumable(run_dir: str | Path) -> tuple[Checkpoint | None, list[str]]:
    """The checkpoint a run resumes from, and what was skipped on the way (one line each).

    First the one ``latest`` names; if that pointer is missing or damaged, or the checkpoint
    does not read back intact, the newest step folder that does, with a warning naming each
    one passed over. (None, []) for a run with no step folder. A run whose step folders all
    fail is a CheckpointError: starting again at step 0 would silently throw them away."""
    candidates, skipped = step_folders(run_dir), []
    try:
        pointed = latest_checkpoint(run_dir)
        candidates = [pointed] + [c for c in candidates if c.name != pointed.name]
    except FileNotFoundError:
        if candidates:
            skipped.append(f"{checkpoints_root(run_dir) / LATEST}: missing")
    except CheckpointError as err:
        skipped.append(str(err))
    for folder in candidates:
        try:
            saved = read_checkpoint(folder)
        except (IntegrityError, CheckpointError, OSError, ValueError) as err:
            skipped.append(str(err).splitlines()[0])
            continue
        for reason in skipped:
            LOG.warning("resuming from %s, not the latest checkpoint: %s", folder, reason)
        return saved, skipped
    if candidates:
        raise CheckpointError(
            f"no checkpoint in {checkpoints_root(run_dir)} reads back intact "
            f"({len(candidates)} tried; latest: {skipped[-len(candidates)]})"
        )
    return None, skipped


def has_checkpoint(run_dir: str | Path) -> bool:
    return (Path(run_dir) / CHECKPOINTS / LATEST).is_file()


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
    """Read a step folder, checked against its SHA256SUMS (IntegrityError naming the file)."""
    folder = Path(folder)
    for name in (MODEL_FILE, EMA_FILE, OPTIM_FILE, STATE_FILE):
        if not (folder / name).is_file():
            raise CheckpointError(f"checkpoint {folder} is missing {name}")
    verify_step_folder(folder)
    model, _ = load_safetensors(folder / MODEL_FILE, check=False)  # checked by SHA256SUMS
    ema, _ = load_safetensors(folder / EMA_FILE, check=False)
    optimizer, _ = load_safetensors(folder / OPTIM_FILE, check=False)
    try:
        state = json.loads((folder / STATE_FILE).read_bytes())
        int(state["step"])
    except (ValueError, KeyError, TypeError) as err:  # only a legacy, unverified folder
        raise CheckpointError(f"{folder / STATE_FILE}: not a checkpoint state ({err})") from None
    return Checkpoint(folder, model, ema, optimizer, state)


def verify_step_folder(folder: Path) -> bool:
    """Check a step folder's files against its SHA256SUMS. True: verified; False: a legacy
    folder without one (written before checksums; warned, read unverified)."""
    try:
        digests.verify_sums(
            folder, required=(MODEL_FILE, EMA_FILE, OPTIM_FILE, STATE_FILE), complete=True
        )
    except MissingChecksumError:
        LOG.warning(
            "%s has no %s (written before reimagen checked checkpoints); reading it unverified",
            folder,
            digests.SUMS,
        )
        return False
    return True


def read_weights(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """A weights file (exported, shipped, or a checkpoint's model/EMA file): tensors and
    metadata, checked against the sha256 in its header, or, when the header has none, against
    its checkpoint folder's SHA256SUMS (a legacy checkpoint: warned). Any other file without a
    digest is refused (MissingChecksumError says how to stamp one you trust)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights not found: {path}")
    if digests.verify_safetensors(path):
        return load_safetensors(path, check=False)
    if (path.parent / STATE_FILE).is_file() or (path.parent / digests.SUMS).is_file():
        verify_step_folder(path.parent)
        return load_safetensors(path, check=False)
    return load_safetensors(path)  # raises MissingChecksumError naming the file


def write_checkpoint(
    run_dir: str | Path,
    step: int,
    *,
    model: dict[str, np.ndarray],
    ema: dict[str, np.ndarray],
    optimizer: dict[str, np.ndarray],
    config_json: str,
    state: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write step ``step`` from host arrays and commit it (see the module docstring). Refuses
    non-finite weights. Keeps the newest ``keep`` committed checkpoints (≥1: the new one)."""
    _refuse_non_finite(step, {"model": model, "EMA": ema})
    root = Path(run_dir) / CHECKPOINTS
    final = root / step_dir_name(step)
    if _is_latest(root, final) and _intact(final):
        raise CheckpointError(f"step {step} is already the committed checkpoint in {root}")
    partial = root / f".{final.name}.partial-{os.getpid()}"
    files = {MODEL_FILE: model, EMA_FILE: ema, OPTIM_FILE: optimizer}
    _write_step_folder(partial, files, weights_metadata(config_json), {**state, "step": step})
    _fault_point("written", step)
    _commit(root, partial, final, step)
    prune(root, keep=max(1, keep), latest=final.name)
    return final


def _refuse_non_finite(step: int, weights: dict[str, dict[str, np.ndarray]]) -> None:
    for label, tensors in weights.items():
        bad = [k for k, v in tensors.items() if not np.isfinite(v).all()]
        if bad:
            raise FloatingPointError(
                f"refusing to write a non-finite checkpoint at step {step}: {label} {bad[:3]}"
            )


def _write_step_folder(
    partial: Path,
    files: dict[str, dict[str, np.ndarray]],
    metadata: dict[str, str],
    state: dict[str, Any],
) -> None:
    """The step's safetensors ``files`` (the weights ones with ``metadata``) and state.json
    into a fresh ``partial`` folder, then SHA256SUMS, then the folder fsynced. On any error
    (a full disk) the folder is deleted, giving its space back."""
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        for name, tensors in files.items():
            atomic_save_safetensors(
                partial / name, tensors, metadata=None if name == OPTIM_FILE else metadata
            )
        atomic_write_text(partial / STATE_FILE, json.dumps(state, indent=2) + "\n")
        digests.write_sums(partial)  # last: a folder without it never passes for a complete one
        fsync_dir(partial, strict=True)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def _commit(root: Path, partial: Path, final: Path, step: int) -> None:
    """Rename ``partial`` to ``final`` (durably), then point ``latest`` at it: the commit."""
    # committed earlier but never pointed to (a crash before `latest`), or damaged (the run
    # resumed from an earlier step past it, with a warning naming it)
    if final.exists():
        shutil.rmtree(final)
    os.rename(partial, final)
    fsync_dir(root, strict=True)
    _fault_point("renamed", step)
    try:
        atomic_write_text(root / LATEST, final.name + "\n")
    except BaseException:
        shutil.rmtree(final, ignore_errors=True)  # never committed: `latest` is the old step
        raise
    _fault_point("committed", step)


def _is_latest(root: Path, folder: Path) -> bool:
    pointer = root / LATEST
    return pointer.is_file() and pointer.read_bytes().strip() == folder.name.encode()


def _intact(folder: Path) -> bool:
    try:
        verify_step_folder(folder)
    except (IntegrityError, OSError):
        return False
    return True


def prune(root: Path, keep: int, latest: str) -> None:
    """Delete committed step folders beyond the newest ``keep`` and other processes' stale
    partial folders (``root`` is the run's checkpoints folder)."""
    steps = [p.name for p in reversed(step_folders(root))]  # oldest first
    for name in steps[:-keep]:
        if name != latest:
            shutil.rmtree(root / name, ignore_errors=True)
    for partial in root.glob(".step-*.partial-*"):
        if not partial.name.endswith(f"-{os.getpid()}"):
            shutil.rmtree(partial, ignore_errors=True)
