"""Training triples: built in batches = one search per query, exclusions honoured, files that
round-trip and refuse to load against another knowledge base, other queries, or edited arrays.

Oracles: a brute-force word-overlap retriever written here (its ranking computed by hand);
batch-size invariance as a property; fault injection on saved files.
"""

from __future__ import annotations

import hashlib
import io
import json
from typing import ClassVar

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reimagen.core import digests
from reimagen.core.interfaces import RetrievalResult
from reimagen.core.io import UnsafeFileError
from reimagen.kb.triples import (
    META_KEY,
    Triples,
    TriplesMismatchError,
    build_triples,
    load_triples,
    queries_hash,
    save_triples,
)
from reimagen.retrievers import BM25Retriever, NoneRetriever


class KB:
    def __init__(self, texts):
        self.records = [type("R", (), {"text": t, "row": i})() for i, t in enumerate(texts)]
        self.fingerprint = hashlib.sha256("\n".join(texts).encode()).hexdigest()

    def __len__(self):
        return len(self.records)


class OverlapRetriever:
    """Score = number of shared words; ties by row. Counts its search calls."""

    name = "overlap"
    options: ClassVar[dict] = {}

    def __init__(self, kb):
        self.kb, self.kb_fingerprint, self.calls = kb, kb.fingerprint, 0
        self.docs = [set(r.text.split()) for r in kb.records]

    def search(self, queries, k, exclude=None):
        self.calls += 1
        ids, scores = [], []
        for q, query in enumerate(queries):
            banned = set(exclude[q]) if exclude is not None else set()
            ranked = sorted(
                (-len(set(query.split()) & doc), row)
                for row, doc in enumerate(self.docs)
                if row not in banned
            )[:k]
            ids.append([row for _, row in ranked])
            scores.append([-s for s, _ in ranked])
        shape = (len(queries), k)
        return RetrievalResult(
            np.array(ids, np.int64).reshape(shape), np.array(scores, np.float32).reshape(shape)
        )


TEXTS = ["red apple", "green apple", "red rocket", "apple pie", "blue whale", "red whale"]


def test_triples_are_each_querys_neighbours_without_itself():
    kb = KB(TEXTS)
    retriever = OverlapRetriever(kb)
    triples = build_triples(TEXTS, retriever, 2, [[i] for i in range(len(TEXTS))], batch_size=4)
    # Worked by hand: shared words, ties by row, the query's own row excluded.
    np.testing.assert_array_equal(triples.ids, [[1, 2], [0, 3], [0, 5], [0, 1], [5, 0], [0, 2]])
    np.testing.assert_array_equal(triples.scores, [[1, 1], [1, 1], [1, 1], [1, 1], [1, 0], [1, 1]])
    assert retriever.calls == 2  # 6 queries in batches of 4
    assert triples.meta.count == 6 and triples.meta.k == 2
    assert triples.meta.kb_fingerprint == kb.fingerprint


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 12), batch=st.integers(1, 15), k=st.integers(0, 3), seed=st.integers(0, 99))
def test_batch_size_does_not_change_the_triples(n, batch, k, seed):
    rng = np.random.default_rng(seed)
    words = ["zal", "bex", "kor", "mip", "pex"]
    texts = [" ".join(rng.choice(words, size=3)) for _ in range(n + 4)]
    retriever = BM25Retriever().fit(KB(texts))
    queries = texts[:n]
    exclude = [[i, int(rng.integers(0, n + 4))] for i in range(n)]
    one = build_triples(queries, retriever, k, exclude, batch_size=batch)
    whole = retriever.search(queries, k, exclude=exclude)  # one call, the oracle
    np.testing.assert_array_equal(one.ids, whole.ids)
    np.testing.assert_array_equal(one.scores, whole.scores)
    for i, banned in enumerate(exclude):
        assert not set(one.ids[i].tolist()) & set(banned)
    assert one.meta.arrays_hash == build_triples(queries, retriever, k, exclude).meta.arrays_hash


def test_progress_is_reported_per_batch():
    seen = []
    build_triples(
        TEXTS,
        OverlapRetriever(KB(TEXTS)),
        1,
        None,
        batch_size=4,
        progress=lambda done, total: seen.append((done, total)),
    )
    assert seen == [(4, 6), (6, 6)]


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_round_trip_and_checks_at_load(tmp_path, suffix):
    kb = KB(TEXTS)
    triples = build_triples(TEXTS, BM25Retriever().fit(kb), 2, [[i] for i in range(6)])
    path = save_triples(tmp_path / f"triples{suffix}", triples)
    loaded = load_triples(path, kb, queries=TEXTS)
    np.testing.assert_array_equal(loaded.ids, triples.ids)
    np.testing.assert_array_equal(loaded.scores, triples.scores)
    assert loaded.ids.dtype == np.int64 and loaded.scores.dtype == np.float32
    assert loaded.meta == triples.meta and loaded.meta.retriever == "bm25"
    assert loaded.meta.retriever_options == {
        "k1": 1.5,
        "b": 0.75,
        "method": "lucene",
        "stopwords": "en",
    }
    with pytest.raises(TriplesMismatchError, match="fingerprint"):
        load_triples(path, KB(TEXTS[:-1]))
    with pytest.raises(TriplesMismatchError, match="query list differs"):
        load_triples(path, kb, queries=TEXTS[::-1])


