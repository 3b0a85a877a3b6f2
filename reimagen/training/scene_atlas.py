"""The emoji scene composer split for a device: resident tables + small per-step index arrays.

The host composer (:class:`~reimagen.training.emoji_batches.EmojiBatchSource`) fits, pastes and
augments drawings with numpy for every batch, on the CPU. A device-side composer
(reimagen.backends.torch.scene_composer) instead keeps everything a batch is made of resident
where the network runs, once (:class:`SceneAtlas`), and makes each batch from a few index and
parameter arrays (:class:`StepArrays`, made by :class:`ScenePlanner` on the host, in prefetch
workers if asked). numpy only; no framework here.

Bit-identical to the host composer, by construction:

* the random choices are the host's own: ``EmojiBatchSource.plan(step)`` draws them from the
  same Generator in the same order; what is derived from them with float64 or Python (box
  corners, the augmentation warp's taps, the text cut length) is computed here by the host's
  own functions (``scenes.box``, ``training_data.warp_taps``);
* what the host computes once per drawing is computed here once, by the same code: the Lanczos
  fit (PIL), the area resize and premultiplication of augmented drawings, the plain neighbour
  renditions, the caption and prompt encodings; and the host's per-pixel divisions become
  tables: a sprite frame holds 1 − α and rgb·α exactly as ``scenes.compose_fitted`` computes
  them, and the plain renditions are stored already converted to [-1, 1] as the host converts
  them (v / 127.5 − 1);
* what remains for the device is gathers and single IEEE float32 operations in the host's
  order (a product, a sum, a clip, round-half-to-even, a true division by 127.5).
"""

from __future__ import annotations

import attrs
import numpy as np

from reimagen.kb import scenes as sc
from reimagen.training.data import NEIGHBOR_BACKGROUND
from reimagen.training.emoji_batches import EmojiBatchSource
from reimagen.training.neighbor_augment import premultiplied_drawings, warp_taps


@attrs.frozen
class TextTable:
    """Encodings of a fixed set of texts, one row each: tokens [U, L, D] (float16 or float32),
    mask [U, L] bool, pooled [U, D] float32, and each row's real length [U] (1 + its last
    unmasked position, 0 when none) for the prefetch's compaction."""

    tokens: np.ndarray
    mask: np.ndarray
    pooled: np.ndarray
    lengths: np.ndarray


@attrs.frozen
class SceneAtlas:
    """What every batch of a source is made of, resident on the composer's device.

    Sprite frames: entity e's Twemoji drawing fitted to size s (scenes.SIZES) is row e·2 + s of
    ``keep``/``ink``, placed in a frame of side F (the large box) at its centring offset inside
    its box, exactly where ``compose_fitted`` pastes it; row and column F of each frame are the
    neutral border (keep 1, ink 0: the background unchanged), where every canvas pixel outside
    the frame reads."""

    canvas: int  # S
    frame: int  # F
    keep: np.ndarray  # [E·2, F+1, F+1] float32: 1 − α (1 outside the drawing)
    ink: np.ndarray  # [E·2, F+1, F+1, 3] float32: rgb·α (0 outside the drawing)
    colours: np.ndarray  # [C, 3] float32 scenes.COLOURS
    plain: np.ndarray  # [R, S, S, 3] float32 in [-1, 1]: view row r on the neutral background
    drawings: np.ndarray  # [E, S+2, S+2, 4] float32 premultiplied_drawings of the targets
    neutral: np.ndarray  # [3] float32 NEIGHBOR_BACKGROUND / 255
    text: TextTable  # the pool prompts' encodings
    captions: TextTable  # the training view's caption encodings, row r = view row r


