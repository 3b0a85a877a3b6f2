"""Building a knowledge base folder from ⟨image, text⟩ items (docs/design.md §6, §8); the layout it
writes is described in :mod:`reimagen.kb.knowledge_base`.

Building is crash-safe: everything is written into a staging folder beside the target
(``.<name>.building-<pid>-*``, flock-held while the build runs) and swapped into place at the
end by :func:`reimagen.core.folder_swap.swap_into_place`, so a failed build leaves nothing
behind and an old KB is replaced in one step. Files in an old KB folder that are not the KB's
own (a retriever index, say) are carried over; they check the fingerprint themselves. What a
build killed with -9 left is finished by the next build (:func:`_remove_abandoned_builds`).
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from reimagen.core import digests, folder_swap
from reimagen.core import io as rio
from reimagen.kb.image_pack import encode_image, pack_rgba
from reimagen.kb.knowledge_base import KnowledgeBase
from reimagen.kb.records import (
    CHECKED,
    ENTITIES,
    FORMAT,
    FORMAT_VERSION,
    IMAGES,
    MANIFEST,
    META,
    OWN_ENTRIES,
    PACKED,
    SOURCE_NAME,
    Entity,
    KBItem,
    KnowledgeBaseError,
    KnowledgeBaseSource,
    Record,
    check_size,
)


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
    resolution = check_size(resolution, "resolution")
    entity_table = _entity_table(entities)
    _check_replaceable(folder)
    started = time.perf_counter()
    folder.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_builds(folder)
    # the lock is held until the build ends: a staging folder another process can lock is abandoned
    staging, lock = folder_swap.make_locked_folder(folder.parent, staging_prefix(folder))
    try:
        records = _write_items(items, staging, resolution, entity_table, progress)
        _write_tables(staging, records, resolution, entity_table, info, started)
        folder_swap.swap_into_place(staging, folder, carry_over=_carry_over)
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
            rel = image_path(source, key)
            if rel in paths_seen:
                raise KnowledgeBaseError(
                    f"keys {key!r} and {paths_seen[rel]!r} both map to the image path {rel}"
                )
            paths_seen[rel] = key
            png, rgba = encode_image(image, key)
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


def image_path(source: str, key: str) -> str:
    """images/<source>/<name>.png, name = the key without its "<source>/" prefix, made safe."""
    stem = key[len(source) + 1 :] if key.startswith(source + "/") else key
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._") or "image"
    return f"{IMAGES}/{source}/{stem}.png"


def _write_tables(
    staging: Path,
    records: list[Record],
    resolution: int,
    entity_table: dict[str, Entity],
    info: dict[str, Any] | None,
    started: float,
) -> None:
    """manifest.jsonl, entities.json and kb.json, then SHA256SUMS over them and images.npy
    (last: a KB folder without it is never opened)."""
    manifest = "".join(json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in records)
    rio.atomic_write_text(staging / MANIFEST, manifest)
    entities_json = json.dumps(
        [e.to_dict() for e in entity_table.values()], ensure_ascii=False, indent=1
    )
    rio.atomic_write_text(staging / ENTITIES, entities_json + "\n")
    meta = _build_meta(staging, records, resolution, entity_table, info)
    meta["build_seconds"] = round(time.perf_counter() - started, 3)
    rio.atomic_write_text(staging / META, json.dumps(meta, indent=1, ensure_ascii=False) + "\n")
    digests.write_sums(staging, CHECKED)


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


def staging_prefix(folder: Path) -> str:
    """A build writes into ``.<name>.building-<pid>-<random>`` beside the KB folder."""
    return f".{folder.name}.building-"


def _remove_abandoned_builds(folder: Path) -> None:
    """Finish what builds killed beside ``folder`` left (kill -9 runs no cleanup; thousands of
    files each): a staging folder is deleted, after what it holds that is not a KB's own moves
    into the KB when it holds the old KB (killed after the exchange); an old KB renamed aside
    (where no exchange is possible) is put back if no KB took its place (killed between the two
    renames), else the same carry-over, and the aside folder is deleted."""
    folder_swap.remove_abandoned_swaps(
        folder, staging_prefix(folder), marker=META, carry_over=_carry_over
    )


def _carry_over(old: Path, folder: Path) -> None:
    """Move what an old KB holds that is not the KB's own (indexes, encodings, triples) into
    the new one, unless the new one already has an entry of that name."""
    for entry in sorted(old.iterdir()):
        if rio.is_temp_name(entry.name):  # a killed atomic write's temp file: never carried
            continue
        if entry.name not in OWN_ENTRIES and not (folder / entry.name).exists():
            os.replace(entry, folder / entry.name)


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
