"""The shipped default cascade (docs/design.md §7, §8): where its weights live and how to assemble it.

Three self-describing safetensors files (weights + UNetConfig in the metadata) under
``reimagen/assets/weights/``:
  base.safetensors      Re-Imagen 32×32 base, trained with K=2 retrieved neighbours
  baseline.safetensors  the same network trained with no retrieval (the paper's "Imagen" row)
  sr.safetensors        32→64 super-resolution stage
``$REIMAGEN_WEIGHTS`` points elsewhere (e.g. a training run's folder).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from reimagen.core import registry
from reimagen.diffusion.sampling_config import SamplingConfig

STAGES = ("base", "baseline", "sr")
SR_NEIGHBORS = 1  # K the SR stage was trained with (its neighbours at 64×64 cost 4× the base's)
# The most neighbours the command line samples with. The shipped base was trained with K=2;
# the paper's K sweep (Fig. 7) and `reimagen ablate` go to K=4. Past 4× the training K the
# neighbour attention reads references in a regime it never saw, and its cost grows with K·F²
# per sample, so a larger K is refused as a typo rather than run.
MAX_NEIGHBORS = 8
MAX_NEIGHBORS_WHY = "the base was trained with K=2"  # shown beside the range when k is refused
STAGE_KEY = "reimagen.stage"  # safetensors metadata of an exported stage: base | baseline | sr

# Retriever for generate, demo, bench, ablate and retrieve: ``hybrid`` (rank fusion of tfidf and
# dense/minilm). Neighbour recall@2 (the entity among the 2 neighbours, same-style view): 0.991
# vs bm25's 0.793 on the 333 templated unseen prompts, 0.956 vs 0.878 on the 90 paraphrased ones
# (reimagen/bench/prompts/paraphrased.jsonl), and the Twemoji drawing among the 2 for 0.970 vs
# 0.793 of the templated ones; `reimagen bench --recall-only --retrievers bm25,tfidf,dense,hybrid
# --tiers unseen --n 333 --k 1,2,3` and the same with `--prompts
# reimagen/bench/prompts/paraphrased.jsonl` (docs/results/retrieval-recall.md). The shipped
# networks were trained with bm25 neighbours (DataConfig.retriever), which stays the default
# for training: the paper's KNN-ImageText recipe.
DEFAULT_RETRIEVER = "hybrid"

# Paper §4: the base samples with interleaved guidance, the SR stages with plain guidance.
# Our CPU defaults (25 DPM-Solver++ steps) are the fast path; `--sampler ddpm --steps 256` is
# the paper's.
# Static x̂0 clipping, not Imagen's dynamic thresholding, for the 32×32 stages: measured with
# `reimagen bench --n 8 --k 2 --settings same-style --threshold static|dynamic` (24 prompts),
# text alignment 0.79 / 0.63 (baseline / Re-Imagen K=2) static vs 0.50 / 0.38 dynamic. Dynamic
# thresholding divides x̂0 by its 99.5th-percentile |value| whenever that exceeds 1, which greys
# saturated backgrounds; 25 solver steps do not undo it.
# Neighbour guidance weight w_n = 15 (Eq. 6), chosen on the unseen-entity prompts of seed 1 and
# checked on those of seed 0, every unseen entity once. Chosen with `reimagen ablate --tiers
# unseen --n 333 --seed 1 --ks 1 --etas 0.5 --guidances interleaved --samplers dpmpp2m@25
# --k-ref 1 --w-neighbors-sweep 3,7,15` (and `--w-neighbors 30 --w-neighbors-sweep 30,60`;
# docs/results/tune-wn-unseen-seed1*.md): entity top-1 4 / 7 / 12 / 8 / 3 of 333 at
# w_n = 3 / 7 / 15 / 30 / 60, text alignment 0.62 up to w_n = 15, then 0.50 and 0.35. Checked with
# `reimagen bench --tiers unseen --n 333 --k 1,2 --w-neighbors 3|15` (seed 0): K=2 same-style
# top-1 6 -> 12 of 333.
DEFAULT_SAMPLING = {
    "base": SamplingConfig(
        sampler="dpmpp2m",
        steps=25,
        guidance="interleaved",
        eta=0.5,
        w_text=3.0,
        w_neighbors=15.0,
        thresholding="static",
    ),
    "baseline": SamplingConfig(
        sampler="dpmpp2m", steps=25, guidance="joint", w=3.0, thresholding="static"
    ),
    "sr": SamplingConfig(sampler="dpmpp2m", steps=15, guidance="joint", w=1.5, aug_level=0.1),
}


def weights_dir() -> Path:
    return Path(
        os.environ.get("REIMAGEN_WEIGHTS") or Path(__file__).parents[1] / "assets" / "weights"
    )


def weights_path(stage: str, folder: str | Path | None = None) -> Path:
    """``<folder>/<stage>.safetensors``; ``folder`` defaults to :func:`weights_dir`."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {', '.join(STAGES)}; got {stage!r}")
    return Path(folder or weights_dir()) / f"{stage}.safetensors"


def available_stages(folder: str | Path | None = None) -> list[str]:
    return [stage for stage in STAGES if weights_path(stage, folder).is_file()]


