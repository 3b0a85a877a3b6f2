"""``reimagen bench``: EntityBench, the paper's Table 2 / Fig. 5 analogue (docs/design.md §8).

Rows: the no-retrieval "Imagen" row (the shipped ``baseline`` network when there is one, else the
base network with K=0: the table says which), then Re-Imagen with each K of ``--k``, for each
retrieval setting (same-style: Twemoji references retrievable; cross-style: other artists only).
Columns: faithfulness (entity named by the evaluator AND background + position read from pixels)
per tier, entity top-1/top-5, text alignment, neighbour recall, and faithfulness per category.

Writes ``results.json``, ``results.md``, ``prompts.jsonl``, one image grid per row and
``report.html`` (all of it on one page, :mod:`reimagen.bench.report`; ``--no-report``: not) to
``--out`` (atomically, as one set); prints the markdown. Everything is validated before a
network loads.

This module parses and checks the options (``ablate``, ``bench --recall-only`` and
``bench --kb COLLECTION`` reuse its option helpers); the work is the library's:
:mod:`reimagen.bench.session` (load, run), :mod:`reimagen.bench.bench_table` (rows, markdown)
and :mod:`reimagen.bench.result_files` (the files).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from reimagen.cli.common import (
    SETTINGS,
    add_retrieval_arguments,
    add_sampling_arguments,
    sampling_from_args,
)
from reimagen.cli.main import UserError
from reimagen.core import registry


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
    parser.add_argument(
        "--evaluators",
        default=None,
        metavar="NAME,...",
        help="--kb COLLECTION: registered evaluators (component kind evaluator, "
        "reimagen.bench.evaluators) scoring the held-out outputs (default: all)",
    )
    add_sampling_arguments(parser)
    parser.set_defaults(func=run)


def add_common_arguments(parser, *, out: str, n: int) -> None:
    """Options bench and ablate share: prompts, seed, output, KB/retriever/encoder, judge."""
    _add_prompt_arguments(parser, out=out, n=n)
    _add_component_arguments(parser)


def _add_prompt_arguments(parser, *, out: str, n: int) -> None:
    """What is drawn and where it goes: prompt set, seed, tiers, --out, batch size."""
    parser.add_argument("--n", type=int, default=n, help="default prompt set: prompts per tier")
    parser.add_argument(
        "--prompts",
        type=Path,
        default=None,
        help="JSONL prompt set (prompt, entity, background, position, size)",
    )
    parser.add_argument("--seed", type=int, default=0, help="prompt draw and sampling seed")
    parser.add_argument(
        "--tiers",
        default="frequent,rare,unseen",
        help="default prompt set: which tiers (e.g. unseen alone, --n 333 = "
        "every unseen entity once)",
    )
    parser.add_argument("--out", type=Path, default=Path(out), help="output folder")
    parser.add_argument("--batch-size", type=int, default=32, help="prompts per generate call")


def _add_component_arguments(parser) -> None:
    """What draws and judges: KB, retriever, encoder, backend, weights, evaluator, threads."""
    add_retrieval_arguments(parser)
    parser.add_argument("--backend", default="torch", help="torch | jax")
    parser.add_argument(
        "--weights",
        type=Path,
        default=None,
        metavar="FOLDER",
        help="a folder of exported stages: base.safetensors (a training run's "
        "--export) and, optionally, baseline.safetensors (default: the shipped "
        "weights, or $REIMAGEN_WEIGHTS)",
    )
    parser.add_argument(
        "--evaluator", type=Path, default=None, help="evaluator folder (default: the shipped one)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads (0: all cores; 1 is much faster on a busy machine)",
    )
    parser.add_argument(
        "--no-report",
        action="store_true",
        help="skip report.html (the tables, each row's images beside their "
        "references, the plots, on one self-contained page)",
    )


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


# ---- shared by bench and ablate: validate, then load -----------------------------------------------------------


def load_prompts(args):
    """(prompts, evaluator meta) - the prompt file is checked line by line before any load."""
    from reimagen.bench.evaluator import EvaluatorError, read_meta
    from reimagen.bench.prompt_sets import (
        MAX_PER_TIER,
        TIERS,
        PromptFileError,
        default_prompts,
        read_prompts,
    )
    from reimagen.cli.common import check_seed

    if not 1 <= args.n <= MAX_PER_TIER:
        raise UserError(f"--n must be in [1, {MAX_PER_TIER}] (prompts per tier), got {args.n}")
    check_seed(args.seed)
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
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
        raise UserError(
            f"--weights: {args.weights} is not a folder (it must hold "
            "base.safetensors, optionally baseline.safetensors)"
        )
    if "base" not in available_stages(args.weights):
        raise UserError(
            f"no base network at {weights_path('base', args.weights)}; train it with "
            "`reimagen train --stage base --export` or set --weights"
        )
    for stage in available_stages(args.weights):  # headers only: each file fits its stage
        stage_config(stage, args.weights)


def open_parts(args, settings, need_retrieval: bool, k_max: int = 0):
    """--threads applied, the KB opened and checked against the networks and K for every
    setting (before any index is built or network loaded), then
    :func:`reimagen.bench.session.load_parts`."""
    from reimagen.bench.session import load_parts
    from reimagen.cli.common import apply_threads, check_kb_fits, open_kb
    from reimagen.generation.shipped import stage_config

    apply_threads(args.threads)
    kb = open_kb(args.kb)
    image_size = stage_config("base", args.weights).image_size if k_max else 0
    for setting in settings:
        check_kb_fits(
            kb, "--kb", image_size=image_size, k=k_max if need_retrieval else 0, setting=setting
        )
    return load_parts(
        kb,
        settings=settings,
        retriever=args.retriever,
        encoder=args.encoder,
        backend=args.backend,
        weights=args.weights,
        evaluator=args.evaluator,
        need_retrieval=need_retrieval,
    )


def run_header(args, meta, pipelines, prompts, seconds: float) -> dict:
    """results.json's head (:func:`reimagen.bench.session.header`) from the options."""
    from reimagen.bench.session import header

    return header(
        seed=args.seed,
        retriever=args.retriever,
        prompts_file=args.prompts,
        n_per_tier=args.n,
        prompts=prompts,
        pipelines=pipelines,
        weights=args.weights,
        meta=meta,
        seconds=seconds,
    )


