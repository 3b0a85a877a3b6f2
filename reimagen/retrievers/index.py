"""Saved retriever indexes beside the knowledge base, and the checks that keep them honest
(docs/design.md §6: "a stale or mismatched index is an error, not a silent wrong answer").

Layout, one folder per (retriever, encoder, view)::

    <kb>/indexes/<name>/
        index.json     IndexMeta: KB fingerprint and size, the view's rows hash, the indexed
                       captions' hash, document count, encoder name/dim/options, retriever
                       options, versions of the libraries that wrote the index
        rows.npy       [N] int64 KB rows of the view (allow_pickle=False)
        ...            the retriever's own files (bm25s arrays + JSON vocab, or a faiss index)
        SHA256SUMS     sha256 of every file above (and below: a hybrid's member folders),
                       written last; checked before anything is read (issue #14: one flipped
                       byte in a faiss index made an unrelated entity the top hit at score 4e36,
                       and a flipped bm25 score went unnoticed). An index without it, or with a
                       file that does not match, is an :class:`IndexIntegrityError`, which
                       :func:`open_or_build` answers by rebuilding the index, with a warning.

A folder is written whole into a temp folder and renamed into place, so a reader sees the old
index, the new one, or (for an instant while an old one is swapped out) none: never half of one.
:func:`check_meta` compares everything recorded with the knowledge base given at load time and
raises :class:`IndexMismatchError` naming every difference.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from reimagen.core import digests, folder_swap
from reimagen.core.io import atomic_save_npy, atomic_write_text, load_npy, name_the_file

META_FILE = "index.json"
ROWS_FILE = "rows.npy"
FORMAT = "reimagen-retriever-index"
FORMAT_VERSION = 1


class IndexMismatchError(ValueError):
    """A saved index that does not belong to the knowledge base (or view, or libraries) given."""


class IndexIntegrityError(IndexMismatchError, digests.IntegrityError):
    """A saved index whose files differ from their recorded sha256, or that has none."""


LOG = logging.getLogger(__name__)


@attrs.frozen(kw_only=True)
class IndexMeta:
    """What a saved index was built from; written as ``index.json``."""

    retriever: str
    kb_fingerprint: str
    kb_size: int
    rows_hash: str
    texts_hash: str
    num_docs: int
    options: dict[str, Any]
    libraries: dict[str, str]
    encoder: dict[str, Any] | None = None  # {"name", "dim", "options"} for dense indexes
    extra: dict[str, Any] = attrs.Factory(dict)  # retriever-specific facts (e.g. resolved nlist)
    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    created: str = ""

    def to_json(self) -> str:
        return json.dumps(attrs.asdict(self), indent=2, sort_keys=True, ensure_ascii=False)

    @classmethod
    def read(cls, folder: str | Path) -> IndexMeta:
        path = Path(folder) / META_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no saved retriever index in {folder} (missing {META_FILE})")
        try:
            blob = json.loads(path.read_text(encoding="utf-8"))
            meta = cls(**{f.name: blob[f.name] for f in attrs.fields(cls) if f.name in blob})
        except (ValueError, TypeError) as err:
            raise IndexMismatchError(f"{path} is not a valid index description ({err})") from err
        if meta.format != FORMAT or meta.format_version != FORMAT_VERSION:
            raise IndexMismatchError(
                f"{path}: format {meta.format!r} v{meta.format_version}, this reimagen reads "
                f"{FORMAT!r} v{FORMAT_VERSION}; rebuild the index"
            )
        return meta


# ---- fingerprints of what was indexed ------------------------------------------------------


def rows_hash(rows: np.ndarray) -> str:
    """sha256 of the view's rows as little-endian int64."""
    return hashlib.sha256(np.ascontiguousarray(rows, dtype="<i8").tobytes()).hexdigest()


def texts_hash(texts: Sequence[str]) -> str:
    """sha256 of the indexed captions, in order (JSON keeps boundaries unambiguous)."""
    return hashlib.sha256(json.dumps(list(texts), ensure_ascii=False).encode()).hexdigest()


def library_versions(distributions: Sequence[str]) -> dict[str, str]:
    """Installed versions of the distributions an index's contents depend on."""
    versions = {}
    for dist in distributions:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    return versions


