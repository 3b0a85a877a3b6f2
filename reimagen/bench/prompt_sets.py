"""EntityBench prompt sets: the seeded default set, and JSONL files (read, checked, written).

A prompt names one entity in one scene (background colour, position, size: reimagen.kb.scenes);
its ground truth is that scene, and its labels are the entity's tier (frequent / rare / unseen
in training, paper Fig. 5) and category. Scoring: :mod:`reimagen.bench.scoring`.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Collection, Sequence
from pathlib import Path

import attrs
import numpy as np

from reimagen.kb import scenes as sc

TIERS = ("frequent", "rare", "unseen")
PROMPT_FIELDS = ("prompt", "entity", "background", "position", "size")
# Most prompts per tier of the default set, a typo guard: the largest tier has 785 entities
# (past a tier's size, entities repeat in new scenes) and 10,000 per tier is already 30,000
# images per bench row. Unbounded, `--n 100000000` filled 3.6 GB in 30 s before any check.
MAX_PER_TIER = 10_000


class PromptFileError(ValueError):
    """A prompt file line that cannot be scored: names the file, the line and the allowed values."""


@attrs.frozen(kw_only=True)
class BenchPrompt:
    """One benchmark prompt and its ground truth."""

    prompt: str
    scene: sc.Scene  # entity, background, position, size the prompt asks for
    tier: str  # frequent | rare | unseen ("other" for an entity outside the split)
    category: str  # splits.CATEGORIES: animals, food, flags, ...

    @property
    def entity(self) -> str:
        return self.scene.entity

    def to_dict(self) -> dict[str, str]:
        return {
            "prompt": self.prompt,
            "entity": self.entity,
            "background": self.scene.background,
            "position": self.scene.position,
            "size": self.scene.size,
            "tier": self.tier,
            "category": self.category,
        }


def _labels(entity: str, split) -> tuple[str, str]:
    if entity in split:
        return split.tier(entity), split.category(entity)
    return "other", "other"


# ---- the default set ------------------------------------------------------------------------


def default_prompts(
    n_per_tier: int,
    seed: int = 0,
    *,
    known: Collection[str] | None = None,
    split=None,
    tiers: Sequence[str] = TIERS,
) -> list[BenchPrompt]:
    """The default benchmark: for each of ``tiers``, ``n_per_tier`` entities (without
    replacement while the tier has enough), each in a random scene on a colour its drawing is
    legible on, written with a random template that names the entity. A pure function of
    (n, seed, split) per tier: a tier's prompts are the same whichever other tiers are asked."""
    from reimagen.bench.scene_composer import target_drawings
    from reimagen.kb.splits import load_split

    _check_default_request(n_per_tier, tiers)
    split = load_split() if split is None else split
    picked = _pick_entities(n_per_tier, seed, known, split, tiers)
    _, drawings = target_drawings([name for _, _, names in picked for name in names])
    prompts: list[BenchPrompt] = []
    for tier, rng, names in picked:
        for name in names:
            drawing = drawings[len(prompts)]
            scene = sc.random_scene(rng, name, sc.legible_colours(drawing) or None)
            template = int(rng.integers(len(sc.templates_for(scene.kind))))
            prompts.append(
                BenchPrompt(
                    prompt=sc.prompt(scene, template),
                    scene=scene,
                    tier=tier,
                    category=split.category(name),
                )
            )
    return prompts


def _check_default_request(n_per_tier, tiers: Sequence[str]) -> None:
    if (
        isinstance(n_per_tier, bool)
        or not isinstance(n_per_tier, int)
        or not 1 <= n_per_tier <= MAX_PER_TIER
    ):
        raise ValueError(
            f"n_per_tier must be a positive integer <= {MAX_PER_TIER:,}, got {n_per_tier!r}"
        )
    unknown = [tier for tier in tiers if tier not in TIERS]
    if unknown or not tiers:
        raise ValueError(f"tiers must be a non-empty subset of {', '.join(TIERS)}, got {tiers}")


