"""``reimagen bench --kb COLLECTION --weights RUN``: evaluate a base stage trained on your own
collection on its held-out records (reimagen.bench.collection; the split:
reimagen.training.folder_data). ``reimagen bench`` hands over here when ``--kb`` is a knowledge
base without entities.

Options that apply: --weights (a folder with base.safetensors, e.g. the run folder a bare
``train --kb ... --export`` writes it to), --k (the Re-Imagen rows; the K=0 row always runs),
--n (held-out records, at most), --seed, --batch-size, --retriever (default: the one the
weights' recipe records, i.e. training's; it indexes the training split), --encoder, --backend,
--threads, --out, the sampling options, and --evaluators (registered evaluator names; default:
all), --no-report. The emoji-only options (--prompts, --recall-only) are refused; --settings,
--tiers and --evaluator do not apply. Writes results.json, results.md, targets.png, grid_XX.png
and report.html (the tables, each row's images beside their references and the held-out
target; ``--no-report``: not, and an earlier run's is removed) to --out as one set.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from reimagen.cli.main import UserError
from reimagen.core import registry

if TYPE_CHECKING:
    import numpy as np

MAX_RECORDS = 10_000


def is_collection_folder(path: Path | None) -> bool:
    """``path`` holds a knowledge base without entities (read from its kb.json; anything
    unreadable is left to the emoji path, whose checks report it)."""
    if path is None:
        return False
    try:
        meta = json.loads((Path(path) / "kb.json").read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("entities") == 0


def parse_evaluators(text: str | None) -> list[str]:
    """--evaluators NAME,...: registered evaluator names (default: every registered one)."""
    from reimagen.cli.bench import comma_list

    known = registry.names("evaluator")
    if text is None:
        return known
    return comma_list(text, "--evaluators", allowed=known)


def check_args(args) -> tuple[list[int], list[str]]:
    """Everything checkable before the KB opens: (ks, evaluator names)."""
    from reimagen.cli.bench import comma_list
    from reimagen.cli.common import check_k_option, check_seed

    if args.recall_only:
        raise UserError(
            "--recall-only measures entity recall on the emoji knowledge base; "
            f"{args.kb} is a collection (no entities)"
        )
    if args.prompts is not None:
        raise UserError(
            f"--prompts does not apply to a collection --kb: its held-out records "
            f"are the prompts ({args.kb})"
        )
    if args.retrievers is not None:
        raise UserError("--retrievers only applies with --recall-only; bench uses --retriever")
    ks = comma_list(args.k, "--k", cast=int)
    for k in ks:
        check_k_option(k, "--k values", low=1)
    if not 1 <= args.n <= MAX_RECORDS:
        raise UserError(f"--n must be in [1, {MAX_RECORDS}] (held-out records), got {args.n}")
    check_seed(args.seed)
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    return sorted(set(ks)), parse_evaluators(args.evaluators)


def run(args) -> int:
    from reimagen.bench import collection
    from reimagen.cli.bench import check_components
    from reimagen.cli.common import apply_threads, sampling_from_args
    from reimagen.generation.shipped import DEFAULT_SAMPLING, load_stage, weights_path
    from reimagen.training.folder_data import eval_neighbors

    ks, names = check_args(args)
    sampling = sampling_from_args(args, DEFAULT_SAMPLING["base"])
    check_components(args)  # --out, backend, encoder, retriever, --threads, --weights
    apply_threads(args.threads)
    kb, train, held = _open_collection(args, max(ks))
    rows = held[: args.n]
    evaluators = {name: registry.get("evaluator", name)() for name in names}
    started = time.perf_counter()
    pipeline = load_stage(
        "base", kb=kb, encoder=args.encoder, backend=args.backend, folder=args.weights
    )
    retriever = _fit_retriever(args, kb, train)  # sets args.retriever to the name used
    neighbors = eval_neighbors(kb, retriever, rows, max(ks))  # [N, K_max]
    print(
        f"bench on {len(rows)} of {len(held)} held-out records of {kb.folder} "
        f"({len(train):,} training records), K={','.join(map(str, ks))}",
        file=sys.stderr,
    )
    result = collection.run_bench(
        kb,
        pipeline,
        rows,
        neighbors,
        ks=ks,
        sampling=sampling,
        evaluators=evaluators,
        seed=args.seed,
        batch_size=args.batch_size,
        progress=_progress,
    )
    header = collection.run_header(
        kb,
        train=train,
        held=held,
        weights=weights_path("base", args.weights),
        seed=args.seed,
        retriever=args.retriever,
        sampling=sampling,
        evaluators=names,
    )
    _write_results(args, kb, len(rows), result, header, started)
    return 0


def _write_results(args, kb, records: int, result: dict, header: dict, started: float) -> None:
    """results.json (with the wall time since ``started``), results.md, targets.png, the
    grids and (unless --no-report) report.html to --out as one set; the markdown table of the
    ``records`` benched printed."""
    from reimagen.bench import collection

    title = (
        f"Collection bench: {records} held-out records of {Path(kb.folder).name}, "
        f"seed {args.seed}, retriever {args.retriever}"
    )
    text = collection.markdown(result, title)
    blob = collection.to_json(result, header)
    blob["wall_seconds"] = round(time.perf_counter() - started, 1)
    report = None if args.no_report else collection.report_page(kb, result, text)
    collection.write_outputs(args.out, blob, text, result, report=report)
    print(text)
    print(
        f"wrote {args.out}/results.json, results.md, targets.png, {len(result['rows'])} grids"
        + ("" if report is None else " and report.html")
    )


def _open_collection(args, k_max: int):
    """(kb, training rows, held-out rows): the collection checked against the base network's
    resolution and ``k_max`` neighbours, with at least two held-out records."""
    from reimagen.cli.common import open_kb
    from reimagen.generation.shipped import stage_config
    from reimagen.kb.records import KnowledgeBaseError
    from reimagen.training.folder_data import check_collection, split_rows

    kb = open_kb(args.kb)
    config = stage_config("base", args.weights)
    try:
        check_collection(kb, image_size=config.image_size, k=k_max)
    except KnowledgeBaseError as err:
        raise UserError(str(err)) from None
    train, held = split_rows(kb)
    if len(held) < 2:
        raise UserError(
            f"--kb: {kb.folder} has {len(held)} held-out record(s) (about 10% of "
            "the records are held out, by a hash of their id); the bench needs >= 2"
        )
    return kb, train, held


def _fit_retriever(args, kb, train: np.ndarray):
    """The retriever --retriever names, by default the weights' recipe's (the held-out records
    get neighbours the way training did), fitted on the training rows; ``args.retriever`` is
    set to its name."""
    from reimagen.generation.shipped import weights_path
    from reimagen.training.folder_data import fit_retriever

    path = weights_path("base", args.weights)
    args.retriever = _retriever_name(path, args.retriever)
    _note_recipe(path, kb, args.retriever)
    return fit_retriever(kb, args.retriever, train)


def _retriever_name(path: Path, given: str) -> str:
    """--retriever left at its default: the retriever the weights were trained with (their
    recipe's DataConfig.retriever), so held-out records get neighbours the way training did."""
    from reimagen.generation.shipped import DEFAULT_RETRIEVER
    from reimagen.training.checkpoint import training_recipe

    used = ((training_recipe(path) or {}).get("data") or {}).get("retriever")
    return used if given == DEFAULT_RETRIEVER and used else given


def _note_recipe(path: Path, kb, retriever: str) -> None:
    """A note when the weights record another collection or retriever (their held-out split
    may then have been trained on, or their neighbours differ from training)."""
    from reimagen.training.checkpoint import training_recipe

    recipe = training_recipe(path) or {}
    trained = recipe.get("kb")
    if trained is None:
        print(
            f"note: {path} records no collection; its held-out split is this KB's only if "
            "it was trained with `reimagen train --kb` on it",
            file=sys.stderr,
        )
    elif trained.get("fingerprint") != kb.fingerprint:
        print(
            f"note: {path} was trained on {trained.get('path')} (fingerprint "
            f"{str(trained.get('fingerprint'))[:12]}), not on this KB ({kb.fingerprint[:12]})",
            file=sys.stderr,
        )
    used = (recipe.get("data") or {}).get("retriever")
    if used and used != retriever:
        print(
            f"note: {path} was trained with --retriever {used}, benched with {retriever}",
            file=sys.stderr,
        )


def _progress(label: str):
    def report(done: int, total: int) -> None:
        print(
            f"\r{label}: {done}/{total} images",
            end="" if done < total else "\n",
            file=sys.stderr,
            flush=True,
        )

    return report
