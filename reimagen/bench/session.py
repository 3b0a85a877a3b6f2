"""What ``reimagen bench`` and ``reimagen ablate`` share: the networks, retrievers and judge a
run loads, the :class:`~reimagen.bench.entitybench.BenchRunner` over them, and the header of
its results.json.

The CLI checks every argument first (reimagen.cli.bench); these functions then do the work and
raise the library's own errors.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs

from reimagen.bench.entitybench import BenchRunner, Row
from reimagen.bench.prompt_sets import BenchPrompt

FORMAT = "reimagen-entitybench"
STAGES = ("base", "baseline")  # the networks a bench run loads, when their weights exist


@attrs.frozen
class BenchParts:
    """Everything a run generates and scores with."""

    pipelines: dict[str, Any]  # "base" and, when shipped, "baseline" -> Pipeline
    retrievers: dict[str, Any]  # retrieval setting -> retriever over that view (may be empty)
    evaluator: Any  # reimagen.bench.evaluator.Evaluator, the judge


def load_parts(
    kb,
    *,
    settings: Sequence[str],
    retriever: str,
    encoder: str | None,
    backend: str,
    weights: Path | None,
    evaluator: Path | None,
    need_retrieval: bool,
) -> BenchParts:
    """The networks first (a bad weights file fails before an index is built beside the KB),
    then one retriever per setting (its saved index, built on first use), then the judge."""
    from reimagen.bench.evaluator import Evaluator
    from reimagen.generation.pretrained import open_retriever
    from reimagen.generation.shipped import available_stages, load_stage

    pipelines = {
        stage: load_stage(stage, kb=kb, encoder=encoder, backend=backend, folder=weights)
        for stage in STAGES
        if stage in available_stages(weights)
    }
    retrievers = {}
    if need_retrieval:
        retrievers = {s: open_retriever(kb, retriever, s, encoder) for s in settings}
    return BenchParts(pipelines, retrievers, Evaluator.load(evaluator))


def make_runner(
    prompts: Sequence[BenchPrompt],
    parts: BenchParts,
    *,
    seed: int,
    batch_size: int,
    log: Callable[[str], None] | None = None,
    on_batch: Callable[[Row, int], None] | None = None,
) -> BenchRunner:
    """A BenchRunner over ``parts`` (see its docstring for ``log`` and ``on_batch``)."""
    return BenchRunner(
        prompts,
        pipelines=parts.pipelines,
        retrievers=parts.retrievers,
        evaluator=parts.evaluator,
        seed=seed,
        batch_size=batch_size,
        log=log,
        on_batch=on_batch,
    )


def command_line() -> str:
    """The command as typed (recorded in every results file)."""
    return "reimagen " + " ".join(sys.argv[1:])


def header(
    *,
    seed: int,
    retriever: str,
    prompts_file: Path | None,
    n_per_tier: int,
    prompts: Sequence[BenchPrompt],
    pipelines: dict,
    weights: Path | None,
    meta: dict,
    seconds: float,
) -> dict:
    """The head of results.json: what ran (command, seed, retriever, prompt set, weights files,
    the judge's hash and ceiling) and the wall time."""
    from reimagen.generation.shipped import weights_path

    return {
        "format": FORMAT,
        "format_version": 1,
        "command": command_line(),
        "seed": seed,
        "retriever": retriever,  # the "neighbour recall" column is this retriever's
        "prompts": str(prompts_file) if prompts_file else f"default: {n_per_tier} per tier",
        "n_prompts": len(prompts),
        "networks": {name: str(weights_path(name, weights)) for name in pipelines},
        "evaluator": {
            "weights_sha256": meta["weights_sha256"],
            "ceiling": meta.get("accuracy", {}).get("clean", {}),
        },
        "wall_seconds": round(seconds, 1),
    }


def evaluator_note(meta: dict) -> str:
    """One sentence: the judge's top-1 / top-5 on real composites (the most a row can score)."""
    ceiling = meta.get("accuracy", {}).get("clean", {})
    if not ceiling:
        return ""
    parts = ", ".join(
        f"{g.split('/')[-1]} {v['top1']:.2f}" for g, v in ceiling.items() if g.startswith("tier/")
    )
    return (
        f"Evaluator ceiling (top-1 on real composites): all {ceiling['all']['top1']:.2f}"
        f" ({parts}); top-5 {ceiling['all']['top5']:.2f}."
    )
