"""The retrieved neighbours of the training pool (paper §3.2 "KNN-ImageText", docs/design.md §8).

For each pool prompt the configured retriever (bm25 by default) over the *training view* (seen
entities only, every artist) gives the top-K neighbours, never the example's own Twemoji
drawing. These triples are stored with :mod:`reimagen.kb.triples` under ``<kb>/triples/``
(or ``cache_dir``) in a file named by a digest of everything they depend on (KB, view, pool
prompts, exclusions, retriever, K), so they are reused while those are unchanged and a change
means a new file rather than a silently reused one.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import attrs
import numpy as np

from reimagen.kb import triples as tr

TRIPLES_DIR = "triples"


@attrs.frozen
class PoolTriples:
    """The pool's neighbours: ``ids`` [N, K] int64 KB rows (None when K = 0), the file they
    live in, and ``status``: "none" (K = 0), "loaded" (reused) or "built"."""

    ids: np.ndarray | None
    path: Path | None
    status: str


def load_or_build_triples(
    kb,
    view: np.ndarray,
    prompts: tuple[str, ...],
    own_rows: np.ndarray,
    *,
    k: int,
    retriever: str,
    cache_dir: str | Path | None = None,
    progress: bool = False,
) -> PoolTriples:
    """The top-``k`` rows of ``view`` [R] for each of the pool's ``prompts`` [N], never the
    example's own row ``own_rows`` [N]: read from the cache file when it holds them, else
    retrieved with the registered ``retriever`` and stored."""
    if k == 0:
        return PoolTriples(ids=None, path=None, status="none")
    exclude = [[int(row)] for row in own_rows]  # never its own image
    folder = Path(cache_dir) if cache_dir is not None else Path(kb.folder) / TRIPLES_DIR
    key = triples_key(kb, view, prompts, exclude, retriever, k)
    path = folder / f"scenes-{key}.safetensors"
    if path.is_file():
        try:
            found = tr.load_triples(path, kb, queries=prompts)
            if found.meta.k == k and found.meta.exclude_hash == tr.exclude_hash(exclude):
                return PoolTriples(ids=found.ids, path=path, status="loaded")
        except (tr.TriplesMismatchError, ValueError) as err:
            print(f"note: rebuilding {path.name}: {err}", file=sys.stderr)
    found = tr.build_triples(
        prompts,
        _fit_retriever(kb, view, retriever),
        k,
        exclude,
        progress=_report if progress else None,
    )
    tr.save_triples(path, found)
    return PoolTriples(ids=found.ids, path=path, status="built")


def triples_key(
    kb, view: np.ndarray, prompts: tuple[str, ...], exclude: list[list[int]], retriever: str, k: int
) -> str:
    """Digest of everything the triples depend on (the file name)."""
    blob = json.dumps(
        {
            "kb": kb.fingerprint,
            "view": hashlib.sha256(view.astype("<i8").tobytes()).hexdigest(),
            "queries": tr.queries_hash(prompts),
            "exclude": tr.exclude_hash(exclude),
            "retriever": retriever,
            "k": k,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _fit_retriever(kb, view: np.ndarray, name: str):
    from reimagen.core import registry

    return registry.get("retriever", name)().fit(kb, rows=view)


def _report(done: int, total: int) -> None:
    print(f"\rtraining triples {done}/{total}", end="" if done < total else "\n", file=sys.stderr)


__all__ = ["TRIPLES_DIR", "PoolTriples", "load_or_build_triples", "triples_key"]
