"""The knowledge base: ⟨image, text⟩ pairs on disk that retrievers index (DESIGN §6, §8).

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
error at load time instead of a silent wrong answer (DESIGN §6).

Building is crash-safe: everything is written into a temporary folder beside the target and
renamed into place at the end, so a failed build leaves nothing behind and an old KB is replaced
in one step. Files in an old KB folder that are not the KB's own (a retriever index, say) are
carried over; they check the fingerprint themselves.

numpy + Pillow only (reimagen.core imports no framework).
"""

from __future__ import annotations

import datetime
import io
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import attrs
import numpy as np

from reimagen.core import digests
from reimagen.core import io as rio

FORMAT = "reimagen-kb"
FORMAT_VERSION = 1
META = "kb.json"
MANIFEST = "manifest.jsonl"
ENTITIES = "entities.json"
PACKED = "images.npy"
IMAGES = "images"
SUMS = digests.SUMS
CHECKED = (META, MANIFEST, ENTITIES, PACKED)  # what SHA256SUMS covers (the PNGs: the manifest)
OWN_ENTRIES = (META, MANIFEST, ENTITIES, PACKED, IMAGES, SUMS)  # the rest of a KB folder is kept

# The emoji artists (DESIGN §8); ``folder`` marks a KB built from a folder of images + captions.
ARTISTS = ("twemoji", "openmoji", "noto", "fluent")
SOURCE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MIN_RESOLUTION, MAX_RESOLUTION = 4, 1024


class KnowledgeBaseError(ValueError):
    """A knowledge base that is missing, damaged or does not match its manifest; or bad input
    to a build. The message names the file or argument."""


class KnowledgeBaseIntegrityError(KnowledgeBaseError, digests.IntegrityError):
    """A KB file whose bytes differ from its recorded sha256, or a KB without checksums."""


@attrs.frozen
class Entity:
    """A thing that several artists draw: one emoji, named by its CLDR short name."""

    name: str  # CLDR name, "red apple"
    emoji: str  # the fully-qualified emoji string
    codepoints: str  # "1f34e": lowercase hex joined by "-", without fe0f
    group: str = "unknown"  # emoji-test.txt group, "Food & Drink"
    subgroup: str = "unknown"  # emoji-test.txt subgroup, "food-fruit"
    version: float = 0.0  # Unicode emoji version E (0.6 ... 16.0)
    is_flag: bool = False

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)

    @classmethod
    def from_dict(cls, blob: dict[str, Any]) -> Entity:
        return cls(
            name=str(blob["name"]),
            emoji=str(blob["emoji"]),
            codepoints=str(blob["codepoints"]),
            group=str(blob.get("group", "unknown")),
            subgroup=str(blob.get("subgroup", "unknown")),
            version=float(blob.get("version", 0.0)),
            is_flag=bool(blob.get("is_flag", False)),
        )


@attrs.frozen
class Record:
    """One ⟨image, text⟩ pair: row ``row`` of the packed array."""

    row: int
    key: str  # unique, "twemoji/1f34e"
    text: str  # the caption retrievers match prompts against
    source: str  # artist ("twemoji" | "openmoji" | "noto" | "fluent") or "folder"
    entity: str  # CLDR name of the entity drawn; "" for folder sources
    image: str  # path relative to the KB folder, "images/twemoji/1f34e.png"
    sha256: str  # of the image file

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)

    @classmethod
    def from_dict(cls, blob: dict[str, Any]) -> Record:
        return cls(**{field.name: blob[field.name] for field in attrs.fields(cls)})


# (key, text, source, entity, image): image is a PIL.Image (any mode; converted to RGBA),
# encoded image bytes (a PNG is stored byte for byte) or a uint8 array [H, W, 3|4].
KBItem = tuple[str, str, str, str, Any]


