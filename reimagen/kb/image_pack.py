"""Images into the packed array and back out at another size (docs/design.md §6): decoding and
checking what a source gives (PIL image, encoded bytes or a uint8 array), padding to a square
and resizing to the KB resolution (uint8 [S, S, 4] RGBA), and the area resize readers use.

numpy + Pillow only.
"""

from __future__ import annotations

import io

import numpy as np

from reimagen.kb.records import KnowledgeBaseError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def encode_image(image, key: str):
    """-> (PNG bytes to store, PIL RGBA image). PNG input is stored byte for byte."""
    from PIL import Image, UnidentifiedImageError

    blob = None
    picture: Image.Image  # an ImageFile when decoded from bytes
    try:
        if isinstance(image, (bytes, bytearray, memoryview)):
            blob = bytes(image)
            picture = Image.open(io.BytesIO(blob))
            picture.load()
        elif isinstance(image, np.ndarray):
            picture = _array_to_image(image, key)
        elif isinstance(image, Image.Image):
            picture = image
        else:
            raise KnowledgeBaseError(
                f"item {key!r}: image must be a PIL image, encoded bytes or a uint8 array, "
                f"got {type(image).__name__}"
            )
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        if isinstance(err, KnowledgeBaseError):
            raise
        origin = getattr(image, "path", None)  # the file, when the source knows it
        where = f"{origin}: " if origin else ""
        raise KnowledgeBaseError(f"{where}unreadable image for item {key!r} ({err})") from None
    if picture.width < 1 or picture.height < 1:
        raise KnowledgeBaseError(f"item {key!r}: empty image ({picture.width}x{picture.height})")
    rgba = picture.convert("RGBA")
    if blob is None or not blob.startswith(PNG_SIGNATURE):
        buffer = io.BytesIO()
        rgba.save(buffer, format="PNG")
        blob = buffer.getvalue()
    return blob, rgba


def _array_to_image(array: np.ndarray, key: str):
    from PIL import Image

    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] not in (3, 4):
        raise KnowledgeBaseError(
            f"item {key!r}: an array image must be uint8 [H, W, 3|4], "
            f"got {array.dtype} {array.shape}"
        )
    return Image.fromarray(np.ascontiguousarray(array), "RGBA" if array.shape[2] == 4 else "RGB")


def pack_rgba(picture, resolution: int) -> np.ndarray:
    """PIL RGBA image -> uint8 [S, S, 4]: padded to a square (transparent, centred) so nothing is
    cropped, then resized (Pillow premultiplies alpha for RGBA; box filter when shrinking)."""
    from PIL import Image

    side = max(picture.width, picture.height)
    if picture.width != picture.height:
        square = Image.new("RGBA", (side, side), (0, 0, 0, 0))
        square.paste(picture, ((side - picture.width) // 2, (side - picture.height) // 2))
        picture = square
    if side != resolution:
        method = Image.Resampling.BOX if side > resolution else Image.Resampling.BICUBIC
        picture = picture.resize((resolution, resolution), method)
    return np.asarray(picture, dtype=np.uint8)  # [S, S, 4]


def resize_area(images: np.ndarray, size: int) -> np.ndarray:
    """float32 [n, S, S, C] -> [n, size, size, C] by area averaging (exact block means when S is
    a multiple of size, else Pillow's box filter per channel)."""
    n, side, _, channels = images.shape
    if side == size:
        return images
    if side % size == 0:
        f = side // size
        return images.reshape(n, size, f, size, f, channels).mean(axis=(2, 4))
    from PIL import Image

    out = np.empty((n, size, size, channels), dtype=np.float32)
    for i in range(n):
        for c in range(channels):
            plane = Image.fromarray(np.ascontiguousarray(images[i, :, :, c], dtype=np.float32), "F")
            out[i, :, :, c] = np.asarray(plane.resize((size, size), Image.Resampling.BOX))
    return out
