"""EntityBench scoring: per-image metrics and their means by tier and category (docs/design.md §8).

Paper §4.2 rates each EntityDrawBench image 1 when it is "faithful to both the entity appearance
and the text description" (Table 2), split by frequent / infrequent entities (Fig. 5). Here both
halves are measured:

* entity faithfulness - the evaluator (:mod:`reimagen.bench.evaluator`) names the prompt's
  entity: top-1 (``entity_top1``) and within its top 5 (``entity_top5``);
* text alignment - the background colour and the position read from the pixels
  (:func:`reimagen.kb.scenes.read_scene`) are the ones the prompt asked for (``aligned``;
  the size is read and reported too, ``size``, but is not part of alignment);
* ``faithful`` = entity_top1 ∧ aligned: the Table-2 number.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from reimagen.bench.prompt_sets import TIERS, BenchPrompt
from reimagen.kb import scenes as sc

METRICS = ("faithful", "entity_top1", "entity_top5", "aligned", "background", "position", "size")


def score_images(evaluator, prompts: Sequence[BenchPrompt], images: np.ndarray) -> dict:
    """Score generated ``images`` uint8 [N, H, W, 3] against ``prompts`` [N].

    Returns bool arrays [N] for every name in METRICS, plus ``predicted`` (the evaluator's
    top-1 name per image) and ``confidence`` (its probability)."""
    images = np.asarray(images)
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images for {len(prompts)} prompts")
    top5, probs = evaluator.predict(images)
    read = [sc.read_scene(image, p.entity) for image, p in zip(images, prompts)]
    out: dict[str, Any] = {
        "entity_top1": np.array([t[0] == p.entity for t, p in zip(top5, prompts)]),
        "entity_top5": np.array([p.entity in t for t, p in zip(top5, prompts)]),
        "background": np.array([r.background == p.scene.background for r, p in zip(read, prompts)]),
        "position": np.array([r.position == p.scene.position for r, p in zip(read, prompts)]),
        "size": np.array([r.size == p.scene.size for r, p in zip(read, prompts)]),
    }
    out["aligned"] = out["background"] & out["position"]  # text alignment
    out["faithful"] = out["entity_top1"] & out["aligned"]  # Table 2: entity and text
    out["predicted"] = [t[0] for t in top5]
    out["confidence"] = probs[:, 0]
    return out


def summarise(prompts: Sequence[BenchPrompt], scores: dict) -> dict[str, dict[str, float]]:
    """Mean of every metric over: all prompts, each tier (``tier/rare``) and each category
    (``category/flags``) that occurs. Each group also has its count ``n``."""
    groups: dict[str, np.ndarray] = {"all": np.ones(len(prompts), bool)}
    tiers = np.array([p.tier for p in prompts])
    categories = np.array([p.category for p in prompts])
    for tier in (*TIERS, "other"):
        if (tiers == tier).any():
            groups[f"tier/{tier}"] = tiers == tier
    for category in sorted(set(categories.tolist())):
        groups[f"category/{category}"] = categories == category
    return {
        name: {
            "n": int(mask.sum()),
            **{m: round(float(np.asarray(scores[m])[mask].mean()), 4) for m in METRICS},
        }
        for name, mask in groups.items()
    }


def target_images(prompts: Sequence[BenchPrompt], size: int = 32) -> np.ndarray:
    """What a perfect generator draws: each prompt's scene composed from the entity's Twemoji
    drawing -> uint8 [N, size, size, 3]."""
    from reimagen.bench.scene_composer import target_drawings

    _, drawings = target_drawings([p.entity for p in prompts])
    return np.stack([sc.compose(d, p.scene, size) for d, p in zip(drawings, prompts)])
