"""``reimagen bench``: EntityBench, the paper's Table 2 / Fig. 5 analogue (DESIGN §8).

Rows: the no-retrieval "Imagen" row (the shipped ``baseline`` network when there is one, else the
base network with K=0: the table says which), then Re-Imagen with each K of ``--k``, for each
retrieval setting (same-style: Twemoji references retrievable; cross-style: other artists only).
Columns: faithfulness (entity named by the evaluator AND background + position read from pixels)
per tier, entity top-1/top-5, text alignment, neighbour recall, and faithfulness per category.

Writes ``results.json``, ``results.md``, ``prompts.jsonl``, one image grid per row and
``report.html`` (all of it on one page, :mod:`reimagen.bench.report`; ``--no-report``: not) to
``--out`` (atomically, as one set); prints the markdown. Everything is validated before a
network loads.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from reimagen.cli.common import SETTINGS, add_sampling_arguments, sampling_from_args
from reimagen.cli.main import UserError
from reimagen.core import registry
from reimagen.generation.shipped import DEFAULT_RETRIEVER

FORMAT = "reimagen-entitybench"
TIMING_COLUMNS = [
    ("setting", "", "setting"),
    ("K", "", "k"),
    ("NFE / image", "", "nfe"),
    ("generation s", "", "seconds"),
]


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "bench",
        help="EntityBench: faithfulness and text alignment, with and without retrieval",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_common_arguments(parser, out="outputs/bench", n=8)
    parser.add_argument("--k", default="1,2,3", help="comma-separated K values (neighbours)")
    parser.add_argument(
        "--settings",
        default=",".join(SETTINGS),
        help=f"comma-separated retrieval settings: {', '.join(SETTINGS)}",
    )
    parser.add_argument(
        "--recall-only",
        action="store_true",
        help="measure neighbour recall per retriever x setting x K, no network "
        "(docs/results/retrieval-recall.md)",
    )
    parser.add_argument(
        "--retrievers",
        default=None,
        help="--recall-only: comma-separated retriever names (default: --retriever)",
    )
    parser.add_argument("--evaluators", default=None, metavar="NAME,...",
                        help="--kb COLLECTION: registered evaluators (component kind evaluator, "
                        "reimagen.bench.evaluators) scoring the held-out outputs (default: all)")
    add_sampling_arguments(parser)
    parser.set_defaults(func=run)


def add_common_arguments(parser, *, out: str, n: int) -> None:
    """Options bench and ablate share: prompts, seed, output, KB/retriever/encoder, judge."""
    parser.add_argument("--n", type=int, default=n, help="default prompt set: prompts per tier")
    parser.add_argument(
        "--prompts",
        type=Path,
        default=None,
        help="JSONL prompt set (prompt, entity, background, position, size)",
    )
    parser.add_argument("--seed", type=int, default=0, help="prompt draw and sampling seed")
    parser.add_argument("--tiers", default="frequent,rare,unseen",
                        help="default prompt set: which tiers (e.g. unseen alone, --n 333 = "
                        "every unseen entity once)")
    parser.add_argument("--out", type=Path, default=Path(out), help="output folder")
    parser.add_argument("--batch-size", type=int, default=32, help="prompts per generate call")
    parser.add_argument(
        "--kb",
        type=Path,
        default=None,
        help="knowledge-base folder (default: the built-in emoji KB)",
    )
    parser.add_argument("--retriever", default=DEFAULT_RETRIEVER,
                        help="registered retriever name (bm25: the one the weights were trained with)")
    parser.add_argument("--encoder", default=None,
                        help="registered text encoder name (default: the one the weights were trained with; the dense retriever: minilm)")
    parser.add_argument("--backend", default="torch", help="torch | jax")
    parser.add_argument("--weights", type=Path, default=None, metavar="FOLDER",
                        help="a folder of exported stages: base.safetensors (a training run's "
                        "--export) and, optionally, baseline.safetensors (default: the shipped "
                        "weights, or $REIMAGEN_WEIGHTS)")
    parser.add_argument(
        "--evaluator", type=Path, default=None, help="evaluator folder (default: the shipped one)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads (0: all cores; 1 is much faster on a busy machine)",
    )
    parser.add_argument("--no-report", action="store_true",
                        help="skip report.html (the tables, each row's images beside their "
                        "references, the plots, on one self-contained page)")


def comma_list(text: str, option: str, allowed=None, cast=str) -> list:
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    try:
        values = [cast(t) for t in items]
    except ValueError:
        raise UserError(f"{option}: expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise UserError(f"{option}: empty list")
    bad = [v for v in values if allowed is not None and v not in allowed]
    if bad:
        raise UserError(
            f"{option}: unknown value(s) {bad}; allowed: {', '.join(map(str, allowed))}"
        )
    return values


# ---- shared setup: validate, then load -----------------------------------------------------------


def load_prompts(args):
    """(prompts, evaluator meta) - the prompt file is checked line by line before any load."""
    from reimagen.bench.entitybench import (
        MAX_PER_TIER,
        PromptFileError,
        default_prompts,
        read_prompts,
    )
    from reimagen.bench.evaluator import EvaluatorError, read_meta
    from reimagen.cli.common import check_seed

    if not 1 <= args.n <= MAX_PER_TIER:
        raise UserError(f"--n must be in [1, {MAX_PER_TIER}] (prompts per tier), got {args.n}")
    check_seed(args.seed)
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    from reimagen.bench.entitybench import TIERS

    tiers = comma_list(args.tiers, "--tiers", allowed=TIERS)
    try:
        meta = read_meta(args.evaluator)
        known = frozenset(meta["entities"])
        if args.prompts is not None:
            return read_prompts(args.prompts, known), meta
        return default_prompts(args.n, args.seed, known=known, tiers=tiers), meta
    except (PromptFileError, EvaluatorError) as err:
        raise UserError(str(err)) from None


def check_components(args, need_retrieval: bool = True) -> None:
    from reimagen.cli.common import check_out_folder, check_threads
    from reimagen.generation.shipped import available_stages, stage_config, weights_path

    check_out_folder(args.out)  # before the run, not when its results are written
    registry.get("backend", args.backend)
    if args.encoder:
        registry.get("encoder", args.encoder)
    registry.get("retriever", args.retriever)
    if need_retrieval and args.retriever == "none":
        raise UserError("--retriever none retrieves nothing; K > 0 rows need a retriever")
    check_threads(args.threads)
    if args.weights is not None and not args.weights.is_dir():
        raise UserError(f"--weights: {args.weights} is not a folder (it must hold "
                        "base.safetensors, optionally baseline.safetensors)")
    if "base" not in available_stages(args.weights):
        raise UserError(
            f"no base network at {weights_path('base', args.weights)}; train it with "
            "`reimagen train --stage base --export` or set --weights"
        )
    for stage in available_stages(args.weights):  # headers only: each file fits its stage
        stage_config(stage, args.weights)


def load_parts(args, settings, need_retrieval: bool, k_max: int = 0):
    """(pipelines {"base", "baseline"?}, retrievers {setting: retriever}, evaluator)."""
    from reimagen.bench.evaluator import Evaluator
    from reimagen.cli.common import check_kb_fits, open_kb, open_retriever
    from reimagen.generation.shipped import available_stages, load_stage, stage_config

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    kb = open_kb(args.kb)
    for setting in settings:  # before any index is built or network loaded
        check_kb_fits(kb, "--kb",
                      image_size=stage_config("base", args.weights).image_size if k_max else 0,
                      k=k_max if need_retrieval else 0, setting=setting)
    # the networks first: a bad weights file fails before an index is built beside the KB
    pipelines = {stage: load_stage(stage, kb=kb, encoder=args.encoder, backend=args.backend,
                                   folder=args.weights)
                 for stage in ("base", "baseline") if stage in available_stages(args.weights)}
    retrievers = {}
    if need_retrieval:
        retrievers = {s: open_retriever(kb, args.retriever, s, args.encoder) for s in settings}
    return pipelines, retrievers, Evaluator.load(args.evaluator)


def no_retrieval_row(pipelines, sampling, label="Imagen (no retrieval)"):
    """The "Imagen" row: the baseline network with its own guidance, or the base network with
    K=0 and joint guidance at the text weight (interleaving needs two conditions)."""
    from reimagen.bench.entitybench import NO_RETRIEVAL, Row
    from reimagen.generation.shipped import DEFAULT_SAMPLING

    shared = {
        "sampler": sampling.sampler,
        "steps": sampling.steps,
        "thresholding": sampling.thresholding,
    }
    if "baseline" in pipelines:
        return Row(
            label=f"{label}: baseline network",
            network="baseline",
            k=0,
            setting=NO_RETRIEVAL,
            sampling=DEFAULT_SAMPLING["baseline"].replace(**shared),
        )
    return Row(
        label=f"{label}: base network, K=0",
        network="base",
        k=0,
        setting=NO_RETRIEVAL,
        sampling=sampling.replace(guidance="joint", w=sampling.w_text),
    )


STAGING_PREFIX = ".writing-"  # out/.writing-<pid>-*: one run's outputs before they move in


def write_outputs(out: Path, blob: dict, markdown: str, prompts, results,
                  report: str | None = None) -> None:
    """results.json, results.md, prompts.jsonl, grid_<i>.png (row i's images in prompt
    order, 16 a line) and ``report`` as report.html, as one set: all are written into a staging
    folder inside ``out`` first, then renamed into place, and grids an earlier run left beyond
    this run's rows (and its report.html, when this run writes none) are removed.
    A full disk or a crash while writing leaves the previous set as it was (the staging folder
    is removed, or by the next run if the process was killed); other files in ``out`` are
    never touched."""
    import os
    import shutil
    import tempfile

    from reimagen.bench.entitybench import save_grid, write_prompts
    from reimagen.core.folder_swap import abandoned, lock_dir
    from reimagen.core.io import atomic_write_text, name_the_file

    out.mkdir(parents=True, exist_ok=True)
    for entry in out.glob(STAGING_PREFIX + "*"):  # what a killed run left
        if entry.is_dir() and abandoned(entry, STAGING_PREFIX):
            shutil.rmtree(entry, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=out))
    lock = lock_dir(staging)
    try:
        write_prompts(staging / "prompts.jsonl", prompts)
        for index, result in enumerate(results):
            save_grid(staging / f"grid_{index:02d}.png", result.images)
        text = json.dumps(blob, indent=1, ensure_ascii=False) + "\n"
        atomic_write_text(staging / "results.json", text)
        atomic_write_text(staging / "results.md", markdown)
        if report is not None:
            atomic_write_text(staging / "report.html", report)
        written = {path.name for path in staging.iterdir()}
        for name in sorted(written):
            os.replace(staging / name, out / name)
        for stale in [*out.glob("grid_*.png"), *out.glob("report.html")]:
            if stale.name not in written:
                stale.unlink()
    except OSError as err:
        name_the_file(err, out)
        raise
    finally:
        os.close(lock)
        shutil.rmtree(staging, ignore_errors=True)


def header(args, meta, pipelines, prompts, seconds: float) -> dict:
    from reimagen.generation.shipped import weights_path

    return {
        "format": FORMAT,
        "format_version": 1,
        "command": "reimagen " + " ".join(sys.argv[1:]),
        "seed": args.seed,
        "retriever": args.retriever,  # the "neighbour recall" column is this retriever's
        "prompts": str(args.prompts) if args.prompts else f"default: {args.n} per tier",
        "n_prompts": len(prompts),
        "networks": {name: str(weights_path(name, args.weights)) for name in pipelines},
        "evaluator": {
            "weights_sha256": meta["weights_sha256"],
            "ceiling": meta.get("accuracy", {}).get("clean", {}),
        },
        "wall_seconds": round(seconds, 1),
    }


def evaluator_note(meta) -> str:
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


# ---- bench --------------------------------------------------------------------------------------


def run(args) -> int:
    from reimagen.bench.entitybench import (
        BenchRunner,
        Row,
        category_columns,
        interval_table,
        table,
        tier_columns,
    )
    from reimagen.cli import bench_kb
    from reimagen.cli.common import check_k_option, check_out_folder
    from reimagen.cli.progress import bar, prompt_ticker, row_logger
    from reimagen.generation.shipped import DEFAULT_SAMPLING

    if bench_kb.is_collection_folder(args.kb):  # your own collection: its held-out records
        return bench_kb.run(args)
    if args.evaluators is not None:
        raise UserError("--evaluators only applies with a collection --kb (a KB of plain "
                        "image-caption records)")
    if args.recall_only:
        from reimagen.cli import recall

        check_out_folder(args.out)
        return recall.run(args)
    if args.retrievers is not None:
        raise UserError("--retrievers only applies with --recall-only; bench uses --retriever")
    ks = comma_list(args.k, "--k", cast=int)
    if any(k < 1 for k in ks):
        raise UserError(f"--k values must be >= 1 (the no-retrieval row is always run), got {ks}")
    for k in ks:
        check_k_option(k, "--k values", low=1)
    settings = comma_list(args.settings, "--settings", allowed=SETTINGS)
    sampling = sampling_from_args(args, DEFAULT_SAMPLING["base"])
    check_components(args)
    prompts, meta = load_prompts(args)

    started = time.perf_counter()
    pipelines, retrievers, evaluator = load_parts(args, settings, need_retrieval=True,
                                                  k_max=max(ks))
    baseline = no_retrieval_row(pipelines, sampling)
    rows = [baseline] + [
        Row(label=f"Re-Imagen K={k}", network="base", k=k, setting=s, sampling=sampling)
        for s in settings
        for k in ks
    ]
    distinct = len({row.key() for row in rows})  # equal rows are generated once
    with bar(distinct * len(prompts), "bench", unit="prompt") as progress:
        runner = BenchRunner(
            prompts,
            pipelines=pipelines,
            retrievers=retrievers,
            evaluator=evaluator,
            seed=args.seed,
            batch_size=args.batch_size,
            log=row_logger(progress, advance=0),
            on_batch=prompt_ticker(progress),
        )
        generated = runner.run(rows)
    size = generated[0].images.shape[1]
    results = [runner.ceiling(size), *generated]  # row 0: the targets themselves
    seconds = time.perf_counter() - started

    lines = [
        f"# EntityBench ({len(prompts)} prompts, seed {args.seed}, retriever {args.retriever})",
        "",
    ]
    lines += [
        (
            "Faithful = the evaluator names the entity (top-1) and the background colour and "
            "position read from the pixels match the prompt. The first row scores the prompts' "
            "target scenes (Twemoji composites) as if generated: the most a generator can score "
            f"on these prompts. {evaluator_note(meta)}"
        ),
        "",
    ]
    for setting in settings:
        chosen = results[:2] + [r for r in results[2:] if r.row.setting == setting]
        lines += [
            f"## {setting}",
            "",
            table(chosen, tier_columns()),
            "",
            "Faithfulness per category:",
            "",
            table(chosen, category_columns(chosen)),
            "",
        ]
    if any(p.tier == "unseen" for p in prompts):
        lines += [
            "## Unseen entities: with vs without retrieval",
            "",
            ("Counts over the unseen prompts, 95% Wilson intervals, and the faithful rate as a "
             "multiple of the no-retrieval row's (the goal: ≥3× in the same-style setting)."),
            "",
            interval_table(generated, prompts, generated[0]),
            "",
        ]
    lines += ["## Generation time", "", table(generated, TIMING_COLUMNS), ""]
    lines += [f"Wall time {seconds:.1f} s (loading, retrieval, generation and scoring).", ""]
    lines += [
        "Images, one grid per row: "
        + "; ".join(
            f"grid_{i:02d}.png {r.row.label} [{r.row.setting}]" for i, r in enumerate(results)
        )
        + "."
    ]
    markdown = "\n".join(lines) + "\n"
    blob = header(args, meta, pipelines, prompts, seconds)
    blob["rows"] = [r.to_dict(prompts) for r in results]
    report = None
    if not args.no_report:
        from reimagen.bench.report import render

        report = render(markdown, [("Images: each row's outputs beside their references",
                                    results)], prompts, kb=pipelines["base"].kb)
    write_outputs(args.out, blob, markdown, prompts, results, report=report)
    print(markdown)
    print(f"wrote {args.out}/results.json, results.md, prompts.jsonl, {len(results)} grids"
          + ("" if report is None else " and report.html"))
    return 0
