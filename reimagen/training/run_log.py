"""The training run's log (``<run>/log.jsonl``): append-only JSON lines, one per event or per
``log_every`` steps, the latter carrying the running means of loss, gradient norm and images
per second since the previous line (:class:`Window`). Written by
:class:`~reimagen.training.loop.TrainLoop`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np


class Window:
    """Running means between two log lines."""

    def __init__(self):
        self._clear()

    def _clear(self):
        self.losses, self.norms, self.images, self.seconds = [], [], 0, 0.0

    def add(self, loss: float, grad_norm: float, images: int, seconds: float) -> None:
        self.losses.append(loss)
        self.norms.append(grad_norm)
        self.images += images
        self.seconds += seconds

    def flush(self, step: int, lr: float) -> dict:
        record = {
            "step": step,
            "loss": float(np.mean(self.losses)),
            "grad_norm": float(np.mean(self.norms)),
            "lr": lr,
            "images_per_s": self.images / self.seconds if self.seconds else 0.0,
        }
        self._clear()
        return record


class JsonlLog:
    """Append-only JSON lines, flushed per line (a crash loses at most the line being written)."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path

    def write(self, record: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({**record, "time": time.time()}) + "\n")


def start_log(
    path: Path,
    step: int,
    *,
    resumed: bool,
    skipped: list[str],
    rewound: dict | None,
    changes: dict[str, list],
) -> JsonlLog:
    """The run's log, with the start of this call: at ``step``, ``resumed`` or not, the
    checkpoints a resume passed over (``skipped``), what a rewind moved aside (``rewound``) and
    the resumable TrainConfig fields that changed (``changes``, ``{name: [old, new]}``)."""
    log = JsonlLog(path)
    log.write({"event": "start", "step": step, "resumed": resumed})
    if skipped:
        log.write({"event": "resume-fallback", "step": step, "skipped": skipped})
    if rewound is not None:
        log.write({"event": "rewind", "step": step, **rewound})
    if changes:  # e.g. a lower lr after a divergence: {"lr": [old, new]}
        log.write({"event": "config-change", "step": step, "changes": changes})
    return log


__all__ = ["JsonlLog", "Window", "start_log"]
