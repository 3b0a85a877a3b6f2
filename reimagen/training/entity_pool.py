"""The fixed pool of scene examples the EntityBench training stream draws from (docs/design.md §8).

A pool of N scene examples is drawn once from the seen entities with the split's Zipf weights:
entity, background (a colour the entity's drawing is legible on), position, size (large and
centred with p=DataConfig.p_large_centred), template, and whether the prompt names the entity
(p=1 − p_drop_name; otherwise it says "emoji", so the text alone cannot name it). The pool has
a Generator of its own, seeded by (DataConfig.pool_seed, :data:`POOL_STREAM`), independent of
the per-step streams, and a fixed draw order: the same settings always give the same pool.
``EmojiBatchSource.batch(step)`` then draws B examples of it per step.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import numpy as np

from reimagen.kb import scenes as sc
from reimagen.training.data import DataConfig

POOL_STREAM = 0x5CE7E  # second word of the pool Generator's seed (independent of batch streams)


@attrs.frozen
class Pool:
    """The fixed pool of scene examples (all [N])."""

    entity: np.ndarray  # int32 index into EmojiBatchSource.entities
    background: np.ndarray  # int8 index into scenes.COLOURS
    position: np.ndarray  # int8 index into scenes.POSITIONS
    size: np.ndarray  # int8 index into scenes.SIZES
    template: np.ndarray  # int8 template id of the scene's kind
    named: np.ndarray  # bool: the prompt names the entity
    prompts: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.prompts)

    def scene(self, i: int, entity: str) -> sc.Scene:
        return sc.Scene(
            entity=entity,
            background=sc.COLOUR_NAMES[self.background[i]],
            position=sc.POSITIONS[self.position[i]],
            size=sc.SIZES[self.size[i]],
        )


def make_pool(
    entities: Sequence[str],
    weights: np.ndarray,
    colours: Sequence[np.ndarray],
    data: DataConfig,
) -> Pool:
    """N = data.pool_size examples of ``entities`` [E] (Zipf ``weights`` [E]; ``colours``: per
    entity the legible colour indices) from a Generator of its own (pool_seed), vectorised,
    fixed draw order."""
    n = data.pool_size
    rng = np.random.default_rng((data.pool_seed, POOL_STREAM))
    entity = rng.choice(len(entities), size=n, p=weights).astype(np.int32)
    colour_pick = rng.random(n)
    forced = rng.random(n) < data.p_large_centred
    position = rng.integers(len(sc.POSITIONS), size=n).astype(np.int8)
    size = rng.integers(len(sc.SIZES), size=n).astype(np.int8)
    position[forced], size[forced] = 0, sc.SIZES.index("large")  # POSITIONS[0] = center
    template_pick = rng.random(n)
    named = rng.random(n) >= data.p_drop_name
    background = np.array([_pick(colours[e], u) for e, u in zip(entity, colour_pick)], np.int8)
    kinds = [sc.TEMPLATES["centred" if p == 0 else "corner"] for p in position]
    template = np.array([int(u * len(k)) for u, k in zip(template_pick, kinds)], np.int8)
    pool = Pool(entity, background, position, size, template, named, prompts=())
    prompts = tuple(
        sc.prompt(
            pool.scene(i, entities[entity[i]]),
            int(template[i]),
            name_entity=bool(named[i]),
        )
        for i in range(n)
    )
    return attrs.evolve(pool, prompts=prompts)


def _pick(options: np.ndarray, u: float) -> int:
    """The option a uniform draw ``u`` in [0, 1) selects."""
    if len(options) == 0:
        return 0  # a drawing legible on no colour: never happens for Twemoji; keep going
    return int(options[int(u * len(options))])


__all__ = ["POOL_STREAM", "Pool", "make_pool"]
