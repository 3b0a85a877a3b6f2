"""``hybrid``: reciprocal-rank fusion of a lexical and a dense retriever (Cormack et al., 2009).

The two kinds fail on different prompts (docs/results/retrieval-recall.md): the lexical one is
pulled towards captions that share the prompt's *scene* words and is blind to paraphrase; the
dense one is not, but confuses names that differ in one word ("hourglass done" / "hourglass
not done", "leftwards" / "rightwards", "bus" / "oncoming bus"). Fusing their *ranks* needs no
score calibration between them:

    fused(d) = Σ_m  w_m / (rrf_k + rank_m(d))   over members m whose top-``depth`` holds d

with rank_m counted from 1 in member m's total order (score desc, row asc); a caption that
shares no word with the query (lexical score 0) earns nothing from the lexical member. A
document in no member's top-``depth`` scores 0, and the final order is (fused desc, row asc),
so the ranking is one fixed function of (query, view): ``search(k)`` is always a prefix of it
and exclusions behave as for the exact retrievers.

Defaults, chosen on 300 templated prompts of *seen* entities (seed 1) and then measured on the
unseen and paraphrased sets (docs/results/retrieval-recall.md):

* ``weights`` = [1, 0.5] (lexical, dense): the same entity recall@1/2/3 as [1, 1] within 3
  prompts of 300, but the dense member's order *among one entity's captions* is noise (it
  reacts to the artist's name in "dodo, noto emoji"); at weight 0.5 the lexical order prevails
  there while dense still rescues what the lexical member misses, and the target artist's
  drawing is the first neighbour for 81% of those prompts instead of 56%;
* ``rrf_k`` = 10, smaller than the customary 60 because an entity's ~4 captions arrive
  together (5, 10, 20 and 60 gave recall@1/2/3 within 0.01 of each other in a scratch sweep).

Members are registered retrievers: ``sparse`` (default ``tfidf``; ``bm25`` works too) and
``dense`` with ``encoder`` (default ``minilm``). Both index the same view. Saved as one index
folder holding each member's own complete index folder (``members/0-tfidf``,
``members/1-dense``), checked against the knowledge base like any other; the dense member's
caption embeddings are computed once, when the index is first built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from reimagen.retrievers.base import ViewRetriever, order_hits
from reimagen.retrievers.index import IndexMeta, IndexMismatchError

MEMBERS_DIR = "members"
DEFAULT_DEPTH = 100  # hits taken from each member per query


class HybridRetriever(ViewRetriever):
    """Reciprocal-rank fusion of ``sparse`` (a registered lexical retriever, with
    ``sparse_options``) and ``dense`` over ``encoder`` (with ``dense_options``, e.g. ivf).
    ``weights``: per member [sparse, dense]; ``rrf_k``: the rank offset; ``depth``: hits
    fused per member (documents beyond every member's top-``depth`` follow by row)."""

    name = "hybrid"

    def __init__(
        self,
        sparse: str = "tfidf",
        encoder: str = "minilm",
        rrf_k: float = 10.0,
        weights: list[float] | tuple[float, float] = (1.0, 0.5),
        depth: int = DEFAULT_DEPTH,
        sparse_options: dict[str, Any] | None = None,
        dense_options: dict[str, Any] | None = None,
    ):
        super().__init__()
        weights = [float(w) for w in weights]
        if len(weights) != 2 or min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(
                f"weights must be 2 numbers >= 0 (sparse, dense), not both 0; got {weights}"
            )
        if not float(rrf_k) >= 0:
            raise ValueError(f"rrf_k must be >= 0, got {rrf_k}")
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise ValueError(f"depth must be an int >= 1, got {depth!r}")
        if "encoder" in (dense_options or {}):
            raise ValueError("give the dense member's encoder as encoder=..., not in dense_options")
        if sparse in ("hybrid", "none"):
            raise ValueError(
                f"sparse must be a lexical retriever such as tfidf or bm25, got {sparse!r}"
            )
        self.sparse, self.encoder_name = sparse, encoder
        self.rrf_k, self.weights, self.depth = float(rrf_k), weights, depth
        self.sparse_options = dict(sparse_options or {})
        self.dense_options = dict(dense_options or {})
        self.members = [
            _make(sparse, self.sparse_options),
            _make("dense", {"encoder": encoder, **self.dense_options}),
        ]
        self.libraries = tuple(dict.fromkeys(lib for m in self.members for lib in m.libraries))

    @property
    def options(self) -> dict[str, Any]:
        return {
            "sparse": self.sparse,
            "encoder": self.encoder_name,
            "rrf_k": self.rrf_k,
            "weights": list(self.weights),
            "depth": self.depth,
            "sparse_options": dict(self.sparse_options),
            "dense_options": dict(self.dense_options),
        }

    def fit(self, kb: Any, rows=None) -> HybridRetriever:
        super().fit(kb, rows)  # _build: every member indexes the view's captions
        for member in self.members:
            member.view = self.view
        return self

    @classmethod
    def load(cls, folder: str | Path, kb: Any, rows=None) -> HybridRetriever:
        retriever = super().load(folder, kb, rows=rows)
        for member in retriever.members:
            member.view = retriever.view
        return retriever

    def _build(self, texts: list[str]) -> None:
        for member in self.members:
            member._build(texts)

    def _top(self, queries: list[str], n: int) -> tuple[np.ndarray, np.ndarray]:
        size = len(self._require_view())
        depth = min(size, self.depth)  # fixed, so that every n gets a prefix of one ranking
        ranked, gains = [], []
        for m, (member, weight) in enumerate(zip(self.members, self.weights)):
            hits, scores = order_hits(*member._top(queries, depth))  # [Q, depth] each
            gain = np.broadcast_to(weight / (self.rrf_k + np.arange(1, depth + 1)), hits.shape)
            if m == 0:  # lexical: a caption sharing no word with the query (score 0) gains nothing
                gain = np.where(scores > 0, gain, 0.0)
            ranked.append(hits)
            gains.append(gain)
        positions = np.zeros((len(queries), n), np.int64)
        fused = np.zeros((len(queries), n), np.float32)
        for q in range(len(queries)):
            positions[q], fused[q] = fuse([r[q] for r in ranked], [g[q] for g in gains], n, size)
        return positions, fused

    def _save_files(self, folder: Path) -> None:
        for i, member in enumerate(self.members):
            member.save(folder / MEMBERS_DIR / f"{i}-{member.name}")

    def _load_files(self, folder: Path, meta: IndexMeta) -> int:
        for i, member in enumerate(self.members):
            where = folder / MEMBERS_DIR / f"{i}-{member.name}"
            inner = IndexMeta.read(where)
            found = (inner.retriever, inner.options, inner.rows_hash, inner.texts_hash)
            wanted = (member.name, member.options, meta.rows_hash, meta.texts_hash)
            if found != wanted:
                raise IndexMismatchError(
                    f"index {folder} is stale: member {where.name} holds {found[:2]} over rows "
                    f"{found[2][:12]}, index.json wants {wanted[:2]} over {wanted[2][:12]}; "
                    "rebuild it"
                )
            count = member._load_files(where, inner)
            if count != meta.num_docs:
                raise IndexMismatchError(
                    f"index {folder} is stale: member {where.name} holds {count} documents, "
                    f"index.json says {meta.num_docs}; rebuild it"
                )
        return meta.num_docs


def fuse(ranked: list[np.ndarray], gains: list[np.ndarray], n: int, size: int):
    """Top-n of one query: ``ranked`` = each member's view positions [depth], best first;
    ``gains`` = what each of those earns, w / (rrf_k + rank) or 0 [depth]. Returns (positions
    [n], scores [n] float32) by fused score desc, position asc; positions that earned nothing
    follow with score 0, by position."""
    candidates, earned = np.concatenate(ranked), np.concatenate(gains)
    keep = earned > 0
    unique, inverse = np.unique(candidates[keep], return_inverse=True)  # ascending positions
    fused = np.bincount(inverse, earned[keep], len(unique))  # float64
    order = np.lexsort((unique, -fused))[:n]
    positions, scores = unique[order], fused[order]
    if len(positions) < n:  # asked for more than the members ranked: the rest by position
        rest = np.setdiff1d(np.arange(size), unique)[: n - len(positions)]
        positions = np.concatenate([positions, rest])
        scores = np.concatenate([scores, np.zeros(len(rest))])
    return positions, scores.astype(np.float32)


def _make(name: str, options: dict[str, Any]) -> ViewRetriever:
    from reimagen.core import registry

    member = registry.get("retriever", name)(**options)
    if not isinstance(member, ViewRetriever):
        raise TypeError(
            f"hybrid members must be view retrievers; {name!r} is {type(member).__name__}"
        )
    return member
