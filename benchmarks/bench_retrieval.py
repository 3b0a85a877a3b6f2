"""Retrieval benchmarks (pytest-benchmark; also runnable as a script that prints the table).

    .venv/bin/python -m pytest benchmarks/bench_retrieval.py --benchmark-only -p no:randomly
    .venv/bin/python benchmarks/bench_retrieval.py          # the same numbers as one table

Corpus: 100,000 synthetic captions of 4-12 words drawn from a Zipfian vocabulary (p ∝ 1/rank,
20,000 words) whose most frequent words are bm25s's English stop words, as in real text; the
other words are made-up syllable strings. Queries: 1,000 captions of the corpus, each with one
word dropped and one Zipfian word added. Everything is seeded; k = 4.

Measured in one run, same data, same thread count (``REIMAGEN_BENCH_THREADS``, default 1: this
2-core machine is shared, and one thread per library keeps the comparison fair and stable):
  * bm25: ours (bm25s index, batched scoring, exact top-k; query tokenisation included) vs
    rank-bm25's BM25Okapi ``get_scores`` + top-k on the same tokens (tokenisation excluded) —
    rank-bm25 is very slow, so it runs a 20-query subset and the ratio is per query;
    goal ≥ 150x;
  * dense exact (faiss IndexFlatIP) vs numpy brute force (matmul + argpartition) and torch
    (matmul + topk), on the same normalised 384-d hash-encoder embeddings (queries embedded
    beforehand); goal ≥ 1x torch;
  * dense IVF (faiss IndexIVFFlat, default nlist ≈ 4·√N and nprobe) vs exact: speed and
    recall@4 (fraction of the exact top-4 found); goal ≥ 5x at recall@4 ≥ 0.95.
Sizes: ``REIMAGEN_BENCH_DOCS``, ``REIMAGEN_BENCH_QUERIES`` for a quicker look.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Callable

import numpy as np
import pytest

DOCS = int(os.environ.get("REIMAGEN_BENCH_DOCS", "100000"))
QUERIES = int(os.environ.get("REIMAGEN_BENCH_QUERIES", "1000"))
RANK_BM25_QUERIES = 20
VOCAB = 20_000
ENTITIES = 5_000
STOP_WORDS = 33  # bm25s's English stop words lead the vocabulary
K = 4
DIM = 384
THREADS = int(os.environ.get("REIMAGEN_BENCH_THREADS", "1"))
CHUNK = 256  # queries per matmul in the brute-force baselines
GOALS = {"bm25": 150.0, "exact": 1.0, "ivf": 5.0, "recall": 0.95}
MINILM_COSINES = {"entity": 0.85, "subgroup": 0.63, "other": 0.51}  # see minilm_like()

RESULTS: dict[str, float] = {}  # seconds per query (and recall), filled by the benchmarks


# ---------------------------------------------------------------- data


class CorpusKB:
    """The attributes a retriever reads from a knowledge base."""

    def __init__(self, texts: list[str]):
        self.records = [_Record(i, text) for i, text in enumerate(texts)]
        self.fingerprint = f"synthetic-{len(texts)}"

    def __len__(self) -> int:
        return len(self.records)


class _Record:
    __slots__ = ("row", "text")

    def __init__(self, row: int, text: str):
        self.row, self.text = row, text


def zipf_vocabulary(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(words [VOCAB], probabilities [VOCAB]): English stop words first, then made-up words."""
    from bm25s.stopwords import STOPWORDS_EN

    consonants, vowels = list("bcdfghjklmnprstvwz"), list("aeiou")
    assert len(STOPWORDS_EN) == STOP_WORDS
    words, seen = list(STOPWORDS_EN), set(STOPWORDS_EN)
    while len(words) < VOCAB:
        word = "".join(
            rng.choice(consonants) + rng.choice(vowels) for _ in range(rng.integers(2, 4))
        )
        if word not in seen:
            seen.add(word)
            words.append(word)
    probabilities = 1.0 / np.arange(1, VOCAB + 1)
    return np.array(words), probabilities / probabilities.sum()


