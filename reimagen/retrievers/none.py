"""``none``: the no-retrieval baseline (the paper's "Imagen" row, Table 2).

It returns no neighbours: every search must ask for ``k=0`` and gets ids and scores of shape
[Q, 0], which the pipeline and the trainers treat as "no c_n". Asking for k > 0 is an error rather
than an empty answer, so an ablation cannot silently run without the neighbours it asked for.
It may be fitted, saved and loaded like the others (the saved folder then records which
knowledge base the baseline was run against), but it needs neither.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from reimagen.core.interfaces import RetrievalResult
from reimagen.retrievers.base import ViewRetriever, check_exclude, check_queries
from reimagen.retrievers.index import IndexMeta


class NoneRetriever(ViewRetriever):
    """Retrieves nothing: ``search(queries, 0)`` -> ids/scores [Q, 0]; k > 0 raises."""

    name = "none"

    @property
    def options(self) -> dict[str, Any]:
        return {}

    def search(
        self, queries: Sequence[str], k: int, exclude: Sequence[Sequence[int]] | None = None
    ) -> RetrievalResult:
        queries = check_queries(queries)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k != 0:
            raise ValueError(f"the 'none' retriever returns no neighbours: k must be 0, got {k!r}")
        check_exclude(exclude, len(queries))
        empty = np.zeros((len(queries), 0))
        return RetrievalResult(ids=empty.astype(np.int64), scores=empty.astype(np.float32))

    def _build(self, texts: list[str]) -> None:
        pass  # nothing to index

    def _top(self, queries: list[str], n: int):  # pragma: no cover - search never asks
        raise AssertionError("the 'none' retriever has no index")

    def _save_files(self, folder: Path) -> None:
        pass

    def _load_files(self, folder: Path, meta: IndexMeta) -> int:
        return meta.num_docs
