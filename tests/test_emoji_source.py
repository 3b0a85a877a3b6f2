"""Emoji source: entities from the ``emoji`` package, each artist's renderer, a small KB build.

Oracles: facts from Unicode (code points, CLDR names, groups), Twemoji files stored byte for
byte, a Fluent alias that is its parent mirrored (hFlip) compared pixel for pixel, and the
multi-process build producing exactly the single-process bytes.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reimagen.core import registry
from reimagen.kb import emoji_artists as ea
from reimagen.kb import emoji_entities as ee
from reimagen.kb import emoji_source as es
from reimagen.kb.builder import build_from_source
from reimagen.kb.knowledge_base import KnowledgeBase
from reimagen.kb.records import Entity, KnowledgeBaseError

HAVE_NOTO = ea.NOTO_FONT.is_file()
HAVE_FLUENT = ea.fluent_dir() is not None
HAVE_EMOJI_TEST = ee.EMOJI_TEST.is_file()


@pytest.fixture(scope="module")
def entities() -> list[Entity]:
    return ee.load_entities()


@pytest.fixture(scope="module")
def by_name(entities) -> dict[str, Entity]:
    return {e.name: e for e in entities}


# ------------------------------------------------------------------ entities
def test_entity_set(entities):
    assert 1850 <= len(entities) <= 1950  # docs/design.md §8: ~1,914 fully-qualified, no variants
    assert len({e.name for e in entities}) == len(entities)
    assert len({e.codepoints for e in entities}) == len(entities)
    forbidden = ee.SKIN_TONES | ee.HAIR
    assert not any(set(e.emoji) & forbidden for e in entities)
    for e in entities:
        assert e.codepoints == e.codepoints.lower() and "fe0f" not in e.codepoints.split("-")
        assert e.name == " ".join(e.name.split()) and ":" not in e.name and "_" not in e.name
        assert isinstance(e.version, float) and 0.6 <= e.version < 100


def test_known_entities(by_name):
    apple = by_name["red apple"]
    assert (apple.emoji, apple.codepoints, apple.version, apple.is_flag) == (
        "🍎",
        "1f34e",
        0.6,
        False,
    )
    japan = by_name["flag Japan"]
    assert japan.codepoints == "1f1ef-1f1f5" and japan.is_flag
    assert by_name["flag England"].is_flag  # a subdivision flag (tag sequence)
    keycap = by_name["keycap 6"]
    assert keycap.codepoints == "36-20e3"  # fe0f dropped from 36 fe0f 20e3
    assert by_name["woman farmer"].codepoints == "1f469-200d-1f33e"
    assert "man red hair" not in by_name and "thumbs up" in by_name


@pytest.mark.skipif(not HAVE_EMOJI_TEST, reason="Debian unicode-data emoji-test.txt not installed")
def test_groups_from_emoji_test(by_name, entities):
    apple = by_name["red apple"]
    assert (apple.group, apple.subgroup) == ("Food & Drink", "food-fruit")
    assert by_name["flag Japan"].subgroup == "country-flag"
    assert by_name["keycap 6"].subgroup == "keycap"  # "0023 FE0F 20E3" lines match too
    known = sum(e.group != "unknown" for e in entities)
    assert known / len(entities) > 0.9  # only emoji newer than the file are "unknown"


def test_groups_absent_file(tmp_path):
    entities = ee.load_entities(emoji_test=tmp_path / "missing.txt")
    assert {e.group for e in entities} == {"unknown"}
    assert sum(e.is_flag for e in entities) > 250  # flags still known from their code points


def test_name_helpers():
    assert ee.clean_name(":Japanese_“here”_button:") == "Japanese “here” button"
    assert ee.codepoints_of("❇️") == "2747"
    assert ee.is_flag_sequence("🇯🇵") and not ee.is_flag_sequence("🍎")


def test_select_entities(entities):
    subset = ee.select_entities(entities, limit=20)
    assert len(subset) == 20 and len({e.group for e in subset}) >= 4  # spread, not the first 20
    picked = ee.select_entities(entities, names=["red apple", "flag Japan"])
    assert [e.name for e in picked] == ["red apple", "flag Japan"]
    with pytest.raises(KnowledgeBaseError, match="unknown entities \\['green dragon fruit'\\]"):
        ee.select_entities(entities, names=["green dragon fruit"])
    with pytest.raises(KnowledgeBaseError, match="limit must be a positive integer"):
        ee.select_entities(entities, limit=0)


# ------------------------------------------------------------------ artists
def test_twemoji_coverage(entities):
    """Cheap (no rendering): the target style covers the entity set (goal >= 1,800)."""
    twemoji = ea.Twemoji()
    covered = sum(e.codepoints in twemoji.files for e in entities)
    assert covered >= 1800


def test_file_names_match_however_padded():
    """OpenMoji names files "0023-FE0F-20E3.svg", Twemoji "23-20e3.png": both are found."""
    assert ee.normalize_codepoints("0023-FE0F-20E3") == "23-20e3"
    assert ee.normalize_codepoints("not-hex") is None
    openmoji = ea.OpenMoji()
    assert openmoji.files["23-20e3"].name == "0023-FE0F-20E3.svg"
    assert openmoji.files["a9"].name.upper() == "00A9.SVG"


def _alpha_area(picture) -> int:
    return int((np.asarray(picture)[..., 3] > 127).sum())


ARTIST_NAMES = (
    ["twemoji", "openmoji"] + (["noto"] if HAVE_NOTO else []) + (["fluent"] if HAVE_FLUENT else [])
)


@pytest.mark.parametrize("name", ARTIST_NAMES)
def test_artist_renders_and_reports_missing(name, by_name):
    artist = ea.ARTIST_CLASSES[name](size=48)
    picture = artist.render(by_name["red apple"])
    assert picture.mode == "RGBA" and picture.size == (48, 48)
    assert _alpha_area(picture) > 0.3 * 48 * 48  # a drawing, not an empty canvas
    rgb = np.asarray(picture)[..., :3][np.asarray(picture)[..., 3] > 200]
    assert rgb[:, 0].mean() > rgb[:, 1].mean()  # a red apple is more red than green
    # An entity no artist draws: two apples are not a sequence any font or set has.
    ghost = Entity("two apples", "🍎🍎", "1f34e-1f34e")
    assert artist.render(ghost) is None and artist.encoded(ghost) is None
    assert artist.covers(by_name["red apple"]) and not artist.covers(ghost)
    png = artist.encoded(by_name["red apple"])
    assert Image.open(io.BytesIO(png)).size == (48, 48)


def test_twemoji_png_is_stored_byte_for_byte(by_name):
    artist = ea.Twemoji()  # 72: the package's native size
    path = artist.files["1f34e"]
    assert artist.encoded(by_name["red apple"]) == path.read_bytes()


def test_relative_size_is_kept(by_name):
    """A small square stays smaller than a large one after framing (see emoji_artists._fit)."""
    openmoji = ea.OpenMoji(size=48)
    small = _alpha_area(openmoji.render(by_name["black small square"]))
    large = _alpha_area(openmoji.render(by_name["black large square"]))
    assert small < 0.5 * large


@pytest.mark.skipif(not HAVE_FLUENT, reason="npm @iconify-json/fluent-emoji-flat not installed")
def test_fluent_alias_is_mirrored_parent():
    fluent = ea.Fluent(size=64)
    alias = fluent.aliases["backhand-index-pointing-right"]
    assert alias == {"parent": "backhand-index-pointing-left", "hFlip": True}
    left = np.asarray(fluent._rasterize(svg_string=fluent.svg("backhand-index-pointing-left")))
    right = np.asarray(fluent._rasterize(svg_string=fluent.svg("backhand-index-pointing-right")))
    mirrored = left[:, ::-1]
    assert np.abs(right.astype(int) - mirrored.astype(int)).mean() < 2.0  # up to 1 px shift
    assert np.abs(right.astype(int) - left.astype(int)).mean() > 10.0


def test_make_artists_errors(monkeypatch):
    with pytest.raises(KnowledgeBaseError, match="artists= must be distinct names from twemoji"):
        ea.make_artists(["twemoji", "picasso"])
    monkeypatch.setenv(ea.FLUENT_ENV, "/nonexistent")
    monkeypatch.setattr(ea.paths, "source_checkout", lambda: None)
    monkeypatch.setenv("REIMAGEN_HOME", "/nonexistent")
    with pytest.raises(KnowledgeBaseError, match="fluent artist not installed"):
        ea.make_artists(["fluent"])
    assert "fluent" not in [a.name for a in ea.make_artists(None)]  # optional: skipped
    source = es.EmojiSource(names=["red apple"], processes=1)
    assert "fluent" not in source.artists and "not installed" in source.skipped["fluent"]
    assert source.info()["artists_skipped"] == source.skipped


# ------------------------------------------------------------------ building
NAMES = [
    "red apple",
    "flag Japan",
    "keycap 6",
    "woman farmer",
    "black small square",
    "grinning face",
    "dragon",
    "lotus",
]


def test_build_small_emoji_kb(tmp_path):
    source = registry.get("source", "emoji")(names=NAMES, processes=1, size=32)
    kb = build_from_source(
        source, tmp_path / "kb", resolution=16, progress=False, info=source.info()
    )
    kb = KnowledgeBase.open(kb.folder)
    assert set(kb.entities) == set(NAMES)
    assert kb.source_counts()["twemoji"] == len(NAMES)
    assert kb.source_counts()["openmoji"] == len(NAMES)
    assert kb.images.shape[1:] == (16, 16, 4)
    first = kb.records[0]
    assert (first.key, first.text, first.source, first.entity) == (
        "twemoji/1f34e",
        "red apple, twemoji emoji",
        "twemoji",
        "red apple",
    )
    for record in kb.records:
        assert record.key == f"{record.source}/{kb.entities[record.entity].codepoints}"
        assert record.text == f"{record.entity}, {record.source} emoji"
    rows = kb.rows(sources=["twemoji"], entities=["flag Japan"])
    assert len(rows) == 1
    japan = kb.rgb(rows, size=8)[0]  # white flag with a red disc in the middle
    assert japan.shape == (8, 8, 3) and japan[4, 4, 0] > 0.5 and japan[4, 4, 1] < 0
    assert kb.meta["artists"] == source.artists
    summary = kb.summary()
    assert summary["entities_with_twemoji"] == len(NAMES)
    assert summary["fraction_with_other"] == 1.0


def test_two_processes_give_the_same_kb(tmp_path):
    """Rendering in worker processes is an implementation detail: same bytes, same order."""
    assert len(NAMES) >= 8  # enough entities for render_all to use the pool
    kwargs = {"names": NAMES, "size": 24, "artists": ["twemoji", "openmoji"]}
    one = build_from_source(
        es.EmojiSource(processes=1, **kwargs), tmp_path / "one", resolution=8, progress=False
    )
    two = build_from_source(
        es.EmojiSource(processes=2, **kwargs), tmp_path / "two", resolution=8, progress=False
    )
    assert one.fingerprint == two.fingerprint
    np.testing.assert_array_equal(np.asarray(one.images), np.asarray(two.images))


def test_undrawn_entities_are_left_out_and_listed(monkeypatch, by_name):
    ghost = Entity("two apples", "🍎🍎", "1f34e-1f34e")
    monkeypatch.setattr(es, "load_entities", lambda emoji_test=None: [by_name["red apple"], ghost])
    source = es.EmojiSource(processes=1, artists=["twemoji", "openmoji"])
    assert source.entities() == [by_name["red apple"]]
    assert source.undrawn == ["two apples"] and source.info()["entities_undrawn"] == ["two apples"]
    assert [key for key, *_ in source.items()] == ["twemoji/1f34e", "openmoji/1f34e"]


def test_emoji_source_argument_errors():
    with pytest.raises(KnowledgeBaseError, match="size must be an integer in \\[8, 512\\]"):
        es.EmojiSource(size=4)
    with pytest.raises(KnowledgeBaseError, match="processes must be a positive integer"):
        es.EmojiSource(processes=0)


@pytest.mark.slow
def test_full_emoji_kb(tmp_path):
    """The full build: every entity × every installed artist (about a minute on 2 cores)."""
    source = es.EmojiSource()
    kb = build_from_source(source, tmp_path / "kb", resolution=32, progress=False)
    summary = kb.summary()
    assert summary["entities_with_twemoji"] >= 1800
    assert summary["fraction_with_other"] >= 0.9
    assert Path(kb.folder / "kb.json").is_file()