@attrs.frozen
class StepArrays:
    """One step's batch as indices into a :class:`SceneAtlas` and per-slot parameters (host
    numpy, small but for the noise). n: the augmented neighbour slots of the step."""

    sprite: np.ndarray  # [B] int64 row of keep/ink (entity·2 + size)
    corner: np.ndarray  # [B, 2] int64 (top, left) of the sprite frame on the canvas
    colour: np.ndarray  # [B] int64 background colour
    text_row: np.ndarray  # [B] int64 row of atlas.text
    view_row: np.ndarray  # [B, K] int64 row of atlas.plain / atlas.captions
    aug_slot: np.ndarray  # [n] int64 flat slot (b·K + k) that shows an augmented drawing
    aug_drawing: np.ndarray  # [n] int64 row of atlas.drawings (the example's entity)
    taps: tuple[np.ndarray, ...]  # (lo_y, frac_y, lo_x, frac_x), each [n, S] (int64, float32)
    gain: np.ndarray  # [n, 3] float32
    brightness: np.ndarray  # [n] float32
    length: int  # text positions kept (L unless compact)
    compact: bool  # tokens cut to ``length`` and rounded to float16 (prefetch.compact_batch)
    t: np.ndarray  # [B] float32
    noise: np.ndarray  # [B, S, S, 3] float32
    use_text: np.ndarray  # [B] bool
    use_neighbors: np.ndarray  # [B] bool


def build_atlas(source: EmojiBatchSource) -> SceneAtlas:
    """The resident tables of ``source`` (fills its neighbour and caption caches)."""
    check_source(source)
    s = source.image_size
    keep, ink, frame = _sprite_frames(source)
    view = source.view
    captions = source._captions(view[None, :])  # [1, R, L, D]: the host's own assembly
    images = np.asarray(source.kb.images[source.target_row])  # [E, S', S', 4]
    return SceneAtlas(
        canvas=s,
        frame=frame,
        keep=keep,
        ink=ink,
        colours=np.array(list(sc.COLOURS.values()), np.float32),
        plain=source._plain(view, s).astype(np.float32) / 127.5 - 1.0,  # as _neighbor_images
        drawings=premultiplied_drawings(images, s),
        neutral=np.asarray(NEIGHBOR_BACKGROUND, np.float32) / 255.0,
        text=pool_text_table(source),
        captions=_table(captions.tokens[0], captions.mask[0], captions.pooled[0]),
    )


def check_source(source) -> None:
    """The device composer makes base-stage scene batches (EmojiBatchSource) only."""
    if type(source) is not EmojiBatchSource:
        raise ValueError(
            f"the device-side composer composes EmojiBatchSource batches (base, baseline), "
            f"not {type(source).__name__}"
        )


def _sprite_frames(source: EmojiBatchSource) -> tuple[np.ndarray, np.ndarray, int]:
    """keep [E·2, F+1, F+1], ink [E·2, F+1, F+1, 3] and F (see :class:`SceneAtlas`)."""
    s = source.image_size
    fitted = source._fitted[s]
    sides = [sc.box("center", size, s)[2] for size in sc.SIZES]
    frame = max(sides)
    n = len(source.entities) * len(sc.SIZES)
    keep = np.ones((n, frame + 1, frame + 1), np.float32)
    ink = np.zeros((n, frame + 1, frame + 1, 3), np.float32)
    for e in range(len(source.entities)):
        for s_index, (size, side) in enumerate(zip(sc.SIZES, sides)):
            drawing = fitted[size][e]  # [h, w, 4] uint8
            h, w = drawing.shape[:2]
            top, left = (side - h) // 2, (side - w) // 2  # compose_fitted's centring
            alpha = drawing[..., 3:4].astype(np.float32) / 255.0  # [h, w, 1]
            row = e * len(sc.SIZES) + s_index
            keep[row, top : top + h, left : left + w] = (1.0 - alpha)[..., 0]
            ink[row, top : top + h, left : left + w] = drawing[..., :3].astype(np.float32) * alpha
    return keep, ink, frame


def pool_text_table(source: EmojiBatchSource) -> TextTable:
    """The pool prompts' encodings, one row per distinct prompt (first-seen order). An
    EncodingTable encoder (what ``reimagen train`` gives the source) is used as it is; any
    other encoder encodes the distinct prompts once, which equals the host's per-batch
    encoding only for an encoder whose output does not depend on its batch (hash; not a
    batched network)."""
    from reimagen.encoders.table import EncodingTable

    encoder = source.encoder
    if isinstance(encoder, EncodingTable):
        return _table(encoder.tokens, encoder.mask, encoder.pooled)
    unique = list(dict.fromkeys(source.pool.prompts))
    parts = [encoder.encode(unique[i : i + 256]) for i in range(0, len(unique), 256)]
    tokens, mask, pooled = (
        np.concatenate([np.asarray(getattr(p, name)) for p in parts])
        for name in ("tokens", "mask", "pooled")
    )
    return _table(tokens, mask, pooled)


