"""Sharded retrieval (issue #9): BM25 with global statistics and faiss indexes in shards.

A knowledge base too large for one index is split into shards of consecutive documents; every
document keeps its *global id* (its view position, so the answer is still a KB row). A query
is scored in every shard and the per-shard top-n lists are merged by (score descending, global
id ascending), the same total order as the unsharded retrievers, so results are deterministic.

**BM25** (:class:`ShardedBM25`, registered as ``bm25-sharded``). A BM25 score depends on the
whole collection through three statistics: the document count N, the average document length
and each word's document frequency df. ``mode="global"`` computes them once for all shards
(:class:`BM25Stats`: each shard counts its own, the counts are summed) and every shard scores
its documents with them, so the sharded scores are bit-for-bit the unsharded ``bm25`` scores
(a test checks every (word, document) term score against bm25s). ``mode="naive"`` lets each
shard use its own statistics, as independent indexes would: its scores are not comparable
across shards, and the merged top-k differs (the contrast number of the issue).

Why the term scores are written out here rather than built by bm25s: ``bm25s.BM25.index`` takes
N, avgdl and df only from the corpus it is given (no public way to pass collection statistics),
and its helpers are private per-document Python loops. We reuse bm25s's tokeniser (through
:class:`~reimagen.retrievers.bm25.BM25Retriever`) and reproduce its arithmetic exactly: idf in
Python floats (``math.log``) stored as float32; the term-frequency part in float64 with
``tf / (k1·((1 - b) + b·len/avgdl) + tf)`` (robertson, lucene; ATIRE's numerator ``tf·(k1+1)``
in float32, as numpy evaluates it in bm25s); their product rounded to float32. A query's score
is the float64 sum of its words' term scores in query order, as in ``BM25Retriever``.

**Dense** (:class:`ShardedDenseIndex`, registered as ``dense-sharded``). Exact: one
``IndexIDMap(IndexFlatIP)`` per shard, vectors added with their global ids. IVF: the coarse
quantizer is trained once (on a sample of at most 256·nlist vectors, what faiss's k-means would
subsample to anyway) and every shard is a copy of that trained, empty index, filled with
``add_with_ids``; all shards then probe the same cells, so the merged answer equals one IVF
index with that quantizer. Each shard is written to its own file (temp file + ``os.replace``)
and read back memory-mapped by default: ``faiss.IO_FLAG_MMAP_IFC`` maps a flat index's vectors
(faiss >= 1.11), ``faiss.IO_FLAG_MMAP`` an IVF index's inverted lists (read-only); the two
flags cannot be combined. BM25 shards are ``.npy`` arrays read with ``mmap_mode="r"``.
"""

from __future__ import annotations

import contextvars
import itertools
import json
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from reimagen.core.io import atomic_path, atomic_save_npy, atomic_write_text, load_json, load_npy
from reimagen.retrievers.base import BLOCK, top_n_rows
from reimagen.retrievers.bm25 import METHODS, QUERY_BATCH, BM25Retriever
from reimagen.retrievers.dense import DenseRetriever, import_faiss, read_faiss
from reimagen.retrievers.index import IndexMeta, IndexMismatchError

BM25_MODES = ("global", "naive")
DENSE_KINDS = ("exact", "ivf")
TRAIN_POINTS_PER_CELL = 256  # faiss k-means' max_points_per_centroid: it never uses more
SHARDS_DIR = "shards"
LAYOUT_FILE = "shards.json"
FORMAT = "reimagen-shards"
FORMAT_VERSION = 1
DATA_NAMES = ("data", "indices", "indptr")  # a BM25 shard's arrays, one .npy file each

# ---------------------------------------------------------------- shared checks and merging


def check_shards(shards: Any) -> int | list[int]:
    """``shards``: an int >= 1 (even split) or a list of shard sizes, each >= 1."""
    if isinstance(shards, (int, np.integer)) and not isinstance(shards, bool):
        if shards < 1:
            raise ValueError(f"shards must be an int >= 1 or a list of sizes >= 1, got {shards}")
        return int(shards)
    if isinstance(shards, (list, tuple)) and shards:
        sizes = [int(s) for s in shards if isinstance(s, (int, np.integer))]
        if (
            len(sizes) == len(shards)
            and min(sizes) >= 1
            and not any(isinstance(s, bool) for s in shards)
        ):
            return sizes
    raise ValueError(f"shards must be an int >= 1 or a list of sizes >= 1, got {shards!r}")


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


