"""The shipped default cascade (DESIGN §7, §8): where its weights live and how to assemble it.

Three self-describing safetensors files (weights + UNetConfig in the metadata) under
``reimagen/assets/weights/``:
  base.safetensors      Re-Imagen 32×32 base, trained with K=2 retrieved neighbours
  baseline.safetensors  the same network trained with no retrieval (the paper's "Imagen" row)
  sr.safetensors        32→64 super-resolution stage
``$REIMAGEN_WEIGHTS`` points elsewhere (e.g. a training run's folder).
"""

from __future__ import annotations

import os
from pathlib import Path

from reimagen.core import registry
from reimagen.core.generation import SamplingConfig

STAGES = ("base", "baseline", "sr")
SR_NEIGHBORS = 1  # K the SR stage was trained with (its neighbours at 64×64 cost 4× the base's)

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
    "base": SamplingConfig(sampler="dpmpp2m", steps=25, guidance="interleaved", eta=0.5,
                           w_text=3.0, w_neighbors=15.0, thresholding="static"),
    "baseline": SamplingConfig(sampler="dpmpp2m", steps=25, guidance="joint", w=3.0,
                               thresholding="static"),
    "sr": SamplingConfig(sampler="dpmpp2m", steps=15, guidance="joint", w=1.5, aug_level=0.1),
}


def weights_dir() -> Path:
    return Path(os.environ.get("REIMAGEN_WEIGHTS") or Path(__file__).parent / "assets" / "weights")


def weights_path(stage: str) -> Path:
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {', '.join(STAGES)}; got {stage!r}")
    return weights_dir() / f"{stage}.safetensors"


def available_stages() -> list[str]:
    return [stage for stage in STAGES if weights_path(stage).is_file()]


def load_stage(stage: str, *, kb=None, retriever=None, encoder: str | None = None,
               backend: str = "torch"):
    """A Pipeline for one shipped stage (its text encoder: the one it was trained with)."""
    from reimagen.pipeline import Pipeline

    path = weights_path(stage)
    if not path.is_file():
        raise FileNotFoundError(
            f"no shipped weights for stage {stage!r} at {path}; train them with "
            f"`reimagen train --stage {stage}` or set REIMAGEN_WEIGHTS"
        )
    registry.get("backend", backend)  # unknown backend -> error before loading
    return Pipeline.from_checkpoint(path, kb=kb, retriever=retriever, encoder=encoder,
                                    backend=backend)