def now_utc() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


# ---- writing and checking ------------------------------------------------------------------


def write_index_folder(
    folder: str | Path, meta: IndexMeta, rows: np.ndarray, write_files: Callable[[Path], None]
) -> Path:
    """Write an index folder atomically: ``write_files(tmp)`` adds the retriever's own files,
    then rows.npy and index.json (last), then the folder is renamed into place."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(folder)
    # the lock is held while writing: a folder another process can lock is abandoned
    tmp, lock = folder_swap.make_locked_folder(folder.parent, _tmp_prefix(folder), suffix=".tmp")
    try:
        write_files(tmp)
        atomic_save_npy(tmp / ROWS_FILE, np.asarray(rows, dtype=np.int64))
        atomic_write_text(tmp / META_FILE, meta.to_json() + "\n")
        digests.write_sums(tmp)  # every file, the members' folders included
        folder_swap.fsync_tree(tmp)
        folder_swap.swap_into_place(tmp, folder)  # the old index is deleted
    except OSError as err:
        name_the_file(err, folder)  # a full disk inside a library's writer (bm25s) names none
        raise
    finally:
        os.close(lock)
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _tmp_prefix(folder: Path) -> str:
    return f".{folder.name}.writing-"


def _remove_abandoned(folder: Path) -> None:
    """Delete what writers of ``folder`` killed with -9 left beside it (no cleanup runs then):
    their half-written ``.<name>.writing-<pid>-*`` folders, which also hold the old index
    after the exchange, and ``.<name>.old-*`` of the two-rename fallback."""
    folder_swap.remove_abandoned_swaps(folder, _tmp_prefix(folder))


def verify_folder(folder: str | Path) -> None:
    """Every file of a saved index against its SHA256SUMS, nothing unlisted: one sha256 pass
    (~10 ms for the 11 MB dense index of the emoji KB) before anything is parsed."""
    folder = Path(folder)
    if not (folder / META_FILE).is_file():
        raise FileNotFoundError(f"no saved retriever index in {folder} (missing {META_FILE})")
    try:
        digests.verify_sums(folder, required=(META_FILE, ROWS_FILE), complete=True)
    except digests.MissingChecksumError:
        raise IndexIntegrityError(
            f"{folder / digests.SUMS}: missing (an index written before reimagen recorded "
            "checksums, or never finished); rebuild it"
        ) from None
    except digests.IntegrityError as err:
        raise IndexIntegrityError(str(err)) from None


def read_rows(folder: str | Path) -> np.ndarray:
    return load_npy(Path(folder) / ROWS_FILE)


def check_meta(
    meta: IndexMeta,
    folder: str | Path,
    kb: Any,
    *,
    retriever: str,
    expected_rows: np.ndarray | None = None,
) -> np.ndarray:
    """Compare a saved index with the knowledge base ``kb``; return its view rows [N] int64.

    Raises :class:`IndexMismatchError` naming every difference found (KB fingerprint or size,
    view rows, captions, document count, library versions)."""
    stored_rows = read_rows(folder).astype(np.int64)
    diffs = []
    if meta.retriever != retriever:
        diffs.append(f"retriever {meta.retriever!r} (index) != {retriever!r} (requested)")
    if meta.kb_fingerprint != kb.fingerprint:
        diffs.append(
            f"knowledge-base fingerprint {_short(meta.kb_fingerprint)} (index) != "
            f"{_short(kb.fingerprint)} (knowledge base)"
        )
    if meta.kb_size != len(kb):
        diffs.append(f"knowledge-base size {meta.kb_size} (index) != {len(kb)} (knowledge base)")
    if rows_hash(stored_rows) != meta.rows_hash or len(stored_rows) != meta.num_docs:
        diffs.append(f"{ROWS_FILE} does not match {META_FILE} (rows hash or count)")
    if expected_rows is not None and rows_hash(expected_rows) != meta.rows_hash:
        diffs.append(
            f"view of {meta.num_docs} rows {_short(meta.rows_hash)} (index) != view of "
            f"{len(expected_rows)} rows {_short(rows_hash(expected_rows))} (requested)"
        )
    if len(stored_rows) and (stored_rows.min() < 0 or stored_rows.max() >= len(kb)):
        diffs.append(f"rows outside the knowledge base's 0..{len(kb) - 1}")
    elif texts_hash([kb.records[int(r)].text for r in stored_rows]) != meta.texts_hash:
        diffs.append("captions of the indexed rows changed")
    for dist, version in meta.libraries.items():
        installed = library_versions([dist])[dist]
        if installed != version:
            diffs.append(f"{dist} {version} (index) != {installed} (installed)")
    if diffs:
        raise IndexMismatchError(f"index {folder} is stale: {'; '.join(diffs)}; rebuild it")
    return stored_rows


def check_count(meta: IndexMeta, folder: str | Path, found: int) -> None:
    """The retriever's own files must hold exactly ``meta.num_docs`` documents."""
    if found != meta.num_docs:
        raise IndexMismatchError(
            f"index {folder} is stale: its files hold {found} documents, {META_FILE} says "
            f"{meta.num_docs}; rebuild it"
        )