@functools.cache
def corpus() -> tuple[list[str], list[str]]:
    """(captions [DOCS], queries [QUERIES]), seeded.

    Like the emoji knowledge base, captions are about entities: ENTITIES entities, each named
    by 2-3 words of the Zipfian vocabulary (so names share words), each with DOCS / ENTITIES
    captions = its name + 2-9 Zipfian words (stop words, styles, scenes). A query names a
    random entity and adds 2-6 Zipfian words of its own, as a prompt would."""
    rng = np.random.default_rng(0)
    words, p = zipf_vocabulary(rng)
    content = p.copy()
    content[:STOP_WORDS] = 0.0  # entity names are not stop words
    content /= content.sum()
    names = [rng.choice(VOCAB, size=rng.integers(2, 4), p=content) for _ in range(ENTITIES)]

    def text(entity: int, extra: int) -> str:
        ids = np.concatenate([names[entity], rng.choice(VOCAB, size=extra, p=p)])
        return " ".join(words[rng.permutation(ids)])

    captions = [text(i % ENTITIES, rng.integers(2, 10)) for i in range(DOCS)]
    queries = [text(rng.integers(ENTITIES), rng.integers(2, 7)) for _ in range(QUERIES)]
    return captions, queries


def pin_threads() -> None:
    """One thread count for every library in this process (faiss/OpenMP, torch, BLAS)."""
    import torch
    from threadpoolctl import threadpool_limits

    from reimagen.retrievers.dense import import_faiss

    import_faiss().omp_set_num_threads(THREADS)
    torch.set_num_threads(THREADS)
    threadpool_limits(THREADS)


# ---------------------------------------------------------------- indexes (built once)


@functools.cache
def bm25():
    from reimagen.retrievers import BM25Retriever

    captions, _ = corpus()
    return _timed("build_bm25", lambda: BM25Retriever().fit(CorpusKB(captions)))


@functools.cache
def rank_bm25():
    from rank_bm25 import BM25Okapi

    tokens = bm25().tokenize(corpus()[0])
    return _timed("build_rank_bm25", lambda: BM25Okapi(tokens))


class PrecomputedDense:
    """A DenseRetriever whose 'encoder' is a table of precomputed vectors (text "v<i>" -> row
    i), so both datasets go through the same retriever code and are embedded once."""

    def __new__(cls, vectors: np.ndarray, ivf: bool):
        from reimagen.retrievers import DenseRetriever

        class Table(DenseRetriever):
            def embed(self, texts):
                return vectors[[int(t[1:]) for t in texts]]

        return Table(encoder="hash", encoder_options={"dim": vectors.shape[1]}, ivf=ivf)


@functools.cache
def embeddings(dataset: str) -> tuple[np.ndarray, np.ndarray]:
    """(docs [DOCS, D], queries [QUERIES, D]), L2-normalised float32."""
    if dataset == "hash":
        from reimagen.encoders.hash import HashEncoder

        captions, queries = corpus()
        encoder = HashEncoder(dim=DIM, cache_size=0)
        docs = [encoder.encode(captions[i : i + 512]).pooled for i in range(0, DOCS, 512)]
        return np.concatenate(docs), encoder.encode(queries).pooled
    return minilm_like()


