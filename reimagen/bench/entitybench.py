"""EntityBench rows and their runner: generate every row's images and score them.

A benchmark *row* is one (network, K, retrieval setting, sampling) combination; every row sees
the same prompts with the same initial noise (seed per prompt), so rows differ only by what they
are conditioned on. Neighbours are retrieved once per setting at the largest K; the row with K=k
takes the first k (so K=1 ⊂ K=2 ⊂ K=3, as a retriever's top-k would be). Prompt sets:
:mod:`reimagen.bench.prompt_sets`; the metrics: :mod:`reimagen.bench.scoring`; tables:
:mod:`reimagen.bench.tables`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import numpy as np

from reimagen.bench.prompt_sets import BenchPrompt
from reimagen.bench.scoring import METRICS, score_images, summarise, target_images
from reimagen.diffusion.sampling_config import SamplingConfig

NO_RETRIEVAL = "none"  # the setting of a row that retrieves nothing (K=0)
CEILING = "target scenes (ceiling)"  # the row that scores the targets themselves


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
        """Generate the row's images (or reuse an equal row's), score them and log one line."""
        if row.key() in self._done:
            return attrs.evolve(self._done[row.key()], row=row)
        pipeline = self.pipelines[row.network]
        n = len(self.prompts)
        rows = self.neighbors(row.setting, row.k) if row.k else np.zeros((n, 0), np.int64)
        images, seconds, nfe = self._generate(row, pipeline, rows)
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

    def _generate(self, row: Row, pipeline, rows: np.ndarray) -> tuple[np.ndarray, float, int]:
        """(images uint8 [N, H, W, 3], generation seconds, NFE per sample) of one row, in
        batches of ``batch_size``, with its neighbour rows [N, K]."""
        images, seconds, nfe = [], 0.0, 0
        self.on_batch(row, 0)
        for start in range(0, len(self.prompts), self.batch_size):
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
        return np.concatenate(images), seconds, nfe

    def _recall(self, kb, rows: np.ndarray) -> float:
        if rows.shape[1] == 0 or kb is None:
            return float("nan")
        hits = [
            any(kb.records[int(r)].entity == p.entity for r in found)
            for p, found in zip(self.prompts, rows)
        ]
        return float(np.mean(hits))