# ---- where indexes live, and build-or-load -------------------------------------------------

SAFE_NAME = re.compile(r"^[A-Za-z0-9_.+-]{1,80}$")


def index_name(
    retriever: str,
    *,
    encoder: str | None = None,
    variant: str | None = None,
    view: Sequence[str] = (),
) -> str:
    """A readable folder name: ``bm25``, ``dense-minilm-ivf``, ``bm25-view-noto+openmoji``.

    A view whose names have characters unsafe in a path falls back to a short hash."""
    name = "-".join(part for part in (retriever, encoder, variant) if part)
    if view:
        joined = "+".join(sorted(set(view)))
        tail = (
            joined if SAFE_NAME.match(joined) else hashlib.sha256(joined.encode()).hexdigest()[:12]
        )
        name = f"{name}-view-{tail}"
    if not SAFE_NAME.match(name):
        raise ValueError(f"index name {name!r} has characters outside [A-Za-z0-9_.+-]")
    return name


def index_folder(kb_folder: str | Path, name: str) -> Path:
    """``<kb>/indexes/<name>``."""
    return Path(kb_folder) / "indexes" / name


def load_index(folder: str | Path, kb: Any, rows: Sequence[int] | np.ndarray | None = None):
    """Load a saved index with whichever registered retriever wrote it."""
    from reimagen.core import registry

    verify_folder(folder)  # before index.json names the class (load checks again: ~ms)
    meta = IndexMeta.read(folder)
    # Any: the registry hands back the class untyped; the built-ins' load takes rows= (base.py)
    cls: Any = registry.get("retriever", meta.retriever)
    return cls.load(folder, kb, rows=rows)


def open_or_build(
    kb: Any,
    folder: str | Path,
    retriever: str = "bm25",
    *,
    rows: Sequence[int] | np.ndarray | None = None,
    rebuild: bool = False,
    **options: Any,
):
    """Load the index in ``folder`` if it matches ``kb``, the view ``rows`` and ``options``;
    otherwise fit a new one and save it there. Returns ``(retriever, status, reason)`` with
    status ``"loaded"``, ``"built"`` (no index yet) or ``"rebuilt"`` (``reason`` says why)."""
    from reimagen.core import registry

    fresh = registry.get("retriever", retriever)(**options)
    view = None if rows is None else np.asarray(rows, dtype=np.int64)
    status, reason = "built", "no saved index"
    if rebuild:
        status, reason = "rebuilt", "rebuild requested"
    elif (Path(folder) / META_FILE).is_file():
        try:
            saved = type(fresh).load(folder, kb, rows=view)
            if saved.options == fresh.options:
                return saved, "loaded", ""
            status, reason = "rebuilt", f"options {saved.options} != requested {fresh.options}"
        except IndexMismatchError as err:
            status, reason = "rebuilt", str(err)
            if isinstance(err, IndexIntegrityError):
                LOG.warning("rebuilding the retriever index: %s", reason)
    fresh.fit(kb, rows=view)
    fresh.save(folder)
    return fresh, status, reason


def _short(digest: str) -> str:
    return digest[:12] if isinstance(digest, str) else repr(digest)