# ---- bench --------------------------------------------------------------------------------------


def check_bench_args(args):
    """(ks, settings, sampling) of an emoji-KB bench; other kinds of run are refused or handed
    on by :func:`run` first."""
    from reimagen.cli.common import check_k_option
    from reimagen.generation.shipped import DEFAULT_SAMPLING

    if args.retrievers is not None:
        raise UserError("--retrievers only applies with --recall-only; bench uses --retriever")
    ks = comma_list(args.k, "--k", cast=int)
    if any(k < 1 for k in ks):
        raise UserError(f"--k values must be >= 1 (the no-retrieval row is always run), got {ks}")
    for k in ks:
        check_k_option(k, "--k values", low=1)
    settings = comma_list(args.settings, "--settings", allowed=SETTINGS)
    return ks, settings, sampling_from_args(args, DEFAULT_SAMPLING["base"])


def run(args) -> int:
    from reimagen.bench.bench_table import bench_markdown, bench_rows
    from reimagen.bench.result_files import write_outputs
    from reimagen.bench.session import evaluator_note
    from reimagen.cli import bench_kb

    if bench_kb.is_collection_folder(args.kb):  # your own collection: its held-out records
        return bench_kb.run(args)
    if args.evaluators is not None:
        raise UserError(
            "--evaluators only applies with a collection --kb (a KB of plain image-caption records)"
        )
    if args.recall_only:
        return _recall_only(args)
    ks, settings, sampling = check_bench_args(args)
    check_components(args)
    prompts, meta = load_prompts(args)

    started = time.perf_counter()
    parts = open_parts(args, settings, need_retrieval=True, k_max=max(ks))
    results = _run_rows(args, prompts, parts, bench_rows(parts.pipelines, sampling, ks, settings))
    seconds = time.perf_counter() - started
    markdown = bench_markdown(
        prompts,
        results,
        settings=settings,
        seed=args.seed,
        retriever=args.retriever,
        note=evaluator_note(meta),
        seconds=seconds,
    )
    blob = run_header(args, meta, parts.pipelines, prompts, seconds)
    blob["rows"] = [r.to_dict(prompts) for r in results]
    report = None
    if not args.no_report:
        from reimagen.bench.report import render

        report = render(
            markdown,
            [("Images: each row's outputs beside their references", results)],
            prompts,
            kb=parts.pipelines["base"].kb,
        )
    write_outputs(args.out, blob, markdown, prompts, results, report=report)
    print(markdown)
    print(
        f"wrote {args.out}/results.json, results.md, prompts.jsonl, {len(results)} grids"
        + ("" if report is None else " and report.html")
    )
    return 0


def _recall_only(args) -> int:
    from reimagen.cli import recall
    from reimagen.cli.common import check_out_folder

    check_out_folder(args.out)
    return recall.run(args)


def _run_rows(args, prompts, parts, rows):
    """[the ceiling row, *each row's result]: a progress bar over the prompts of every distinct
    row (equal rows are generated once)."""
    from reimagen.bench.session import make_runner
    from reimagen.cli.progress import bar, prompt_ticker, row_logger

    distinct = len({row.key() for row in rows})
    with bar(distinct * len(prompts), "bench", unit="prompt") as progress:
        runner = make_runner(
            prompts,
            parts,
            seed=args.seed,
            batch_size=args.batch_size,
            log=row_logger(progress, advance=0),
            on_batch=prompt_ticker(progress),
        )
        generated = runner.run(rows)
    size = generated[0].images.shape[1]
    return [runner.ceiling(size), *generated]  # row 0: the targets themselves
