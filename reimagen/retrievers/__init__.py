"""Retrievers (DESIGN §6): text query -> top-k knowledge-base rows with scores.

Registered names (API: add, never rename):
  ``bm25``   text-to-text BM25 over the captions (bm25s), the paper's training retriever;
  ``dense``  faiss inner product over any registered encoder's pooled embeddings (exact, or IVF);
  ``none``   no neighbours (k must be 0): the no-retrieval baseline.

All index a *view* (``fit(kb, rows)``) and answer in KB row ids, sorted by score; saved indexes
live beside the KB and are checked against it at load (:mod:`reimagen.retrievers.index`).
bm25s and faiss are imported only when an index is built or loaded.
"""

from reimagen.core.hookspecs import hookimpl
from reimagen.retrievers.bm25 import BM25Retriever
from reimagen.retrievers.dense import DenseRetriever
from reimagen.retrievers.index import IndexMismatchError, load_index, open_or_build
from reimagen.retrievers.none import NoneRetriever

__all__ = [
    "BM25Retriever",
    "DenseRetriever",
    "IndexMismatchError",
    "NoneRetriever",
    "load_index",
    "open_or_build",
]


@hookimpl
def reimagen_register_retrievers(register):
    register("bm25", BM25Retriever)
    register("dense", DenseRetriever)
    register("none", NoneRetriever)
