"""Writing a bench run's files: image grids and the staged set of results (docs/design.md §9).

Every bench command (``bench``, ``bench --kb COLLECTION``, ``ablate``) writes its results with
:func:`write_file_set`: each file is written into a locked staging folder inside ``out`` first
(reimagen.core.folder_swap), then all are renamed into place, so a full disk or a crash leaves
the previous set as it was. Single files go through reimagen.core.io's atomic writers.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from reimagen.core.folder_swap import make_locked_folder, publish_entries, remove_abandoned
from reimagen.core.io import atomic_path, atomic_write_text, name_the_file

STAGING_PREFIX = ".writing-"  # out/.writing-<pid>-*: one run's outputs before they move in

FileWriter = Callable[[Path], None]  # writes one file at the path it is given


def json_text(blob, newline: bool = True) -> str:
    """``blob`` as the results files write it: indented, UTF-8 left as it is."""
    return json.dumps(blob, indent=1, ensure_ascii=False) + ("\n" if newline else "")


def text_file(text: str) -> FileWriter:
    """A writer of ``text`` (atomically: a staged file is still written whole or not at all)."""
    return lambda path: atomic_write_text(path, text)


def save_grid(path: Path, images: np.ndarray, columns: int = 16, scale: int = 2) -> None:
    """Images uint8 [N, H, W, 3] tiled row-major into one PNG (nearest upscale), atomically."""
    from PIL import Image

    n, h, w, _ = images.shape
    columns = max(1, min(columns, n))
    rows = -(-n // columns)
    sheet = np.full((rows * (h + 1), columns * (w + 1), 3), 255, np.uint8)
    for i, image in enumerate(images):
        y, x = divmod(i, columns)
        sheet[y * (h + 1) : y * (h + 1) + h, x * (w + 1) : x * (w + 1) + w] = image
    picture = Image.fromarray(sheet).resize(
        (sheet.shape[1] * scale, sheet.shape[0] * scale), Image.Resampling.NEAREST
    )
    with atomic_path(path) as tmp:
        picture.save(tmp, format="PNG")


def grid_writers(image_sets: Sequence[np.ndarray]) -> dict[str, FileWriter]:
    """grid_<i>.png per image set (row i's images in prompt order, 16 a line)."""
    return {
        f"grid_{index:02d}.png": functools.partial(save_grid, images=images)
        for index, images in enumerate(image_sets)
    }


def write_file_set(
    out: Path, writers: Mapping[str, FileWriter], replaces: Sequence[str] = ("grid_*.png",)
) -> None:
    """Write each ``writers`` entry (file name -> writer, called in order with its staging
    path: a later writer may read an earlier file) into a staging folder inside ``out``, then
    rename them all into place. Files matching a ``replaces`` pattern that this set did not
    write (an earlier run's extra grids) are removed; other files in ``out`` are never touched.
    A staging folder a killed run left is removed."""
    out.mkdir(parents=True, exist_ok=True)
    remove_abandoned(out, STAGING_PREFIX)  # what a killed run left
    staging, lock = make_locked_folder(out, STAGING_PREFIX)
    try:
        for name, write in writers.items():
            write(staging / name)
        written = publish_entries(staging, out)
        for pattern in replaces:
            for stale in out.glob(pattern):
                if stale.name not in written:
                    stale.unlink()
    except OSError as err:
        name_the_file(err, out)
        raise
    finally:
        os.close(lock)
        shutil.rmtree(staging, ignore_errors=True)


def write_outputs(
    out: Path, blob: dict, markdown: str, prompts, results, report: str | None = None
) -> None:
    """``reimagen bench``'s set: results.json, results.md, prompts.jsonl, grid_<i>.png per row
    (``results[i].images``) and ``report`` as report.html; grids an earlier run left beyond
    this run's rows (and its report.html, when this run writes none) are removed."""
    from reimagen.bench.prompt_sets import write_prompts

    writers: dict[str, FileWriter] = {
        "prompts.jsonl": lambda path: write_prompts(path, prompts),
        **grid_writers([result.images for result in results]),
        "results.json": text_file(json_text(blob)),
        "results.md": text_file(markdown),
    }
    if report is not None:
        writers["report.html"] = text_file(report)
    write_file_set(out, writers, replaces=("grid_*.png", "report.html"))