def minilm_like() -> tuple[np.ndarray, np.ndarray]:
    """Vectors with the cosine structure MiniLM gives entity captions (measured on the emoji
    KB, 150 entities / 593 captions: same entity, other artist 0.85; same emoji subgroup 0.63;
    unrelated 0.51): x = normalise(a·o + b·g + c·e + d·ε) with a shared direction o, a subgroup
    direction g, an entity direction e and noise ε, all random unit vectors, so that
    cos = a² (unrelated), a² + b² (same subgroup), a² + b² + c² (same entity). DOCS / 4
    entities with 4 renditions each (like the KB's artists), 19 entities per subgroup; a query
    is one more rendition of a random entity."""
    rng = np.random.default_rng(1)
    a2, b2, c2 = MINILM_COSINES["other"], MINILM_COSINES["subgroup"], MINILM_COSINES["entity"]
    a, b, c, d = np.sqrt([a2, b2 - a2, c2 - b2, 1.0 - c2])
    entities = DOCS // 4
    subgroup_of = rng.integers(0, max(1, entities // 19), entities)

    def unit(n: int) -> np.ndarray:
        x = rng.standard_normal((n, DIM), dtype=np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    shared, groups, ents = unit(1)[0], unit(int(subgroup_of.max()) + 1), unit(entities)

    def draw(entity: np.ndarray) -> np.ndarray:
        x = a * shared + b * groups[subgroup_of[entity]] + c * ents[entity] + d * unit(len(entity))
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    return draw(np.arange(DOCS) % entities), draw(rng.integers(0, entities, QUERIES))


@functools.cache
def dense(dataset: str, ivf: bool = False):
    docs, _ = embeddings(dataset)
    kb = CorpusKB([f"v{i}" for i in range(len(docs))])
    key = f"build_{'ivf' if ivf else 'exact'}_{dataset}"
    return _timed(key, lambda: PrecomputedDense(docs, ivf).fit(kb))


# ---------------------------------------------------------------- the measured functions


def run_bm25():
    return bm25().search(corpus()[1], K)


def run_rank_bm25():
    index, queries = rank_bm25(), bm25().tokenize(corpus()[1][:RANK_BM25_QUERIES])
    return [np.argpartition(-index.get_scores(q), K)[:K] for q in queries]


def run_exact(dataset: str = "hash"):
    return dense(dataset).search_embeddings(embeddings(dataset)[1], K)


def run_ivf(dataset: str = "hash", nprobe: int | None = None):
    retriever = dense(dataset, ivf=True)
    default = retriever._index.nprobe
    retriever._index.nprobe = nprobe or default
    try:
        return retriever.search_embeddings(embeddings(dataset)[1], K)
    finally:
        retriever._index.nprobe = default


def run_numpy():
    (docs, queries), ids = embeddings("hash"), []
    for start in range(0, QUERIES, CHUNK):
        scores = queries[start : start + CHUNK] @ docs.T  # [chunk, N]
        top = np.argpartition(-scores, K, axis=1)[:, :K]
        order = np.argsort(-np.take_along_axis(scores, top, 1), axis=1)
        ids.append(np.take_along_axis(top, order, 1))
    return np.concatenate(ids)


def run_torch():
    import torch

    docs, queries = (torch.from_numpy(x) for x in embeddings("hash"))
    ids = []
    with torch.inference_mode():
        for start in range(0, QUERIES, CHUNK):
            ids.append(torch.topk(queries[start : start + CHUNK] @ docs.T, K).indices)
    return torch.cat(ids).numpy()


MEASURED = {  # name -> (function, queries per call)
    "bm25": (run_bm25, QUERIES),
    "rank_bm25": (run_rank_bm25, RANK_BM25_QUERIES),
    "exact": (run_exact, QUERIES),
    "numpy": (run_numpy, QUERIES),
    "torch": (run_torch, QUERIES),
    "ivf": (run_ivf, QUERIES),
    "exact_minilm_like": (functools.partial(run_exact, "minilm-like"), QUERIES),
    "ivf_minilm_like": (functools.partial(run_ivf, "minilm-like"), QUERIES),
}
SWEEP = (1, 2, 4, 8, 16, 32)  # nprobe values of the recall/speed table


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each query's true top-k ids that were found."""
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


# ---------------------------------------------------------------- the summary table


def measure_recall() -> None:
    """recall@K of the default IVF and of an nprobe sweep, on both datasets."""
    for dataset, key in (("hash", "ivf"), ("minilm-like", "ivf_minilm_like")):
        truth = run_exact(dataset).ids
        RESULTS[f"recall_{key}"] = recall_at_k(run_ivf(dataset).ids, truth)
        for nprobe in SWEEP:
            search = functools.partial(run_ivf, dataset, nprobe)
            seconds = min(_seconds(search) for _ in range(3))
            RESULTS[f"sweep_{key}_{nprobe}"] = (seconds / QUERIES, recall_at_k(search().ids, truth))


def summary() -> str:
    r = RESULTS

    def verdict(value, goal):
        return f"{'PASS' if value >= goal else 'MISS'} (goal >= {goal:g})"

    def row(label, key, note=""):
        return f"  {label:<46} {r[key] * 1e3:>9.3f} ms {1 / r[key]:>10,.0f}   {note}"

    bm25_ratio, exact_ratio = r["rank_bm25"] / r["bm25"], r["torch"] / r["exact"]
    lines = [
        (
            f"{DOCS:,} captions, {QUERIES:,} queries (rank-bm25: {RANK_BM25_QUERIES}), k={K}, "
            f"{DIM}-d, threads={THREADS}, one run; per query = best of 3 rounds / queries"
        ),
        f"  {'':<46} {'per query':>12} {'queries/s':>10}   ratio",
        row(
            "bm25 (ours, bm25s index)",
            "bm25",
            f"{bm25_ratio:,.0f}x rank-bm25  {verdict(bm25_ratio, GOALS['bm25'])}",
        ),
        row("rank-bm25 BM25Okapi", "rank_bm25"),
        row(
            "dense exact (faiss IndexFlatIP)",
            "exact",
            f"{exact_ratio:.2f}x torch, {r['numpy'] / r['exact']:.2f}x numpy  "
            f"{verdict(exact_ratio, GOALS['exact'])}",
        ),
        row("numpy matmul + argpartition", "numpy"),
        row("torch matmul + topk", "torch"),
    ]
    for dataset, key in (("hash", "ivf"), ("minilm-like", "ivf_minilm_like")):
        exact_key = "exact" if dataset == "hash" else "exact_minilm_like"
        ratio, recall = r[exact_key] / r[key], r[f"recall_{key}"]
        index = dense(dataset, ivf=True)._index
        lines.append(
            row(
                f"dense IVF, {dataset} (nlist={index.nlist}, nprobe={index.nprobe})",
                key,
                f"{ratio:.1f}x exact {verdict(ratio, GOALS['ivf'])}; recall@{K} {recall:.3f} "
                f"{verdict(recall, GOALS['recall'])}",
            )
        )
    lines.append(f"  IVF nprobe sweep (speed vs exact / recall@{K}):")
    for dataset, key in (("hash", "ivf"), ("minilm-like", "ivf_minilm_like")):
        exact_key = "exact" if dataset == "hash" else "exact_minilm_like"
        cells = [
            f"{n}: {r[exact_key] / r[f'sweep_{key}_{n}'][0]:.1f}x/{r[f'sweep_{key}_{n}'][1]:.3f}"
            for n in SWEEP
        ]
        lines.append(f"    {dataset:<12} " + "  ".join(cells))
    builds = ", ".join(f"{k[6:]} {v:.1f}s" for k, v in r.items() if k.startswith("build_"))
    lines.append(f"  index builds: {builds}")
    return "\n".join(lines)


def _timed(key: str, build: Callable):
    start = time.perf_counter()
    built = build()
    RESULTS[key] = time.perf_counter() - start
    return built


def _seconds(function: Callable) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


# ---------------------------------------------------------------- pytest-benchmark


@pytest.fixture(scope="module", autouse=True)
def _setup(bench_summary):
    pin_threads()
    bench_summary["retrieval: ratios from this run"] = summary


@pytest.mark.parametrize("name", list(MEASURED))
def test_retrieval_speed(benchmark, name):
    function, per_call = MEASURED[name]
    function()  # build indexes and warm up outside the timing
    benchmark.group = "retrieval (one call; the summary has per-query ratios)"
    benchmark.pedantic(function, rounds=1 if name == "rank_bm25" else 3, iterations=1)
    RESULTS[name] = benchmark.stats.stats.min / per_call
    if name == "exact":  # faiss agrees with the brute-force baselines
        assert recall_at_k(run_exact().ids, run_numpy()) > 0.999
        assert recall_at_k(run_exact().ids, run_torch()) > 0.999
    if name == "ivf_minilm_like":  # last: every number of the summary is in
        measure_recall()
        assert RESULTS["recall_ivf_minilm_like"] >= GOALS["recall"]


# ---------------------------------------------------------------- as a script


def main() -> int:
    pin_threads()
    for name, (function, per_call) in MEASURED.items():
        function()
        rounds = 1 if name == "rank_bm25" else 3
        RESULTS[name] = min(_seconds(function) for _ in range(rounds)) / per_call
    measure_recall()
    print(summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
