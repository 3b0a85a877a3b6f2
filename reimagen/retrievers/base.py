"""The search contract every built-in retriever shares (docs/design.md §6, interfaces.Retriever).

A retriever indexes a *view* of a knowledge base (some of its rows, e.g. one artist's drawings)
but always answers in knowledge-base row ids. :class:`ViewRetriever` owns everything that is not
the scoring itself:

* input checks, before any compute: queries are strings, ``0 <= k <= indexed docs``
  (:func:`reimagen.core.checks.check_k`; a larger k is a ValueError naming both numbers), one
  exclusion list per query;
* exclusions by over-fetching: ask the index for ``k + (excluded rows in the view)`` hits, drop
  the excluded ones, keep the first k. An excluded row is never returned; if too few rows are
  left the query fails loudly instead of returning fewer than k;
* a total order: scores descending, ties broken by row id ascending, so a result never depends
  on how a library happened to order equal scores;
* save/load through :mod:`reimagen.retrievers.index` (meta, view rows, checks at load time).

Subclasses implement ``_build(texts)``, ``_top(queries, n)`` (top-n view positions and scores
per query), ``_save_files(folder)``, ``_load_files(folder, meta)`` and ``options``.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from reimagen.core.checks import check_k
from reimagen.core.interfaces import RetrievalResult, Retriever
from reimagen.retrievers import index as saved


class View:
    """The KB rows a retriever indexed and the facts that tie them to one knowledge base."""

    def __init__(self, kb: Any, rows: np.ndarray):
        self.rows = rows  # [N] int64, ascending; view position i <-> KB row rows[i]
        self.kb_fingerprint = str(kb.fingerprint)
        self.kb_size = len(kb)
        self.texts = [kb.records[int(r)].text for r in rows]

    def __len__(self) -> int:
        return len(self.rows)

    def positions(self, kb_rows: Sequence[int]) -> np.ndarray:
        """View positions of those ``kb_rows`` that are in the view (others are dropped)."""
        wanted = np.asarray(kb_rows, dtype=np.int64).reshape(-1)
        where = np.searchsorted(self.rows, wanted)
        inside = (where < len(self.rows)) & (
            self.rows[np.minimum(where, len(self.rows) - 1)] == wanted
        )
        return np.unique(where[inside])


def select_rows(kb: Any, rows: Sequence[int] | None) -> np.ndarray:
    """The view's KB rows, ascending int64; ``None`` means every row."""
    size = len(kb)
    if rows is None:
        return np.arange(size, dtype=np.int64)
    given = np.asarray(rows)
    if given.ndim != 1 or (given.size and not np.issubdtype(given.dtype, np.integer)):
        raise ValueError(
            f"rows must be a 1-D sequence of ints, got shape {given.shape} {given.dtype}"
        )
    selected = given.astype(np.int64)
    if selected.size == 0:
        raise ValueError("rows is empty: a view must select at least one knowledge-base row")
    if selected.min() < 0 or selected.max() >= size:
        raise ValueError(f"rows must be in [0, {size - 1}] (the knowledge base has {size} rows)")
    unique = np.unique(selected)
    if len(unique) != len(selected):
        raise ValueError(f"rows has {len(selected) - len(unique)} duplicate(s)")
    return unique


def check_queries(queries: Sequence[str]) -> list[str]:
    if isinstance(queries, (str, bytes)):
        raise TypeError("queries must be a sequence of strings, not a single string; wrap it")
    queries = list(queries)
    for i, query in enumerate(queries):
        if not isinstance(query, str):
            raise TypeError(f"queries must all be str; item {i} is {type(query).__name__}")
    return queries


def check_exclude(exclude, n_queries: int) -> list[Sequence[int]] | None:
    if exclude is None:
        return None
    exclude = list(exclude)
    if len(exclude) != n_queries:
        raise ValueError(
            f"exclude must have one list per query: got {len(exclude)} for {n_queries} queries"
        )
    return exclude


