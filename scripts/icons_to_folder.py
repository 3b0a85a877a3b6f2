"""Turn an Iconify JSON icon set (from npm) into a folder source: DIR/captions.jsonl + PNGs.

    npm install --prefix /tmp/icons @iconify-json/flat-color-icons
    python scripts/icons_to_folder.py /tmp/icons/node_modules/@iconify-json/flat-color-icons DIR
    reimagen kb build --source folder --folder DIR --out KB --resolution 32

Each icon becomes one record: ``images/<name>.png`` (RGBA, ``--size`` px, rendered from its SVG
with resvg, as the emoji artists are: reimagen.kb.emoji_artists) and the caption
``"<caption prefix> <name in words>"``, e.g. "flat colour icon: alarm clock" for
``alarm-clock``. Aliases (other names of the same drawing) are skipped: a duplicate image would
only be excluded as a neighbour anyway. Icons are written in name order; ``--limit N`` keeps the
first N. Every file is written atomically, captions.jsonl last.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import sys
from pathlib import Path

from reimagen.core.io import atomic_write_bytes, atomic_write_text


def icon_svg(data: dict, name: str) -> str:
    """The standalone SVG of icon ``name`` of an Iconify JSON set (its box, body and the
    flips / quarter turns the icon itself declares)."""
    icon = data["icons"][name]
    left, top = icon.get("left", data.get("left", 0)), icon.get("top", data.get("top", 0))
    width = icon.get("width", data.get("width", 16))
    height = icon.get("height", data.get("height", 16))
    body, transforms = icon["body"], []
    if icon.get("hFlip"):
        transforms.append(f"translate({2 * left + width} 0) scale(-1 1)")
    if icon.get("vFlip"):
        transforms.append(f"translate(0 {2 * top + height}) scale(1 -1)")
    if icon.get("rotate", 0) % 4:
        cx, cy = left + width / 2, top + height / 2
        transforms.append(f"rotate({90 * (icon['rotate'] % 4)} {cx} {cy})")
    if transforms:
        body = f'<g transform="{" ".join(transforms)}">{body}</g>'
    box = f'viewBox="{left} {top} {width} {height}" width="{width}" height="{height}"'
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
        f"{box}>{body}</svg>"
    )


def render(svg: str, size: int) -> bytes:
    """PNG bytes of ``svg`` at size×size, rendered at 2× and box-downsampled (smooth edges)."""
    import resvg_py
    from PIL import Image

    blob = resvg_py.svg_to_bytes(svg_string=svg, width=2 * size, height=2 * size)
    picture = Image.open(io.BytesIO(bytes(blob))).convert("RGBA")
    picture = picture.resize((size, size), Image.Resampling.BOX)
    out = io.BytesIO()
    picture.save(out, format="PNG")
    return out.getvalue()


def caption(name: str, prefix: str) -> str:
    """'alarm-clock' -> '<prefix> alarm clock' (the name's words, split on - and _)."""
    words = " ".join(part for part in re.split(r"[-_]+", name) if part)
    return f"{prefix} {words}".strip()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "icons", type=Path, help="an @iconify-json/<set> package folder or its icons.json"
    )
    parser.add_argument("out", type=Path, help="output folder (images/ and captions.jsonl)")
    parser.add_argument("--size", type=int, default=64, help="PNG side in pixels")
    parser.add_argument("--limit", type=int, default=None, help="keep the first N icons")
    parser.add_argument(
        "--prefix", default="flat colour icon:", help="caption text before the icon's name"
    )
    args = parser.parse_args(argv)
    path = args.icons / "icons.json" if args.icons.is_dir() else args.icons
    if not path.is_file():
        parser.error(f"icons: no icons.json at {path} (npm install @iconify-json/<set> first)")
    if not 8 <= args.size <= 1024:
        parser.error(f"--size must be in [8, 1024], got {args.size}")
    if args.limit is not None and args.limit < 1:
        parser.error(f"--limit must be >= 1, got {args.limit}")
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("icons"), dict):
        parser.error(f"icons: {path} is not an Iconify JSON set (no 'icons' object)")
    names = sorted(data["icons"])[: args.limit]
    lines = []
    for number, name in enumerate(names, 1):
        relative = f"images/{name}.png"
        atomic_write_bytes(args.out / relative, render(icon_svg(data, name), args.size))
        lines.append(json.dumps({"image": relative, "text": caption(name, args.prefix)}))
        if number % 50 == 0 or number == len(names):
            print(f"\rrendered {number}/{len(names)}", end="", file=sys.stderr)
    atomic_write_text(args.out / "captions.jsonl", "\n".join(lines) + "\n")
    print(
        f"\nwrote {len(names)} records of {data.get('prefix', path.parent.name)} to "
        f"{args.out}/captions.jsonl",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
