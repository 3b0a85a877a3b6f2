"""Emoji entities (docs/design.md §8): which emoji the knowledge base holds and what they are called.

An *entity* is one emoji: every fully-qualified emoji of the PyPI package ``emoji`` without a
skin-tone or hair variant (~1,900), named by its CLDR short name, with its code points (the key
the artists' files are matched by) and its group/subgroup from Unicode's emoji-test.txt.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from reimagen.kb.records import Entity, KnowledgeBaseError

EMOJI_TEST = Path("/usr/share/unicode/emoji/emoji-test.txt")
SKIN_TONES = frozenset(chr(c) for c in range(0x1F3FB, 0x1F400))  # Fitzpatrick modifiers
HAIR = frozenset(chr(c) for c in range(0x1F9B0, 0x1F9B4))  # red, curly, bald, white hair
REGIONAL_INDICATORS = range(0x1F1E6, 0x1F200)
TAG_CHARS = range(0xE0020, 0xE0080)


def codepoints_of(emoji_string: str) -> str:
    """ "🍎" -> "1f34e": lowercase hex joined by "-", variation selector fe0f dropped."""
    return "-".join(f"{ord(ch):x}" for ch in emoji_string if ord(ch) != 0xFE0F)


def clean_name(en: str) -> str:
    """``emoji``'s ``en`` field (":red_apple:") -> words ("red apple")."""
    return " ".join(en.strip(":").replace("_", " ").split())


def is_flag_sequence(emoji_string: str) -> bool:
    """A country flag (two regional indicators) or a subdivision flag (black flag + tags)."""
    points = [ord(ch) for ch in emoji_string]
    if len(points) == 2 and all(p in REGIONAL_INDICATORS for p in points):
        return True
    return points[0] == 0x1F3F4 and len(points) > 2 and all(p in TAG_CHARS for p in points[1:])


def read_emoji_groups(path: Path | None = EMOJI_TEST) -> dict[str, tuple[str, str]]:
    """codepoints -> (group, subgroup) from Unicode's emoji-test.txt; {} when it is absent."""
    if path is None or not Path(path).is_file():
        return {}
    table: dict[str, tuple[str, str]] = {}
    group = subgroup = "unknown"
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.startswith("# group:"):
            group = line.split(":", 1)[1].strip()
        elif line.startswith("# subgroup:"):
            subgroup = line.split(":", 1)[1].strip()
        elif line and not line.startswith("#") and ";" in line:
            points = line.split(";", 1)[0].split()
            key = normalize_codepoints("-".join(points))  # "0023 FE0F 20E3" -> "23-20e3"
            if key:
                table.setdefault(key, (group, subgroup))
    return table


def load_entities(emoji_test: Path | None = EMOJI_TEST) -> list[Entity]:
    """Every fully-qualified emoji without a skin-tone or hair variant (~1,900), in
    ``emoji.EMOJI_DATA`` order, named by CLDR short name. Country and subdivision flags get
    the CLDR prefix ("flag Japan") and ``is_flag``; group/subgroup come from emoji-test.txt
    when present (else "unknown")."""
    import emoji

    groups = read_emoji_groups(emoji_test)
    fully_qualified = emoji.STATUS["fully_qualified"]
    entities: list[Entity] = []
    seen: set[str] = set()
    for string, data in emoji.EMOJI_DATA.items():
        if data.get("status") != fully_qualified or set(string) & (SKIN_TONES | HAIR):
            continue
        codepoints = codepoints_of(string)
        group, subgroup = groups.get(codepoints, ("unknown", "unknown"))
        flag = is_flag_sequence(string) or group == "Flags"
        name = clean_name(data["en"])
        if is_flag_sequence(string) and not name.lower().startswith("flag"):
            name = f"flag {name}"  # CLDR "flag: Japan"
        if name in seen:
            name = f"{name} {codepoints}"  # keep names unique (entities are keyed by name)
        seen.add(name)
        entities.append(
            Entity(
                name=name,
                emoji=string,
                codepoints=codepoints,
                group=group,
                subgroup=subgroup,
                version=float(data["E"]),
                is_flag=flag,
            )
        )
    return entities


def select_entities(
    entities: Sequence[Entity], limit: int | None = None, names: Iterable[str] | None = None
) -> list[Entity]:
    """A subset for tests and quick builds: ``names`` picks by name (unknown -> error);
    ``limit`` keeps ``limit`` entities spread evenly over the list (so a small subset still
    holds several groups, flags included)."""
    chosen = list(entities)
    if names is not None:
        by_name = {e.name: e for e in chosen}
        names = [names] if isinstance(names, str) else list(names)
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise KnowledgeBaseError(
                f"names=: unknown entities {unknown[:5]} (CLDR names, e.g. 'red apple')"
            )
        chosen = [by_name[n] for n in names]
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise KnowledgeBaseError(f"limit must be a positive integer, got {limit!r}")
        stride = max(1, len(chosen) // limit)
        chosen = chosen[::stride][:limit]
    return chosen


def normalize_codepoints(text: str) -> str | None:
    """Normalize "0023-FE0F-20E3" to "23-20e3" (our key form); None if not hex code points."""
    try:
        points = [int(p, 16) for p in text.split("-")]
    except ValueError:
        return None
    return "-".join(f"{p:x}" for p in points if p != 0xFE0F)


__all__ = [
    "EMOJI_TEST",
    "clean_name",
    "codepoints_of",
    "is_flag_sequence",
    "load_entities",
    "normalize_codepoints",
    "read_emoji_groups",
    "select_entities",
]
