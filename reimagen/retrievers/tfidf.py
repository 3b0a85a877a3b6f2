"""``tfidf``: cosine similarity of TF-IDF vectors over the knowledge base's captions.

BM25 adds up the query words a caption contains and normalises only by the caption's length,
so a caption that matches two medium-rare *scene* words of a prompt beats the one that matches
its rare *entity* word: "a small dodo on a blue background" -> "small blue diamond" (small +
blue) over "dodo". Colour and size words are in many emoji names, so this is common (bm25 finds
the entity for 79% of the templated unseen prompts, docs/results/retrieval-recall.md).

The cosine of TF-IDF vectors also charges a caption for the words it has that the query lacks
(its vector's norm includes them): "small blue diamond" matches two words but leaves the rare
"diamond" unmatched, "dodo" matches its only rare word. Weights, with the tokens of
:class:`~reimagen.retrievers.bm25.BM25Retriever` (bm25s: lower-case, words of 2+ characters,
English stop words removed unless ``stopwords="none"``):

    idf(w)   = ln(1 + (N - df(w) + 0.5) / (df(w) + 0.5))         Lucene's BM25 idf, > 0
    x_w      = (1 + ln tf(w)) * idf(w)    (sublinear) or tf(w) * idf(w)
    score    = <x_query, x_doc> / (|x_query| |x_doc|)             in [0, 1]

Query words not in the captions score nothing; a query with none scores 0 everywhere (ties
ordered by row, as always). The index is word-major like bm25s's: for word w,
``indices[indptr[w]:indptr[w+1]]`` are the documents containing it and ``data`` the normalised
document weights, so a batch of queries is scored with one ``np.bincount`` (float64).

Saved as ``.npy`` arrays (``allow_pickle=False``) plus options and vocabulary as JSON. No pickle.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from reimagen.retrievers.base import ViewRetriever, top_n_rows
from reimagen.retrievers.index import IndexMeta, IndexMismatchError

TFIDF_DIR = "tfidf"
ARRAYS = ("idf", "indptr", "indices", "data")  # .npy files; the word-major index + idf
PARAMS = "params.json"  # options, document count and the vocabulary (word id order)
QUERY_BATCH = 32  # queries scored together: a [32, N] float64 score matrix per batch


def tokenize(texts: list[str], stopwords: str) -> list[list[str]]:
    """bm25s's tokeniser, as the bm25 retriever uses it."""
    import bm25s

    words = None if stopwords == "none" else stopwords
    return bm25s.tokenize(texts, stopwords=words, return_ids=False, show_progress=False)


