"""EntityBench: prompt sets, automatic scoring, and the paper's Table 2 / Fig. 5 analogue.

Paper §4.2 rates each EntityDrawBench image 1 when it is "faithful to both the entity appearance
and the text description" (Table 2), split by frequent / infrequent entities (Fig. 5). Here both
halves are measured (DESIGN §8):

* entity faithfulness - the evaluator (:mod:`reimagen.bench.evaluator`) names the prompt's
  entity: top-1 (``entity_top1``) and within its top 5 (``entity_top5``);
* text alignment - the background colour and the position read from the pixels
  (:func:`reimagen.kb.scenes.read_scene`) are the ones the prompt asked for (``aligned``;
  the size is read and reported too, ``size``, but is not part of alignment);
* ``faithful`` = entity_top1 ∧ aligned: the Table-2 number.

A benchmark *row* is one (network, K, retrieval setting, sampling) combination; every row sees
the same prompts with the same initial noise (seed per batch of prompts), so rows differ only by
what they are conditioned on. Neighbours are retrieved once per setting at the largest K; the
row with K=k takes the first k (so K=1 ⊂ K=2 ⊂ K=3, as a retriever's top-k would be).
"""

from __future__ import annotations

import difflib
import json
import math
import sys
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from reimagen.diffusion.sampling_config import SamplingConfig
from reimagen.kb import scenes as sc

TIERS = ("frequent", "rare", "unseen")
PROMPT_FIELDS = ("prompt", "entity", "background", "position", "size")
METRICS = ("faithful", "entity_top1", "entity_top5", "aligned", "background", "position", "size")
NO_RETRIEVAL = "none"  # the setting of a row that retrieves nothing (K=0)
CEILING = "target scenes (ceiling)"  # the row that scores the targets themselves
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


# ---- prompt sets ----------------------------------------------------------------------------


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
    from reimagen.bench.evaluator import target_drawings
    from reimagen.kb.splits import load_split

    if (isinstance(n_per_tier, bool) or not isinstance(n_per_tier, int)
            or not 1 <= n_per_tier <= MAX_PER_TIER):
        raise ValueError(
            f"n_per_tier must be a positive integer <= {MAX_PER_TIER:,}, got {n_per_tier!r}"
        )
    unknown = [tier for tier in tiers if tier not in TIERS]
    if unknown or not tiers:
        raise ValueError(f"tiers must be a non-empty subset of {', '.join(TIERS)}, got {tiers}")
    split = load_split() if split is None else split
    picked = []  # (tier, its Generator, chosen names): names first, so one render call
    for t, tier in enumerate(TIERS):
        if tier not in tiers:
            continue
        pool = [n for n in split.names(tier) if known is None or n in known]
        if not pool:
            raise ValueError(f"no {tier} entity of the split is known to the evaluator")
        rng = np.random.default_rng((seed, t))
        chosen = rng.choice(len(pool), size=n_per_tier, replace=n_per_tier > len(pool))
        picked.append((tier, rng, [pool[i] for i in chosen]))
    _, drawings = target_drawings([name for _, _, names in picked for name in names])
    prompts = []
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
        line = data.count(b"\n", 0, err.start) + 1
        raise PromptFileError(f"{path}:{line}: not UTF-8 (byte {data[err.start]:#04x}); save the "
                              "file as UTF-8") from None
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
    if not isinstance(blob["prompt"], str) or not blob["prompt"].strip():
        raise PromptFileError(f"{where}: prompt must be a non-empty string")
    from reimagen.generation.pipeline import MAX_PROMPT_CHARS

    if len(blob["prompt"]) > MAX_PROMPT_CHARS:
        raise PromptFileError(f"{where}: prompt has {len(blob['prompt']):,} characters; allowed: "
                              f"at most {MAX_PROMPT_CHARS:,}")
    entity = blob["entity"]
    if not isinstance(entity, str) or entity not in known:
        close = difflib.get_close_matches(str(entity), list(known), n=3)
        hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
        raise PromptFileError(
            f"{where}: unknown entity {entity!r}{hint}; entity must be one of the {len(known)} "
            "CLDR emoji names the evaluator knows, e.g. 'red apple', 'flag Japan'"
        )
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
        entity=entity, background=blob["background"], position=blob["position"], size=blob["size"]
    )
    tier, category = _labels(entity, split)
    return BenchPrompt(prompt=blob["prompt"].strip(), scene=scene, tier=tier, category=category)


def write_prompts(path: str | Path, prompts: Sequence[BenchPrompt]) -> None:
    """The prompt set as JSONL (the format :func:`read_prompts` reads), written atomically."""
    from reimagen.core.io import atomic_write_text

    text = "".join(json.dumps(p.to_dict(), ensure_ascii=False) + "\n" for p in prompts)
    atomic_write_text(path, text)


