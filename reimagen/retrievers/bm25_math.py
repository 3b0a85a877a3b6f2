"""BM25 with collection statistics given from outside: the arithmetic of one shard (issue #9).

A BM25 score depends on the whole collection through three statistics: the document count N,
the average document length and each word's document frequency df. :class:`BM25Stats` holds
them; each shard counts its own and the counts are summed (:meth:`BM25Stats.merge`), so a shard
scored with the summed statistics gives bit-for-bit the unsharded ``bm25`` scores (a test
checks every (word, document) term score against bm25s). :class:`BM25Shard` is one shard's
term scores as a word-major sparse matrix, like bm25s's own index.

Why the term scores are written out here rather than built by bm25s: ``bm25s.BM25.index`` takes
N, avgdl and df only from the corpus it is given (no public way to pass collection statistics),
and its helpers are private per-document Python loops. We reuse bm25s's tokeniser (through
:class:`~reimagen.retrievers.bm25.BM25Retriever`) and reproduce its arithmetic exactly: idf in
Python floats (``math.log``) stored as float32; the term-frequency part in float64 with
``tf / (k1·((1 - b) + b·len/avgdl) + tf)`` (robertson, lucene; ATIRE's numerator ``tf·(k1+1)``
in float32, as numpy evaluates it in bm25s); their product rounded to float32. A query's score
is the float64 sum of its words' term scores in query order, as in ``BM25Retriever``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import attrs
import numpy as np

from reimagen.core.io import atomic_save_npy, load_json, load_npy
from reimagen.retrievers.base import BLOCK
from reimagen.retrievers.shards import write_json

DATA_NAMES = ("data", "indices", "indptr")  # a BM25 shard's arrays, one .npy file each


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
        write_json(folder / "vocab.json", {"num_docs": self.num_docs, "vocab": self.vocab})

    @classmethod
    def load(cls, folder: Path, mmap: bool) -> BM25Shard:
        """Read a saved shard; ``mmap``: map its ``.npy`` arrays (``mmap_mode="r"``)."""
        blob = load_json(folder / "vocab.json")
        data, indices, indptr = (load_npy(folder / f"{name}.npy", mmap=mmap) for name in DATA_NAMES)
        return cls(data, indices, indptr, vocab=blob["vocab"], num_docs=blob["num_docs"])
