"""What every sharded index shares (issue #9): the split into shards, the merge, the layout file.

A knowledge base too large for one index is split into shards of consecutive documents; every
document keeps its *global id* (its view position, so the answer is still a KB row). A query
is scored in every shard and the per-shard top-n lists are merged by (score descending, global
id ascending), the same total order as the unsharded retrievers, so results are deterministic.
A saved sharded index is a folder with ``shards.json`` (format, kind, parameters, shard sizes)
beside the shards' own files.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from reimagen.core.io import atomic_write_text, load_json
from reimagen.retrievers.index import IndexMismatchError

SHARDS_DIR = "shards"  # the sharded index's folder inside a retriever's index folder
LAYOUT_FILE = "shards.json"
FORMAT = "reimagen-shards"
FORMAT_VERSION = 1

SHARDS_RULE = "shards must be an int >= 1 or a list of sizes >= 1"


def check_shards(shards: Any) -> int | list[int]:
    """``shards``: an int >= 1 (even split) or a list of shard sizes, each >= 1."""
    if isinstance(shards, (int, np.integer)) and not isinstance(shards, bool):
        if shards < 1:
            raise ValueError(f"{SHARDS_RULE}, got {shards}")
        return int(shards)
    if isinstance(shards, (list, tuple)) and shards:
        sizes = [int(s) for s in shards if isinstance(s, (int, np.integer))]
        if (
            len(sizes) == len(shards)
            and min(sizes) >= 1
            and not any(isinstance(s, bool) for s in shards)
        ):
            return sizes
    raise ValueError(f"{SHARDS_RULE}, got {shards!r}")


def shard_bounds(n_docs: int, shards: int | Sequence[int]) -> np.ndarray:
    """[S + 1] int64 boundaries: shard s holds global ids bounds[s] .. bounds[s+1]-1.

    An int splits evenly (sizes differ by at most one); a list gives the sizes."""
    shards = check_shards(shards)
    if isinstance(shards, int):
        if shards > n_docs:
            raise ValueError(
                f"shards={shards} is more than the {n_docs} documents (every shard needs one)"
            )
        return (np.arange(shards + 1, dtype=np.int64) * n_docs) // shards
    if sum(shards) != n_docs:
        raise ValueError(f"shards sizes sum to {sum(shards)}, but there are {n_docs} documents")
    return np.concatenate([[0], np.cumsum(shards)]).astype(np.int64)


def merge_hits(
    ids: Sequence[np.ndarray], scores: Sequence[np.ndarray], n: int
) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-shard hits (each [Q, n_s], global ids) into the top n [Q, n] by score
    descending, then global id ascending. Invalid hits (id < 0) must score -inf.

    Written out rather than left to ``faiss.IndexShards`` (which merges with a heap): the
    retriever contract orders ties by id, and faiss documents no order for equal scores; the
    BM25 shards are not faiss indexes at all. One lexsort over the S·n candidates is cheap."""
    ids_all = np.concatenate(ids, axis=1)  # [Q, sum n_s]
    scores_all = np.concatenate(scores, axis=1)
    order = np.lexsort((ids_all, -scores_all), axis=-1)[:, :n]
    return np.take_along_axis(ids_all, order, 1), np.take_along_axis(scores_all, order, 1)


def write_json(path: Path, blob: dict[str, Any]) -> None:
    """``blob`` as indented, sorted JSON, written atomically."""
    atomic_write_text(path, json.dumps(blob, indent=1, sort_keys=True, ensure_ascii=False) + "\n")


def write_layout(folder: Path, kind: str, params: dict[str, Any], **fields: Any) -> None:
    """``folder/shards.json``: format, version, ``kind``, the index's ``params`` (keyword
    arguments that rebuild it) and ``fields`` (e.g. the shard sizes)."""
    blob = {"format": FORMAT, "version": FORMAT_VERSION, "kind": kind, "params": params}
    write_json(folder / LAYOUT_FILE, {**blob, **fields})


def read_layout(folder: Path, kind: str) -> dict[str, Any]:
    """The ``shards.json`` of a saved index of ``kind``; IndexMismatchError if it is another
    kind or format."""
    path = folder / LAYOUT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no sharded index in {folder} (missing {LAYOUT_FILE})")
    blob = load_json(path)
    if (
        blob.get("format") != FORMAT
        or blob.get("version") != FORMAT_VERSION
        or blob.get("kind") != kind
    ):
        raise IndexMismatchError(
            f"{path} is not a {kind} index of format {FORMAT!r} v{FORMAT_VERSION}; rebuild it"
        )
    return blob
