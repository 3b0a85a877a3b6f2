"""Training triples: each training example's top-K knowledge-base neighbours, precomputed once
(the paper's KNN-ImageText, §3.2: "text-to-text BM25 similarity to find the top-2 neighbors as
c_n (excluding the query instance)"; docs/design.md §6).

    queries [N] (training captions) ──retriever.search(batch, K, exclude)──▶ ids [N, K] int64
                                                                           scores [N, K] float32

``exclude[i]`` lists the KB rows example i must never get (its own image, and whatever else the
data recipe forbids); the retriever guarantees they never appear. Which queries and which
exclusions is the training-data recipe's business; this module is the generic machinery.

A triples file records what it was computed from — retriever name and options, K, the KB
fingerprint, the indexed view's rows hash, a hash of the query list and of the exclusions — and
a hash of its own arrays. :func:`load_triples` checks them against the knowledge base (and, if
given, the queries) and raises :class:`TriplesMismatchError` naming what differs, so a training
run cannot pair examples with neighbours from another base. Files are ``.npz`` (read with
``allow_pickle=False``) or ``.safetensors`` (metadata in its header), written atomically.

Integrity (issue #14): a ``.safetensors`` file carries the sha256 of its bytes in its header; an
``.npz`` gets ``<file>.sha256`` beside it (``sha256sum`` format), written after it. Both are
checked before anything is parsed, so a flipped bit anywhere (the zip's own fields included) is
a :class:`TriplesIntegrityError` naming the file; a file without its checksum is one too (the
training data rebuilds triples it cannot trust).

numpy only: the retriever is passed in, so core imports no retrieval library.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from reimagen.core import digests
from reimagen.core.checks import check_k
from reimagen.core.io import (
    atomic_save_safetensors,
    atomic_write_bytes,
    check_safetensors,
    load_safetensors,
)

FORMAT = "reimagen-triples"
FORMAT_VERSION = 1
SUFFIXES = (".npz", ".safetensors")
META_KEY = "meta_json"  # the JSON metadata: an npz member (uint8 bytes) or a safetensors field


class TriplesMismatchError(ValueError):
    """A triples file that does not belong to the knowledge base or queries given, or is
    damaged."""


class TriplesIntegrityError(TriplesMismatchError, digests.IntegrityError):
    """A triples file whose bytes differ from its recorded sha256, or that has none."""


@attrs.frozen(kw_only=True)
class TriplesMeta:
    """What a set of triples was computed from."""

    retriever: str
    retriever_options: dict[str, Any]
    k: int
    count: int  # N, the number of queries
    kb_fingerprint: str
    rows_hash: str | None  # the retriever's indexed view, when it exposes one
    queries_hash: str
    exclude_hash: str
    arrays_hash: str = ""  # sha256 of ids and scores, filled when built
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(attrs.asdict(self), sort_keys=True, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> TriplesMeta:
        try:
            blob = json.loads(text)
            if blob.get("format") != FORMAT or blob.get("format_version") != FORMAT_VERSION:
                raise TriplesMismatchError(
                    f"not a {FORMAT} v{FORMAT_VERSION} file (format {blob.get('format')!r} "
                    f"v{blob.get('format_version')!r})"
                )
            return cls(**{f.name: blob[f.name] for f in attrs.fields(cls)})
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            if isinstance(err, TriplesMismatchError):
                raise
            raise TriplesMismatchError(f"unreadable triples metadata ({err!r})") from err


@attrs.frozen
class Triples:
    """Neighbours per training example, best first."""

    ids: np.ndarray  # [N, K] int64 KB rows
    scores: np.ndarray  # [N, K] float32, non-increasing along K
    meta: TriplesMeta

    def __len__(self) -> int:
        return int(self.ids.shape[0])


# ---- hashes ---------------------------------------------------------------------------------


def queries_hash(queries: Sequence[str]) -> str:
    """sha256 of the query list, in order."""
    return hashlib.sha256(json.dumps(list(queries), ensure_ascii=False).encode()).hexdigest()


def exclude_hash(exclude: Sequence[Sequence[int]] | None) -> str:
    lists = [sorted(int(r) for r in rows) for rows in exclude] if exclude is not None else None
    return hashlib.sha256(json.dumps(lists).encode()).hexdigest()


def arrays_hash(ids: np.ndarray, scores: np.ndarray) -> str:
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(ids, dtype="<i8").tobytes())
    digest.update(np.ascontiguousarray(scores, dtype="<f4").tobytes())
    return digest.hexdigest()


# ---- building ---------------------------------------------------------------------------------


def build_triples(
    queries: Sequence[str],
    retriever: Any,
    k: int,
    exclude: Sequence[Sequence[int]] | None,
    *,
    kb_fingerprint: str | None = None,
    batch_size: int = 1024,
    progress: Callable[[int, int], None] | None = None,
) -> Triples:
    """Top-``k`` neighbours of every query, never one of ``exclude[i]``, in batches.

    ``retriever``: any fitted Retriever; its KB fingerprint is read from ``kb_fingerprint`` or
    the retriever's ``kb_fingerprint`` attribute (the built-ins have it). ``progress(done,
    total)`` is called after each batch."""
    queries = _check_queries(queries)
    exclude = _check_exclude(exclude, len(queries))
    k = check_k(k)
    if isinstance(batch_size, bool) or int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    fingerprint = kb_fingerprint or getattr(retriever, "kb_fingerprint", None)
    if not fingerprint:
        raise ValueError(
            "kb_fingerprint is required: pass kb_fingerprint=kb.fingerprint (this retriever does "
            "not expose the knowledge base it indexed)"
        )
    ids = np.zeros((len(queries), k), np.int64)  # [N, K]
    scores = np.zeros((len(queries), k), np.float32)  # [N, K]
    for start in range(0, len(queries), int(batch_size)):
        stop = min(start + int(batch_size), len(queries))
        batch_exclude = None if exclude is None else exclude[start:stop]
        found = retriever.search(queries[start:stop], k, exclude=batch_exclude)
        ids[start:stop], scores[start:stop] = _checked_batch(found, stop - start, k)
        if progress is not None:
            progress(stop, len(queries))
    meta = TriplesMeta(
        retriever=str(retriever.name),
        retriever_options=dict(getattr(retriever, "options", {}) or {}),
        k=int(k),
        count=len(queries),
        kb_fingerprint=str(fingerprint),
        rows_hash=_view_hash(retriever),
        queries_hash=queries_hash(queries),
        exclude_hash=exclude_hash(exclude),
        arrays_hash=arrays_hash(ids, scores),
    )
    return Triples(ids=ids, scores=scores, meta=meta)


def _checked_batch(found, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    ids, scores = np.asarray(found.ids), np.asarray(found.scores)
    if ids.shape != (n, k) or scores.shape != (n, k):
        raise ValueError(
            f"retriever returned ids {list(ids.shape)} / scores {list(scores.shape)} for a batch "
            f"of {n} queries with k={k}; expected [{n}, {k}]"
        )
    return ids.astype(np.int64), scores.astype(np.float32)


def _view_hash(retriever: Any) -> str | None:
    rows = getattr(retriever, "rows", None)
    if rows is None:
        return None
    return hashlib.sha256(np.ascontiguousarray(rows, dtype="<i8").tobytes()).hexdigest()


def _check_queries(queries: Sequence[str]) -> list[str]:
    if isinstance(queries, (str, bytes)):
        raise TypeError("queries must be a list of strings, not a single string")
    queries = list(queries)
    for i, query in enumerate(queries):
        if not isinstance(query, str):
            raise TypeError(f"queries must all be str; item {i} is {type(query).__name__}")
    return queries


def _check_exclude(exclude, n: int) -> list[list[int]] | None:
    if exclude is None:
        return None
    exclude = [list(rows) for rows in exclude]
    if len(exclude) != n:
        raise ValueError(
            f"exclude must have one list per query: got {len(exclude)} for {n} queries"
        )
    return exclude


# ---- files ----------------------------------------------------------------------------------


def save_triples(path: str | Path, triples: Triples) -> Path:
    """Write ``.npz`` or ``.safetensors`` (by suffix), atomically."""
    path = Path(path)
    meta_json = triples.meta.to_json()
    arrays: dict[str, np.ndarray] = {
        "ids": triples.ids.astype(np.int64),
        "scores": triples.scores.astype(np.float32),
    }
    if path.suffix == ".safetensors":
        atomic_save_safetensors(path, arrays, metadata={META_KEY: meta_json})
    elif path.suffix == ".npz":
        buffer = io.BytesIO()
        meta_bytes = np.frombuffer(meta_json.encode(), dtype=np.uint8)
        np.savez(buffer, **arrays, **{META_KEY: meta_bytes}, allow_pickle=False)
        atomic_write_bytes(path, buffer.getvalue())
        digests.write_sidecar(path)  # after the data: no sidecar, no trust
    else:
        raise ValueError(f"triples file must end in {' or '.join(SUFFIXES)}, got {path.name!r}")
    return path


def load_triples(path: str | Path, kb: Any, *, queries: Sequence[str] | None = None) -> Triples:
    """Read a triples file and check it belongs to ``kb`` (its ``fingerprint``) and, when given,
    to ``queries``; any difference raises :class:`TriplesMismatchError` naming it."""
    path = Path(path)
    arrays, meta = _read(path)
    ids, scores = arrays["ids"], arrays["scores"]
    diffs = []
    if meta.kb_fingerprint != kb.fingerprint:
        diffs.append(
            f"knowledge-base fingerprint {meta.kb_fingerprint[:12]} (triples) != "
            f"{str(kb.fingerprint)[:12]} (knowledge base)"
        )
    if queries is not None and queries_hash(list(queries)) != meta.queries_hash:
        diffs.append(
            f"the query list differs from the {meta.count} queries the triples were built for"
        )
    if ids.shape != (meta.count, meta.k) or scores.shape != ids.shape:
        diffs.append(f"arrays {list(ids.shape)} / {list(scores.shape)} != [{meta.count}, {meta.k}]")
    elif arrays_hash(ids, scores) != meta.arrays_hash:
        diffs.append("ids/scores do not match the hash recorded when they were built")
    elif ids.size and (ids.min() < 0 or ids.max() >= len(kb)):
        diffs.append(f"ids outside the knowledge base's 0..{len(kb) - 1}")
    if diffs:
        raise TriplesMismatchError(f"triples {path}: {'; '.join(diffs)}; rebuild them")
    return Triples(ids=ids.astype(np.int64), scores=scores.astype(np.float32), meta=meta)


def _read(path: Path) -> tuple[dict[str, np.ndarray], TriplesMeta]:
    if not path.is_file():
        raise FileNotFoundError(f"triples file not found: {path}")
    _verify(path)
    if path.suffix == ".safetensors":
        arrays, header = load_safetensors(path, check=False)  # checked by _verify
        meta_json = header.get(META_KEY)
    elif path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as archive:
                arrays = {name: archive[name] for name in archive.files}
        except ValueError as err:  # a pickled member: refused, never unpickled
            raise TriplesIntegrityError(f"triples {path}: refusing to load ({err})") from None
        meta_json = bytes(arrays.pop(META_KEY, np.zeros(0, np.uint8))).decode() or None
    else:
        raise ValueError(f"triples file must end in {' or '.join(SUFFIXES)}, got {path.name!r}")
    missing = {"ids", "scores"} - set(arrays)  # (only a file this reimagen did not write)
    if meta_json is None or missing:
        raise TriplesMismatchError(f"triples {path}: missing {sorted(missing) or [META_KEY]}")
    return arrays, TriplesMeta.from_json(meta_json)


def _verify(path: Path) -> None:
    """The file's bytes against its recorded sha256 (in the header, or the .sha256 sidecar)."""
    try:
        if path.suffix == ".safetensors":
            check_safetensors(path)
        elif path.suffix == ".npz":
            digests.verify_sidecar(path)
    except digests.UnsafeFileError:
        raise  # not safetensors at all: refused as such
    except digests.IntegrityError as err:
        raise TriplesIntegrityError(f"triples {str(err).splitlines()[0]}; rebuild them") from None
