"""EntityBench's markdown tables: one line per row, columns chosen from its summary.

Table 2 / Fig. 5 of the paper as columns (faithfulness per tier, entity top-1 / top-5, text
alignment, neighbour recall), per-category faithfulness, generation time, and the unseen-tier
comparison with counts, Wilson intervals and a Fisher exact p (:mod:`reimagen.bench.significance`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from reimagen.bench.entitybench import RowResult
from reimagen.bench.prompt_sets import TIERS, BenchPrompt
from reimagen.bench.significance import fisher_greater, wilson_interval

RUN_FIELDS = ("setting", "k", "nfe", "seconds", "recall")  # table columns that are not metrics
TIMING_COLUMNS = [
    ("setting", "", "setting"),
    ("K", "", "k"),
    ("NFE / image", "", "nfe"),
    ("generation s", "", "seconds"),
]


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


def category_columns(results: Sequence[RowResult]) -> list[tuple[str, str, str]]:
    """Faithfulness per category that occurs in any result's summary."""
    categories = sorted(
        {g.split("/", 1)[1] for r in results for g in r.summary if g.startswith("category/")}
    )
    return [(c, f"category/{c}", "faithful") for c in categories]


def tier_counts(
    result: RowResult, prompts: Sequence[BenchPrompt], tier: str, metric: str = "faithful"
) -> tuple[int, int]:
    """(successes, prompts) of ``metric`` over the prompts of ``tier``."""
    mask = np.array([p.tier == tier for p in prompts])
    return int(np.asarray(result.scores[metric])[mask].sum()), int(mask.sum())


def interval_table(
    results: Sequence[RowResult],
    prompts: Sequence[BenchPrompt],
    baseline: RowResult,
    tier: str = "unseen",
) -> str:
    """Counts, rates with 95% Wilson intervals, and the rate's ratio to the baseline row, for
    faithfulness and entity top-1 on one tier (the issue's goal: unseen, with vs without
    retrieval), and the one-sided Fisher exact p that a row's faithful rate is no higher than
    the baseline's. A ratio over a baseline of 0 successes is written as "∞ (0 baseline)" (and as
    "- (0 and 0)" when the row has none either)."""
    head = (
        f"| row | setting | faithful {tier} | 95% interval | × baseline | p (> baseline) "
        f"| entity top-1 {tier} | 95% interval |"
    )
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