# ---- scoring ----------------------------------------------------------------------------------


def score_images(evaluator, prompts: Sequence[BenchPrompt], images: np.ndarray) -> dict:
    """Score generated ``images`` uint8 [N, H, W, 3] against ``prompts`` [N].

    Returns bool arrays [N] for every name in METRICS, plus ``predicted`` (the evaluator's
    top-1 name per image) and ``confidence`` (its probability)."""
    images = np.asarray(images)
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images for {len(prompts)} prompts")
    top5, probs = evaluator.predict(images)
    read = [sc.read_scene(image, p.entity) for image, p in zip(images, prompts)]
    out = {
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
    from reimagen.bench.evaluator import target_drawings

    _, drawings = target_drawings([p.entity for p in prompts])
    return np.stack([sc.compose(d, p.scene, size) for d, p in zip(drawings, prompts)])


# ---- running rows -----------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Row:
    """One line of a results table: which network, how many neighbours from which view, and
    how it samples. ``setting`` is NO_RETRIEVAL when k == 0."""

    label: str
    network: str  # a key of the pipelines mapping: "base" | "baseline"
    k: int
    setting: str
    sampling: SamplingConfig

    def key(self) -> tuple:
        """Rows with equal keys produce the same images (computed once)."""
        return (self.network, self.k, self.setting, self.sampling.to_json())


@attrs.frozen(kw_only=True)
class RowResult:
    row: Row
    summary: dict  # summarise(...) of this row's scores
    scores: dict
    images: np.ndarray  # uint8 [N, H, W, 3]
    neighbor_rows: np.ndarray  # [N, K]
    recall: float  # fraction of prompts with the true entity among the K neighbours (nan: K=0)
    seconds: float  # wall time of generation (retrieval excluded, cached per setting)
    nfe: int  # network evaluations per sample

    def to_dict(self, prompts: Sequence[BenchPrompt] | None = None) -> dict[str, Any]:
        blob = {
            "label": self.row.label,
            "network": self.row.network,
            "k": self.row.k,
            "setting": self.row.setting,
            "sampling": self.row.sampling.to_dict(),
            "seconds": round(self.seconds, 2),
            "nfe": self.nfe,
            "images_per_second": round(len(self.images) / max(self.seconds, 1e-9), 3),
            "neighbor_recall": None if np.isnan(self.recall) else round(self.recall, 4),
            "metrics": self.summary,
        }
        if prompts is not None:
            blob["per_prompt"] = [
                {
                    "entity": p.entity,
                    "predicted": self.scores["predicted"][i],
                    "confidence": round(float(self.scores["confidence"][i]), 4),
                    **{m: bool(self.scores[m][i]) for m in METRICS},
                }
                for i, p in enumerate(prompts)
            ]
        return blob


class BenchRunner:
    """Generates and scores rows over one prompt set.

    pipelines: network name -> reimagen.generation.pipeline.Pipeline; retrievers: setting -> a fitted
    retriever over that view of the pipelines' knowledge base; evaluator: the judge. Prompt i
    is sampled from the noise of (seed, i), so the images do not depend on ``batch_size``.
    ``log`` gets one line per finished row; ``on_batch(row, n)`` is called with n=0 as a row
    starts, then after each generated batch of ``n`` prompts (a progress bar's tick)."""

    def __init__(
        self,
        prompts: Sequence[BenchPrompt],
        *,
        pipelines: dict,
        retrievers: dict,
        evaluator,
        seed: int = 0,
        batch_size: int = 32,
        log: Callable[[str], None] | None = None,
        on_batch: Callable[[Row, int], None] | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.prompts = list(prompts)
        self.pipelines, self.retrievers, self.evaluator = pipelines, retrievers, evaluator
        self.seed, self.batch_size = int(seed), int(batch_size)
        self.log = log or (lambda message: print(message, file=sys.stderr, flush=True))
        self.on_batch = on_batch or (lambda row, n: None)
        self._neighbors: dict[str, np.ndarray] = {}
        self._done: dict[tuple, RowResult] = {}
        self._warm: set[str] = set()

    def check(self, rows: Sequence[Row]) -> None:
        """Every row's network, setting and sampling names exist - before any generation."""
        from reimagen.core import registry

        for row in rows:
            if row.network not in self.pipelines:
                raise ValueError(f"row {row.label!r}: no {row.network!r} network loaded")
            if row.k < 0:
                raise ValueError(f"row {row.label!r}: k must be >= 0, got {row.k}")
            if row.k and row.setting not in self.retrievers:
                raise ValueError(
                    f"row {row.label!r}: no retriever for setting {row.setting!r}; "
                    f"have {', '.join(self.retrievers) or 'none'}"
                )
            registry.get("sampler", row.sampling.sampler)
            registry.get("guidance", row.sampling.guidance)

    def ceiling(self, size: int = 32) -> RowResult:
        """The target scenes scored as if generated: the most any generator can score here
        (the evaluator's own errors on these prompts; alignment is 1 by construction)."""
        images = target_images(self.prompts, size)
        scores = score_images(self.evaluator, self.prompts, images)
        row = Row(
            label=CEILING, network="none", k=0, setting=NO_RETRIEVAL, sampling=SamplingConfig()
        )
        empty = np.zeros((len(self.prompts), 0), np.int64)
        return RowResult(
            row=row,
            summary=summarise(self.prompts, scores),
            scores=scores,
            images=images,
            neighbor_rows=empty,
            recall=float("nan"),
            seconds=0.0,
            nfe=0,
        )

    def run(self, rows: Sequence[Row]) -> list[RowResult]:
        self.check(rows)
        self.warm_up({row.network for row in rows})
        return [self.run_row(row) for row in rows]

    def warm_up(self, networks) -> None:
        """One tiny untimed generation per network (text encoder load, first-call kernel set-up),
        so the first row's wall time is not inflated."""
        for name in sorted(networks):
            if name not in self._warm:
                self.pipelines[name].generate(
                    [self.prompts[0].prompt], k=0, sampling=SamplingConfig(steps=1, guidance="none")
                )
                self._warm.add(name)

    def neighbors(self, setting: str, k: int) -> np.ndarray:
        """KB rows [N, k]: the setting's top-k per prompt (retrieved once at the largest k)."""
        have = self._neighbors.get(setting)
        if have is None or have.shape[1] < k:
            found = self.retrievers[setting].search([p.prompt for p in self.prompts], k)
            have = self._neighbors[setting] = np.asarray(found.ids, np.int64)
        return have[:, :k]

    def run_row(self, row: Row) -> RowResult:
        if row.key() in self._done:
            return attrs.evolve(self._done[row.key()], row=row)
        pipeline = self.pipelines[row.network]
        n = len(self.prompts)
        rows = self.neighbors(row.setting, row.k) if row.k else np.zeros((n, 0), np.int64)
        images, seconds, nfe = [], 0.0, 0
        self.on_batch(row, 0)
        for start in range(0, n, self.batch_size):
            chunk = slice(start, start + self.batch_size)
            prompts = [p.prompt for p in self.prompts[chunk]]
            out = pipeline.generate(
                prompts,
                k=row.k,
                sampling=row.sampling,
                seed=self.seed,
                neighbor_rows=rows[chunk],
                indices=range(start, start + len(prompts)),  # noise of prompt i: (seed, i)
            )
            images.append(out.images)
            seconds, nfe = seconds + out.seconds, out.nfe
            self.on_batch(row, len(prompts))
        images = np.concatenate(images)
        scores = score_images(self.evaluator, self.prompts, images)
        result = RowResult(
            row=row,
            summary=summarise(self.prompts, scores),
            scores=scores,
            images=images,
            neighbor_rows=rows,
            recall=self._recall(pipeline.kb, rows),
            seconds=seconds,
            nfe=nfe,
        )
        self._done[row.key()] = result
        all_ = result.summary["all"]
        self.log(
            f"{row.label} [{row.setting}]: faithful {all_['faithful']:.3f}, entity top-1 "
            f"{all_['entity_top1']:.3f}, aligned {all_['aligned']:.3f} "
            f"({n} images, {seconds:.1f} s)"
        )
        return result

    def _recall(self, kb, rows: np.ndarray) -> float:
        if rows.shape[1] == 0 or kb is None:
            return float("nan")
        hits = [
            any(kb.records[int(r)].entity == p.entity for r in found)
            for p, found in zip(self.prompts, rows)
        ]
        return float(np.mean(hits))


# ---- reports ----------------------------------------------------------------------------------


RUN_FIELDS = ("setting", "k", "nfe", "seconds", "recall")  # table columns that are not metrics


def table(results: Sequence[RowResult], columns: Sequence[tuple[str, str, str]]) -> str:
    """A markdown table, one line per result. columns = (header, group, metric): a metric of a
    summary group ("tier/rare", "faithful"), or (header, "", field) for a RUN_FIELDS field."""
    lines = [
        "| row | " + " | ".join(c[0] for c in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for result in results:
        cells = [_cell(result, group, metric) for _, group, metric in columns]
        lines.append(f"| {result.row.label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(result: RowResult, group: str, metric: str) -> str:
    if metric in RUN_FIELDS:
        value = getattr(result.row if metric in ("setting", "k") else result, metric)
        if isinstance(value, float):
            return "-" if np.isnan(value) else f"{value:.2f}"
        return str(value)
    stats = result.summary.get(group)
    return "-" if stats is None else f"{stats[metric]:.2f}"


def tier_columns() -> list[tuple[str, str, str]]:
    """Table 2 / Fig. 5: faithfulness per tier, then the two halves over all prompts."""
    return [
        *((f"faithful {t}", f"tier/{t}", "faithful") for t in TIERS),
        ("faithful all", "all", "faithful"),
        ("entity top-1", "all", "entity_top1"),
        ("entity top-5", "all", "entity_top5"),
        *((f"entity top-1 {t}", f"tier/{t}", "entity_top1") for t in TIERS),
        ("text aligned", "all", "aligned"),
        ("neighbour recall", "all", "recall"),
    ]


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (95% for z=1.96): unlike the normal
    approximation it stays inside [0, 1] and is informative at 0 or 1 successes."""
    if n <= 0:
        return float("nan"), float("nan")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def fisher_greater(hits: int, n: int, base_hits: int, base_n: int) -> float:
    """One-sided Fisher exact test: the probability, were both rows one rate, that the first
    row gets ``hits`` or more of the pooled successes (small: the first row is higher)."""
    total, pooled = n + base_n, hits + base_hits
    denominator = math.comb(total, pooled)
    tail = sum(math.comb(n, x) * math.comb(base_n, pooled - x)
               for x in range(hits, min(n, pooled) + 1))
    return tail / denominator


def tier_counts(result: RowResult, prompts: Sequence[BenchPrompt], tier: str,
                metric: str = "faithful") -> tuple[int, int]:
    """(successes, prompts) of ``metric`` over the prompts of ``tier``."""
    mask = np.array([p.tier == tier for p in prompts])
    return int(np.asarray(result.scores[metric])[mask].sum()), int(mask.sum())


def interval_table(results: Sequence[RowResult], prompts: Sequence[BenchPrompt],
                   baseline: RowResult, tier: str = "unseen") -> str:
    """Counts, rates with 95% Wilson intervals, and the rate's ratio to the baseline row, for
    faithfulness and entity top-1 on one tier (the issue's goal: unseen, with vs without
    retrieval), and the one-sided Fisher exact p that a row's faithful rate is no higher than
    the baseline's. A ratio over a baseline of 0 successes is written as "∞ (0 baseline)" (and as
    "- (0 and 0)" when the row has none either)."""
    head = (f"| row | setting | faithful {tier} | 95% interval | × baseline | p (> baseline) "
            f"| entity top-1 {tier} | 95% interval |")
    lines = [head, "|---|---|---:|---:|---:|---:|---:|---:|"]
    base_hits, base_n = tier_counts(baseline, prompts, tier)
    for result in results:
        cells = []
        for metric in ("faithful", "entity_top1"):
            hits, n = tier_counts(result, prompts, tier, metric)
            lo, hi = wilson_interval(hits, n)
            cells += [f"{hits}/{n} = {hits / n:.3f}", f"[{lo:.3f}, {hi:.3f}]"]
            if metric == "faithful" and result is baseline:
                cells += ["-", "-"]
            elif metric == "faithful":
                ratio = f"{hits / base_hits:.1f}" if base_hits else "∞ (0 baseline)"
                ratio = "- (0 and 0)" if hits == base_hits == 0 else ratio
                cells += [ratio, f"{fisher_greater(hits, n, base_hits, base_n):.2g}"]
        lines.append(f"| {result.row.label} | {result.row.setting} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def category_columns(results: Sequence[RowResult]) -> list[tuple[str, str, str]]:
    categories = sorted(
        {g.split("/", 1)[1] for r in results for g in r.summary if g.startswith("category/")}
    )
    return [(c, f"category/{c}", "faithful") for c in categories]


def save_grid(path: Path, images: np.ndarray, columns: int = 16, scale: int = 2) -> None:
    """Images uint8 [N, H, W, 3] tiled row-major into one PNG (nearest upscale), atomically."""
    from PIL import Image

    from reimagen.core.io import atomic_path

    n, h, w, _ = images.shape
    columns = max(1, min(columns, n))
    rows = -(-n // columns)
    sheet = np.full((rows * (h + 1), columns * (w + 1), 3), 255, np.uint8)
    for i, image in enumerate(images):
        y, x = divmod(i, columns)
        sheet[y * (h + 1) : y * (h + 1) + h, x * (w + 1) : x * (w + 1) + w] = image
    picture = Image.fromarray(sheet).resize(
        (sheet.shape[1] * scale, sheet.shape[0] * scale), Image.NEAREST
    )
    with atomic_path(path) as tmp:
        picture.save(tmp, format="PNG")
