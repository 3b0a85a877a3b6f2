"""Knowledge-base source ``"folder"``: your own images with captions (docs/design.md §6).

Layout: a folder with a ``captions.jsonl`` file, one JSON object per line::

    {"image": "apple.png", "text": "a red apple on a plate"}
    {"image": "photos/cat.jpg", "text": "a cat asleep on a sofa"}

``image`` is a path relative to the folder (any format Pillow reads; transparency kept),
``text`` the caption retrievers match prompts against. Blank lines are skipped. Records get
the key ``folder/<image path without extension>``, source ``"folder"`` and no entity.

Everything that can be checked without decoding images (the folder, the captions file, every
line, every image file's existence and format header, empty captions, duplicate paths and
duplicate record ids) is checked when the source is made, before any work, and named by line; an image that will not decode fails the build, which then leaves nothing
on disk (see :func:`reimagen.kb.builder.build_knowledge_base`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import attrs

from reimagen.kb.builder import image_path
from reimagen.kb.records import Entity, KBItem, KnowledgeBaseError

CAPTIONS = "captions.jsonl"


@attrs.frozen
class FolderEntry:
    image: Path  # absolute path of the image file
    relative: str  # as written in captions.jsonl, POSIX style
    text: str


def read_captions(folder: Path) -> list[FolderEntry]:
    """Parse and check ``folder/captions.jsonl``; errors name the file and line."""
    captions = folder / CAPTIONS
    if not captions.is_file():
        raise KnowledgeBaseError(
            f"{captions}: missing; a folder source needs {CAPTIONS} with lines "
            '{"image": "a.png", "text": "a caption"}'
        )
    entries: list[FolderEntry] = []
    seen: dict[str, int] = {}  # image path -> line
    keys: dict[str, int] = {}  # record id (and stored image path) -> line
    for number, line in enumerate(read_utf8(captions).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{captions}: line {number}"
        entry = parse_caption_line(line, folder, where)
        check_unique(entry.relative, number, where, seen, keys)
        check_image_header(entry.image, where)
        entries.append(entry)
    if not entries:
        raise KnowledgeBaseError(f"{captions}: no entries")
    return entries


def parse_caption_line(line: str, folder: Path, where: str) -> FolderEntry:
    """One line of captions.jsonl -> its entry: JSON with an ``image`` path inside ``folder``
    naming an existing file and a non-empty ``text``."""
    try:
        blob = json.loads(line)
    except json.JSONDecodeError as err:
        raise KnowledgeBaseError(f"{where}: not JSON ({err.msg})") from None
    if not isinstance(blob, dict) or not isinstance(blob.get("image"), str):
        raise KnowledgeBaseError(f'{where}: expected {{"image": "<path>", "text": "<caption>"}}')
    relative = PurePosixPath(blob["image"].replace(os.sep, "/"))
    if relative.is_absolute() or ".." in relative.parts or not relative.parts:
        raise KnowledgeBaseError(f"{where}: image {blob['image']!r} must be a path inside {folder}")
    text = blob.get("text")
    if not isinstance(text, str) or not text.strip():
        raise KnowledgeBaseError(f"{where}: empty caption for image {blob['image']!r}")
    image = folder / relative
    if not image.is_file():
        raise KnowledgeBaseError(f"{image}: image file not found ({where})")
    return FolderEntry(image=image, relative=str(relative), text=text.strip())


def check_unique(
    relative: str, number: int, where: str, seen: dict[str, int], keys: dict[str, int]
) -> None:
    """No two lines list the same image, share a record id or share a stored image file.
    ``seen``: image path -> line; ``keys``: record id and stored image path -> line; both gain
    this line's."""
    if relative in seen:
        raise KnowledgeBaseError(
            f"{where}: image {relative!r} already listed on line {seen[relative]}"
        )
    seen[relative] = number
    key = record_key(relative)  # a.png and a.jpg would both be folder/a
    stored = image_path("folder", key)  # "a b" and "a_b" would share images/folder/a_b.png
    if key in keys:
        raise KnowledgeBaseError(
            f"{where}: image {relative!r} has the record id {key!r} of line "
            f"{keys[key]} (ids drop the extension); rename one of them"
        )
    if stored in keys:
        raise KnowledgeBaseError(
            f"{where}: image {relative!r} would be stored as {stored} like line "
            f"{keys[stored]}'s (odd characters become _); rename one of them"
        )
    keys[key] = keys[stored] = number


def record_key(relative: str) -> str:
    """The record id of an image path: ``folder/<path without extension>``."""
    return "folder/" + str(PurePosixPath(relative).with_suffix(""))


def check_image_header(image: Path, where: str) -> None:
    """The file is in a format Pillow reads (its header only; decoding happens at the build)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(image) as picture:
            picture.size  # noqa: B018  (parsed from the header)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        reason = str(err).splitlines()[0] if str(err).strip() else type(err).__name__
        raise KnowledgeBaseError(
            f"{where}: {image.name} is not an image Pillow reads ({reason})"
        ) from None


def read_utf8(path: Path) -> str:
    """A text file that must be UTF-8; otherwise a KnowledgeBaseError naming the line."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise KnowledgeBaseError(
            f"{path}: line {line} is not UTF-8 (byte {data[err.start]:#04x}); save the file as "
            "UTF-8"
        ) from None


class FolderSource:
    """Knowledge-base source ``"folder"`` (see the module docstring for the layout)."""

    name = "folder"

    def __init__(self, *, folder: str | os.PathLike | None = None):
        if folder is None:
            raise KnowledgeBaseError(
                "folder= is required for the folder source (a folder with captions.jsonl)"
            )
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise KnowledgeBaseError(f"folder= {self.folder}: not found or not a folder")
        self.entries = read_captions(self.folder)

    def entities(self) -> list[Entity]:
        return []

    def items(self) -> Iterator[KBItem]:
        for entry in self.entries:
            key = record_key(entry.relative)
            try:
                blob = entry.image.read_bytes()
            except OSError as err:
                raise KnowledgeBaseError(f"{entry.image}: unreadable ({err.strerror})") from None
            yield key, entry.text, "folder", "", _Named(blob, entry.image)

    def info(self) -> dict:
        return {"folder": str(self.folder.resolve())}


class _Named(bytes):
    """Image bytes that remember their file, so a decode error names the file."""

    path: Path

    def __new__(cls, blob: bytes, path: Path):
        self = super().__new__(cls, blob)
        self.path = path
        return self