def load_stage(
    stage: str,
    *,
    kb=None,
    retriever=None,
    encoder: str | None = None,
    backend: str = "torch",
    folder: str | Path | None = None,
):
    """A Pipeline for one shipped stage (its text encoder: the one it was trained with), with
    the stage's tuned sampling attached (``pipeline.sampling = DEFAULT_SAMPLING[stage]``).
    The file must fit the stage (stage_config) and hold finite weights; the base stage's
    neighbour attention must have been trained (check_neighbor_attention)."""
    from reimagen.generation.pipeline import Pipeline

    path = weights_path(stage, folder)
    registry.get("backend", backend)  # unknown backend -> error before loading
    stage_config(stage, folder)
    pipeline = Pipeline.from_checkpoint(
        path, kb=kb, retriever=retriever, encoder=encoder, backend=backend
    )
    if stage == "base":
        check_neighbor_attention(path, pipeline.backend, pipeline.model)
    pipeline.sampling = DEFAULT_SAMPLING[stage]
    return pipeline


class WeightsError(ValueError):
    """A weights file that cannot serve where it is asked to: not a reimagen U-Net, another
    stage's or preset's network, non-finite values. One line, naming the file."""


def read_config(path: str | Path):
    """(UNetConfig, metadata) from a weights file's header; no tensor is read. A file that is
    not safetensors is refused by reimagen.core.io (UnsafeFileError, naming it)."""
    from reimagen.core.config import ConfigError
    from reimagen.core.io import load_safetensors_metadata
    from reimagen.core.unet_config import UNetConfig
    from reimagen.training.checkpoint import CONFIG_KEY

    metadata = load_safetensors_metadata(path)
    if CONFIG_KEY not in metadata:
        raise WeightsError(f"{path}: no {CONFIG_KEY!r} metadata; not a reimagen U-Net weights file")
    try:
        return UNetConfig.from_dict(json.loads(metadata[CONFIG_KEY])), metadata
    except (ValueError, ConfigError) as err:  # JSONDecodeError is a ValueError
        raise WeightsError(
            f"{path}: its {CONFIG_KEY!r} metadata is not a UNetConfig ({err})"
        ) from None


def describe(config) -> str:
    """'a 32×32 base network' / 'a 32→64 super-resolution network' (for error messages)."""
    if config.is_super_resolution:
        return f"a {config.lowres_size}→{config.image_size} super-resolution network"
    return f"a {config.image_size}×{config.image_size} base network"


def stage_config(stage: str, folder: str | Path | None = None):
    """The UNetConfig of a shipped stage's file, read from its header (cheap: no tensors), after
    checking the file fits the stage: a super-resolution network for "sr", a base network
    otherwise, and the stage it was exported as (STAGE_KEY), when it says."""
    path = weights_path(stage, folder)
    if not path.is_file():
        raise FileNotFoundError(
            f"no shipped weights for stage {stage!r} at {path}; train them with "
            f"`reimagen train --stage {stage}` or set REIMAGEN_WEIGHTS"
        )
    config, metadata = read_config(path)
    exported_as = metadata.get(STAGE_KEY)
    if exported_as is not None and exported_as != stage:
        raise WeightsError(f"{path}: exported as stage {exported_as!r}, loaded as stage {stage!r}")
    if config.is_super_resolution != (stage == "sr"):
        wanted = "a super-resolution network" if stage == "sr" else "a base network"
        raise WeightsError(
            f"{path}: {describe(config)}, loaded as stage {stage!r}, which needs {wanted}"
        )
    return config


def check_finite(path: str | Path, state: dict[str, np.ndarray]) -> None:
    """Refuse weights with NaN or Inf: they sample an all-black image without any error."""
    bad = [key for key, value in state.items() if not np.isfinite(value).all()]
    if bad:
        raise WeightsError(
            f"{path}: non-finite values (NaN or Inf) in {len(bad)} tensor(s), "
            f"e.g. {bad[0]}; refusing to load it"
        )


def check_neighbor_attention(path: str | Path, backend, model) -> None:
    """The base stage reads its neighbours through neighbour attention, whose output layers
    start at zero, like the network's output layer (reset_parameters in
    reimagen/backends/torch/unet.py); they only move when training feeds K > 0 neighbours. A
    trained output layer (nonzero) beside an all-zero neighbour attention: a network trained
    without retrieval (e.g. the baseline's file under the base's name), which would ignore
    every neighbour silently. (A freshly initialised network, both zero, passes: tests use
    them.)"""
    try:
        state = backend.state_dict(model)
    except NotImplementedError:  # a plugin backend without canonical weights: cannot tell
        return
    outputs = [v for k, v in state.items() if k.startswith("neighbor_attn.") and ".to_out." in k]
    trained = any(np.any(state[k]) for k in ("conv_out.weight", "conv_out.bias") if k in state)
    if trained and outputs and not any(np.any(v) for v in outputs):
        raise WeightsError(
            f"{path}: its neighbour attention was never trained (all zero: a "
            "no-retrieval network such as the baseline); stage 'base' needs a "
            "network trained with neighbours"
        )