class KnowledgeBaseSource(Protocol):
    """What a registered ``source`` factory returns (hook ``reimagen_register_sources``)."""

    name: str

    def entities(self) -> list[Entity]:
        """The entities the items name (empty for sources without entities)."""

    def items(self) -> Iterable[KBItem]:
        """Every ⟨image, text⟩ pair, in a deterministic order."""


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
            raise TypeError(f"folder must be a knowledge-base folder (str or os.PathLike), got "
                            f"{type(folder).__name__}")
        folder = Path(folder)
        if not folder.is_dir():
            raise KnowledgeBaseError(f"knowledge base folder not found: {folder}")
        _verify_sums(folder)
        meta = _read_meta(folder)
        manifest_bytes = _read_bytes(folder, MANIFEST)
        fingerprint = rio.sha256_bytes(manifest_bytes)
        if fingerprint != meta["fingerprint"]:
            raise KnowledgeBaseError(
                f"{folder / MANIFEST}: sha256 {fingerprint[:12]}… does not match the fingerprint "
                f"{meta['fingerprint'][:12]}… in {META} (the manifest was edited or replaced)"
            )
        records = _parse_manifest(folder / MANIFEST, manifest_bytes)
        entities = _read_entities(folder, records, meta if verify else None)
        images = _open_packed(folder, meta, len(records))
        if verify:
            _verify_image_files(folder, records)
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
        a *view* of the KB for a retriever to index (DESIGN §8: same-style vs cross-style).
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
        size = self.resolution if size is None else _check_size(size, "size", low=1)
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
        size = self.resolution if size is None else _check_size(size, "size", low=1)
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


# -------------------------------------------------------------------- building
def build_knowledge_base(
    items: Iterable[KBItem],
    folder: str | os.PathLike,
    *,
    resolution: int = 64,
    entities: Iterable[Entity] | None = None,
    progress: bool = True,
    info: dict[str, Any] | None = None,
) -> KnowledgeBase:
    """Write ``items`` as a knowledge base in ``folder`` and return it opened.

    items: (key, text, source, entity, image) tuples, see :data:`KBItem`. Keys must be unique,
    texts non-empty, sources lowercase names, entities names from ``entities`` (or "").
    Bad input raises KnowledgeBaseError naming the item; nothing is left on disk then.
    ``info`` adds JSON fields to kb.json (e.g. which artists were used).
    """
    folder = Path(folder)
    resolution = _check_size(resolution, "resolution")
    entity_table = _entity_table(entities)
    _check_replaceable(folder)
    started = time.perf_counter()
    folder.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_builds(folder)
    staging = Path(
        tempfile.mkdtemp(prefix=_staging_prefix(folder) + f"{os.getpid()}-", dir=folder.parent)
    )
    lock = _lock_dir(staging)  # held until the build ends: a lockable staging folder is abandoned
    try:
        records = _write_items(items, staging, resolution, entity_table, progress)
        manifest = "".join(json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in records)
        rio.atomic_write_text(staging / MANIFEST, manifest)
        entities_json = json.dumps(
            [e.to_dict() for e in entity_table.values()], ensure_ascii=False, indent=1
        )
        rio.atomic_write_text(staging / ENTITIES, entities_json + "\n")
        meta = _build_meta(staging, records, resolution, entity_table, info)
        meta["build_seconds"] = round(time.perf_counter() - started, 3)
        rio.atomic_write_text(staging / META, json.dumps(meta, indent=1, ensure_ascii=False) + "\n")
        digests.write_sums(staging, CHECKED)  # last: a KB without it is never opened
        _swap_into_place(staging, folder)
    except BaseException as err:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(err, OSError):
            rio.name_the_file(err, folder)  # e.g. a full disk while writing a PNG
        raise
    finally:
        os.close(lock)
    return KnowledgeBase.open(folder, verify=False)


def build_from_source(
    source: KnowledgeBaseSource,
    folder: str | os.PathLike,
    *,
    resolution: int = 64,
    progress: bool = True,
    info: dict[str, Any] | None = None,
) -> KnowledgeBase:
    """Build a KB from a registered source (``registry.get("source", name)(**options)``)."""
    return build_knowledge_base(
        source.items(),
        folder,
        resolution=resolution,
        entities=source.entities(),
        progress=progress,
        info={"source": source.name, **(info or {})},
    )


