"""``reimagen retrieve``: a prompt's nearest knowledge-base entries, with scores (docs/design.md §6).

    reimagen retrieve "a red apple"                         # hybrid over the whole emoji KB
    reimagen retrieve "a red apple" --k 8 --view openmoji,noto --json
    reimagen retrieve "a red apple" --retriever dense --encoder minilm [--ivf]
    reimagen retrieve "a red apple" --retriever bm25        # the paper's training retriever

The index is built and saved beside the knowledge base on first use
(``<kb>/indexes/<retriever>[-<encoder>][-ivf][-view-<sources>]``) and loaded afterwards; an
index that no longer matches the knowledge base is rebuilt, saying why. Arguments are checked
before the knowledge base is opened.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from reimagen.cli.common import ENCODER_RETRIEVERS, check_prompt_args
from reimagen.cli.main import UserError
from reimagen.core import paths, registry
from reimagen.generation.shipped import DEFAULT_RETRIEVER


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "retrieve", help="top-k knowledge-base neighbours of a prompt, with scores"
    )
    parser.add_argument("prompts", nargs="+", metavar="PROMPT", help="text to search for")
    parser.add_argument("--k", type=int, default=4, help="neighbours per prompt (default 4)")
    parser.add_argument(
        "--retriever",
        default=DEFAULT_RETRIEVER,
        help=f"registered retriever: hybrid, tfidf, bm25, dense, none (default {DEFAULT_RETRIEVER})",
    )
    parser.add_argument(
        "--encoder", help="registered text encoder for --retriever dense or hybrid (default minilm)"
    )
    parser.add_argument("--ivf", action="store_true", help="dense: approximate IVF index")
    parser.add_argument("--kb", type=Path, help="knowledge-base folder (default: the emoji KB)")
    parser.add_argument(
        "--view", help="comma-separated sources (artists) to search, e.g. openmoji,noto"
    )
    parser.add_argument("--rebuild", action="store_true", help="rebuild the saved index")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(func=run)


def check_args(args) -> tuple[dict, list[str] | None]:
    """Retriever options and the view's sources, or a UserError — before any file is read."""
    if args.k < 0 or (args.k == 0 and args.retriever != "none"):
        raise UserError(
            f"--k must be >= 1 (at most the records indexed; 0 only with "
            f"--retriever none), got {args.k}"
        )
    check_prompt_args(args.prompts)  # an empty query would return arbitrary rows at score 0
    registry.get("retriever", args.retriever)  # unknown name -> error listing the known ones
    if args.retriever not in ENCODER_RETRIEVERS and args.encoder:
        raise UserError(f"--encoder only applies to --retriever {' or '.join(ENCODER_RETRIEVERS)}")
    if args.retriever != "dense" and args.ivf:
        raise UserError("--ivf only applies to --retriever dense")
    if args.retriever == "none" and args.k != 0:
        raise UserError("--retriever none returns no neighbours; use --k 0")
    options: dict = {}
    if args.retriever in ENCODER_RETRIEVERS:
        options = {"encoder": args.encoder or "minilm"}
        registry.get("encoder", options["encoder"])
    if args.retriever == "dense":
        options["ivf"] = bool(args.ivf)
    sources = None
    if args.view is not None:
        sources = [s.strip() for s in args.view.split(",") if s.strip()]
        if not sources:
            raise UserError("--view needs at least one source name, e.g. --view openmoji,noto")
    return options, sources


