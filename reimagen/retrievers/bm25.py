"""``bm25``: text-to-text BM25 over the knowledge base's captions, on ``bm25s`` (docs/design.md §6).

The paper builds its training set KNN-ImageText with "text-to-text BM25 similarity to find the
top-2 neighbors" (§3.2), so this is the training retriever. bm25s precomputes every
(word, document) BM25 term score into a sparse matrix at index time; a query's scores are the
sum of its words' columns. Text is tokenised by bm25s (lower-case, words of 2+ characters,
English stop words removed by default); queries use the same tokeniser and the index's
vocabulary, so words never seen in the captions simply score nothing.

Scoring and selection are batched here (:meth:`BM25Retriever._score_rows` sums the words'
columns of the bm25s index for 32 queries with one ``np.bincount``;
:func:`~reimagen.retrievers.base.top_n_rows` selects exactly, ties broken by row) rather than
bm25s's per-query ``retrieve``, which imports JAX for ``backend_selection="auto"``, breaks ties
arbitrarily and was ~10x slower on the 100k-caption benchmark.

Saved with bm25s's own ``save``: the score matrix as three ``.npy`` arrays (written and read with
``allow_pickle=False``) plus the vocabulary and parameters as JSON. No pickle is involved.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from reimagen.core.io import check_npy, load_json
from reimagen.retrievers.base import BLOCK, ViewRetriever, top_n_rows
from reimagen.retrievers.index import IndexMeta, IndexMismatchError

METHODS = ("robertson", "lucene", "atire")  # bm25s scoring variants without extra arrays
BM25S_DIR = "bm25s"
QUERY_BATCH = 32  # queries scored together: a [32, N] float score matrix per batch


class BM25Retriever(ViewRetriever):
    """BM25 over the view's captions. ``k1``, ``b``: the usual BM25 constants; ``method``:
    bm25s's variant; ``stopwords``: ``"en"`` or ``"none"``."""

    name = "bm25"
    libraries = ("bm25s",)

    def __init__(
        self, k1: float = 1.5, b: float = 0.75, method: str = "lucene", stopwords: str = "en"
    ):
        super().__init__()
        if not 0.0 <= float(k1) <= 10.0:
            raise ValueError(f"k1 must be in [0, 10], got {k1}")
        if not 0.0 <= float(b) <= 1.0:
            raise ValueError(f"b must be in [0, 1], got {b}")
        if method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
        if stopwords not in ("en", "none"):
            raise ValueError(f"stopwords must be one of 'en', 'none'; got {stopwords!r}")
        self.k1, self.b, self.method, self.stopwords = float(k1), float(b), method, stopwords
        self._bm25: Any = None  # a bm25s.BM25 once fitted or loaded (bm25s ships no types)

    @property
    def options(self) -> dict[str, Any]:
        return {"k1": self.k1, "b": self.b, "method": self.method, "stopwords": self.stopwords}

    def tokenize(self, texts: list[str]) -> list[list[str]]:
        import bm25s

        stopwords = None if self.stopwords == "none" else self.stopwords
        return bm25s.tokenize(texts, stopwords=stopwords, return_ids=False, show_progress=False)

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every view document for one query: [N] float32."""
        scores = self._score_rows(self.tokenize([query]))[0, : len(self._require_view())]
        return scores.astype(np.float32)

    def _score_rows(self, queries: list[list[str]]) -> np.ndarray:
        """Scores of B tokenised queries: [B, N'] float64 with N' = N rounded up to a multiple
        of BLOCK, padding columns -inf (so they are never selected).

        bm25s stores the index as a sparse word-major matrix (``BM25.scores``: for word w,
        ``indices[indptr[w]:indptr[w+1]]`` are the documents containing it and ``data`` their
        precomputed term scores), so a query's scores are a sum of a few sparse columns. We sum
        the columns of all B queries with one ``np.bincount`` (float64 accumulation) instead of
        bm25s's per-query, per-word ``np.add.at`` in ``get_scores``: the same numbers (a test
        checks it against ``get_scores``), several times faster."""
        index, vocab = self._bm25.scores, self._bm25.vocab_dict
        n_docs = int(index["num_docs"])
        width = -(-n_docs // BLOCK) * BLOCK
        docs, terms = [np.zeros(0, np.int64)], [np.zeros(0, np.float32)]
        for q, words in enumerate(queries):
            for w in (vocab[w] for w in words if w in vocab):  # a repeated word counts twice
                start, stop = index["indptr"][w], index["indptr"][w + 1]
                docs.append(index["indices"][start:stop].astype(np.int64) + q * width)
                terms.append(index["data"][start:stop])
        flat = np.bincount(np.concatenate(docs), np.concatenate(terms), len(queries) * width)
        scores = flat.astype(np.float64, copy=False).reshape(len(queries), width)  # [B, N']
        scores[:, n_docs:] = -np.inf
        return scores

    def indexable_tokens(self, texts: list[str]) -> list[list[str]]:
        """The captions' tokens; a one-line error when none has an indexable word."""
        tokens = self.tokenize(texts)
        if not any(tokens):
            raise ValueError(
                f"none of the {len(texts)} captions has an indexable word (bm25 keeps words of "
                "2+ characters that are not stop words)"
            )
        return tokens

    def _build(self, texts: list[str]) -> None:
        import bm25s

        tokens = self.indexable_tokens(texts)
        bm25 = bm25s.BM25(k1=self.k1, b=self.b, method=self.method, backend="numpy")
        bm25.index(tokens, show_progress=False)
        self._bm25 = bm25

    def _top(self, queries: list[str], n: int) -> tuple[np.ndarray, np.ndarray]:
        tokens = self.tokenize(queries)
        parts = [
            top_n_rows(self._score_rows(tokens[start : start + QUERY_BATCH]), n)
            for start in range(0, len(tokens), QUERY_BATCH)
        ]
        return np.concatenate([p for p, _ in parts]), np.concatenate([v for _, v in parts])

    def _save_files(self, folder: Path) -> None:
        self._bm25.save(folder / BM25S_DIR, show_progress=False)  # .npy (no pickle) + JSON

    def _load_files(self, folder: Path, meta: IndexMeta) -> int:
        import bm25s

        # bm25s reads these itself; check them first so a refusal names the file
        for path in sorted((folder / BM25S_DIR).iterdir()):
            if path.suffix == ".npy":
                check_npy(path)
            elif path.suffix == ".json":
                load_json(path)
        bm25 = bm25s.BM25.load(folder / BM25S_DIR, allow_pickle=False, show_progress=False)
        found = {"k1": bm25.k1, "b": bm25.b, "method": bm25.method}
        wanted = {"k1": self.k1, "b": self.b, "method": self.method}
        if found != wanted:
            raise IndexMismatchError(
                f"index {folder} is stale: bm25s parameters {found} != {wanted} in index.json"
            )
        self._bm25 = bm25
        return int(bm25.scores["num_docs"])