def _write_items(
    items: Iterable[KBItem],
    staging: Path,
    resolution: int,
    entity_table: dict[str, Entity],
    progress: bool,
) -> list[Record]:
    """Check and write each item: its PNG under images/, its packed row to a raw scratch file
    (so memory stays flat however many items), then the raw rows into images.npy."""
    records: list[Record] = []
    paths_seen: dict[str, str] = {}  # image path -> key
    keys_seen: set[str] = set()
    raw_path = staging / ".packed.raw"
    with open(raw_path, "wb") as raw:
        for item in _progress(items, progress):
            key, text, source, entity, image = _check_item(item, len(records), entity_table)
            if key in keys_seen:
                raise KnowledgeBaseError(f"duplicate key {key!r}: keys must be unique")
            keys_seen.add(key)
            rel = _image_path(source, key)
            if rel in paths_seen:
                raise KnowledgeBaseError(
                    f"keys {key!r} and {paths_seen[rel]!r} both map to the image path {rel}"
                )
            paths_seen[rel] = key
            png, rgba = _encode(image, key)
            (staging / rel).parent.mkdir(parents=True, exist_ok=True)
            (staging / rel).write_bytes(png)
            raw.write(pack_rgba(rgba, resolution).tobytes())
            records.append(
                Record(
                    row=len(records),
                    key=key,
                    text=text,
                    source=source,
                    entity=entity,
                    image=rel,
                    sha256=rio.sha256_bytes(png),
                )
            )
    if not records:
        raise KnowledgeBaseError("no items to build a knowledge base from (the source is empty)")
    shape = (len(records), resolution, resolution, 4)
    packed = np.memmap(raw_path, dtype=np.uint8, mode="r", shape=shape)
    rio.atomic_save_npy(staging / PACKED, packed)
    del packed
    raw_path.unlink()
    return records


def _check_item(item, index: int, entity_table: dict[str, Entity]) -> KBItem:
    try:
        key, text, source, entity, image = item
    except (TypeError, ValueError):
        raise KnowledgeBaseError(
            f"item {index}: expected (key, text, source, entity, image), got {type(item).__name__}"
        ) from None
    if not isinstance(key, str) or not key.strip() or "\n" in key:
        raise KnowledgeBaseError(
            f"item {index}: key must be a non-empty one-line string, got {key!r}"
        )
    if not isinstance(text, str) or not text.strip():
        raise KnowledgeBaseError(f"item {key!r}: empty caption (text must be non-empty)")
    if not isinstance(source, str) or not SOURCE_NAME.match(source):
        raise KnowledgeBaseError(
            f"item {key!r}: source must be a lowercase name like 'twemoji' or 'folder', "
            f"got {source!r}"
        )
    if not isinstance(entity, str):
        raise KnowledgeBaseError(f"item {key!r}: entity must be a string, got {entity!r}")
    if entity and entity_table and entity not in entity_table:
        raise KnowledgeBaseError(f"item {key!r}: entity {entity!r} is not in entities=")
    if entity and not entity_table:
        raise KnowledgeBaseError(f"item {key!r}: names entity {entity!r} but no entities= given")
    return key, " ".join(text.split()), source, entity, image


def _image_path(source: str, key: str) -> str:
    """images/<source>/<name>.png, name = the key without its "<source>/" prefix, made safe."""
    stem = key[len(source) + 1 :] if key.startswith(source + "/") else key
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._") or "image"
    return f"{IMAGES}/{source}/{stem}.png"


def _encode(image, key: str):
    """-> (PNG bytes to store, PIL RGBA image). PNG input is stored byte for byte."""
    from PIL import Image, UnidentifiedImageError

    blob = None
    try:
        if isinstance(image, (bytes, bytearray, memoryview)):
            blob = bytes(image)
            picture = Image.open(io.BytesIO(blob))
            picture.load()
        elif isinstance(image, np.ndarray):
            picture = _array_to_image(image, key)
        elif isinstance(image, Image.Image):
            picture = image
        else:
            raise KnowledgeBaseError(
                f"item {key!r}: image must be a PIL image, encoded bytes or a uint8 array, "
                f"got {type(image).__name__}"
            )
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        if isinstance(err, KnowledgeBaseError):
            raise
        origin = getattr(image, "path", None)  # the file, when the source knows it
        where = f"{origin}: " if origin else ""
        raise KnowledgeBaseError(f"{where}unreadable image for item {key!r} ({err})") from None
    if picture.width < 1 or picture.height < 1:
        raise KnowledgeBaseError(f"item {key!r}: empty image ({picture.width}x{picture.height})")
    rgba = picture.convert("RGBA")
    if blob is None or not blob.startswith(PNG_SIGNATURE):
        buffer = io.BytesIO()
        rgba.save(buffer, format="PNG")
        blob = buffer.getvalue()
    return blob, rgba


