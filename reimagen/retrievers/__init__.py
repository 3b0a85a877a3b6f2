"""Retrievers (docs/design.md §6): text query -> top-k knowledge-base rows with scores.

Registered names (API: add, never rename):
  ``bm25``   text-to-text BM25 over the captions (bm25s), the paper's training retriever;
  ``dense``  faiss inner product over any registered encoder's pooled embeddings (exact, or IVF);
  ``tfidf``  cosine of TF-IDF vectors over the captions: charges a caption for the words it has
             that the query lacks, so scene words ("small", "blue") do not outvote the entity;
  ``hybrid`` reciprocal-rank fusion of a lexical retriever (tfidf) and dense (minilm): the
             default for generation and benchmarks (neighbour recall, docs/results/
             retrieval-recall.md);
  ``none``   no neighbours (k must be 0): the no-retrieval baseline;
  ``bm25-sharded``, ``dense-sharded``  the same over shards with global ids (BM25 with global
             statistics, so scores equal ``bm25``'s), shard files memory-mapped at load
             (:mod:`reimagen.retrievers.sharded`).

All index a *view* (``fit(kb, rows)``) and answer in KB row ids, sorted by score; saved indexes
live beside the KB and are checked against it at load (:mod:`reimagen.retrievers.index`).
bm25s and faiss are imported only when an index is built or loaded.
"""

from reimagen.core.hookspecs import hookimpl
from reimagen.retrievers.bm25 import BM25Retriever
from reimagen.retrievers.bm25_math import BM25Stats
from reimagen.retrievers.dense import DenseRetriever
from reimagen.retrievers.hybrid import HybridRetriever
from reimagen.retrievers.index import IndexMismatchError, load_index, open_or_build
from reimagen.retrievers.none import NoneRetriever
from reimagen.retrievers.sharded import ShardedBM25Retriever, ShardedDenseRetriever
from reimagen.retrievers.sharded_index import ShardedBM25, ShardedDenseIndex
from reimagen.retrievers.tfidf import TfidfRetriever

__all__ = [
    "BM25Retriever",
    "BM25Stats",
    "DenseRetriever",
    "HybridRetriever",
    "IndexMismatchError",
    "NoneRetriever",
    "ShardedBM25",
    "ShardedBM25Retriever",
    "ShardedDenseIndex",
    "ShardedDenseRetriever",
    "TfidfRetriever",
    "load_index",
    "open_or_build",
]


@hookimpl
def reimagen_register_retrievers(register):
    register("bm25", BM25Retriever)
    register("dense", DenseRetriever)
    register("none", NoneRetriever)
    register("bm25-sharded", ShardedBM25Retriever)
    register("dense-sharded", ShardedDenseRetriever)
    register("tfidf", TfidfRetriever)
    register("hybrid", HybridRetriever)
