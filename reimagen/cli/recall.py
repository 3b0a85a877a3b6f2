"""``reimagen bench --recall-only``: neighbour recall per retriever × setting × K, no network.

    reimagen bench --recall-only --retrievers bm25,dense,hybrid --tiers unseen --n 333 --k 1,2,3
    reimagen bench --recall-only --retrievers bm25,dense,hybrid --k 1,2,3 \\
        --prompts reimagen/bench/prompts/paraphrased.jsonl

Uses bench's prompt options (``--prompts`` or ``--tiers/--n/--seed``), ``--settings``, ``--kb``
and ``--encoder`` (the dense and hybrid retrievers' text encoder, default minilm). Indexes are
built beside the knowledge base on first use and loaded afterwards, as for ``bench``. Writes
``recall.json`` (with every miss at the largest K) and ``recall.md`` to ``--out``; prints the
markdown. Every argument is checked before an index is opened.
"""

from __future__ import annotations

import sys
import time

from reimagen.cli.common import SETTINGS
from reimagen.cli.main import UserError
from reimagen.core import registry


def check_args(args) -> tuple[list[int], list[str], list[str]]:
    """(ks, settings, retrievers), or a one-line UserError naming the argument."""
    from reimagen.cli.bench import comma_list

    ks = comma_list(args.k, "--k", cast=int)
    if any(k < 1 for k in ks):
        raise UserError(f"--k values must be >= 1, got {ks}")
    settings = comma_list(args.settings, "--settings", allowed=SETTINGS)
    names = comma_list(
        args.retriever if args.retrievers is None else args.retrievers, "--retrievers"
    )
    known = [n for n in registry.names("retriever") if n != "none"]
    bad = [n for n in names if n not in known]
    if bad:
        raise UserError(
            f"--retrievers: unknown or empty retriever(s) {bad}; allowed: {', '.join(known)}"
        )
    if args.encoder:
        registry.get("encoder", args.encoder)
    return ks, settings, names


def run(args) -> int:
    from reimagen.bench import recall
    from reimagen.bench.result_files import json_text, text_file, write_file_set
    from reimagen.cli.bench import load_prompts
    from reimagen.cli.common import open_kb
    from reimagen.kb.splits import TARGET_ARTIST

    ks, settings, names = check_args(args)
    prompts, _ = load_prompts(args)
    kb = open_kb(args.kb, verify=False)
    started = time.perf_counter()
    results = [
        _measure(args, kb, prompts, ks, name, setting) for name in names for setting in settings
    ]
    source = (
        str(args.prompts)
        if args.prompts
        else f"default: tiers {args.tiers}, {args.n} per tier, seed {args.seed}"
    )
    markdown = recall.markdown(results, prompts, source, TARGET_ARTIST)
    blob = recall.to_json(
        results,
        kb,
        prompts,
        source=source,
        encoder=args.encoder or "minilm",
        seconds=time.perf_counter() - started,
    )
    write_file_set(
        args.out,
        {"recall.json": text_file(json_text(blob)), "recall.md": text_file(markdown)},
        replaces=(),
    )
    print(markdown)
    print(f"wrote {args.out}/recall.json and recall.md")
    return 0


def _measure(args, kb, prompts, ks, name: str, setting: str):
    """One retriever's recall over one view (its index opened, or built on first use)."""
    from reimagen.bench import recall
    from reimagen.cli.common import open_retriever
    from reimagen.kb.splits import TARGET_ARTIST

    log(f"{name} [{setting}]: opening the index (built on first use)")
    retriever = open_retriever(kb, name, setting, args.encoder)
    return recall.measure(
        kb, retriever, prompts, ks, name=name, setting=setting, target=TARGET_ARTIST
    )


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