def check_k(k: Any, n_docs: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    if k > n_docs:
        raise ValueError(f"k={k} is larger than the {n_docs} indexed documents")
    return int(k)


def merge_hits(
    ids: Sequence[np.ndarray], scores: Sequence[np.ndarray], n: int
) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-shard hits (each [Q, n_s], global ids) into the top n [Q, n] by score
    descending, then global id ascending. Invalid hits (id < 0) must score -inf."""
    ids_all = np.concatenate(ids, axis=1)  # [Q, sum n_s]
    scores_all = np.concatenate(scores, axis=1)
    order = np.lexsort((ids_all, -scores_all), axis=-1)[:, :n]
    return np.take_along_axis(ids_all, order, 1), np.take_along_axis(scores_all, order, 1)


def _write_json(path: Path, blob: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(blob, indent=1, sort_keys=True, ensure_ascii=False) + "\n")


def _read_layout(folder: Path, kind: str) -> dict[str, Any]:
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


# ---------------------------------------------------------------- BM25


@attrs.frozen(kw_only=True)
class BM25Stats:
    """Collection statistics of BM25: documents, total length (tokens), document frequencies.

    Built per shard (:meth:`from_tokens`) and summed (:meth:`merge`): the global statistics."""

    n_docs: int
    total_length: int
    df: dict[str, int]  # word -> number of documents containing it

    @classmethod
    def from_tokens(cls, tokens: Sequence[Sequence[str]]) -> BM25Stats:
        df: Counter[str] = Counter()
        for doc in tokens:
            df.update(set(doc))
        return cls(n_docs=len(tokens), total_length=sum(map(len, tokens)), df=dict(df))

    @classmethod
    def merge(cls, parts: Sequence[BM25Stats]) -> BM25Stats:
        df: Counter[str] = Counter()
        for part in parts:
            df.update(part.df)
        return cls(
            n_docs=sum(p.n_docs for p in parts),
            total_length=sum(p.total_length for p in parts),
            df=dict(df),
        )

    @property
    def avg_length(self) -> np.float64:
        """Mean document length as bm25s computes it (``np.array(lengths).mean()``): a numpy
        float64, which keeps the term-frequency part in float64 (NEP 50)."""
        return np.float64(self.total_length) / self.n_docs

    def idf(self, words: Sequence[str], method: str) -> np.ndarray:
        """[W] float32 idf of ``words`` (bm25s's formulas, evaluated in Python floats)."""
        n = self.n_docs

        def one(df: int) -> float:
            if method == "atire":
                return math.log(n / df)
            inner = (n - df + 0.5) / (df + 0.5)
            if method == "lucene":
                return math.log(1 + inner)
            return math.log(max(inner, 1))  # robertson, negative idf clipped as in bm25s

        return np.array([one(self.df[w]) for w in words], dtype=np.float32)


def term_scores(
    tf: np.ndarray, doc_len: np.ndarray, idf: np.ndarray, avg_len: np.float64, k1, b, method
) -> np.ndarray:
    """BM25 score of each (word, document) pair [P] float32 from its term frequency tf [P]
    float32, document length [P] int64 and word idf [P] float32 (bm25s's operation order)."""
    norm = k1 * ((1 - b) + b * doc_len / avg_len)  # [P] float64
    if method == "atire":
        tfc = (tf * np.float32(k1 + 1)) / (tf + norm)
    else:
        tfc = tf / (norm + tf)
    return (idf * tfc).astype(np.float32)


class BM25Shard:
    """One shard's BM25 term scores as a word-major sparse matrix (like bm25s's index): for
    local word w, ``indices[indptr[w]:indptr[w+1]]`` are its documents (shard positions) and
    ``data`` their term scores."""

    def __init__(self, data, indices, indptr, vocab: dict[str, int], num_docs: int):
        self.data, self.indices, self.indptr = data, indices, indptr  # [P] f32, [P] i32, [W+1]
        self.vocab, self.num_docs = vocab, int(num_docs)

    @classmethod
    def build(cls, tokens, stats: BM25Stats, k1: float, b: float, method: str) -> BM25Shard:
        n = len(tokens)  # >= 1
        words = sorted({w for doc in tokens for w in doc})
        vocab = {w: i for i, w in enumerate(words)}
        lengths = np.array([len(doc) for doc in tokens], dtype=np.int64)  # [N]
        flat = np.fromiter((vocab[w] for doc in tokens for w in doc), np.int64, int(lengths.sum()))
        doc_of = np.repeat(np.arange(n, dtype=np.int64), lengths)
        # (word, doc) pairs sorted word-major, then by doc: exactly the CSC order
        pairs, tf = np.unique(flat * n + doc_of, return_counts=True)
        word, doc = pairs // n, pairs % n
        idf = stats.idf(words, method)[word] if words else np.zeros(0, np.float32)
        data = term_scores(
            tf.astype(np.float32), lengths[doc], idf, stats.avg_length, k1, b, method
        )
        indptr = np.concatenate([[0], np.cumsum(np.bincount(word, minlength=len(words)))])
        return cls(data, doc.astype(np.int32), indptr.astype(np.int64), vocab, n)

    def score_rows(self, queries: Sequence[Sequence[str]]) -> np.ndarray:
        """Scores of B tokenised queries [B, N'] float64, N' = N rounded up to a multiple of
        BLOCK, padding -inf (the summation of ``BM25Retriever._score_rows``: one bincount,
        a document's terms added in query-word order)."""
        width = -(-self.num_docs // BLOCK) * BLOCK
        docs, terms = [np.zeros(0, np.int64)], [np.zeros(0, np.float32)]
        for q, words in enumerate(queries):
            for w in (self.vocab[w] for w in words if w in self.vocab):
                start, stop = self.indptr[w], self.indptr[w + 1]
                docs.append(np.asarray(self.indices[start:stop], np.int64) + q * width)
                terms.append(self.data[start:stop])
        flat = np.bincount(np.concatenate(docs), np.concatenate(terms), len(queries) * width)
        scores = flat.astype(np.float64, copy=False).reshape(len(queries), width)  # [B, N']
        scores[:, self.num_docs :] = -np.inf
        return scores

    def save(self, folder: Path) -> None:
        for name in DATA_NAMES:
            atomic_save_npy(folder / f"{name}.npy", getattr(self, name))
        _write_json(folder / "vocab.json", {"num_docs": self.num_docs, "vocab": self.vocab})

    @classmethod
    def load(cls, folder: Path, mmap: bool) -> BM25Shard:
        blob = load_json(folder / "vocab.json")
        arrays = (load_npy(folder / f"{name}.npy", mmap=mmap) for name in DATA_NAMES)
        return cls(*arrays, vocab=blob["vocab"], num_docs=blob["num_docs"])


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

    def build(self, tokens: Sequence[Sequence[str]], shards: int | Sequence[int]) -> ShardedBM25:
        """Index ``tokens`` (global id = position) split into ``shards``."""
        self.bounds = shard_bounds(len(tokens), shards)
        parts = [tokens[a:b] for a, b in itertools.pairwise(self.bounds)]
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
        return self.top(queries, check_k(k, self.n_docs))

    def save(self, folder: str | Path) -> Path:
        """``folder/shards.json`` + ``shard-XXX/`` (npy arrays and vocab) + ``stats.json``
        (global mode); every file written atomically."""
        folder = Path(folder)
        for s, shard in enumerate(self.shards):
            shard.save(folder / f"shard-{s:03d}")
        if self.stats is not None:
            _write_json(folder / "stats.json", attrs.asdict(self.stats))
        _write_json(
            folder / LAYOUT_FILE,
            {
                "format": FORMAT,
                "version": FORMAT_VERSION,
                "kind": "bm25",
                "params": {"k1": self.k1, "b": self.b, "method": self.method, "mode": self.mode},
                "sizes": np.diff(self.bounds).tolist(),
            },
        )
        return folder

    @classmethod
    def load(cls, folder: str | Path, mmap: bool = True) -> ShardedBM25:
        """Read a saved index; ``mmap``: map the score arrays instead of reading them."""
        folder = Path(folder)
        layout = _read_layout(folder, "bm25")
        index = cls(**layout["params"])
        index.bounds = shard_bounds(sum(layout["sizes"]), layout["sizes"])
        index.shards = [
            BM25Shard.load(folder / f"shard-{s:03d}", mmap) for s in range(len(layout["sizes"]))
        ]
        if (folder / "stats.json").is_file():
            index.stats = BM25Stats(**load_json(folder / "stats.json"))
        return index


# ---------------------------------------------------------------- dense


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
        n = check_k(n, self.ntotal)
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
        _write_json(
            folder / LAYOUT_FILE,
            {
                "format": FORMAT,
                "version": FORMAT_VERSION,
                "kind": f"dense-{self.kind}",
                "params": {"dim": self.d, "kind": self.kind, "nprobe": self._nprobe},
                "nlist": self.nlist,
                "sizes": [int(s.ntotal) for s in self.shards],
            },
        )
        return folder

    @classmethod
    def load(cls, folder: str | Path, kind: str = "exact", mmap: bool = True):
        """Read the shards of a saved index of ``kind``; ``mmap``: memory-map their vectors
        (``IO_FLAG_MMAP_IFC`` for flat shards, ``IO_FLAG_MMAP`` for IVF ones)."""
        faiss = import_faiss()
        folder = Path(folder)
        layout = _read_layout(folder, f"dense-{kind}")
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


# ---------------------------------------------------------------- registered retrievers

_MMAP = contextvars.ContextVar("reimagen_shards_mmap", default=True)


class _MmapLoad:
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
        found = {"k1": index.k1, "b": index.b, "method": index.method, "mode": index.mode}
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