class TfidfRetriever(ViewRetriever):
    """TF-IDF cosine over the view's captions. ``stopwords``: ``"en"`` or ``"none"``;
    ``sublinear_tf``: weight a repeated word 1 + ln(tf) instead of tf."""

    name = "tfidf"
    libraries = ("bm25s",)  # the tokeniser

    def __init__(self, stopwords: str = "en", sublinear_tf: bool = True):
        super().__init__()
        if stopwords not in ("en", "none"):
            raise ValueError(f"stopwords must be one of 'en', 'none'; got {stopwords!r}")
        if not isinstance(sublinear_tf, bool):
            raise TypeError(f"sublinear_tf must be a bool, got {type(sublinear_tf).__name__}")
        self.stopwords, self.sublinear_tf = stopwords, sublinear_tf
        self.vocab: dict[str, int] = {}  # word -> id
        self.arrays: dict[str, np.ndarray] = {}  # ARRAYS: idf [V], indptr [V+1], indices/data [M]
        self._n_docs = 0

    @property
    def options(self) -> dict[str, Any]:
        return {"stopwords": self.stopwords, "sublinear_tf": self.sublinear_tf}

    # -- weights ------------------------------------------------------------------------------

    def _bags(self, tokens: list[list[str]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Known words of each text: (text ids [M], word ids [M], tf weights [M] float64),
        one entry per distinct (text, word), sorted by text then word."""
        pairs = [
            (t, self.vocab[w]) for t, words in enumerate(tokens) for w in words if w in self.vocab
        ]
        if not pairs:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
        unique, counts = np.unique(np.array(pairs, np.int64), axis=0, return_counts=True)
        tf = 1.0 + np.log(counts) if self.sublinear_tf else counts.astype(np.float64)
        return unique[:, 0], unique[:, 1], tf

    def _vectors(self, tokens: list[list[str]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """L2-normalised TF-IDF entries of each text: (text ids, word ids, weights) [M]."""
        texts, words, tf = self._bags(tokens)
        weights = tf * self.arrays["idf"][words]
        norms = np.sqrt(np.bincount(texts, weights * weights, minlength=len(tokens)))  # [T]
        return texts, words, weights / norms[texts]

    # -- ViewRetriever ------------------------------------------------------------------------

    def _build(self, texts: list[str]) -> None:
        tokens = tokenize(texts, self.stopwords)
        if not any(tokens):
            raise ValueError(
                f"none of the {len(texts)} captions has an indexable word (tfidf keeps words of "
                "2+ characters that are not stop words)"
            )
        self.vocab = {w: i for i, w in enumerate(sorted({w for words in tokens for w in words}))}
        docs, words, _ = self._bags(tokens)
        df = np.bincount(words, minlength=len(self.vocab))  # [V] documents per word
        n = len(texts)
        self.arrays = {"idf": np.log1p((n - df + 0.5) / (df + 0.5))}  # [V] float64
        docs, words, weights = self._vectors(tokens)
        order = np.lexsort((docs, words))  # word-major, documents ascending within a word
        self.arrays.update(
            indptr=np.concatenate([[0], np.cumsum(np.bincount(words, minlength=len(self.vocab)))]),
            indices=docs[order],
            data=weights[order],
        )
        self._n_docs = n

    def _score_rows(self, queries: list[list[str]]) -> np.ndarray:
        """Cosines of B tokenised queries with every document: [B, N] float64."""
        n, indptr = self._n_docs, self.arrays["indptr"]
        texts, words, weights = self._vectors(queries)
        docs, terms = [np.zeros(0, np.int64)], [np.zeros(0)]
        for q, w, weight in zip(texts.tolist(), words.tolist(), weights.tolist()):
            start, stop = indptr[w], indptr[w + 1]
            docs.append(self.arrays["indices"][start:stop] + q * n)
            terms.append(self.arrays["data"][start:stop] * weight)
        flat = np.bincount(np.concatenate(docs), np.concatenate(terms), len(queries) * n)
        return flat.reshape(len(queries), n)

    def scores(self, query: str) -> np.ndarray:
        """Cosine of one query with every view document: [N] float32."""
        self._require_view()
        return self._score_rows(tokenize([query], self.stopwords))[0].astype(np.float32)

    def _top(self, queries: list[str], n: int) -> tuple[np.ndarray, np.ndarray]:
        tokens = tokenize(queries, self.stopwords)
        parts = [
            top_n_rows(self._score_rows(tokens[start : start + QUERY_BATCH]), n)
            for start in range(0, len(tokens), QUERY_BATCH)
        ]
        return np.concatenate([p for p, _ in parts]), np.concatenate([v for _, v in parts])

    def _save_files(self, folder: Path) -> None:
        from reimagen.core.io import atomic_save_npy, atomic_write_text

        words = sorted(self.vocab, key=self.vocab.__getitem__)
        params = {**self.options, "n_docs": self._n_docs, "vocab": words}
        atomic_write_text(folder / TFIDF_DIR / PARAMS, json.dumps(params, ensure_ascii=False))
        for name in ARRAYS:
            atomic_save_npy(folder / TFIDF_DIR / f"{name}.npy", self.arrays[name])

    def _load_files(self, folder: Path, meta: IndexMeta) -> int:
        from reimagen.core.io import load_json, load_npy

        params = load_json(folder / TFIDF_DIR / PARAMS)
        words = params.pop("vocab")
        n_docs = params.pop("n_docs")
        if params != self.options:
            raise IndexMismatchError(
                f"index {folder} is stale: tfidf parameters {params} != {self.options} in "
                "index.json; rebuild it"
            )
        arrays = {name: load_npy(folder / TFIDF_DIR / f"{name}.npy") for name in ARRAYS}
        sizes = {len(arrays["idf"]), len(arrays["indptr"]) - 1, len(words)}
        if len(sizes) != 1 or len(arrays["indices"]) != len(arrays["data"]):
            raise IndexMismatchError(
                f"index {folder} is stale: vocabulary of {len(words)} words, idf of "
                f"{len(arrays['idf'])}, indptr of {len(arrays['indptr'])}; rebuild it"
            )
        self.vocab = {w: i for i, w in enumerate(words)}
        self.arrays, self._n_docs = arrays, int(n_docs)
        return self._n_docs
