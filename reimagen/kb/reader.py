"""Reading a knowledge-base folder's files and checking them on open (issue #14): SHA256SUMS
first, then kb.json, the manifest, the entities, the packed array's shape and (``verify=True``)
every PNG against its manifest sha256. Each failure is a KnowledgeBaseError naming the file
(:class:`KnowledgeBaseIntegrityError` when bytes changed). :class:`reimagen.kb.knowledge_base.
KnowledgeBase.open` calls these in that order.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from reimagen.core import digests
from reimagen.core import io as rio
from reimagen.kb.records import (
    CHECKED,
    ENTITIES,
    FORMAT,
    FORMAT_VERSION,
    IMAGES,
    MANIFEST,
    META,
    PACKED,
    SUMS,
    Entity,
    KnowledgeBaseError,
    KnowledgeBaseIntegrityError,
    Record,
)


def verify_sums(folder: Path) -> None:
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


def read_bytes(folder: Path, name: str) -> bytes:
    path = folder / name
    if not path.is_file():
        raise KnowledgeBaseError(f"{path}: missing (not a complete knowledge base)")
    return path.read_bytes()


def read_meta(folder: Path) -> dict[str, Any]:
    path = folder / META
    try:
        meta = json.loads(read_bytes(folder, META))
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


def parse_manifest(path: Path, blob: bytes) -> tuple[Record, ...]:
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


def read_entities(
    folder: Path, records: Sequence[Record], meta: dict[str, Any] | None
) -> dict[str, Entity]:
    blob = read_bytes(folder, ENTITIES)
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


def open_packed(folder: Path, meta: dict[str, Any], count: int) -> np.ndarray:
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


def verify_image_files(folder: Path, records: Sequence[Record]) -> None:
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
            raise KnowledgeBaseIntegrityError(
                f"{path}: extra file in {IMAGES}/ not listed in {MANIFEST}"
            )
