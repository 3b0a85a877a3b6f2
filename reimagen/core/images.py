"""The one conversion pair between the library's image convention and pixels (numpy, host side).

Networks, samplers and training batches work on float32 images in [-1, 1], NHWC
(docs/design.md, conventions); knowledge-base drawings, generated images and files are uint8 in
[0, 255]. ``to_uint8`` rounds half to even (``np.rint``) and clips, ``from_uint8`` is the exact
inverse on the 256 levels (v / 127.5 − 1 in float32).
"""

from __future__ import annotations

import numpy as np


def to_uint8(images: np.ndarray) -> np.ndarray:
    """[-1, 1] float images, any shape -> [0, 255] uint8 (rounded half to even, clipped)."""
    return np.clip(np.rint((np.asarray(images) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def from_uint8(pixels: np.ndarray) -> np.ndarray:
    """[0, 255] uint8 pixels, any shape -> float32 images in [-1, 1]."""
    return np.asarray(pixels).astype(np.float32) / 127.5 - 1.0