def run(args) -> int:
    from reimagen.retrievers.index import IndexMismatchError, index_name

    options, sources = check_args(args)
    kb, rows = _open_view(args, sources)
    name = index_name(
        args.retriever,
        encoder=options.get("encoder"),
        variant="ivf" if options.get("ivf") else None,
        view=sources or (),
    )
    started = time.perf_counter()
    try:
        retriever, status, reason = _open_index(args, kb, rows, name, options)
        result = retriever.search(args.prompts, args.k)
    except (ValueError, IndexMismatchError) as err:
        raise UserError(str(err)) from err
    seconds = time.perf_counter() - started
    if status in ("built", "rebuilt"):
        why = f" ({reason})" if status == "rebuilt" else ""
        print(
            f"{status} {name} index of {len(retriever.rows)} captions in {seconds:.1f}s{why}",
            file=sys.stderr,
        )
    report = _report(kb, args, name, status, retriever, result)
    print(json.dumps(report, indent=2, ensure_ascii=False) if args.json else _table(report))
    return 0


def _open_view(args, sources: list[str] | None):
    """(kb, the rows of its --view or None for all): the KB opened without re-hashing its
    images (the manifest fingerprint is still checked); --k no more than the rows indexed."""
    from reimagen.kb.knowledge_base import KnowledgeBase
    from reimagen.kb.records import KnowledgeBaseError

    folder = args.kb or paths.default_kb_dir()
    if not Path(folder).is_dir():
        raise UserError(f"no knowledge base at {folder}; build one with `reimagen kb build`")
    try:
        kb = KnowledgeBase.open(folder, verify=False)
    except KnowledgeBaseError as err:
        raise UserError(str(err)) from err
    try:
        rows = None if sources is None else kb.rows(sources=sources)
    except KnowledgeBaseError as err:
        raise UserError(f"--view: {err}") from err
    indexed = len(kb) if rows is None else len(rows)
    if args.k > indexed:  # checked before an index is built
        raise UserError(
            f"--k: k={args.k} is larger than the {indexed} indexed documents; "
            f"allowed: at most {indexed}"
        )
    return kb, rows


def _open_index(args, kb, rows, name: str, options: dict):
    """(retriever, status, reason): the saved index ``name`` beside the KB, built on first use
    or rebuilt (reimagen.retrievers.index.open_or_build); "none" indexes nothing."""
    from reimagen.retrievers.index import index_folder, open_or_build

    if args.retriever == "none":  # nothing to index: no folder is written
        return registry.get("retriever", "none")().fit(kb, rows=rows), "none", None
    return open_or_build(
        kb,
        index_folder(kb.folder, name),
        args.retriever,
        rows=rows,
        rebuild=args.rebuild,
        **options,
    )


def _report(kb, args, name, status, retriever, result) -> dict:
    results = []
    for prompt, ids, scores in zip(args.prompts, result.ids, result.scores):
        neighbors = []
        for rank, (row, score) in enumerate(zip(ids.tolist(), scores.tolist()), start=1):
            record = kb.records[row]
            neighbors.append(
                {
                    "rank": rank,
                    "row": row,
                    "score": round(float(score), 6),
                    "key": record.key,
                    "text": record.text,
                    "source": record.source,
                    "entity": record.entity,
                }
            )
        results.append({"prompt": prompt, "neighbors": neighbors})
    return {
        "kb": str(kb.folder),
        "retriever": args.retriever,
        "options": retriever.options,
        "index": name,
        "index_status": status,
        "indexed": len(retriever.rows),
        "k": args.k,
        "results": results,
    }


def _table(report: dict) -> str:
    lines = []
    for entry in report["results"]:
        lines.append(f"{entry['prompt']!r}  ({report['index']}, {report['indexed']} captions)")
        if not entry["neighbors"]:
            lines.append("  (no neighbours)")
            continue
        width = max(len(n["source"]) for n in entry["neighbors"])
        lines.append(f"  {'#':>2}  {'score':>9}  {'row':>6}  {'source':<{width}}  text")
        for n in entry["neighbors"]:
            lines.append(
                f"  {n['rank']:>2}  {n['score']:>9.4f}  {n['row']:>6}  {n['source']:<{width}}  "
                f"{n['text']}"
                + (f"  [{n['entity']}]" if n["entity"] and n["entity"] != n["text"] else "")
            )
    return "\n".join(lines)
