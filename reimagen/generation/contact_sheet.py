"""Contact sheets: each generated image beside the references it was grounded on (paper Fig. 4).

Pillow only (no matplotlib figure machinery needed for a grid of small images).
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import attrs
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from reimagen.core.images import to_uint8


@attrs.frozen
class SheetRow:
    prompt: str
    images: tuple[tuple[str, np.ndarray], ...]  # (label, uint8 [H, W, 3]) generated images
    neighbors: tuple[tuple[str, np.ndarray], ...] = ()  # (caption, uint8 [h, w, 3]) references


def make_sheet(rows: Sequence[SheetRow], tile: int = 128, pad: int = 8) -> Image.Image:
    """One row per prompt: prompt text, generated image(s), then the retrieved neighbours."""
    font = ImageFont.load_default(size=11)
    label_h = 30
    prompt_h = 18
    columns = max(len(r.images) + len(r.neighbors) for r in rows)
    width = pad + columns * (tile + pad) + pad  # one extra pad: a gap before the neighbours
    height = pad + len(rows) * (prompt_h + tile + label_h + pad)
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    y = pad
    for row in rows:
        draw.text((pad, y), row.prompt, fill=(0, 0, 0), font=font)
        y += prompt_h
        x = pad
        for index, (label, image) in enumerate((*row.images, *row.neighbors)):
            if index == len(row.images):
                x += pad  # separate generated images from references
                draw.line([(x - pad, y), (x - pad, y + tile)], fill=(160, 160, 160), width=2)
            sheet.paste(_tile(image, tile), (x, y))
            caption = textwrap.shorten(label, width=44, placeholder="…")
            for i, line in enumerate(textwrap.wrap(caption, width=22)[:2]):
                draw.text((x, y + tile + 2 + 12 * i), line, fill=(60, 60, 60), font=font)
            x += tile + pad
        y += tile + label_h + pad
    return sheet


def _tile(image: np.ndarray, size: int) -> Image.Image:
    """Nearest-neighbour upscale so the small pixels stay visible."""
    return Image.fromarray(np.asarray(image, dtype=np.uint8)).resize(
        (size, size), Image.Resampling.NEAREST
    )


def neighbor_tiles(kb, rows, scores=None, size: int = 64) -> tuple[tuple[str, np.ndarray], ...]:
    """(caption, uint8 [size, size, 3]) for the KB ``rows`` [K] of one sample, scores shown when
    given; one ``kb.rgb`` call for all K."""
    rows = [int(r) for r in rows]
    if not rows:
        return ()
    pixels = to_uint8(kb.rgb(rows, size=size))
    captions = [kb.records[r].text for r in rows]
    if scores is not None:
        captions = [f"{c} ({float(s):.2f})" for c, s in zip(captions, scores)]
    return tuple(zip(captions, pixels))