def order_hits(positions: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort each row of hits [Q, n] by score descending, then position ascending."""
    order = np.lexsort((positions, -scores), axis=-1)
    return np.take_along_axis(positions, order, -1), np.take_along_axis(scores, order, -1)


BLOCK = 64  # top_n_rows' prefilter: positions are split into groups of this many


def top_n_rows(scores: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact, deterministic top-n of each row of ``scores`` [B, N]: (positions [B, n] int64,
    scores [B, n] float32) by score descending, ties by position ascending; no full sort.

    Prefilter (exact): split a row's positions into G groups of BLOCK (group g holds positions
    g, g+G, g+2G, ..., so the group maxima are one vectorised pass over the row). The n largest
    group maxima are n distinct scores, so the row's n-th largest score is >= t, the n-th
    largest group maximum: every top-n score lies in a group whose maximum is >= t. Only those
    few groups (plus the < BLOCK positions past the last full group) are ranked. ``-inf``
    marks padding."""
    batch, size = scores.shape
    positions = np.zeros((batch, n), np.int64)
    values = np.zeros((batch, n), np.float32)
    if n == 0 or batch == 0:
        return positions, values
    groups = size // BLOCK
    if groups >= 16 and n <= groups:
        strided = scores[:, : groups * BLOCK].reshape(batch, BLOCK, groups)  # [B, BLOCK, G]
        group_max = strided.max(axis=1)  # [B, G]
        bound = np.partition(group_max, groups - n, axis=1)[:, groups - n]  # [B]
        members = groups * np.arange(BLOCK)  # offsets of a group's positions
        tail = np.arange(groups * BLOCK, size)
    for b in range(batch):
        if groups >= 16 and n <= groups:
            hit = np.flatnonzero(group_max[b] >= bound[b])  # few groups
            candidates = np.concatenate([(hit[:, None] + members).ravel(), tail])
        else:
            candidates = np.arange(size)
        row = scores[b, candidates]
        threshold = np.partition(row, len(row) - n)[len(row) - n]  # the n-th largest score
        chosen = candidates[row >= threshold]
        order = np.lexsort((chosen, -scores[b, chosen]))[:n]  # score desc, then position
        positions[b], values[b] = chosen[order], scores[b, chosen[order]]
    return positions, values


class ViewRetriever(Retriever):
    """Base of the built-in retrievers: a view of one KB, the search contract, save/load."""

    name: str
    libraries: tuple[str, ...] = ()  # distributions whose versions the saved index depends on

    def __init__(self) -> None:
        self.view: View | None = None

    # -- what subclasses provide ------------------------------------------------------------

    @property
    @abc.abstractmethod
    def options(self) -> dict[str, Any]:
        """Keyword arguments that rebuild this retriever through the registry."""

    @abc.abstractmethod
    def _build(self, texts: list[str]) -> None:
        """Index the view's captions (position i = view row i)."""

    @abc.abstractmethod
    def _top(self, queries: list[str], n: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-n view positions [Q, n] int64 and scores [Q, n] float32 per query."""

    @abc.abstractmethod
    def _save_files(self, folder: Path) -> None: ...

    @abc.abstractmethod
    def _load_files(self, folder: Path, meta: saved.IndexMeta) -> int:
        """Restore the index from ``folder``; return how many documents it holds."""

    def _encoder_spec(self) -> dict[str, Any] | None:
        return None

    def _extra_meta(self) -> dict[str, Any]:
        return {}

    # -- the Retriever interface ------------------------------------------------------------

    @property
    def fitted(self) -> bool:
        return self.view is not None

    @property
    def rows(self) -> np.ndarray:
        """The indexed KB rows [N] int64 (the view)."""
        return self._require_view().rows

    @property
    def kb_fingerprint(self) -> str:
        return self._require_view().kb_fingerprint

    def fit(self, kb: Any, rows: Sequence[int] | None = None) -> ViewRetriever:
        view = View(kb, select_rows(kb, rows))
        self._build(view.texts)
        self.view = view
        return self

    def search(
        self, queries: Sequence[str], k: int, exclude: Sequence[Sequence[int]] | None = None
    ) -> RetrievalResult:
        queries = check_queries(queries)
        return self._search(len(queries), lambda n: self._top(queries, n), k, exclude)

    def _search(self, n_queries: int, top, k: int, exclude) -> RetrievalResult:
        """The contract around ``top(n) -> (positions [Q, n], scores [Q, n])``."""
        view = self._require_view()
        k = check_k(k, docs=len(view))  # 0 allowed: an empty result
        exclude = check_exclude(exclude, n_queries)
        if k == 0 or n_queries == 0:
            return _empty(n_queries, k)
        banned = [view.positions(e) for e in exclude] if exclude else None
        over = max((len(b) for b in banned), default=0) if banned else 0
        fetch = min(len(view), k + over)  # over-fetch so that k survive the exclusions
        positions, scores = order_hits(*top(fetch))  # [Q, fetch]
        positions, scores = drop_banned(positions, scores, banned, k, len(view))
        return RetrievalResult(ids=view.rows[positions], scores=scores.astype(np.float32))

    def save(self, folder: str | Path) -> Path:
        view = self._require_view()
        meta = saved.IndexMeta(
            retriever=self.name,
            kb_fingerprint=view.kb_fingerprint,
            kb_size=view.kb_size,
            rows_hash=saved.rows_hash(view.rows),
            texts_hash=saved.texts_hash(view.texts),
            num_docs=len(view),
            options=self.options,
            libraries=saved.library_versions(self.libraries),
            encoder=self._encoder_spec(),
            extra=self._extra_meta(),
            created=saved.now_utc(),
        )
        return saved.write_index_folder(folder, meta, view.rows, self._save_files)

    @classmethod
    def load(cls, folder: str | Path, kb: Any, rows: Sequence[int] | None = None):
        """Load a saved index; raises IndexMismatchError at once if it does not belong to
        ``kb`` (or, when ``rows`` is given, to that view)."""
        folder = Path(folder)
        saved.verify_folder(folder)  # every byte against SHA256SUMS, before anything is parsed
        meta = saved.IndexMeta.read(folder)
        expected = None if rows is None else select_rows(kb, rows)
        stored_rows = saved.check_meta(meta, folder, kb, retriever=cls.name, expected_rows=expected)
        retriever = cls.from_options(meta.options)
        saved.check_count(meta, folder, retriever._load_files(folder, meta))
        retriever.view = View(kb, stored_rows)
        return retriever

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> ViewRetriever:
        return cls(**options)

    def _require_view(self) -> View:
        if self.view is None:
            raise RuntimeError(
                f"the {self.name!r} retriever is not fitted; call fit(kb) or load(folder, kb) first"
            )
        return self.view

    def __repr__(self) -> str:
        docs = f", docs={len(self.view)}" if self.view is not None else ""
        return f"{type(self).__name__}({self.options}{docs})"


def drop_banned(
    positions: np.ndarray, scores: np.ndarray, banned: list[np.ndarray] | None, k: int, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """Remove each query's banned positions from its sorted hits [Q, fetch]; keep the first k."""
    if banned is None:
        return positions[:, :k], scores[:, :k]
    keep = np.ones(positions.shape, bool)  # [Q, fetch]
    for q, positions_q in enumerate(banned):
        if len(positions_q):
            keep[q] = ~np.isin(positions[q], positions_q)
    short = np.flatnonzero(keep.sum(axis=1) < k)
    if len(short):
        q = int(short[0])
        raise ValueError(
            f"query {q}: only {n - len(banned[q])} of the {n} indexed documents remain after "
            f"excluding {len(banned[q])}, fewer than k={k}"
        )
    order = np.argsort(~keep, axis=1, kind="stable")[:, :k]  # kept hits first, order preserved
    return np.take_along_axis(positions, order, 1), np.take_along_axis(scores, order, 1)


def _empty(n_queries: int, k: int) -> RetrievalResult:
    return RetrievalResult(
        ids=np.zeros((n_queries, k), np.int64), scores=np.zeros((n_queries, k), np.float32)
    )
