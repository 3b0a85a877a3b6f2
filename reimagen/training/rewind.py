"""Rewinding a diverged run to an earlier committed step (README "Reliability"): the later step
folders move aside, not deleted, and ``latest`` names the step to resume from (``reimagen train
--resume-from STEP``, :class:`reimagen.training.loop` ``resume_from``). The folder layout and
the commit protocol are :mod:`reimagen.training.checkpoint`'s.
"""

from __future__ import annotations

import os
from pathlib import Path

from reimagen.core.folder_swap import fsync_dir
from reimagen.core.io import atomic_write_text
from reimagen.training.checkpoint import (
    CHECKPOINTS,
    LATEST,
    LOG,
    CheckpointError,
    read_checkpoint,
    step_dir_name,
    step_folders,
    step_of,
)


def rewind(run_dir: str | Path, step: int) -> tuple[Path, list[str], Path | None]:
    """Make committed step ``step`` the run's ``latest``, to resume a diverged run from before
    it diverged. The step must read back intact (checked before anything moves). Later step
    folders are moved, not deleted, into ``checkpoints/rewound-<step>-<n>/``, where resume,
    fallback and pruning do not look (delete it once the new course is good). Moved first,
    ``latest`` rewritten last: a crash in between leaves ``latest`` naming a moved step, and
    a resume falls back to the newest step left, ``step`` once all are moved; running it again
    finishes the job. Returns (the step folder, the names moved, where to or None)."""
    root = Path(run_dir) / CHECKPOINTS
    folder = root / step_dir_name(step)
    steps = step_folders(run_dir) if root.is_dir() else []
    if folder not in steps:
        held = ", ".join(str(step_of(p)) for p in reversed(steps)) or "none"
        raise CheckpointError(
            f"cannot resume from step {step}: no committed {folder.name} in {root} (steps "
            f"there: {held}; a run keeps its newest `keep`)"
        )
    read_checkpoint(folder)  # IntegrityError naming the file: nothing moved
    later = [p for p in steps if step_of(p) > step]
    aside = _aside_folder(root, step) if later else None
    if aside is not None:
        aside.mkdir()
        for path in later:
            os.rename(path, aside / path.name)
        fsync_dir(root, strict=True)
    atomic_write_text(root / LATEST, folder.name + "\n")
    LOG.warning(
        "rewound %s to %s; %s moved to %s",
        root,
        folder.name,
        ", ".join(p.name for p in later) or "nothing",
        aside,
    )
    return folder, sorted(p.name for p in later), aside


def _aside_folder(root: Path, step: int) -> Path:
    """``rewound-<step>-<n>``, the first n not taken (a run may be rewound more than once)."""
    n = 1
    while (root / f"rewound-{step}-{n}").exists():
        n += 1
    return root / f"rewound-{step}-{n}"