def _pick_entities(n_per_tier: int, seed: int, known, split, tiers) -> list[tuple]:
    """(tier, its Generator seeded by (seed, tier index), chosen names) per asked tier: names
    first, so the drawings are rendered in one call."""
    picked = []
    for t, tier in enumerate(TIERS):
        if tier not in tiers:
            continue
        pool = [n for n in split.names(tier) if known is None or n in known]
        if not pool:
            raise ValueError(f"no {tier} entity of the split is known to the evaluator")
        rng = np.random.default_rng((seed, t))
        chosen = rng.choice(len(pool), size=n_per_tier, replace=n_per_tier > len(pool))
        picked.append((tier, rng, [pool[i] for i in chosen]))
    return picked


# ---- JSONL files ------------------------------------------------------------------------------


def read_prompts(path: str | Path, known: Collection[str], split=None) -> list[BenchPrompt]:
    """A JSONL prompt set: each non-blank line an object with ``prompt``, ``entity`` (CLDR name),
    ``background``, ``position``, ``size``. The whole file is checked before anything runs; the
    first bad line raises :class:`PromptFileError` naming the line and the allowed values."""
    from reimagen.kb.splits import load_split

    path = Path(path)
    if not path.is_file():
        raise PromptFileError(f"--prompts: no such file: {path}")
    split = load_split() if split is None else split
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        at_line = data.count(b"\n", 0, err.start) + 1
        raise PromptFileError(
            f"{path}:{at_line}: not UTF-8 (byte {data[err.start]:#04x}); save the file as UTF-8"
        ) from None
    prompts = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            prompts.append(_parse_line(line, f"{path}:{number}", known, split))
    if not prompts:
        raise PromptFileError(
            f"{path}: no prompts (one JSON object per line: {', '.join(PROMPT_FIELDS)})"
        )
    return prompts


def _parse_line(line: str, where: str, known: Collection[str], split) -> BenchPrompt:
    try:
        blob = json.loads(line)
    except json.JSONDecodeError as err:
        raise PromptFileError(f"{where}: not valid JSON ({err.msg})") from None
    if not isinstance(blob, dict):
        raise PromptFileError(f"{where}: expected a JSON object with {', '.join(PROMPT_FIELDS)}")
    missing = [f for f in PROMPT_FIELDS if f not in blob]
    if missing:
        raise PromptFileError(
            f"{where}: missing field(s) {', '.join(missing)}; each line needs "
            f"{', '.join(PROMPT_FIELDS)}"
        )
    _check_prompt_text(blob["prompt"], where)
    _check_entity(blob["entity"], where, known)
    for field, allowed in (
        ("background", tuple(sc.COLOURS)),
        ("position", sc.POSITIONS),
        ("size", sc.SIZES),
    ):
        if blob[field] not in allowed:
            raise PromptFileError(
                f"{where}: unknown {field} {blob[field]!r}; allowed: {', '.join(allowed)}"
            )
    scene = sc.Scene(
        entity=blob["entity"],
        background=blob["background"],
        position=blob["position"],
        size=blob["size"],
    )
    tier, category = _labels(scene.entity, split)
    return BenchPrompt(prompt=blob["prompt"].strip(), scene=scene, tier=tier, category=category)


def _check_prompt_text(prompt, where: str) -> None:
    from reimagen.generation.pipeline import MAX_PROMPT_CHARS

    if not isinstance(prompt, str) or not prompt.strip():
        raise PromptFileError(f"{where}: prompt must be a non-empty string")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise PromptFileError(
            f"{where}: prompt has {len(prompt):,} characters; allowed: at most {MAX_PROMPT_CHARS:,}"
        )


def _check_entity(entity, where: str, known: Collection[str]) -> None:
    if not isinstance(entity, str) or entity not in known:
        close = difflib.get_close_matches(str(entity), list(known), n=3)
        hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
        raise PromptFileError(
            f"{where}: unknown entity {entity!r}{hint}; entity must be one of the {len(known)} "
            "CLDR emoji names the evaluator knows, e.g. 'red apple', 'flag Japan'"
        )


def write_prompts(path: str | Path, prompts: Sequence[BenchPrompt]) -> None:
    """The prompt set as JSONL (the format :func:`read_prompts` reads), written atomically."""
    from reimagen.core.io import atomic_write_text

    text = "".join(json.dumps(p.to_dict(), ensure_ascii=False) + "\n" for p in prompts)
    atomic_write_text(path, text)
