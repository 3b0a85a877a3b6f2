"""Sharded vs unsharded retrieval (issue #9): identical top-k, and what it costs per query.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_sharded_retrieval.py   # prints the table
    .venv/bin/python -m pytest benchmarks/bench_sharded_retrieval.py -p no:randomly  # asserts it

Data: benchmarks/bench_retrieval.py's seeded corpus (100,000 synthetic Zipfian captions about
5,000 entities, 1,000 queries; ``REIMAGEN_BENCH_DOCS`` / ``REIMAGEN_BENCH_QUERIES`` shrink it)
and its MiniLM-like and hash-encoder vectors. ``SHARDS`` = 4 contiguous shards, k = 10.

Reported: the fraction of queries whose sharded top-k ids equal the unsharded ones (same
order) and the largest score difference, for BM25 with global statistics and for dense exact
(faiss IndexFlatIP per shard, merged); the naive per-shard BM25 (each shard its own N, avgdl,
df; top-k merged by score) as contrast: mean overlap |sharded ∩ unsharded| / k; seconds per
query (best of 3 rounds, all queries in one call, query tokenisation included for BM25,
embeddings precomputed for dense) and index build times. One thread (``REIMAGEN_BENCH_THREADS``).
"""

from __future__ import annotations

import functools
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_retrieval  # the sibling benchmark: data, unsharded indexes
from bench_retrieval import (
    QUERIES,
    CorpusKB,
    bm25,
    corpus,
    dense,
    embeddings,
    pin_threads,
)

SHARDS = int(os.environ.get("REIMAGEN_BENCH_SHARDS", "4"))
K = 10
ROUNDS = 3
DATASETS = ("minilm-like", "hash")
RESULTS: dict[str, float] = {}


@functools.cache
def sharded_bm25(mode: str):
    from reimagen.retrievers import ShardedBM25Retriever

    kb = CorpusKB(corpus()[0])
    return _timed(
        f"build_bm25_{mode}", lambda: ShardedBM25Retriever(shards=SHARDS, mode=mode).fit(kb)
    )


@functools.cache
def sharded_dense(dataset: str):
    """A ShardedDenseRetriever whose 'encoder' is the table of precomputed vectors."""
    from reimagen.retrievers import ShardedDenseRetriever

    docs, _ = embeddings(dataset)

    class Table(ShardedDenseRetriever):
        def embed(self, texts):
            return docs[[int(t[1:]) for t in texts]]

    kb = CorpusKB([f"v{i}" for i in range(len(docs))])
    options = {"encoder": "hash", "encoder_options": {"dim": docs.shape[1]}, "shards": SHARDS}
    return _timed(f"build_dense_sharded_{dataset}", lambda: Table(**options).fit(kb))


def measure() -> dict[str, float]:
    pin_threads()
    queries = corpus()[1]
    runs = {
        "bm25": lambda: bm25().search(queries, K),
        "bm25_global": lambda: sharded_bm25("global").search(queries, K),
        "bm25_naive": lambda: sharded_bm25("naive").search(queries, K),
    }
    for dataset in DATASETS:
        vectors = embeddings(dataset)[1]
        runs[f"dense_{dataset}"] = functools.partial(_dense_search, dense(dataset), vectors)
        runs[f"dense_sharded_{dataset}"] = functools.partial(
            _dense_search, sharded_dense(dataset), vectors
        )
    answers = {name: run() for name, run in runs.items()}  # builds the indexes, warms up
    for name, run in runs.items():
        RESULTS[f"time_{name}"] = min(_seconds(run) for _ in range(ROUNDS)) / len(queries)
    pairs = [("bm25_global", "bm25")] + [(f"dense_sharded_{d}", f"dense_{d}") for d in DATASETS]
    for sharded, full in pairs:
        got, want = answers[sharded], answers[full]
        RESULTS[f"identical_{sharded}"] = float(np.mean((got.ids == want.ids).all(axis=1)))
        RESULTS[f"maxdiff_{sharded}"] = float(np.abs(got.scores - want.scores).max())
    naive, want = answers["bm25_naive"].ids, answers["bm25"].ids
    RESULTS["overlap_bm25_naive"] = float(
        np.mean([len(set(a) & set(b)) / K for a, b in zip(naive.tolist(), want.tolist())])
    )
    RESULTS["identical_bm25_naive"] = float(np.mean((naive == want).all(axis=1)))
    return RESULTS


def _dense_search(retriever, vectors):
    return retriever.search_embeddings(vectors, K)


def summary() -> str:
    r = RESULTS
    docs = len(corpus()[0])
    lines = [
        f"{docs:,} captions, {QUERIES:,} queries, {SHARDS} shards, k={K}, threads=1, one run",
        (
            f"  {'':<40} {'identical top-k':>15} {'max |Δscore|':>13} {'ms/query':>9}"
            f" {'unsharded':>10}"
        ),
    ]
    rows = [("BM25, global statistics", "bm25_global", "bm25")] + [
        (f"dense exact, {d} vectors", f"dense_sharded_{d}", f"dense_{d}") for d in DATASETS
    ]
    for label, key, full in rows:
        lines.append(
            f"  {label:<40} {r[f'identical_{key}']:>15.3f} {r[f'maxdiff_{key}']:>13.2g}"
            f" {r[f'time_{key}'] * 1e3:>9.3f} {r[f'time_{full}'] * 1e3:>10.3f}"
        )
    lines.append(
        f"  {'BM25, naive per-shard statistics':<40} {r['identical_bm25_naive']:>15.3f}"
        f" {'':>13} {r['time_bm25_naive'] * 1e3:>9.3f}"
        f"   top-{K} overlap with unsharded {r['overlap_bm25_naive']:.3f}"
    )
    timed = {**bench_retrieval.RESULTS, **r}
    builds = ", ".join(
        f"{k[6:]} {v:.1f}s" for k, v in timed.items() if k.startswith("build_") and "ivf" not in k
    )
    lines.append(f"  index builds: {builds}")
    return "\n".join(lines)


def _timed(key, build):
    start = time.perf_counter()
    built = build()
    RESULTS[key] = time.perf_counter() - start
    return built


def _seconds(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def test_sharded_retrieval_equals_unsharded(bench_summary):
    """Under ``make bench``: the numbers above, with the identities asserted."""
    bench_summary["sharded retrieval: sharded vs unsharded"] = summary
    results = measure()
    assert results["identical_bm25_global"] == 1.0
    assert all(results[f"identical_dense_sharded_{d}"] == 1.0 for d in DATASETS)
    assert results["overlap_bm25_naive"] < 1.0


def main() -> int:
    measure()
    print(summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