def pool_text_rows(source: EmojiBatchSource) -> np.ndarray:
    """[N] int64: the row of :func:`pool_text_table` holding each pool example's prompt."""
    from reimagen.encoders.table import EncodingTable

    encoder, prompts = source.encoder, source.pool.prompts
    if isinstance(encoder, EncodingTable):
        index = encoder.index
    else:
        index = {p: i for i, p in enumerate(dict.fromkeys(prompts))}
    return np.array([index[p] for p in prompts], np.int64)


def _table(tokens, mask, pooled) -> TextTable:
    mask = np.asarray(mask, bool)
    last = mask.shape[-1] - np.argmax(mask[:, ::-1], axis=1)  # 1 + last unmasked position
    return TextTable(tokens, mask, pooled, np.where(mask.any(axis=1), last, 0).astype(np.int64))


class ScenePlanner:
    """``batch(step)`` -> the :class:`StepArrays` of ``source``'s batch of ``step`` (a
    BatchSource in shape, so reimagen.training.step_workers can make them ahead in processes).
    ``compact``: cut and round the text as prefetch.compact_batch does (what the host path
    feeds the network when it prefetches with workers)."""

    def __init__(self, source: EmojiBatchSource, atlas: SceneAtlas, *, compact: bool = False):
        check_source(source)
        self.source, self.compact = source, bool(compact)
        self.config = source.config
        self.text_row = pool_text_rows(source)  # [N]
        self.text_lengths, self.caption_lengths = atlas.text.lengths, atlas.captions.lengths
        self.max_length = int(atlas.text.mask.shape[1])
        self.view_row = np.full(len(source.kb), -1, np.int64)  # KB row -> training-view row
        self.view_row[source.view] = np.arange(len(source.view))
        # (top, left) of the box of each position × size, [P, Z, 2]
        self.corners = np.array(
            [[sc.box(p, z, source.image_size)[:2] for z in sc.SIZES] for p in sc.POSITIONS],
            np.int64,
        )
        self.drawing_side = atlas.drawings.shape[1] - 2

    def batch(self, step: int) -> StepArrays:
        source, pool = self.source, self.source.pool
        plan = source.plan(step)
        index, k = plan.index, plan.rows.shape[1]
        entity = pool.entity[index].astype(np.int64)  # [B]
        size = pool.size[index].astype(np.int64)  # [B]
        slot = np.flatnonzero(plan.augmented.reshape(-1))  # [n]
        params = {name: value[slot] for name, value in plan.augmentation.items()}
        y, x = warp_taps(params, self.drawing_side, source.image_size)
        text_row = self.text_row[index]
        view_row = self.view_row[plan.rows]  # [B, K]
        return StepArrays(
            sprite=entity * len(sc.SIZES) + size,
            corner=self.corners[pool.position[index].astype(np.int64), size],
            colour=pool.background[index].astype(np.int64),
            text_row=text_row,
            view_row=view_row,
            aug_slot=slot.astype(np.int64),
            aug_drawing=np.repeat(entity, k)[slot],
            taps=(*y, *x),
            gain=params["gain"].astype(np.float32),
            brightness=params["brightness"].astype(np.float32),
            length=self._length(text_row, view_row),
            compact=self.compact,
            t=plan.t,
            noise=plan.noise,
            use_text=plan.use_text,
            use_neighbors=plan.use_neighbors,
        )

    def _length(self, text_row: np.ndarray, view_row: np.ndarray) -> int:
        """prefetch.compact_batch's cut: the longest real sequence of the prompts and (K > 0)
        the captions, at least 1; L when not compact."""
        if not self.compact:
            return self.max_length
        longest = int(self.text_lengths[text_row].max(initial=0))
        if view_row.size:
            longest = max(longest, int(self.caption_lengths[view_row].max(initial=0)))
        return max(longest, 1)


__all__ = [
    "SceneAtlas",
    "ScenePlanner",
    "StepArrays",
    "TextTable",
    "build_atlas",
    "check_source",
    "pool_text_rows",
    "pool_text_table",
]
