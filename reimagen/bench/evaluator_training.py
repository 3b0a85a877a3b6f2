"""Training the judge and measuring its accuracy (``python -m reimagen.bench.evaluator``).

Batches are random scenes of every entity (:class:`~reimagen.bench.scene_composer.SceneComposer`),
a pure function of (seed, step), corrupted like a generator's output
(:func:`~reimagen.bench.evaluator_network.augment`); cross-entropy with label smoothing, AdamW,
linear warm-up then cosine decay. Convolutions run in bf16 autocast, the head in float32.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from reimagen.bench.evaluator import Evaluator
from reimagen.bench.evaluator_network import EvaluatorConfig, augment, build_network, to_input
from reimagen.bench.scene_composer import SceneComposer, target_drawings
from reimagen.core.images import to_uint8
from reimagen.kb import scenes as sc


def train_evaluator(
    config: EvaluatorConfig | None = None,
    names: Sequence[str] | None = None,
    *,
    progress: bool = False,
) -> tuple[Evaluator, SceneComposer, dict]:
    """Train on random scenes of every entity in ``names`` (default: all Twemoji draws).
    Batches are a pure function of (seed, step). Returns the evaluator, its composer and a
    training log (seconds, final loss)."""
    import torch

    config = EvaluatorConfig() if config is None else config
    torch.set_num_threads(config.threads)
    names, drawings = target_drawings(names)
    composer = SceneComposer(drawings, config.image_size)
    torch.manual_seed(config.seed)
    network = build_network(config, len(names)).to(memory_format=torch.channels_last)
    optimiser = torch.optim.AdamW(
        network.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: _lr_factor(s, config))
    generator = torch.Generator().manual_seed(config.seed)
    network.train()
    started, losses = time.perf_counter(), []
    for step in range(config.steps):
        rng = np.random.default_rng((config.seed, step))
        entity = rng.integers(len(names), size=config.batch_size)  # [B]
        images = composer.compose(entity, *composer.random_scenes(rng, entity))
        x = augment(to_input(images, config.image_size), generator, config)
        losses.append(_train_step(network, optimiser, x, entity, config))
        schedule.step()
        if progress and (step + 1) % 50 == 0:
            elapsed = time.perf_counter() - started
            print(
                f"step {step + 1}/{config.steps} loss {np.mean(losses[-50:]):.3f} {elapsed:.0f} s",
                file=sys.stderr,
                flush=True,
            )
    log = {
        "train_seconds": round(time.perf_counter() - started, 1),
        "final_loss": round(float(np.mean(losses[-100:])), 4),
        "steps": config.steps,
    }
    network = network.float()
    return Evaluator(network, names, config.image_size), composer, log


def _train_step(network, optimiser, x, entity: np.ndarray, config: EvaluatorConfig) -> float:
    """One AdamW step on augmented scenes x [B, 3, S, S] of classes ``entity`` [B] -> the
    label-smoothed cross-entropy before the step."""
    import torch
    import torch.nn.functional as F

    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16):
        features = network[:-1](x)  # [B, C] convolutions in bf16
    logits = network[-1](features.float())  # [B, E] the 1,902-way head in float32
    loss = F.cross_entropy(logits, torch.from_numpy(entity), label_smoothing=config.label_smoothing)
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    optimiser.step()
    return float(loss.detach())


def _lr_factor(step: int, config: EvaluatorConfig) -> float:
    """Linear warm-up, then cosine decay to zero."""
    if step < config.warmup:
        return (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return 0.5 * (1.0 + np.cos(np.pi * min(1.0, progress)))


def measure_accuracy(
    evaluator: Evaluator,
    composer: SceneComposer,
    *,
    per_entity: int = 4,
    seed: int = 12345,
    augmented: bool = False,
    config: EvaluatorConfig | None = None,
) -> dict[str, Any]:
    """Top-1 / top-5 on fresh random composites (``per_entity`` per entity, a seed the training
    never used): overall, per split tier and per size. ``augmented`` corrupts them as in
    training (a generator-like input) instead of judging the clean composites (the ceiling)."""
    import torch

    from reimagen.kb.splits import load_split

    rng = np.random.default_rng((seed, 1))
    entity = np.repeat(np.arange(len(evaluator.entities)), per_entity)  # [N]
    background, position, size = composer.random_scenes(rng, entity)
    images = composer.compose(entity, background, position, size)
    if augmented:
        x = augment(
            to_input(images, evaluator.image_size),
            torch.Generator().manual_seed(seed),
            config or EvaluatorConfig(),
        )
        images = to_uint8(x.permute(0, 2, 3, 1).numpy())
    logits = evaluator.logits(images)
    rank = (logits > logits[np.arange(len(entity)), entity][:, None]).sum(1)  # [N] 0 = top-1
    split = load_split()
    tier = np.array([split.tier(n) if n in split else "other" for n in evaluator.entities])[entity]
    groups = {"all": np.ones(len(entity), bool)}
    groups.update({f"tier/{t}": tier == t for t in ("frequent", "rare", "unseen", "other")})
    groups.update({f"size/{z}": size == i for i, z in enumerate(sc.SIZES)})
    return {
        name: {
            "n": int(mask.sum()),
            "top1": round(float((rank[mask] == 0).mean()), 4),
            "top5": round(float((rank[mask] < 5).mean()), 4),
        }
        for name, mask in groups.items()
        if mask.any()
    }
