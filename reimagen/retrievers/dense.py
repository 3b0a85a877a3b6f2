"""``dense``: inner product over pooled, L2-normalised text embeddings, on faiss (docs/design.md §6).

Any registered encoder embeds the view's captions once (pooled [N, D], normalised, so the
inner product is the cosine similarity); a query is embedded the same way and compared with all
of them. The paper compares BM25 with CLIP-embedding retrieval (§3.2); this is the embedding
retriever for our text encoders.

* exact (default): ``faiss.IndexFlatIP``, every document scored;
* ``ivf=True``: ``faiss.IndexIVFFlat`` — k-means cells (``nlist``, default ≈ 4·√N), a query
  scans the ``nprobe`` nearest cells only. Approximate: recall is measured in
  benchmarks/bench_retrieval.py. A query whose probed cells hold fewer hits than needed is
  re-run over every cell, so the k results are always complete.

Saved with ``faiss.serialize_index`` (faiss's own binary format, not pickle) written atomically.

Two fixes for faiss-cpu 1.15 on this machine, both in :func:`import_faiss`: its wheel bundles
OpenBLAS 0.3.15, which does not recognise recent Xeons (e.g. Emerald Rapids, CPU model 207) and
falls back to its generic "Prescott" SSE3 kernels — exact search measured 3-7x slower than with
the AVX-512 kernels. When the CPU has AVX-512 (or AVX2) and the user has not chosen, we name the
core type for OpenBLAS while faiss is first imported, then restore the environment. And the
query-count threshold above which exact search uses BLAS is set back to 20.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from reimagen.core.interfaces import Encoder
from reimagen.core.io import UnsafeFileError
from reimagen.encoders.base import CachingEncoder, l2_normalize
from reimagen.retrievers.base import ViewRetriever, order_hits
from reimagen.retrievers.index import IndexMeta, IndexMismatchError

INDEX_FILE = "faiss.index"
BLAS_THRESHOLD = 20  # queries per batch from which faiss's exact search uses BLAS
PROGRESS_BATCHES = 4  # embed() shows a progress bar for more batches than this


class DenseRetriever(ViewRetriever):
    """faiss inner-product search over ``encoder``'s pooled embeddings.

    ``encoder``: a registered encoder name (``encoder_options`` are passed to its factory);
    ``ivf``: approximate IVF index instead of exact; ``nlist``: IVF cells (None: ≈ 4·√N,
    at most N/39 so k-means has enough points); ``nprobe``: cells scanned per query (default
    2: on 100k vectors with MiniLM's cosine structure, recall@4 0.985 at 4.5-14x the exact
    speed across runs on this shared machine, 4 gave 0.994 at 3.5-8x; vectors without cluster
    structure, like the hash encoder's, need far more — see benchmarks/bench_retrieval.py)."""

    name = "dense"
    libraries = ("faiss-cpu",)

    def __init__(
        self,
        encoder: str = "minilm",
        encoder_options: dict[str, Any] | None = None,
        ivf: bool = False,
        nlist: int | None = None,
        nprobe: int = 2,
        batch_size: int = 256,
    ):
        super().__init__()
        if not isinstance(encoder, str):
            raise TypeError(
                f"encoder must be a registered encoder name, got {type(encoder).__name__}"
            )
        if nlist is not None and (isinstance(nlist, bool) or int(nlist) < 1):
            raise ValueError(f"nlist must be >= 1 or None, got {nlist}")
        if int(nprobe) < 1:
            raise ValueError(f"nprobe must be >= 1, got {nprobe}")
        self.encoder_name = encoder
        self.encoder_options = dict(encoder_options or {})
        self.ivf = bool(ivf)
        self.nlist = None if nlist is None else int(nlist)
        self.nprobe = int(nprobe)
        self.batch_size = int(batch_size)
        self.encoder: Encoder = _make_encoder(encoder, self.encoder_options)
        if isinstance(self.encoder, CachingEncoder) and "cache_size" not in self.encoder_options:
            # captions are embedded once into the index; caching their token states is waste
            self.encoder.cache_size = 0
        self.libraries = ("faiss-cpu", *getattr(self.encoder, "libraries", ()))
        self._index: Any = None  # a faiss index once fitted or loaded (faiss ships no types)

    @property
    def options(self) -> dict[str, Any]:
        return {
            "encoder": self.encoder_name,
            "encoder_options": dict(self.encoder_options),
            "ivf": self.ivf,
            "nlist": self.nlist,
            "nprobe": self.nprobe,
        }

    @property
    def dim(self) -> int:
        return int(self.encoder.dim)

    def embed(self, texts: list[str]) -> np.ndarray:
        """Pooled, L2-normalised embeddings [B, D] float32, in batches; a progress bar of the
        texts embedded (stderr, on a terminal or as REIMAGEN_PROGRESS says) when there are
        more than PROGRESS_BATCHES batches (building an index)."""
        from reimagen.cli.progress import bar

        starts = range(0, len(texts), self.batch_size)
        parts = []
        with bar(
            len(texts),
            f"embedding captions ({self.encoder_name})",
            unit="caption",
            show=len(starts) > PROGRESS_BATCHES,
        ) as progress:
            for i in starts:
                parts.append(self.encoder.encode(texts[i : i + self.batch_size]).pooled)
                progress.update(len(parts[-1]))
        pooled = np.concatenate(parts) if parts else np.zeros((0, self.dim), np.float32)
        return np.ascontiguousarray(l2_normalize(pooled))  # [B, D]

    def search_embeddings(self, embeddings: np.ndarray, k: int, exclude=None):
        """:meth:`search` for queries already embedded: [Q, D] float32, L2-normalised."""
        vectors = np.ascontiguousarray(embeddings, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"embeddings must be [Q, {self.dim}], got {list(vectors.shape)}")
        return self._search(len(vectors), lambda n: self._top_vectors(vectors, n), k, exclude)

    def _build(self, texts: list[str]) -> None:
        faiss = import_faiss()
        vectors = self.embed(texts)  # [N, D]
        if self.ivf:
            nlist = self.resolved_nlist(len(vectors))
            quantizer = faiss.IndexFlatIP(self.dim)
            index = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
            index.cp.min_points_per_centroid = 1  # nlist is already capped at N/39
            index.train(vectors)  # k-means, faiss's fixed seed: deterministic
            index.nprobe = min(self.nprobe, nlist)
        else:
            index = faiss.IndexFlatIP(self.dim)
        index.add(vectors)
        self._index = index

    def resolved_nlist(self, n_docs: int) -> int:
        cap = max(1, n_docs // 39)  # faiss wants >= 39 training points per cell
        wanted = self.nlist if self.nlist is not None else round(4 * math.sqrt(n_docs))
        return int(max(1, min(wanted, cap)))

    def _top(self, queries: list[str], n: int) -> tuple[np.ndarray, np.ndarray]:
        return self._top_vectors(self.embed(queries), n)

    def _top_vectors(self, vectors: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-n positions and scores [Q, n], ties at the cut resolved by position.

        faiss keeps an arbitrary one of several equal scores at the n-th place (duplicate
        captions embed identically), so fetch one more, and widen (only for the queries
        concerned) until the last hit fetched scores below the n-th: then every document tied
        with the n-th is in hand and the total order (score, position) decides."""
        total = int(self._index.ntotal)
        positions = np.zeros((len(vectors), n), np.int64)  # [Q, n]
        scores = np.zeros((len(vectors), n), np.float32)  # [Q, n]
        pending = np.arange(len(vectors))
        fetch = min(total, n + 1)
        while len(pending):
            found, hits = self._raw_search(vectors[pending], fetch)  # [P, fetch]
            hits, found = order_hits(hits.astype(np.int64), found.astype(np.float32))
            # more documents may share the n-th score only if the last one fetched still does
            tied = found[:, -1] == found[:, n - 1] if fetch > n else np.zeros(len(pending), bool)
            done = ~tied | (fetch == total)
            positions[pending[done]], scores[pending[done]] = hits[done, :n], found[done, :n]
            pending, fetch = pending[~done], min(total, 2 * fetch)
        return positions, scores

    def _raw_search(self, vectors: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        scores, positions = self._index.search(vectors, n)  # [Q, n] each
        incomplete = np.flatnonzero((positions < 0).any(axis=1))
        if len(incomplete):  # IVF: the probed cells held fewer than n documents
            scores[incomplete], positions[incomplete] = self._search_all_cells(
                vectors[incomplete], n
            )
        return scores, positions

    def _search_all_cells(self, vectors: np.ndarray, n: int):
        faiss = import_faiss()
        params = faiss.SearchParametersIVF(nprobe=self._index.nlist)
        return self._index.search(vectors, n, params=params)

    def _encoder_spec(self) -> dict[str, Any]:
        return {"name": self.encoder_name, "dim": self.dim, "options": self.encoder_options}

    def _extra_meta(self) -> dict[str, Any]:
        return {"nlist": int(self._index.nlist)} if self.ivf else {}

    def _save_files(self, folder: Path) -> None:
        from reimagen.core.io import atomic_write_bytes

        faiss = import_faiss()
        atomic_write_bytes(folder / INDEX_FILE, faiss.serialize_index(self._index).tobytes())

    def _load_files(self, folder: Path, meta: IndexMeta) -> int:
        faiss = import_faiss()
        saved_dim = (meta.encoder or {}).get("dim")
        index = read_faiss(
            folder / INDEX_FILE,
            lambda: faiss.deserialize_index(np.fromfile(folder / INDEX_FILE, dtype=np.uint8)),
        )
        if saved_dim != self.dim or index.d != self.dim:
            raise IndexMismatchError(
                f"index {folder} is stale: embedding dim {index.d} (index, recorded "
                f"{saved_dim}) != {self.dim} (encoder {self.encoder_name!r})"
            )
        if hasattr(index, "nlist") != self.ivf:
            raise IndexMismatchError(
                f"index {folder} is stale: it holds a {type(index).__name__}, index.json says "
                f"ivf={self.ivf}"
            )
        if self.ivf:
            index.nprobe = min(self.nprobe, index.nlist)  # a search setting, from the options
        self._index = index
        return int(index.ntotal)


def _make_encoder(name: str, options: dict[str, Any]) -> Encoder:
    from reimagen.core import registry

    return registry.get("encoder", name)(**options)


def import_faiss():
    """``import faiss``, telling its bundled OpenBLAS which kernels this CPU can run (see the
    module docstring). The environment is restored afterwards; an explicit
    ``OPENBLAS_CORETYPE`` set by the user always wins."""
    import sys

    if "faiss" in sys.modules:
        return sys.modules["faiss"]
    core = None if "OPENBLAS_CORETYPE" in os.environ else _openblas_core()
    with _temporary_env("OPENBLAS_CORETYPE", core):
        import faiss
    # Exact search of a batch of >= 20 queries through BLAS matrix products, as faiss did by
    # default for years; this build's default (128000) sent batches of a few hundred queries
    # down a per-query loop measured 10x slower here (200 queries x 20k docs x 384-d).
    faiss.cvar.distance_compute_blas_threshold = BLAS_THRESHOLD
    return faiss


def _openblas_core() -> str | None:
    """SkylakeX (AVX-512) or Haswell (AVX2) from /proc/cpuinfo; None where unknown."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
            flags = next(
                (line.split(":", 1)[1].split() for line in handle if line.startswith("flags")), []
            )
    except OSError:
        return None
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd"} <= set(flags):
        return "SkylakeX"
    if {"avx2", "fma"} <= set(flags):
        return "Haswell"
    return None


@contextlib.contextmanager
def _temporary_env(key: str, value: str | None):
    if value is None:
        yield
        return
    os.environ[key] = value
    try:
        yield
    finally:
        os.environ.pop(key, None)


def read_faiss(path: Path, read: Callable[[], Any]) -> Any:
    """``read()`` (a faiss reader of ``path``); faiss's multi-line RuntimeError for bytes that
    are no faiss index (e.g. a pickle) becomes one UnsafeFileError naming the file."""
    try:
        return read()
    except RuntimeError as err:
        reason = str(err).splitlines()[0].rsplit(": ", 1)[-1]
        raise UnsafeFileError(
            f"{path}: not a faiss index ({reason}); refusing to load it"
        ) from None