def test_edited_arrays_are_detected(tmp_path):
    kb = KB(TEXTS)
    triples = build_triples(TEXTS, OverlapRetriever(kb), 2, None)
    edited = Triples(ids=triples.ids[:, ::-1].copy(), scores=triples.scores, meta=triples.meta)
    path = save_triples(tmp_path / "t.npz", edited)
    with pytest.raises(TriplesMismatchError, match="do not match the hash"):
        load_triples(path, kb)
    shrunk = Triples(ids=triples.ids[:3], scores=triples.scores[:3], meta=triples.meta)
    save_triples(path, shrunk)
    with pytest.raises(TriplesMismatchError, match=r"\[3, 2\] .* != \[6, 2\]"):
        load_triples(path, kb)


def test_files_that_are_not_ours_are_refused(tmp_path):
    kb = KB(TEXTS)
    triples = build_triples(TEXTS, OverlapRetriever(kb), 1, None)
    meta = np.frombuffer(triples.meta.to_json().encode(), np.uint8)
    pickled = tmp_path / "pickled.npz"
    buffer = io.BytesIO()
    np.savez(
        buffer, ids=np.array([{"x": 1}], dtype=object), scores=triples.scores, **{META_KEY: meta}
    )
    pickled.write_bytes(buffer.getvalue())
    with pytest.raises(TriplesMismatchError, match=r"pickled\.npz\.sha256: missing"):
        load_triples(pickled, kb)
    digests.write_sidecar(pickled)  # even with a checksum beside it, the pickle is refused
    with pytest.raises(TriplesMismatchError, match="allow_pickle"):
        load_triples(pickled, kb)
    fake = tmp_path / "fake.safetensors"
    fake.write_bytes(b"\x80\x04not safetensors")
    with pytest.raises(UnsafeFileError):
        load_triples(fake, kb)
    no_meta = tmp_path / "no_meta.npz"
    np.savez(no_meta, ids=triples.ids, scores=triples.scores)
    digests.write_sidecar(no_meta)
    with pytest.raises(TriplesMismatchError, match="missing"):
        load_triples(no_meta, kb)
    wrong_format = tmp_path / "other.npz"
    blob = json.loads(triples.meta.to_json()) | {"format": "something-else"}
    np.savez(
        wrong_format,
        ids=triples.ids,
        scores=triples.scores,
        **{META_KEY: np.frombuffer(json.dumps(blob).encode(), np.uint8)},
    )
    digests.write_sidecar(wrong_format)
    with pytest.raises(TriplesMismatchError, match="not a reimagen-triples"):
        load_triples(wrong_format, kb)
    with pytest.raises(ValueError, match=r"must end in \.npz or \.safetensors"):
        save_triples(tmp_path / "t.pkl", triples)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda r: build_triples("red apple", r, 1, None), TypeError, "not a single string"),
        (lambda r: build_triples(TEXTS, r, 1, [[0]]), ValueError, "one list per query"),
        (lambda r: build_triples(TEXTS, r, -1, None), ValueError, "k must be an integer >= 0"),
        (lambda r: build_triples(TEXTS, r, 1, None, batch_size=0), ValueError, "batch_size"),
    ],
)
def test_bad_arguments(call, error, message):
    with pytest.raises(error, match=message):
        call(OverlapRetriever(KB(TEXTS)))


def test_fingerprint_is_required_when_the_retriever_has_none():
    retriever = OverlapRetriever(KB(TEXTS))
    retriever.kb_fingerprint = None
    with pytest.raises(ValueError, match="kb_fingerprint is required"):
        build_triples(TEXTS, retriever, 1, None)
    triples = build_triples(TEXTS, retriever, 1, None, kb_fingerprint="abc")
    assert triples.meta.kb_fingerprint == "abc"


def test_no_retrieval_baseline_triples(tmp_path):
    kb = KB(TEXTS)
    triples = build_triples(TEXTS, NoneRetriever().fit(kb), 0, None)
    assert triples.ids.shape == triples.scores.shape == (6, 0)
    loaded = load_triples(save_triples(tmp_path / "none.safetensors", triples), kb)
    assert loaded.ids.shape == (6, 0) and loaded.meta.queries_hash == queries_hash(TEXTS)
