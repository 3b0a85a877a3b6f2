"""Scenes: composer geometry, prompts from templates, and the pixel readers that score text
alignment (reimagen.kb.scenes, docs/design.md §8).

The oracle for the readers is the composer's ground truth: for real Twemoji drawings, every
colour × position × size a drawing is legible on must read back exactly from pixels, and the
illegible ones must be few (so the check cannot pass by declaring everything illegible)."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reimagen.core.config import ConfigError
from reimagen.kb import scenes as sc
from reimagen.kb.emoji_artists import Twemoji
from reimagen.kb.emoji_entities import load_entities
from reimagen.kb.image_pack import pack_rgba

# Round, wide (flags), thin and diagonal drawings, and ones that share colours with backgrounds.
DRAWN = [
    "red apple",
    "grinning face",
    "flag Japan",
    "flag United Arab Emirates",
    "dragon",
    "syringe",
    "cherries",
    "red exclamation mark",
    "wavy dash",
    "hundred points",
    "white heart",
    "black heart",
]


@pytest.fixture(scope="module")
def drawings() -> dict[str, np.ndarray]:
    """Twemoji drawings packed as the knowledge base packs them: uint8 [64, 64, 4]."""
    entities = {e.name: e for e in load_entities()}
    twemoji = Twemoji()
    return {name: pack_rgba(twemoji.render(entities[name]), 64) for name in DRAWN}


def square(side: int = 64, rgb=(10, 200, 90), alpha: int = 255) -> np.ndarray:
    drawing = np.zeros((side, side, 4), np.uint8)
    drawing[..., :3] = rgb
    drawing[..., 3] = alpha
    return drawing


# ---- palette and templates ----------------------------------------------------------------


def test_colours_are_many_and_far_apart():
    assert len(sc.COLOURS) >= 8
    rgb = np.array(list(sc.COLOURS.values()), float)
    distance = np.sqrt(((rgb[:, None] - rgb[None]) ** 2).sum(-1))
    np.fill_diagonal(distance, np.inf)
    assert distance.min() > 100, distance.min()


def test_at_least_five_distinct_templates_per_scene_kind():
    assert set(sc.TEMPLATES) == set(sc.SCENE_KINDS)
    for kind in sc.SCENE_KINDS:
        assert len(set(sc.templates_for(kind))) >= 5


def _says(text: str, phrase: str) -> bool:
    return re.search(rf"\b{re.escape(phrase)}\b", text) is not None


@pytest.mark.parametrize("entity", ["red apple", "keycap: 1", "flag Japan"])
def test_every_prompt_states_every_attribute(entity):
    for scene in sc.all_scenes(entity):
        for template_id in range(len(sc.templates_for(scene.kind))):
            text = sc.prompt(scene, template_id)
            assert _says(text, sc.display_name(entity)), text
            assert _says(text, scene.background), text
            assert _says(text, scene.size) and not _says(text, _other_size(scene.size)), text
            corners = [p for p in sc.POSITIONS if p != "center"]
            if scene.position == "center":
                assert re.search(r"\b(centre|center|centred|middle)\b", text), text
                assert not any(_says(text, w) for w in ("top", "bottom", "left", "right")), text
            else:
                assert [c for c in corners if _says(text, c)] == [scene.position], text
            assert " a orange" not in text and not text.startswith("a orange"), text


def _other_size(size: str) -> str:
    return "large" if size == "small" else "small"


def test_dropped_entity_name_is_not_in_the_prompt():
    scene = sc.Scene(entity="red apple", background="blue", position="top left", size="small")
    for template_id in range(len(sc.templates_for("corner"))):
        example = sc.example(scene, template_id, name_entity=False)
        assert not example.entity_named and example.entity == "red apple"
        assert "apple" not in example.prompt and _says(example.prompt, sc.DROPPED_ENTITY)
        assert sc.example(scene, template_id).prompt != example.prompt
    assert sc.prompt(scene, 0) == "a small red apple in the top left corner on a blue background"
    assert (
        sc.prompt(
            scene.__class__(
                entity="red apple", background="orange", position="center", size="large"
            ),
            1,
        )
        == "red apple, large, centred, on orange"
    )


def test_scene_and_prompt_errors_name_the_argument():
    with pytest.raises(ConfigError, match=r"background must be one of .*'red'.*got 'mauve'"):
        sc.Scene(entity="x", background="mauve", position="center", size="small")
    with pytest.raises(ConfigError, match=r"position must be one of"):
        sc.Scene(entity="x", background="red", position="middle", size="small")
    with pytest.raises(ConfigError, match=r"size must be one of"):
        sc.Scene(entity="x", background="red", position="center", size="huge")
    with pytest.raises(ValueError, match="entity must be a non-empty string"):
        sc.Scene(entity=" ", background="red", position="center", size="small")
    scene = sc.Scene(entity="x", background="red", position="center", size="small")
    with pytest.raises(ValueError, match=r"template_id must be in \[0, 5\]"):
        sc.prompt(scene, 6)
    with pytest.raises(ValueError, match="kind must be one of centred, corner"):
        sc.templates_for("diagonal")


# ---- composing: exact geometry on synthetic drawings -------------------------------------------


@pytest.mark.parametrize("canvas", [32, 64])
def test_opaque_square_fills_exactly_its_box(canvas):
    for position, size in itertools.product(sc.POSITIONS, sc.SIZES):
        scene = sc.Scene(entity="x", background="purple", position=position, size=size)
        image = sc.compose(square(), scene, canvas)
        assert image.shape == (canvas, canvas, 3) and image.dtype == np.uint8
        top, left, side = sc.box(position, size, canvas)
        inside = np.zeros((canvas, canvas), bool)
        inside[top : top + side, left : left + side] = True
        assert (image[inside] == (10, 200, 90)).all()
        assert (image[~inside] == sc.COLOURS["purple"]).all()
        assert side == round(sc.BOX_FRACTION[size] * canvas)


def test_boxes_stay_on_the_canvas_and_corners_do_not_overlap_the_centre_anchor():
    for canvas in (16, 32, 64, 128):
        for position, size in itertools.product(sc.POSITIONS, sc.SIZES):
            top, left, side = sc.box(position, size, canvas)
            assert 0 <= top and top + side <= canvas and 0 <= left and left + side <= canvas


def test_alpha_is_composited_over_the_background():
    drawing = square(rgb=(255, 255, 255), alpha=128)
    scene = sc.Scene(entity="x", background="black", position="center", size="large")
    image = sc.compose(drawing, scene, 32)
    top, left, side = sc.box("center", "large", 32)
    expected = np.rint(15 + (255 - 15) * 128 / 255)
    np.testing.assert_array_equal(image[top + side // 2, left + side // 2], [expected] * 3)


def test_aspect_is_kept_and_transparent_margin_is_cropped():
    drawing = np.zeros((64, 64, 4), np.uint8)
    drawing[20:30, 4:60] = (200, 0, 0, 255)  # a wide bar with transparent margins
    fitted = sc.fit_drawing(drawing, 20)
    assert fitted.shape == (round(10 * 20 / 56), 20, 4)
    with pytest.raises(ValueError, match="fully transparent"):
        sc.fit_drawing(np.zeros((8, 8, 4), np.uint8), 4)
    with pytest.raises(ValueError, match=r"drawing must be uint8 \[S, S, 4\] RGBA"):
        sc.compose(
            np.zeros((8, 8, 3), np.uint8),
            sc.Scene(entity="x", background="red", position="center", size="small"),
        )


@settings(max_examples=60, deadline=None)
@given(
    height=st.integers(6, 64),
    width=st.integers(6, 64),
    background=st.sampled_from(list(sc.COLOURS)),
    position=st.sampled_from(sc.POSITIONS),
    size=st.sampled_from(sc.SIZES),
    canvas=st.sampled_from([32, 64]),
    ink=st.tuples(st.integers(0, 255), st.integers(0, 255), st.integers(0, 255)),
)
def test_readers_recover_any_legible_rectangle(
    height, width, background, position, size, canvas, ink
):
    drawing = np.zeros((64, 64, 4), np.uint8)
    drawing[:height, :width] = (*ink, 255)
    if not sc.legible(drawing, background):
        assert np.linalg.norm(np.subtract(ink, sc.COLOURS[background])) <= sc.LEGIBLE_DISTANCE
        return
    scene = sc.Scene(entity="x", background=background, position=position, size=size)
    assert sc.read_scene(sc.compose(drawing, scene, canvas), "x") == scene


# ---- the readers on real drawings: ground truth == pixels -------------------------------------


def _check_all_scenes(drawing: np.ndarray, canvas: int, noise: float = 0.0) -> tuple[int, int]:
    """(legible scenes read back correctly, legible scenes) for one drawing; asserts each."""
    colours = set(sc.legible_colours(drawing))
    rng = np.random.default_rng(0)
    checked = 0
    for scene in sc.all_scenes("x"):
        if scene.background not in colours:
            continue
        image = sc.compose(drawing, scene, canvas)
        if noise:
            image = image / 127.5 - 1.0 + noise * rng.standard_normal(image.shape)
            image = np.clip(image, -1.0, 1.0).astype(np.float32)
        assert sc.read_scene(image, "x") == scene, (scene, canvas, noise)
        checked += 1
    return checked, len(colours) * len(sc.POSITIONS) * len(sc.SIZES)


def test_composer_ground_truth_matches_pixels_for_every_colour_position_size(drawings):
    legible_total = 0
    for drawing in drawings.values():
        checked, legible = _check_all_scenes(drawing, 32)
        assert checked == legible
        legible_total += legible
    every = len(drawings) * len(sc.COLOURS) * len(sc.POSITIONS) * len(sc.SIZES)
    assert legible_total >= 0.85 * every, (legible_total, every)


def test_readers_at_64_and_on_noisy_float_images(drawings):
    for name in ("red apple", "flag Japan", "syringe"):
        _check_all_scenes(drawings[name], 64)
        _check_all_scenes(drawings[name], 32, noise=0.05)


def test_camouflaged_drawings_are_illegible_and_would_misread(drawings):
    """The legibility filter is what makes ground truth == pixels: a drawing the colour of the
    background reads back wrong, and legible() says so first."""
    red = square(rgb=sc.COLOURS["red"])
    assert not sc.legible(red, "red") and sc.legible(red, "blue")
    scene = sc.Scene(entity="x", background="red", position="top left", size="large")
    assert sc.read_scene(sc.compose(red, scene, 32), "x") != scene
    illegible = {
        "cherries": {"red"},  # only the stems would show
        "flag Japan": {"white"},  # only the disc would show: it would read as small
        "flag United Arab Emirates": {"red"},  # the hoist band vanishes: narrower than drawn
        "grinning face": {"yellow"},
        "dragon": set(),
    }
    for name, colours in illegible.items():
        assert set(sc.COLOURS) - set(sc.legible_colours(drawings[name])) == colours, name
    assert sc.legible_colours(np.zeros((8, 8, 4), np.uint8)) == ()
    with pytest.raises(ValueError, match="background must be one of"):
        sc.legible(red, "mauve")


def test_read_background_is_a_majority_vote():
    image = np.empty((32, 32, 3), np.uint8)
    image[:] = sc.COLOURS["green"]
    image[:12, :12] = sc.COLOURS["blue"]  # 14% of the pixels
    assert sc.read_background(image) == "green"
    assert sc.read_background(image.astype(np.float32) / 127.5 - 1.0) == "green"
    with pytest.raises(ValueError, match=r"image must be \[H, W, 3\]"):
        sc.read_background(np.zeros((4, 4), np.uint8))


def test_random_scene_respects_colours_and_forcing():
    rng = np.random.default_rng(0)
    scenes = [sc.random_scene(rng, "x", ("red", "blue"), p_large_centred=0.5) for _ in range(400)]
    assert {s.background for s in scenes} == {"red", "blue"}
    forced = sum(s.position == "center" and s.size == "large" for s in scenes)
    assert 0.5 < forced / 400 < 0.7  # 0.5 forced + 0.5 · 1/10 by chance = 0.55
    assert {s.position for s in scenes} == set(sc.POSITIONS)
    with pytest.raises(ValueError, match="colours must name at least one"):
        sc.random_scene(rng, "x", ())
