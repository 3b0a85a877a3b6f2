"""Augmented same-style neighbours (docs/design.md §8, the recipe that forces identity through the
neighbours): when a neighbour slot shows the target entity's own Twemoji drawing, the drawing
is redrawn with a random scale, shift, horizontal flip and colour jitter, so the model must
redraw the entity rather than paste it.

:func:`draw_augmentation` draws the parameters (a fixed draw order, part of a step's stream);
:func:`augment_drawings` applies them on the host; :func:`premultiplied_drawings` and
:func:`warp_taps` are shared with the device-side composer (reimagen.training.scene_atlas).
"""

from __future__ import annotations

import numpy as np

from reimagen.training.data import NEIGHBOR_BACKGROUND, DataConfig


def draw_augmentation(rng: np.random.Generator, n: int, data: DataConfig) -> dict[str, np.ndarray]:
    """Random scale, shift, flip and colour jitter for n drawings (fixed draw order)."""
    return {
        "scale": rng.uniform(data.aug_scale_min, data.aug_scale_max, n),  # [n]
        "shift": rng.uniform(-data.aug_shift, data.aug_shift, (n, 2)),  # [n, (y, x)] × canvas
        "flip": rng.random(n) < data.aug_flip,  # [n] horizontal
        "gain": 1.0 + rng.uniform(-data.aug_gain, data.aug_gain, (n, 3)),  # [n, RGB]
        "brightness": rng.uniform(-data.aug_brightness, data.aug_brightness, n),  # [n]
    }


def augment_drawings(
    rgba: np.ndarray, canvas: int, params: dict[str, np.ndarray], background=NEIGHBOR_BACKGROUND
) -> np.ndarray:
    """Redraw RGBA drawings uint8 [n, S, S, 4] scaled about the centre, shifted, flipped and
    colour-jittered, over ``background`` -> float32 [n, canvas, canvas, 3] in [0, 1].

    Premultiplied colour is first area-averaged to ``canvas`` when S is larger (exactly what
    KnowledgeBase.rgb does, so scale 1 reproduces the plain rendition and nothing aliases),
    then warped. The warp is axis-aligned, so bilinear resampling is separable: two 2-tap
    gathers (rows, then columns). Gathers rather than interpolation matrices: small batched
    GEMMs stall when OpenBLAS threads compete for 2 cores with the trainer. scale < 1 always
    (DataConfig), so the result is never the plain rendition."""
    n = rgba.shape[0]
    colour = premultiplied_drawings(rgba, canvas)  # [n, side + 2, side + 2, 4]
    batch = np.arange(n)[:, None]
    (lo_y, frac_y), (lo_x, frac_x) = warp_taps(params, colour.shape[1] - 2, canvas)
    rows = (
        colour[batch, lo_y] * (1 - frac_y)[..., None, None]
        + colour[batch, lo_y + 1] * frac_y[..., None, None]
    )  # [n, canvas(y), side+2(x), 4]
    sampled = (
        rows[batch, :, lo_x] * (1 - frac_x)[..., None, None]
        + rows[batch, :, lo_x + 1] * frac_x[..., None, None]
    )  # [n, canvas(x), canvas(y), 4]
    sampled = sampled.transpose(0, 2, 1, 3)  # [n, canvas(y), canvas(x), 4]
    alpha = sampled[..., 3:]
    ink = sampled[..., :3] * params["gain"][:, None, None, :].astype(np.float32)
    ink = ink + params["brightness"][:, None, None, None].astype(np.float32) * alpha
    ink = np.clip(ink, 0.0, alpha)  # premultiplied colour stays within alpha
    back = np.asarray(background, np.float32) / 255.0
    return (ink + back * (1.0 - alpha)).astype(np.float32)  # [n, canvas, canvas, 3] "over"


def premultiplied_drawings(rgba: np.ndarray, canvas: int) -> np.ndarray:
    """RGBA drawings uint8 [n, S, S, 4] -> premultiplied float32 [n, side + 2, side + 2, 4],
    area-averaged to ``canvas`` when S is larger (side = min(S, canvas)), with a zero border
    (= outside the drawing) for the warp's taps."""
    from reimagen.kb.image_pack import resize_area

    colour = rgba.astype(np.float32) / 255.0  # [n, S, S, 4]
    colour[..., :3] *= colour[..., 3:]  # premultiplied
    if colour.shape[1] > canvas:
        colour = resize_area(colour, canvas)  # [n, canvas, canvas, 4]
    return np.pad(colour, ((0, 0), (1, 1), (1, 1), (0, 0)))  # zero border = outside


def warp_taps(params: dict[str, np.ndarray], side: int, canvas: int):
    """The augmentation warp's bilinear taps, ((lo, frac) of the rows, (lo, frac) of the
    columns), each [n, canvas]: see :func:`_taps` (flip is horizontal: columns only)."""
    n = len(params["scale"])
    rows = _taps(params["scale"], params["shift"][:, 0], np.zeros(n, bool), side, canvas)
    cols = _taps(params["scale"], params["shift"][:, 1], params["flip"], side, canvas)
    return rows, cols


def _taps(scale, shift, flip, side: int, work: int) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear taps of one axis of the warp q = (p - 1/2 - shift)/scale + 1/2 (p, q in [0, 1]
    of the canvas / drawing; flipped: q -> 1 - q) at ``work`` output pixel centres: (lo [n, W] int64
    index into the drawing padded by one zero pixel, frac [n, W] float32 weight of lo + 1)."""
    p = (np.arange(work) + 0.5) / work  # [W] output centres
    q = (p[None] - 0.5 - shift[:, None]) / scale[:, None] + 0.5  # [n, W]
    q = np.where(flip[:, None], 1.0 - q, q)
    x = np.clip(q * side - 0.5 + 1.0, 0.0, side + 0.999)  # padded pixel coordinates
    lo = np.floor(x).astype(np.int64)
    return lo, (x - lo).astype(np.float32)


__all__ = ["augment_drawings", "draw_augmentation", "premultiplied_drawings", "warp_taps"]
