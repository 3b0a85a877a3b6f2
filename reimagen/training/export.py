"""Exporting a training run as a stage file of the cascade (``reimagen train --export``).

The run's latest EMA weights in float16 (half the bytes of the checkpoint's float32), in the
self-describing safetensors format the shipped weights use (reimagen.generation.shipped): the
UNetConfig, the text encoder they were trained with, the stage they are for, and the recipe
(TrainConfig, DataConfig, steps, examples seen, the --init-from lineage; a collection run's KB
facts, which ``reimagen bench --kb`` reads).
"""

from __future__ import annotations

from pathlib import Path


def default_export_path(stage: str) -> Path:
    """The shipped file of ``stage`` (``<weights dir>/<stage>.safetensors``)."""
    from reimagen.generation.shipped import weights_path

    return weights_path(stage)


def collection_export_path(run_dir: Path, stage: str) -> Path:
    """A collection run's default export: ``<run-dir>/<stage>.safetensors``, never over the
    shipped emoji weights (bench --kb --weights <run-dir> then finds it)."""
    return Path(run_dir) / f"{stage}.safetensors"


def export_stage(backend, run_dir: Path, path: Path, encoder: str, stage: str, data=None) -> Path:
    """Write the EMA weights of the latest checkpoint in ``run_dir`` to ``path`` (float16),
    stamped with ``encoder``, ``stage`` and the run's recipe (``data``: its DataConfig)."""
    import json

    from reimagen.generation.shipped import STAGE_KEY
    from reimagen.training.checkpoint import (
        ENCODER_KEY,
        RECIPE_KEY,
        latest_checkpoint,
        read_checkpoint,
        recipe_record,
    )
    from reimagen.training.run_record import recorded_kb

    model = backend.load_model(run_dir, ema=True)
    state = read_checkpoint(latest_checkpoint(run_dir)).state
    recipe = recipe_record(state, None if data is None else data.to_dict(), encoder)
    if recorded_kb(run_dir) is not None:  # a collection run: bench --kb reads it
        recipe["kb"] = recorded_kb(run_dir)
    # the stage it is for: load_stage refuses it under another stage's name
    backend.save_model(
        model,
        path,
        dtype="float16",
        metadata={
            ENCODER_KEY: encoder,
            STAGE_KEY: stage,
            RECIPE_KEY: json.dumps(recipe, sort_keys=True),
        },
    )
    return path
