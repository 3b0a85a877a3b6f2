"""Does the network use its neighbours? The cheap signal of docs/design.md §8: the ε-prediction error
(paper Eq. 2) on fresh scenes, with the RIGHT neighbours (renditions of the target entity),
with WRONG ones (renditions of another entity of the same tier) and with NONE (the neighbour
condition dropped). Long before sampled images show an entity's identity, a network that reads
its neighbours predicts ε better with the right ones.

Same noise, same t and same prompt in all three conditions; only the neighbours change.

    python -m reimagen.bench.neighbor_signal [--n 256] [--tiers frequent,unseen] [--json F]

prints a markdown table; ``--json F`` also writes the rows to F (atomically).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from reimagen.core.images import from_uint8
from reimagen.core.io import atomic_write_text
from reimagen.kb import scenes as sc
from reimagen.kb.splits import TARGET_ARTIST
from reimagen.training.contract import Batch

T_VALUES = (0.2, 0.4, 0.6, 0.8)  # diffusion times the error is averaged over
SETTINGS = ("same-style", "cross-style")


def entity_rows(kb, entity: str, setting: str) -> np.ndarray:
    """KB rows a neighbour of ``entity`` may show: every artist (same-style) or the artists
    other than Twemoji (cross-style)."""
    rows = kb.rows(entities=[entity])
    if setting == "cross-style":
        rows = np.array([r for r in rows if kb.records[r].source != TARGET_ARTIST], np.int64)
    return rows


def pick_neighbors(rng, kb, entity: str, k: int, setting: str) -> np.ndarray:
    """K rows of ``entity`` (cycling when it has fewer renditions), Twemoji first if allowed."""
    rows = entity_rows(kb, entity, setting)
    order = sorted(rows, key=lambda r: kb.records[r].source != TARGET_ARTIST)
    start = 0 if setting == "same-style" else int(rng.integers(len(order)))
    return np.array([order[(start + j) % len(order)] for j in range(k)], np.int64)


def make_examples(rng, kb, split, tier: str, n: int, k: int, setting: str):
    """n scenes of random entities of ``tier``: targets [n, 32, 32, 3] in [-1, 1], prompts,
    right rows [n, K] and wrong rows [n, K] (another entity of the tier)."""
    in_kb = set(kb.by_entity())
    names = [
        e
        for e in split.names(tier)
        if e in in_kb
        and len(entity_rows(kb, e, setting))
        and len(kb.rows(sources=[TARGET_ARTIST], entities=[e]))
    ]
    if len(names) < 2:
        raise ValueError(f"tier {tier!r} has {len(names)} entities in {kb.folder}; need >= 2")
    chosen = rng.choice(len(names), size=n)
    others = (chosen + rng.integers(1, len(names), size=n)) % len(names)  # never the same
    targets, prompts, right, wrong = [], [], [], []
    for i, j in zip(chosen, others):
        entity = names[i]
        drawing = np.asarray(kb.images[kb.rows(sources=[TARGET_ARTIST], entities=[entity])[0]])
        scene = sc.random_scene(rng, entity, sc.legible_colours(drawing), p_large_centred=0.5)
        targets.append(from_uint8(sc.compose(drawing, scene, 32)))
        template = int(rng.integers(len(sc.templates_for(scene.kind))))
        prompts.append(sc.prompt(scene, template))
        right.append(pick_neighbors(rng, kb, entity, k, setting))
        wrong.append(pick_neighbors(rng, kb, names[j], k, setting))
    return np.stack(targets), prompts, np.stack(right), np.stack(wrong)


def epsilon_errors(model, encoder, kb, targets, prompts, rows_by_condition, seed: int = 0):
    """{condition: mean ε-MSE over the examples and T_VALUES}; conditions map to rows [n, K]
    or None (neighbours dropped: the first condition's rows are passed but masked out)."""
    import torch

    from reimagen.backends.torch.trainer import model_kwargs
    from reimagen.diffusion.schedule import CosineSchedule
    from reimagen.generation.pipeline import encode_neighbors_text

    n = len(prompts)
    shown = next(rows for rows in rows_by_condition.values() if rows is not None)
    neighbors = {}  # condition -> (images [n, K, 32, 32, 3], captions, use_neighbors [n])
    for condition, rows in rows_by_condition.items():
        rows = shown if rows is None else rows
        images = kb.rgb(rows.reshape(-1), size=32).reshape(*rows.shape, 32, 32, 3)
        use = np.full(n, rows_by_condition[condition] is not None)
        neighbors[condition] = (
            images.astype(np.float32),
            encode_neighbors_text(encoder, kb, rows),
            use,
        )
    text = encoder.encode(prompts)
    rng = np.random.default_rng((seed, 1))
    schedule = CosineSchedule()
    totals = dict.fromkeys(rows_by_condition, 0.0)
    for t_value in T_VALUES:
        noise = rng.standard_normal(targets.shape, dtype=np.float32)  # the same for all conditions
        for condition, (images, captions, use) in neighbors.items():
            batch = Batch(
                images=targets,
                text=text,
                neighbor_images=images,
                neighbor_text=captions,
                t=np.full(n, t_value, np.float32),
                noise=noise,
                use_text=np.ones(n, bool),
                use_neighbors=use,
            )
            with torch.no_grad():
                eps = model(**model_kwargs(batch, schedule)).float().numpy()
            totals[condition] += float(np.mean((eps - noise) ** 2)) / len(T_VALUES)
    return totals


def measure(
    weights=None, *, tiers=("frequent", "unseen"), settings=SETTINGS, n=256, k=2, seed=0
) -> list[dict]:
    """Rows {tier, setting, right, wrong, none, gain} for the shipped base (or ``weights``)."""
    from reimagen.backends.torch import checkpoint as ckpt
    from reimagen.core import registry
    from reimagen.core.paths import default_kb_dir
    from reimagen.generation.shipped import weights_path
    from reimagen.kb.knowledge_base import KnowledgeBase
    from reimagen.kb.splits import load_split
    from reimagen.training.checkpoint import trained_encoder

    weights = weights or weights_path("base")
    model = ckpt.load_model(weights)
    encoder = registry.get("encoder", trained_encoder(weights))()
    kb, split = KnowledgeBase.open(default_kb_dir(), verify=False), load_split()
    results = []
    for tier in tiers:
        for setting in settings:
            rng = np.random.default_rng((seed, TIER_SEED[tier]))
            targets, prompts, right, wrong = make_examples(rng, kb, split, tier, n, k, setting)
            errors = epsilon_errors(
                model,
                encoder,
                kb,
                targets,
                prompts,
                {"right": right, "wrong": wrong, "none": None},
                seed,
            )
            gain = (errors["wrong"] - errors["right"]) / errors["wrong"]
            results.append(
                {"tier": tier, "setting": setting, "n": n, "k": k, **errors, "gain": gain}
            )
    return results


TIER_SEED = {"frequent": 1, "rare": 2, "unseen": 3}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=None, help="default: the shipped base stage")
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--tiers", default="frequent,unseen")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    tiers = tuple(args.tiers.split(","))
    bad = [t for t in tiers if t not in TIER_SEED]
    if bad:
        parser.error(f"--tiers: unknown {bad}; allowed: {', '.join(TIER_SEED)}")
    if args.n < 1 or args.k < 1:
        parser.error(f"--n and --k must be >= 1, got --n {args.n} --k {args.k}")
    rows = measure(args.weights, tiers=tiers, n=args.n, k=args.k, seed=args.seed)
    print("| tier | setting | ε-MSE right | wrong | none | right vs wrong |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['tier']} | {r['setting']} | {r['right']:.4f} | {r['wrong']:.4f} | "
            f"{r['none']:.4f} | {100 * r['gain']:+.1f}% |"
        )
    if args.json is not None:
        atomic_write_text(args.json, json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
