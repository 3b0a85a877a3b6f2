"""The knowledge base: ⟨image, text⟩ pairs on disk that retrievers index (docs/design.md §6, §8).

Re-Imagen (paper §3) conditions generation on K neighbours retrieved from an external database
of image-text pairs. Here that database is a folder, built once and then only read::

    <folder>/
      kb.json           format, resolution, counts, fingerprint, hashes, build time
      manifest.jsonl    one Record per line, in row order (row, key, text, source, entity,
                        image, sha256)
      entities.json     the entities the records name (empty list for a folder source)
      images/<source>/<name>.png   every image as given, full size (RGBA PNG)
      images.npy        all images packed: uint8 [N, S, S, 4] RGBA at S = resolution,
                        memory-mapped when opened (np.load(mmap_mode="r"), no pickle)

The packed array is what training and retrieval read (one memory map instead of N PNG decodes);
the PNGs are the record of what was packed and let a KB be re-packed at another resolution.

      SHA256SUMS        sha256 of kb.json, manifest.jsonl, entities.json and images.npy
                        (``sha256sum -c`` format), written last

Integrity (issue #14): every open checks SHA256SUMS, so a flipped bit in kb.json, the manifest,
the entity list or the packed array is an error naming the file before anything is parsed or
used. That costs one sha256 pass over images.npy, ~0.14 s for the 119 MB emoji KB at 64 px
(measured on this 2-core machine), on every open. The PNGs under images/ are checked only by
``open(verify=True)`` (``kb info``; every record's hash is in the manifest, which SHA256SUMS
covers): 7,273 small files take ~1.4 s to hash, and nothing reads them at run time (retrieval,
training and generation read the packed array), so a damaged PNG cannot reach a result
unchecked. A KB without SHA256SUMS (built before checksums) is refused: rebuild it with
``reimagen kb build``.

``fingerprint`` = sha256 of ``manifest.jsonl`` (its bytes: keys, texts, image hashes). A
retriever index saved beside the KB records it, so an index built for another manifest is an
error at load time instead of a silent wrong answer (docs/design.md §6).

The package splits the work: :mod:`reimagen.kb.records` (file names, errors, Entity/Record),
this module (:class:`KnowledgeBase`, the reader), :mod:`reimagen.kb.reader` (reading and
checking the files on open), :mod:`reimagen.kb.builder` (the crash-safe build) and
:mod:`reimagen.kb.image_pack` (packing and resizing images).

numpy + Pillow only (reimagen.kb imports no framework).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from reimagen.core import io as rio
from reimagen.kb.image_pack import resize_area
from reimagen.kb.reader import (
    open_packed,
    parse_manifest,
    read_bytes,
    read_entities,
    read_meta,
    verify_image_files,
    verify_sums,
)
from reimagen.kb.records import (
    MANIFEST,
    META,
    Entity,
    KnowledgeBaseError,
    Record,
    check_size,
)


class KnowledgeBase:
    """A built knowledge base, opened read-only. Row ``i`` is ``records[i]`` and ``images[i]``."""

    def __init__(
        self,
        folder: Path,
        meta: dict[str, Any],
        records: tuple[Record, ...],
        entities: dict[str, Entity],
        images: np.ndarray,
    ):
        self.folder = folder
        self.meta = meta
        self.records = records
        self.entities = entities
        self.images = images  # uint8 [N, S, S, 4] RGBA, memory-mapped
        self.resolution = int(meta["resolution"])
        self.fingerprint = str(meta["fingerprint"])
        self._sources = np.array([r.source for r in records], dtype=object)  # [N]
        self._entity_of = np.array([r.entity for r in records], dtype=object)  # [N]
        self._row_of_key = {r.key: r.row for r in records}

    # ---------------------------------------------------------------- opening
    @classmethod
    def open(cls, folder: str | os.PathLike, verify: bool = True) -> KnowledgeBase:
        """Open a KB folder. Always: kb.json, the manifest, the entities and the packed array
        against SHA256SUMS (~0.14 s per 100 MB), then the fingerprint, manifest rows and array
        shape. ``verify`` adds every image file under images/ against its manifest sha256 and
        that images/ holds nothing else. A mismatch raises KnowledgeBaseError (an
        IntegrityError when bytes changed) naming the file."""
        if not isinstance(folder, (str, os.PathLike)):
            raise TypeError(
                f"folder must be a knowledge-base folder (str or os.PathLike), got "
                f"{type(folder).__name__}"
            )
        folder = Path(folder)
        if not folder.is_dir():
            raise KnowledgeBaseError(f"knowledge base folder not found: {folder}")
        verify_sums(folder)
        meta = read_meta(folder)
        manifest_bytes = read_bytes(folder, MANIFEST)
        fingerprint = rio.sha256_bytes(manifest_bytes)
        if fingerprint != meta["fingerprint"]:
            raise KnowledgeBaseError(
                f"{folder / MANIFEST}: sha256 {fingerprint[:12]}… does not match the fingerprint "
                f"{meta['fingerprint'][:12]}… in {META} (the manifest was edited or replaced)"
            )
        records = parse_manifest(folder / MANIFEST, manifest_bytes)
        entities = read_entities(folder, records, meta if verify else None)
        images = open_packed(folder, meta, len(records))
        if verify:
            verify_image_files(folder, records)
        return cls(folder, meta, records, entities, images)

    # ---------------------------------------------------------------- reading
    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        counts = ", ".join(f"{s}={n}" for s, n in self.source_counts().items())
        return (
            f"KnowledgeBase({str(self.folder)!r}, {len(self)} records: {counts}, "
            f"resolution={self.resolution})"
        )

    @property
    def texts(self) -> list[str]:
        """Captions in row order (what text retrievers index)."""
        return [r.text for r in self.records]

    @property
    def keys(self) -> list[str]:
        return [r.key for r in self.records]

    def row(self, key: str) -> int:
        """Row of the record with ``key``; unknown key -> KeyError naming it."""
        try:
            return self._row_of_key[key]
        except KeyError:
            raise KeyError(f"no record with key {key!r} in {self.folder}") from None

    def rows(
        self, sources: Iterable[str] | None = None, entities: Iterable[str] | None = None
    ) -> np.ndarray:
        """int64 row ids (ascending) of the records from ``sources`` that draw ``entities``:
        a *view* of the KB for a retriever to index (docs/design.md §8: same-style vs cross-style).
        None means all; an unknown source or entity raises, listing the known ones."""
        keep = np.ones(len(self), dtype=bool)
        if sources is not None:
            sources = _as_name_list(sources, "sources")
            known = set(self.source_counts())
            unknown = sorted(set(sources) - known)
            if unknown:
                raise KnowledgeBaseError(
                    f"unknown source(s) {unknown} for sources=; this KB has: {sorted(known)}"
                )
            keep &= np.isin(self._sources, sources)
        if entities is not None:
            entities = _as_name_list(entities, "entities")
            known_entities = set(self._entity_of.tolist())
            unknown = sorted(set(entities) - known_entities)
            if unknown:
                shown = ", ".join(repr(u) for u in unknown[:5])
                raise KnowledgeBaseError(
                    f"unknown entit{'y' if len(unknown) == 1 else 'ies'} {shown}"
                    f"{' …' if len(unknown) > 5 else ''} for entities= (not in {self.folder})"
                )
            keep &= np.isin(self._entity_of, entities)
        return np.flatnonzero(keep).astype(np.int64)

    def source_counts(self) -> dict[str, int]:
        """source -> number of records, in order of first appearance."""
        return dict(Counter(r.source for r in self.records))

    def by_entity(self) -> dict[str, list[int]]:
        """entity name -> its rows (every artist's rendition), records without an entity left
        out."""
        table: dict[str, list[int]] = {}
        for record in self.records:
            if record.entity:
                table.setdefault(record.entity, []).append(record.row)
        return table

    def summary(self, target: str = "twemoji") -> dict[str, Any]:
        """What ``reimagen kb info`` prints: counts per source, entities, how many have a
        ``target``-style drawing, and how many of those also have >= 1 other artist's rendition
        (the cross-style setting needs one), build time and size on disk."""
        artists_of: dict[str, set[str]] = {}
        for record in self.records:
            if record.entity:
                artists_of.setdefault(record.entity, set()).add(record.source)
        with_target = [e for e, a in artists_of.items() if target in a]
        others = Counter(len(artists_of[e] - {target}) for e in with_target)
        with_other = sum(n for k, n in others.items() if k >= 1)
        disk = sum(p.stat().st_size for p in self.folder.rglob("*") if p.is_file())
        return {
            "folder": str(self.folder),
            "records": len(self),
            "counts": self.source_counts(),
            "entities": len(self.entities),
            "entities_drawn": len(artists_of),
            f"entities_with_{target}": len(with_target),
            "other_renditions": {str(k): others[k] for k in sorted(others)},
            "fraction_with_other": round(with_other / len(with_target), 4) if with_target else 0.0,
            "resolution": self.resolution,
            "fingerprint": self.fingerprint,
            "built_at": self.meta.get("built_at"),
            "build_seconds": self.meta.get("build_seconds"),
            "entities_undrawn": list(self.meta.get("entities_undrawn", [])),
            "disk_bytes": disk,
        }

    def rgba(self, rows, size: int | None = None) -> np.ndarray:
        """float32 [n, size, size, 4] in [0, 1], straight alpha: the rows resized by area
        averaging in premultiplied space (so transparent pixels' colours never bleed in).
        For composing a drawing into a scene at a chosen size."""
        index = self._check_rows(rows)
        size = self.resolution if size is None else check_size(size, "size", low=1)
        rgba = np.asarray(self.images[index], dtype=np.float32) / 255.0  # [n, S, S, 4]
        alpha = rgba[..., 3:]  # [n, S, S, 1]
        premultiplied = np.concatenate([rgba[..., :3] * alpha, alpha], axis=-1)
        premultiplied = resize_area(premultiplied, size)  # [n, size, size, 4]
        alpha = premultiplied[..., 3:]
        colour = np.divide(
            premultiplied[..., :3],
            alpha,
            out=np.zeros_like(premultiplied[..., :3]),
            where=alpha > 0,
        )
        return np.concatenate([np.clip(colour, 0.0, 1.0), alpha], axis=-1).astype(np.float32)

    def rgb(self, rows, size: int | None = None, background=(255, 255, 255)) -> np.ndarray:
        """float32 [n, size, size, 3] in [-1, 1]: rows alpha-composited ("over") on
        ``background`` (RGB 0..255, shape [3] or one per row [n, 3]), then resized by area
        averaging to ``size`` (default: the KB resolution)."""
        index = self._check_rows(rows)
        size = self.resolution if size is None else check_size(size, "size", low=1)
        backdrop = _check_background(background, len(index)) / 255.0  # [n, 1, 1, 3]
        rgba = np.asarray(self.images[index], dtype=np.float32) / 255.0  # [n, S, S, 4]
        alpha = rgba[..., 3:]  # [n, S, S, 1], straight (not premultiplied) alpha
        composite = rgba[..., :3] * alpha + backdrop * (1.0 - alpha)  # [n, S, S, 3] in [0, 1]
        composite = resize_area(composite, size)  # linear, so = composite of the resized rgba
        return (composite * 2.0 - 1.0).astype(np.float32)

    def __reduce__(self):
        # Worker processes (e.g. a DataLoader) reopen the memory map instead of copying it.
        return _reopen, (str(self.folder), self.fingerprint)

    def _check_rows(self, rows) -> np.ndarray:
        index = np.atleast_1d(np.asarray(rows))
        if index.ndim != 1 or not (index.size == 0 or np.issubdtype(index.dtype, np.integer)):
            raise KnowledgeBaseError(f"rows must be integer row ids (a 1-D sequence), got {rows!r}")
        if index.size and (index.min() < 0 or index.max() >= len(self)):
            bad = int(index.min() if index.min() < 0 else index.max())
            raise KnowledgeBaseError(f"row {bad} out of range: this KB has rows 0..{len(self) - 1}")
        return index.astype(np.int64)


def _reopen(folder: str, fingerprint: str) -> KnowledgeBase:
    kb = KnowledgeBase.open(folder, verify=False)
    if kb.fingerprint != fingerprint:
        raise KnowledgeBaseError(f"{folder}: changed since it was pickled (fingerprint differs)")
    return kb


def _check_background(background, n: int) -> np.ndarray:
    """-> float32 [n, 1, 1, 3] in 0..255."""
    colour = np.asarray(background, dtype=np.float32)
    if colour.shape not in ((3,), (n, 3)) or not np.all((colour >= 0) & (colour <= 255)):
        raise KnowledgeBaseError(
            f"background must be an RGB triple in 0..255 or one per row [{n}, 3], "
            f"got {background!r}"
        )
    return np.broadcast_to(colour, (n, 3)).reshape(n, 1, 1, 3)


def _as_name_list(names, argument: str) -> list[str]:
    if isinstance(names, str):
        names = [names]
    names = list(names)
    if not all(isinstance(n, str) for n in names):
        raise KnowledgeBaseError(f"{argument}= must be names (strings), got {names!r}")
    return names