def _array_to_image(array: np.ndarray, key: str):
    from PIL import Image

    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] not in (3, 4):
        raise KnowledgeBaseError(
            f"item {key!r}: an array image must be uint8 [H, W, 3|4], "
            f"got {array.dtype} {array.shape}"
        )
    return Image.fromarray(np.ascontiguousarray(array), "RGBA" if array.shape[2] == 4 else "RGB")


def pack_rgba(picture, resolution: int) -> np.ndarray:
    """PIL RGBA image -> uint8 [S, S, 4]: padded to a square (transparent, centred) so nothing is
    cropped, then resized (Pillow premultiplies alpha for RGBA; box filter when shrinking)."""
    from PIL import Image

    side = max(picture.width, picture.height)
    if picture.width != picture.height:
        square = Image.new("RGBA", (side, side), (0, 0, 0, 0))
        square.paste(picture, ((side - picture.width) // 2, (side - picture.height) // 2))
        picture = square
    if side != resolution:
        method = Image.Resampling.BOX if side > resolution else Image.Resampling.BICUBIC
        picture = picture.resize((resolution, resolution), method)
    return np.asarray(picture, dtype=np.uint8)  # [S, S, 4]


def resize_area(images: np.ndarray, size: int) -> np.ndarray:
    """float32 [n, S, S, C] -> [n, size, size, C] by area averaging (exact block means when S is
    a multiple of size, else Pillow's box filter per channel)."""
    n, side, _, channels = images.shape
    if side == size:
        return images
    if side % size == 0:
        f = side // size
        return images.reshape(n, size, f, size, f, channels).mean(axis=(2, 4))
    from PIL import Image

    out = np.empty((n, size, size, channels), dtype=np.float32)
    for i in range(n):
        for c in range(channels):
            plane = Image.fromarray(np.ascontiguousarray(images[i, :, :, c], dtype=np.float32), "F")
            out[i, :, :, c] = np.asarray(plane.resize((size, size), Image.Resampling.BOX))
    return out


def _build_meta(
    staging: Path,
    records: list[Record],
    resolution: int,
    entity_table: dict[str, Entity],
    info: dict[str, Any] | None,
) -> dict[str, Any]:
    manifest_sha = rio.sha256_file(staging / MANIFEST)
    meta: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "resolution": resolution,
        "count": len(records),
        "counts": dict(Counter(r.source for r in records)),
        "entities": len(entity_table),
        "fingerprint": manifest_sha,
        "images_shape": [len(records), resolution, resolution, 4],
        "images_sha256": rio.sha256_file(staging / PACKED),
        "entities_sha256": rio.sha256_file(staging / ENTITIES),
        "built_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    for key, value in (info or {}).items():
        if key in meta:
            raise KnowledgeBaseError(f"info= may not override the kb.json field {key!r}")
        meta[key] = value
    return meta


def _check_replaceable(folder: Path) -> None:
    """Refuse to replace a folder that is not a knowledge base (losing no data)."""
    if folder.exists() and not folder.is_dir():
        raise KnowledgeBaseError(f"output {folder} exists and is not a folder")
    if folder.is_dir() and any(folder.iterdir()) and not (folder / META).is_file():
        raise KnowledgeBaseError(
            f"refusing to replace {folder}: it is not empty and holds no {META} "
            "(not a knowledge base); choose another output folder"
        )


def _swap_into_place(staging: Path, folder: Path) -> None:
    """Put the finished staging folder at ``folder``. An old KB there is exchanged with it in
    one step where the OS can (else renamed aside first, restored if the swap fails); files in
    it that are not the KB's own (a retriever index) are then moved into the new KB, and the
    old folder is deleted only if they all moved."""
    if not folder.exists():
        os.replace(staging, folder)
        rio._fsync_dir(folder.parent)
        return
    old_lock = _lock_dir(folder)  # follows the old KB to the staging name: no build takes it
    try:
        if rio.exchange(staging, folder):  # one step: `folder` is always a whole KB
            # the old KB now lies at the staging name; killed before it is gone, the next
            # build carries its extras over from there (_remove_abandoned_builds)
            rio._fsync_dir(folder.parent)
            _carry_over(staging, folder)
            shutil.rmtree(staging)
            return
    finally:
        os.close(old_lock)
    aside = Path(
        tempfile.mkdtemp(prefix=_aside_prefix(folder) + f"{os.getpid()}-", dir=folder.parent)
    )
    lock = _lock_dir(aside)
    try:
        old = aside / folder.name
        os.replace(folder, old)
        try:
            os.replace(staging, folder)
        except BaseException:
            os.replace(old, folder)  # put the old KB back
            aside.rmdir()
            raise
        rio._fsync_dir(folder.parent)
        _carry_over(old, folder)
        shutil.rmtree(aside)
    finally:
        os.close(lock)


def _carry_over(old: Path, folder: Path) -> None:
    """Move what an old KB holds that is not the KB's own (indexes, encodings, triples) into
    the new one, unless the new one already has an entry of that name."""
    for entry in sorted(old.iterdir()):
        if rio.is_temp_name(entry.name):  # a killed atomic write's temp file: never carried
            continue
        if entry.name not in OWN_ENTRIES and not (folder / entry.name).exists():
            os.replace(entry, folder / entry.name)


def _staging_prefix(folder: Path) -> str:
    return f".{folder.name}.building-"


def _aside_prefix(folder: Path) -> str:
    return f".{folder.name}.old-"


def _remove_abandoned_builds(folder: Path) -> None:
    """Finish what builds killed beside ``folder`` left (kill -9 runs no cleanup; thousands of
    files each): a staging folder is deleted, after what it holds that is not a KB's own moves
    into the KB when it holds the old KB (killed after the exchange); an old KB renamed aside
    (where no exchange is possible) is put back if no KB took its place (killed between the two
    renames), else the same carry-over, and the aside folder is deleted."""
    for prefix in (_staging_prefix(folder), _aside_prefix(folder)):
        for entry in sorted(folder.parent.glob(prefix + "*")):
            if not _abandoned(entry, prefix):
                continue
            old = entry / folder.name
            if prefix == _aside_prefix(folder) and old.is_dir():
                if not folder.exists() and (old / META).is_file():
                    os.replace(old, folder)
                elif folder.is_dir():
                    _carry_over(old, folder)
            elif (entry / META).is_file() and folder.is_dir():
                _carry_over(entry, folder)  # the old KB, exchanged to the staging name
            shutil.rmtree(entry, ignore_errors=True)


_lock_dir, _abandoned = rio.lock_dir, rio.abandoned  # shared with the index writer


def _entity_table(entities: Iterable[Entity] | None) -> dict[str, Entity]:
    table: dict[str, Entity] = {}
    for entity in entities or ():
        if not isinstance(entity, Entity):
            raise KnowledgeBaseError(
                f"entities= must hold Entity objects, got {type(entity).__name__}"
            )
        if entity.name in table:
            raise KnowledgeBaseError(f"entities=: duplicate entity name {entity.name!r}")
        table[entity.name] = entity
    return table


def _progress(items: Iterable[KBItem], enabled: bool) -> Iterator[KBItem]:
    if not enabled:
        yield from items
        return
    from tqdm import tqdm

    yield from tqdm(items, desc="knowledge base", unit="img", file=sys.stderr, mininterval=1.0)


# -------------------------------------------------------------------- checking on open
def _verify_sums(folder: Path) -> None:
    if not (folder / SUMS).is_file() and (folder / META).is_file():
        raise KnowledgeBaseIntegrityError(
            f"{folder / SUMS}: missing (a KB built before reimagen recorded checksums, or an "
            "incomplete copy); rebuild it with `reimagen kb build`"
        )
    if not (folder / SUMS).is_file():
        raise KnowledgeBaseError(f"{folder / META}: missing (not a complete knowledge base)")
    try:
        digests.verify_sums(folder, required=CHECKED)
    except digests.IntegrityError as err:
        raise KnowledgeBaseIntegrityError(str(err)) from None


def _read_bytes(folder: Path, name: str) -> bytes:
    path = folder / name
    if not path.is_file():
        raise KnowledgeBaseError(f"{path}: missing (not a complete knowledge base)")
    return path.read_bytes()


def _read_meta(folder: Path) -> dict[str, Any]:
    path = folder / META
    try:
        meta = json.loads(_read_bytes(folder, META))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:  # e.g. a pickle in its place
        raise KnowledgeBaseError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise KnowledgeBaseError(f"{path}: not a reimagen knowledge base (format != {FORMAT!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise KnowledgeBaseError(
            f"{path}: format_version {meta.get('format_version')!r}; this reimagen reads "
            f"{FORMAT_VERSION} (rebuild with `reimagen kb build`)"
        )
    for field in ("resolution", "fingerprint", "images_shape", "images_sha256", "count"):
        if field not in meta:
            raise KnowledgeBaseError(f"{path}: field {field!r} missing")
    return meta


def _parse_manifest(path: Path, blob: bytes) -> tuple[Record, ...]:
    records = []
    try:
        text = blob.decode("utf-8")
    except UnicodeDecodeError as err:
        raise KnowledgeBaseError(f"{path}: not UTF-8 text ({err})") from None
    for number, line in enumerate(text.splitlines(), start=1):
        try:
            record = Record.from_dict(json.loads(line))
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise KnowledgeBaseError(f"{path}: line {number} is not a record ({err})") from None
        if record.row != number - 1:
            raise KnowledgeBaseError(
                f"{path}: line {number} has row {record.row}, expected {number - 1}"
            )
        records.append(record)
    return tuple(records)


def _read_entities(
    folder: Path, records: Sequence[Record], meta: dict[str, Any] | None
) -> dict[str, Entity]:
    blob = _read_bytes(folder, ENTITIES)
    if meta is not None and rio.sha256_bytes(blob) != meta.get("entities_sha256"):
        raise KnowledgeBaseError(f"{folder / ENTITIES}: sha256 does not match {META}")
    try:
        entities = {e.name: e for e in map(Entity.from_dict, json.loads(blob))}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise KnowledgeBaseError(f"{folder / ENTITIES}: not a list of entities ({err})") from None
    missing = sorted({r.entity for r in records if r.entity and r.entity not in entities})
    if missing:
        raise KnowledgeBaseError(
            f"{folder / ENTITIES}: records name unknown entities {missing[:5]}"
        )
    return entities


def _open_packed(folder: Path, meta: dict[str, Any], count: int) -> np.ndarray:
    path = folder / PACKED
    if not path.is_file():
        raise KnowledgeBaseError(f"{path}: missing (not a complete knowledge base)")
    try:
        images = rio.load_npy(path, mmap=True)
    except ValueError as err:
        raise KnowledgeBaseError(f"{path}: not a readable .npy array ({err})") from None
    side = int(meta["resolution"])
    expected = (count, side, side, 4)
    if (
        images.shape != expected
        or images.dtype != np.uint8
        or list(expected) != meta["images_shape"]
    ):
        raise KnowledgeBaseError(
            f"{path}: shape {images.shape} {images.dtype}, expected uint8 {expected} "
            f"({count} manifest records at resolution {side})"
        )
    return images  # its bytes were checked against SHA256SUMS when the KB was opened


def _verify_image_files(folder: Path, records: Sequence[Record]) -> None:
    listed = set()
    for record in records:
        path = folder / record.image
        listed.add(path)
        if not path.is_file():
            raise KnowledgeBaseIntegrityError(
                f"{path}: missing (listed in {MANIFEST} as {record.key!r})"
            )
        actual = rio.sha256_file(path)
        if actual != record.sha256:
            raise KnowledgeBaseIntegrityError(
                f"{path}: sha256 {actual[:12]}… does not match the manifest's "
                f"{record.sha256[:12]}… (file changed after the build)"
            )
    for path in sorted((folder / IMAGES).rglob("*")):
        if path not in listed and not path.is_dir():
            raise KnowledgeBaseIntegrityError(f"{path}: extra file in {IMAGES}/ not listed in {MANIFEST}")


# -------------------------------------------------------------------- argument checks
def _check_size(value, name: str, low: int = MIN_RESOLUTION) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise KnowledgeBaseError(f"{name} must be an integer, got {value!r}")
    if not low <= int(value) <= MAX_RESOLUTION:
        raise KnowledgeBaseError(f"{name} must be in [{low}, {MAX_RESOLUTION}], got {value}")
    return int(value)


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
