"""The knowledge base's on-disk names and record types (docs/design.md §6, §8): the file names of a KB
folder, the errors, :class:`Entity` and :class:`Record` (one line of ``manifest.jsonl``), the
items a build takes (:data:`KBItem`) and the source protocol that yields them. The layout itself
is described in :mod:`reimagen.kb.knowledge_base`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, Protocol

import attrs
import numpy as np

from reimagen.core import digests

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

# The emoji artists (docs/design.md §8); ``folder`` marks a KB built from a folder of images + captions.
ARTISTS = ("twemoji", "openmoji", "noto", "fluent")
SOURCE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
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


def check_size(value, name: str, low: int = MIN_RESOLUTION) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise KnowledgeBaseError(f"{name} must be an integer, got {value!r}")
    if not low <= int(value) <= MAX_RESOLUTION:
        raise KnowledgeBaseError(f"{name} must be in [{low}, {MAX_RESOLUTION}], got {value}")
    return int(value)
