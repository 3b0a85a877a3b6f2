"""Indexes split into shards that answer in global ids (issue #9): BM25 and faiss.

**BM25** (:class:`ShardedBM25`). ``mode="global"`` computes the collection statistics once for
all shards (:class:`~reimagen.retrievers.bm25_math.BM25Stats`) and every shard scores its
documents with them, so the sharded scores are bit-for-bit the unsharded ``bm25`` scores.
``mode="naive"`` lets each shard use its own statistics, as independent indexes would: its
scores are not comparable across shards, and the merged top-k differs (the contrast number of
the issue). BM25 shards are ``.npy`` arrays read with ``mmap_mode="r"``.

**Dense** (:class:`ShardedDenseIndex`). Exact: one ``IndexIDMap(IndexFlatIP)`` per shard,
vectors added with their global ids. IVF: the coarse quantizer is trained once and every shard
is a copy of that trained, empty index, filled with ``add_with_ids``; all shards then probe the
same cells, so the merged answer equals one IVF index with that quantizer. Each shard is written
to its own file (temp file + ``os.replace``) and read back memory-mapped by default:
``faiss.IO_FLAG_MMAP_IFC`` maps a flat index's vectors (faiss >= 1.11), ``faiss.IO_FLAG_MMAP``
an IVF index's inverted lists (read-only); the two flags cannot be combined.

Both check ``k`` as an int in [1, documents] (:func:`reimagen.core.checks.check_k`): faiss
searches need k >= 1, and the retrievers answer k = 0 without asking an index.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from reimagen.core.checks import check_k
from reimagen.core.io import atomic_path, load_json
from reimagen.retrievers.base import top_n_rows
from reimagen.retrievers.bm25 import METHODS, QUERY_BATCH
from reimagen.retrievers.bm25_math import BM25Shard, BM25Stats
from reimagen.retrievers.dense import import_faiss, read_faiss
from reimagen.retrievers.index import IndexMismatchError
from reimagen.retrievers.shards import (
    LAYOUT_FILE,
    merge_hits,
    read_layout,
    shard_bounds,
    write_json,
    write_layout,
)

BM25_MODES = ("global", "naive")
DENSE_KINDS = ("exact", "ivf")


class ShardedBM25:
    """BM25 over shards of tokenised documents, answering in global ids.

    ``mode="global"``: one :class:`BM25Stats` for all shards (scores = unsharded bm25);
    ``"naive"``: each shard its own statistics (for contrast)."""

    def __init__(
        self, k1: float = 1.5, b: float = 0.75, method: str = "lucene", mode: str = "global"
    ):
        if method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
        if mode not in BM25_MODES:
            raise ValueError(f"mode must be one of {', '.join(BM25_MODES)}; got {mode!r}")
        self.k1, self.b, self.method, self.mode = float(k1), float(b), method, mode
        self.shards: list[BM25Shard] = []
        self.bounds = np.zeros(1, np.int64)  # [S + 1]
        self.stats: BM25Stats | None = None  # the global statistics (None in naive mode)

    @property
    def n_docs(self) -> int:
        return int(self.bounds[-1])

    @property
    def params(self) -> dict[str, Any]:
        """Keyword arguments that rebuild this (empty) index."""
        return {"k1": self.k1, "b": self.b, "method": self.method, "mode": self.mode}

    def build(self, tokens: Sequence[Sequence[str]], shards: int | Sequence[int]) -> ShardedBM25:
        """Index ``tokens`` (global id = position) split into ``shards``."""
        self.bounds = shard_bounds(len(tokens), shards)
        parts = [tokens[int(a) : int(b)] for a, b in itertools.pairwise(self.bounds)]
        local = [BM25Stats.from_tokens(part) for part in parts]  # one pass per shard
        self.stats = BM25Stats.merge(local) if self.mode == "global" else None
        self.shards = [
            BM25Shard.build(part, self.stats or own, self.k1, self.b, self.method)
            for part, own in zip(parts, local)
        ]
        return self

    def scores(self, queries: Sequence[Sequence[str]]) -> np.ndarray:
        """Scores of every document [B, N] float64 (shards side by side)."""
        return np.concatenate([s.score_rows(queries)[:, : s.num_docs] for s in self.shards], axis=1)

    def top(self, queries: Sequence[Sequence[str]], n: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-n global ids [Q, n] int64 and scores [Q, n] float64 per tokenised query;
        exact, ties by global id. Each shard gives its own top-min(n, size), then merge."""
        ids, scores = [], []
        for start in range(0, len(queries), QUERY_BATCH):
            batch = queries[start : start + QUERY_BATCH]
            shard_ids, shard_scores = [], []
            for offset, shard in zip(self.bounds[:-1], self.shards):
                rows = shard.score_rows(batch)  # [B, N_s'] float64
                positions, _ = top_n_rows(rows, min(n, shard.num_docs))
                shard_ids.append(positions + offset)
                shard_scores.append(np.take_along_axis(rows, positions, 1))  # float64
            top_ids, top_scores = merge_hits(shard_ids, shard_scores, n)
            ids.append(top_ids)
            scores.append(top_scores)
        if not ids:
            return np.zeros((0, n), np.int64), np.zeros((0, n), np.float64)
        return np.concatenate(ids), np.concatenate(scores)

    def search(self, queries: Sequence[Sequence[str]], k: int) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`top` with k checked: an int in [1, documents]."""
        return self.top(queries, check_k(k, low=1, docs=self.n_docs))

    def save(self, folder: str | Path) -> Path:
        """``folder/shards.json`` + ``shard-XXX/`` (npy arrays and vocab) + ``stats.json``
        (global mode); every file written atomically."""
        folder = Path(folder)
        for s, shard in enumerate(self.shards):
            shard.save(folder / f"shard-{s:03d}")
        if self.stats is not None:
            write_json(folder / "stats.json", attrs.asdict(self.stats))
        write_layout(folder, "bm25", self.params, sizes=np.diff(self.bounds).tolist())
        return folder

    @classmethod
    def load(cls, folder: str | Path, mmap: bool = True) -> ShardedBM25:
        """Read a saved index; ``mmap``: map the score arrays instead of reading them."""
        folder = Path(folder)
        layout = read_layout(folder, "bm25")
        index = cls(**layout["params"])
        index.bounds = shard_bounds(sum(layout["sizes"]), layout["sizes"])
        index.shards = [
            BM25Shard.load(folder / f"shard-{s:03d}", mmap) for s in range(len(layout["sizes"]))
        ]
        if (folder / "stats.json").is_file():
            index.stats = BM25Stats(**load_json(folder / "stats.json"))
        return index


class ShardedDenseIndex:
    """Inner-product search over shards of vectors with global ids; duck-types the faiss index
    methods that :class:`~reimagen.retrievers.dense.DenseRetriever` uses (``ntotal``, ``d``,
    ``nlist``, ``nprobe``, ``search``). ``kind``: ``"exact"`` or ``"ivf"`` (call
    :meth:`train` once before adding shards)."""

    def __init__(self, dim: int, kind: str = "exact", nprobe: int = 2):
        if kind not in DENSE_KINDS:
            raise ValueError(f"kind must be one of {', '.join(DENSE_KINDS)}; got {kind!r}")
        if isinstance(dim, bool) or int(dim) < 1:
            raise ValueError(f"dim must be an int >= 1, got {dim!r}")
        if isinstance(nprobe, bool) or int(nprobe) < 1:
            raise ValueError(f"nprobe must be an int >= 1, got {nprobe!r}")
        self.d, self.kind, self._nprobe = int(dim), kind, int(nprobe)
        self.shards: list[Any] = []
        self._template: np.ndarray | None = None  # the trained, empty IVF index, serialised
        self.nlist = 1

    @property
    def ntotal(self) -> int:
        return int(sum(s.ntotal for s in self.shards))

    @property
    def nprobe(self) -> int:
        return min(self._nprobe, self.nlist)

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        self._nprobe = int(value)
        for shard in self.shards if self.kind == "ivf" else ():
            shard.nprobe = self.nprobe

    def train(self, sample: np.ndarray, nlist: int) -> ShardedDenseIndex:
        """IVF: k-means the coarse quantizer once on ``sample`` [M, D] (faiss's fixed seed)."""
        faiss = import_faiss()
        if self.kind != "ivf":
            raise ValueError("train is for kind='ivf'; an exact index needs no training")
        quantizer = faiss.IndexFlatIP(self.d)
        index = faiss.IndexIVFFlat(quantizer, self.d, int(nlist), faiss.METRIC_INNER_PRODUCT)
        index.cp.min_points_per_centroid = 1
        index.train(self._vectors(sample))
        self._template, self.nlist = faiss.serialize_index(index), int(nlist)
        return self

    def add_shard(self, vectors: np.ndarray, ids: np.ndarray | None = None) -> None:
        """A new shard of ``vectors`` [N_s, D] with global ``ids`` [N_s] (default: the next
        N_s ids after those already added)."""
        faiss = import_faiss()
        vectors = self._vectors(vectors)
        if ids is None:
            ids = np.arange(self.ntotal, self.ntotal + len(vectors), dtype=np.int64)
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if ids.shape != (len(vectors),) or (len(ids) and ids.min() < 0):
            raise ValueError(f"ids must be [{len(vectors)}] ints >= 0, got shape {ids.shape}")
        if self.kind == "ivf":
            if self._template is None:
                raise ValueError("an IVF index is trained once (train) before shards are added")
            shard = faiss.deserialize_index(self._template)
            shard.nprobe = self.nprobe
        else:
            shard = faiss.IndexIDMap(faiss.IndexFlatIP(self.d))
        shard.add_with_ids(vectors, ids)
        self.shards.append(shard)

    def search(self, vectors: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-n (scores [Q, n] float32, global ids [Q, n] int64), by score then id. IVF: a
        query whose probed cells hold fewer than n vectors (over all shards) is searched again
        over every cell, as ``DenseRetriever`` does."""
        n = check_k(n, low=1, docs=self.ntotal)
        vectors = self._vectors(vectors)
        ids, scores = self._merged(vectors, n, None)
        short = np.flatnonzero((ids < 0).any(axis=1))
        if len(short):
            faiss = import_faiss()
            every = faiss.SearchParametersIVF(nprobe=self.nlist)
            ids[short], scores[short] = self._merged(vectors[short], n, every)
        return scores, ids

    def _merged(self, vectors, n, params) -> tuple[np.ndarray, np.ndarray]:
        ids, scores = [], []
        for shard in self.shards:
            found, hits = shard.search(vectors, min(n, shard.ntotal), params=params)
            found[hits < 0] = -np.inf  # IVF: fewer hits in the probed cells than asked
            ids.append(hits)
            scores.append(found)
        return merge_hits(ids, scores, n)

    def _vectors(self, vectors: np.ndarray) -> np.ndarray:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.d:
            raise ValueError(f"vectors must be [N, {self.d}], got {list(vectors.shape)}")
        return vectors

    def save(self, folder: str | Path) -> Path:
        """``folder/shard-XXX.faiss`` (faiss's own format, each written to a temp file and
        renamed) + ``shards.json``."""
        faiss = import_faiss()
        folder = Path(folder)
        for s, shard in enumerate(self.shards):
            with atomic_path(folder / f"shard-{s:03d}.faiss") as tmp:
                faiss.write_index(shard, str(tmp))
        params = {"dim": self.d, "kind": self.kind, "nprobe": self._nprobe}
        sizes = [int(s.ntotal) for s in self.shards]
        write_layout(folder, f"dense-{self.kind}", params, nlist=self.nlist, sizes=sizes)
        return folder

    @classmethod
    def load(cls, folder: str | Path, kind: str = "exact", mmap: bool = True):
        """Read the shards of a saved index of ``kind``; ``mmap``: memory-map their vectors
        (``IO_FLAG_MMAP_IFC`` for flat shards, ``IO_FLAG_MMAP`` for IVF ones)."""
        faiss = import_faiss()
        folder = Path(folder)
        layout = read_layout(folder, f"dense-{kind}")
        index = cls(**layout["params"])
        index.nlist = int(layout["nlist"])
        flag = 0
        if mmap:
            flag = faiss.IO_FLAG_MMAP if kind == "ivf" else faiss.IO_FLAG_MMAP_IFC
        for s, size in enumerate(layout["sizes"]):
            path = folder / f"shard-{s:03d}.faiss"
            shard = read_faiss(path, lambda: faiss.read_index(str(path), flag))  # noqa: B023
            if shard.ntotal != size or shard.d != index.d:
                raise IndexMismatchError(
                    f"{folder}: shard {s} holds {shard.ntotal} vectors of dim {shard.d}, "
                    f"{LAYOUT_FILE} says {size} of dim {index.d}; rebuild it"
                )
            if kind == "ivf":
                shard.nprobe = index.nprobe
            index.shards.append(shard)
        return index
