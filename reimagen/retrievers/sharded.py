"""The sharded retrievers (issue #9): ``bm25-sharded`` and ``dense-sharded``.

They are :class:`~reimagen.retrievers.bm25.BM25Retriever` and
:class:`~reimagen.retrievers.dense.DenseRetriever` (same tokeniser, encoder and options, plus
``shards``: an int for an even split or a list of sizes) over the indexes of
:mod:`reimagen.retrievers.sharded_index`, saved in ``shards/`` inside the retriever's index
folder and memory-mapped when loaded (``load(..., mmap=False)`` reads them instead).
``bm25-sharded`` with ``mode="global"`` returns the unsharded ``bm25`` scores bit for bit; its
``mode="naive"`` (per-shard statistics) is the contrast. ``dense-sharded`` trains an IVF
quantizer once, on a sample of at most 256·nlist vectors (what faiss's k-means would subsample
to anyway), and every shard probes the same cells. Where the pieces live:
:mod:`~reimagen.retrievers.shards` (split, merge, layout file),
:mod:`~reimagen.retrievers.bm25_math` (BM25 with global statistics),
:mod:`~reimagen.retrievers.sharded_index` (the sharded BM25 and faiss indexes).
"""

from __future__ import annotations

import contextvars
import itertools
from pathlib import Path
from typing import Any

import numpy as np

from reimagen.retrievers.base import ViewRetriever
from reimagen.retrievers.bm25 import BM25Retriever
from reimagen.retrievers.dense import DenseRetriever
from reimagen.retrievers.index import IndexMeta, IndexMismatchError
from reimagen.retrievers.sharded_index import ShardedBM25, ShardedDenseIndex
from reimagen.retrievers.shards import SHARDS_DIR, check_shards, shard_bounds

TRAIN_POINTS_PER_CELL = 256  # faiss k-means' max_points_per_centroid: it never uses more

# load(..., mmap=) reaches _load_files through ViewRetriever.load, which knows no mmap: a
# context variable carries it there without widening the contract every retriever shares.
_MMAP = contextvars.ContextVar("reimagen_shards_mmap", default=True)


class _MmapLoad(ViewRetriever):
    """``load(folder, kb, rows=None, mmap=True)``: shard files memory-mapped by default."""

    @classmethod
    def load(cls, folder, kb, rows=None, *, mmap: bool = True):
        token = _MMAP.set(bool(mmap))
        try:
            return super().load(folder, kb, rows=rows)
        finally:
            _MMAP.reset(token)


class ShardedBM25Retriever(_MmapLoad, BM25Retriever):
    """``bm25-sharded``: :class:`BM25Retriever`'s tokeniser and options, the view split into
    ``shards`` (an int: even split; a list: sizes), scored with ``mode`` statistics."""

    name = "bm25-sharded"

    def __init__(
        self,
        k1: float = 1.5,
        b: float = 0.75,
        method: str = "lucene",
        stopwords: str = "en",
        shards: int | list[int] = 4,
        mode: str = "global",
    ):
        super().__init__(k1=k1, b=b, method=method, stopwords=stopwords)
        self.shards = check_shards(shards)
        self._index = ShardedBM25(k1, b, method, mode)  # validates mode

    @property
    def mode(self) -> str:
        return self._index.mode

    @property
    def options(self) -> dict[str, Any]:
        return {**super().options, "shards": self.shards, "mode": self.mode}

    def scores(self, query: str) -> np.ndarray:
        """Score of every view document for one query: [N] float32."""
        self._require_view()
        return self._index.scores(self.tokenize([query]))[0].astype(np.float32)

    def _build(self, texts: list[str]) -> None:
        tokens = self.indexable_tokens(texts)
        self._index = ShardedBM25(self.k1, self.b, self.method, self.mode).build(
            tokens, self.shards
        )

    def _top(self, queries: list[str], n: int) -> tuple[np.ndarray, np.ndarray]:
        # chosen by float64 score (like BM25Retriever), reported in float32 (ditto)
        ids, scores = self._index.top(self.tokenize(queries), n)
        return ids, scores.astype(np.float32)

    def _save_files(self, folder: Path) -> None:
        self._index.save(folder / SHARDS_DIR)

    def _load_files(self, folder: Path, meta: IndexMeta) -> int:
        index = ShardedBM25.load(folder / SHARDS_DIR, mmap=_MMAP.get())
        found = index.params
        wanted = {"k1": self.k1, "b": self.b, "method": self.method, "mode": self.mode}
        if found != wanted:
            raise IndexMismatchError(
                f"index {folder} is stale: shard parameters {found} != {wanted} in index.json"
            )
        self._index = index
        return index.n_docs


class ShardedDenseRetriever(_MmapLoad, DenseRetriever):
    """``dense-sharded``: :class:`DenseRetriever` (same options) over a
    :class:`ShardedDenseIndex` of ``shards`` shards; one shard's embeddings in memory at a
    time while building (IVF also holds its training sample)."""

    name = "dense-sharded"

    def __init__(
        self,
        encoder: str = "minilm",
        encoder_options: dict[str, Any] | None = None,
        ivf: bool = False,
        nlist: int | None = None,
        nprobe: int = 2,
        batch_size: int = 256,
        shards: int | list[int] = 4,
    ):
        super().__init__(encoder, encoder_options, ivf, nlist, nprobe, batch_size)
        self.shards = check_shards(shards)

    @property
    def options(self) -> dict[str, Any]:
        return {**super().options, "shards": self.shards}

    def _build(self, texts: list[str]) -> None:
        bounds = shard_bounds(len(texts), self.shards)
        index = ShardedDenseIndex(self.dim, "ivf" if self.ivf else "exact", self.nprobe)
        every = None
        if self.ivf:
            nlist = self.resolved_nlist(len(texts))
            sample = self.training_rows(len(texts), nlist)
            vectors = self.embed([texts[i] for i in sample])
            index.train(vectors, nlist)
            every = vectors if len(sample) == len(texts) else None  # reuse, do not re-embed
        for start, stop in itertools.pairwise(bounds):
            vectors = every[start:stop] if every is not None else self.embed(texts[start:stop])
            index.add_shard(vectors, np.arange(start, stop, dtype=np.int64))
        self._index = index

    @staticmethod
    def training_rows(n_docs: int, nlist: int) -> np.ndarray:
        """View positions the IVF quantizer is trained on: all of them (in order, as the
        unsharded ``dense`` retriever) up to 256·nlist, else a seeded sample of that many."""
        cap = TRAIN_POINTS_PER_CELL * nlist
        if n_docs <= cap:
            return np.arange(n_docs)
        return np.sort(np.random.default_rng(0).choice(n_docs, cap, replace=False))

    def _save_files(self, folder: Path) -> None:
        self._index.save(folder / SHARDS_DIR)

    def _load_files(self, folder: Path, meta: IndexMeta) -> int:
        kind = "ivf" if self.ivf else "exact"
        try:
            index = ShardedDenseIndex.load(folder / SHARDS_DIR, kind, mmap=_MMAP.get())
        except IndexMismatchError as err:
            raise IndexMismatchError(f"index {folder} is stale: {err}") from err
        if index.d != self.dim:
            raise IndexMismatchError(
                f"index {folder} is stale: embedding dim {index.d} != {self.dim} "
                f"(encoder {self.encoder_name!r})"
            )
        index.nprobe = self.nprobe  # a search setting, from the options
        self._index = index
        return index.ntotal
