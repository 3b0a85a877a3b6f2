"""EntityBench scenes: an entity drawn into a scene that the prompt controls (docs/design.md §8).

The paper's EntityDrawBench (§4.2, App. C) writes 5 prompt templates per entity category that put
an entity "in different scenes". Here the scene is synthetic so that text alignment can be
*measured*: a :class:`Scene` fixes the background colour, the position and the size of the
entity's Twemoji drawing; :func:`compose` draws exactly that, and :func:`read_background` /
:func:`read_position` / :func:`read_size` read the same attributes back from pixels (used to score
generated images). Ground truth travels with every example (:class:`SceneExample`).

Geometry, as fractions of the canvas side S (so 32×32 and 64×64 scenes are the same picture):
the drawing is cropped to its opaque bounding box and fitted (aspect kept) into a square box of
side 0.625·S (large) or 0.375·S (small), placed in the centre or in a corner with a margin of
S/32. The readers classify the foreground's bounding-box centre to the nearest of these anchors.

A scene is only fair when the drawing shows on its background: a red cherry on red shows only
its stems, and no reader (human or pixel) can tell its size. :func:`legible_colours` lists the
colours a drawing stays readable on; scenes are sampled from those, and on them the readers
recover the composer's ground truth exactly (tests/test_scenes.py).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import attrs
import numpy as np
from numpy.typing import ArrayLike

from reimagen.core.config import one_of
from reimagen.core.images import to_uint8

# Named background colours, every pair > 100 apart in RGB (a test checks the distance), so a
# colour can be read back from a generated image by nearest-colour voting.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 30, 30),
    "orange": (245, 135, 0),
    "yellow": (250, 230, 40),
    "green": (30, 160, 50),
    "cyan": (40, 210, 230),
    "blue": (30, 70, 220),
    "purple": (125, 35, 170),
    "pink": (250, 135, 205),
    "brown": (115, 65, 20),
    "white": (250, 250, 250),
    "gray": (140, 140, 140),
    "black": (15, 15, 15),
}
COLOUR_NAMES = tuple(COLOURS)  # index <-> name (pools store colour indices)
POSITIONS = ("center", "top left", "top right", "bottom left", "bottom right")
SIZES = ("small", "large")
SCENE_KINDS = ("centred", "corner")  # which template family a scene's prompt is drawn from

BOX_FRACTION = {"small": 0.375, "large": 0.625}  # box side / canvas side
MARGIN_FRACTION = 1.0 / 32.0  # corner margin / canvas side
READ_DISTANCE = 40.0  # RGB distance from the background that counts as foreground when reading
LEGIBLE_DISTANCE = 60.0  # ... and that counts as visible when judging legibility (a margin)
LEGIBLE_SPAN = 0.9  # visible part / drawing's bounding box, per axis, for a legible scene
DROPPED_ENTITY = "emoji"  # what a prompt says instead of the entity's name when it is withheld

# ---- prompt templates (paper App. C: 5 per category; here ≥ 5 per scene kind) ----------------
# Placeholders: {entity}, {size}, {colour}, {a_colour} ("an orange" / "a blue"), {corner}.
TEMPLATES: dict[str, tuple[str, ...]] = {
    "centred": (
        "a {size} {entity} in the centre on {a_colour} background",
        "{entity}, {size}, centred, on {colour}",
        "{a_colour} background with a {size} {entity} in the middle",
        "a {size} {entity} in the center of {a_colour} canvas",
        "a picture of a {size} {entity}, centred, {colour} background",
        "on a plain {colour} background, a {size} {entity} sits in the middle",
    ),
    "corner": (
        "a {size} {entity} in the {corner} corner on {a_colour} background",
        "{entity}, {size}, {corner} corner, on {colour}",
        "{a_colour} background with a {size} {entity} in the {corner} corner",
        "a {size} {entity} tucked into the {corner} corner of {a_colour} canvas",
        "a picture of a {size} {entity} at the {corner}, {colour} background",
        "on a plain {colour} background, a {size} {entity} sits in the {corner} corner",
    ),
}


def _non_empty(inst, attribute, value):
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{type(inst).__name__}.{attribute.name} must be a non-empty string")


@attrs.frozen(kw_only=True)
class Scene:
    """What the prompt asks for: one entity, its position and size, the background colour."""

    entity: str = attrs.field(validator=_non_empty)  # CLDR name, e.g. "grinning face"
    background: str = attrs.field(validator=one_of(*COLOURS))
    position: str = attrs.field(validator=one_of(*POSITIONS))
    size: str = attrs.field(validator=one_of(*SIZES))

    @property
    def kind(self) -> str:
        return "centred" if self.position == "center" else "corner"


@attrs.frozen(kw_only=True)
class SceneExample:
    """A prompt with its ground truth: the scene it describes and the template that wrote it."""

    prompt: str
    scene: Scene
    template_id: int
    entity_named: bool = True  # False when the prompt says DROPPED_ENTITY instead of the name

    @property
    def entity(self) -> str:
        return self.scene.entity


def all_scenes(entity: str) -> Iterator[Scene]:
    """Every colour × position × size scene of one entity (12 × 5 × 2 = 120)."""
    for background in COLOURS:
        for position in POSITIONS:
            for size in SIZES:
                yield Scene(entity=entity, background=background, position=position, size=size)


def random_scene(
    rng: np.random.Generator,
    entity: str,
    colours: Sequence[str] | None = None,
    p_large_centred: float = 0.0,
) -> Scene:
    """A random scene: background uniform over ``colours`` (default all; pass the drawing's
    :func:`legible_colours`), position and size uniform; with probability ``p_large_centred``
    large and centred instead. Draw order is fixed (colour, coin, position, size)."""
    colours = tuple(COLOURS) if colours is None else tuple(colours)
    if not colours:
        raise ValueError(f"colours must name at least one of {', '.join(COLOURS)}")
    background = colours[rng.integers(len(colours))]
    forced = rng.random() < p_large_centred
    position = POSITIONS[rng.integers(len(POSITIONS))]
    size = SIZES[rng.integers(len(SIZES))]
    if forced:
        position, size = "center", "large"
    return Scene(entity=entity, background=background, position=position, size=size)


# ---- prompts ---------------------------------------------------------------------------------


def display_name(entity: str) -> str:
    """How a CLDR name reads in a sentence: "keycap: 1" -> "keycap 1"."""
    return " ".join(entity.replace(": ", " ").split())


def _article(word: str) -> str:
    return ("an " if word[:1] in "aeiou" else "a ") + word


def prompt(scene: Scene, template_id: int, *, name_entity: bool = True) -> str:
    """The scene written with template ``template_id`` of its kind; ``name_entity=False`` says
    "emoji" instead of the entity's name (the training recipe that forces identity through the
    neighbours, docs/design.md §8)."""
    templates = TEMPLATES[scene.kind]
    if not 0 <= template_id < len(templates):
        raise ValueError(
            f"template_id must be in [0, {len(templates) - 1}] for {scene.kind} scenes, "
            f"got {template_id}"
        )
    entity = display_name(scene.entity) if name_entity else DROPPED_ENTITY
    return templates[template_id].format(
        entity=entity,
        size=scene.size,
        colour=scene.background,
        a_colour=_article(scene.background),
        corner=scene.position,
    )


def example(scene: Scene, template_id: int, *, name_entity: bool = True) -> SceneExample:
    return SceneExample(
        prompt=prompt(scene, template_id, name_entity=name_entity),
        scene=scene,
        template_id=template_id,
        entity_named=name_entity,
    )


# ---- composing ---------------------------------------------------------------------------------


def box(position: str, size: str, canvas: int) -> tuple[int, int, int]:
    """(top, left, side) in pixels of the square box the drawing is fitted into."""
    side = round(BOX_FRACTION[size] * canvas)
    margin = round(MARGIN_FRACTION * canvas)
    far = canvas - margin - side
    centre = (canvas - side) // 2
    top = {"center": centre, "top": margin, "bottom": far}[position.split(" ")[0]]
    left = {"center": centre, "left": margin, "right": far}[position.split(" ")[-1]]
    return top, left, side


def fit_drawing(drawing: np.ndarray, side: int) -> np.ndarray:
    """Crop an RGBA drawing [S, S, 4] uint8 to its opaque bounding box and resize it (aspect
    kept, premultiplied-alpha Lanczos via Pillow) so its longer side is ``side`` -> [h, w, 4]."""
    from PIL import Image

    drawing = _check_rgba(drawing)
    rows = np.flatnonzero(drawing[..., 3].any(axis=1))
    cols = np.flatnonzero(drawing[..., 3].any(axis=0))
    if rows.size == 0:
        raise ValueError("drawing is fully transparent: nothing to place in the scene")
    crop = drawing[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    h, w = crop.shape[:2]
    scale = side / max(h, w)
    out_h, out_w = max(1, round(h * scale)), max(1, round(w * scale))
    resized = Image.fromarray(crop, "RGBA").resize((out_w, out_h), Image.Resampling.LANCZOS)
    return np.asarray(resized, dtype=np.uint8)


def compose_fitted(fitted: np.ndarray, scene: Scene, size: int = 32) -> np.ndarray:
    """Alpha-composite an already fitted drawing [h, w, 4] (see :func:`fit_drawing`) onto the
    scene's background, centred in the scene's box -> uint8 [size, size, 3]."""
    top, left, side = box(scene.position, scene.size, size)
    h, w = fitted.shape[:2]
    if max(h, w) > side:
        raise ValueError(f"fitted drawing {h}x{w} does not fit the {scene.size} box of side {side}")
    top += (side - h) // 2
    left += (side - w) // 2
    canvas = np.empty((size, size, 3), dtype=np.float32)
    canvas[:] = COLOURS[scene.background]
    alpha = fitted[..., 3:4].astype(np.float32) / 255.0  # [h, w, 1]
    region = canvas[top : top + h, left : left + w]
    region[:] = region * (1.0 - alpha) + fitted[..., :3].astype(np.float32) * alpha
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


def compose(drawing: np.ndarray, scene: Scene, size: int = 32) -> np.ndarray:
    """Place an RGBA drawing uint8 [S, S, 4] in ``scene`` -> uint8 [size, size, 3]."""
    if size < 16:
        raise ValueError(f"size must be >= 16 pixels for the scene geometry, got {size}")
    side = box(scene.position, scene.size, size)[2]
    return compose_fitted(fit_drawing(drawing, side), scene, size)


def _check_rgba(drawing: np.ndarray) -> np.ndarray:
    drawing = np.asarray(drawing)
    if drawing.dtype != np.uint8 or drawing.ndim != 3 or drawing.shape[2] != 4:
        raise ValueError(
            f"drawing must be uint8 [S, S, 4] RGBA, got {drawing.dtype} {list(drawing.shape)}"
        )
    return drawing


# ---- reading scenes back from pixels (text-alignment scoring) ----------------------------------

_PALETTE = np.array(list(COLOURS.values()), dtype=np.float32)  # [C, 3]


def _as_uint8_rgb(image: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3], or float in [-1, 1] [H, W, 3] (a model's output) -> uint8 [H, W, 3]."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be [H, W, 3], got shape {list(image.shape)}")
    if image.dtype == np.uint8:
        return image
    if np.issubdtype(image.dtype, np.floating):
        return to_uint8(image)
    raise ValueError(f"image must be uint8 or float in [-1, 1], got {image.dtype}")


def _nearest_colour(pixels: np.ndarray) -> np.ndarray:
    """[..., 3] -> index [...] of the nearest named colour."""
    d2 = ((pixels[..., None, :].astype(np.float32) - _PALETTE) ** 2).sum(-1)  # [..., C]
    return d2.argmin(-1)


def read_background(image: np.ndarray) -> str:
    """The named colour most pixels are nearest to. The largest drawing covers 0.625² ≈ 39% of
    the canvas, so the background always holds the majority."""
    votes = np.bincount(_nearest_colour(_as_uint8_rgb(image)).ravel(), minlength=len(COLOUR_NAMES))
    return COLOUR_NAMES[int(votes.argmax())]


def _foreground_box(rgb: np.ndarray, background: str, threshold: float):
    """(centre_y, centre_x, longer side) in canvas fractions of the foreground's bounding box,
    or None when there is no foreground. rgb: uint8 [S, S, 3].

    Foreground = pixels farther than ``threshold`` from the background colour that have at
    least two foreground pixels among their 8 neighbours (drops speckle in generated images,
    keeps 1-pixel lines)."""
    colour = np.array(COLOURS[background], dtype=np.float32)
    distance = np.sqrt(((rgb.astype(np.float32) - colour) ** 2).sum(-1))  # [S, S]
    mask = distance > threshold
    padded = np.pad(mask, 1).astype(np.uint8)
    side = mask.shape[0]
    around = sum(
        padded[1 + dy : 1 + dy + side, 1 + dx : 1 + dx + side]
        for dy in (-1, 0, 1)
        for dx in (-1, 0, 1)
    )  # [S, S] foreground pixels in each 3×3 neighbourhood, itself included
    mask &= around >= 3
    rows = np.flatnonzero(mask.any(1))
    cols = np.flatnonzero(mask.any(0))
    if rows.size == 0 or cols.size == 0:
        return None
    centre_y = (rows[0] + rows[-1] + 1) / 2 / side
    centre_x = (cols[0] + cols[-1] + 1) / 2 / side
    extent = max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1) / side
    return centre_y, centre_x, extent


def _anchors() -> tuple[list[str], np.ndarray]:
    """Box centres (canvas fractions) of every position × size, measured on a 64 canvas (32
    gives the same fractions)."""
    positions, centres = [], []
    for position in POSITIONS:
        for size in SIZES:
            top, left, side = box(position, size, 64)
            positions.append(position)
            centres.append(((top + side / 2) / 64, (left + side / 2) / 64))
    return positions, np.array(centres)  # [10], [10, 2]


_ANCHOR_POSITIONS, _ANCHOR_CENTRES = _anchors()
_SIZE_SPLIT = (BOX_FRACTION["small"] + BOX_FRACTION["large"]) / 2


def read_scene(image: np.ndarray, entity: str, threshold: float = READ_DISTANCE) -> Scene:
    """Background, position and size read from pixels (the entity is not read: pass it).

    Background: nearest-colour majority vote. Foreground: the pixels farther than ``threshold``
    from that colour; position = the anchor (box centre of a position × size) nearest its
    bounding-box centre; size = large when its longer side exceeds the mean of the two box
    sides. An image with no foreground reads as small and centred."""
    rgb = _as_uint8_rgb(image)
    background = read_background(rgb)
    found = _foreground_box(rgb, background, threshold)
    position, size = "center", "small"
    if found is not None:
        d2 = ((_ANCHOR_CENTRES - np.array(found[:2])) ** 2).sum(-1)  # [10]
        position = _ANCHOR_POSITIONS[int(d2.argmin())]
        size = "large" if found[2] > _SIZE_SPLIT else "small"
    return Scene(entity=entity, background=background, position=position, size=size)


def read_position(image: np.ndarray, threshold: float = READ_DISTANCE) -> str:
    return read_scene(image, "?", threshold).position


def read_size(image: np.ndarray, threshold: float = READ_DISTANCE) -> str:
    return read_scene(image, "?", threshold).size


# ---- legibility: scenes whose drawing is camouflaged by the background ------------------------


def legible(drawing: np.ndarray, background: str, threshold: float = LEGIBLE_DISTANCE) -> bool:
    """Whether ``drawing`` [S, S, 4] stays readable on ``background``: the part of it that
    differs from the colour by more than ``threshold`` spans ≥ 90% of the drawing's (half-opaque)
    bounding box in height and in width. A red cherry on red fails (only its stems show), and so
    does a flag whose outer band is the background colour. Scenes are only drawn on legible
    colours (:func:`legible_colours`), so the readers' ground truth is the pixels' truth."""
    if background not in COLOURS:
        raise ValueError(f"background must be one of {', '.join(COLOURS)}; got {background!r}")
    return background in legible_colours(drawing, threshold)


def legible_colours(drawing: np.ndarray, threshold: float = LEGIBLE_DISTANCE) -> tuple[str, ...]:
    """The background colours a drawing is legible on (see :func:`legible`), COLOURS order."""
    drawing = _check_rgba(drawing)
    solid = drawing[..., 3] >= 128  # [S, S]
    if not solid.any():
        return ()
    alpha = drawing[..., 3:4].astype(np.float32) / 255.0  # [S, S, 1]
    ink = drawing[..., :3].astype(np.float32) * alpha  # [S, S, 3]
    palette = _PALETTE[:, None, None, :]  # [C, 1, 1, 3]
    over = ink + palette * (1.0 - alpha)  # [C, S, S, 3] composited on each colour
    visible = np.sqrt(((over - palette) ** 2).sum(-1)) > threshold  # [C, S, S]
    need = [LEGIBLE_SPAN * _span(solid.any(axis)) for axis in (0, 1)]
    return tuple(
        name
        for name, seen in zip(COLOUR_NAMES, visible)
        if all(_span(seen.any(axis)) >= need[i] for i, axis in enumerate((0, 1)))
    )


def _span(occupied: ArrayLike) -> int:
    index = np.flatnonzero(occupied)
    return int(index[-1] - index[0] + 1) if index.size else 0


def templates_for(kind: str) -> Sequence[str]:
    if kind not in TEMPLATES:
        raise ValueError(f"kind must be one of {', '.join(SCENE_KINDS)}; got {kind!r}")
    return TEMPLATES[kind]
