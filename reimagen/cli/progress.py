"""Progress bars with an ETA for the commands that work for more than a few seconds.

tqdm on stderr, shown only on a terminal (stdout/stderr piped to a file stay clean), or forced
with ``REIMAGEN_PROGRESS=1`` (``=0``: never). Sampling advances a bar once per sampler step
through the pipeline's ``callback`` (every stage, every micro-batch); ``bench`` advances one
bar by the prompts each row has generated; the dense retriever's first index build, by the
captions it has embedded.
"""

from __future__ import annotations

import os
import sys

PROGRESS_ENV = "REIMAGEN_PROGRESS"


def _disable() -> bool | None:
    """tqdm's ``disable``: None shows the bar only when stderr is a terminal."""
    setting = os.environ.get(PROGRESS_ENV, "")
    return {"1": False, "0": True}.get(setting.strip())


def bar(total: int, desc: str, unit: str = "step", show: bool = True):
    """A tqdm bar of ``total`` units on stderr (elapsed, rate and time left); ``show=False``:
    a silent one (e.g. on every rank but 0)."""
    from tqdm.auto import tqdm

    return tqdm(
        total=total, desc=desc, unit=unit, disable=_disable() if show else True, dynamic_ncols=True
    )


def sampling_steps(cascade, batches: int = 1) -> int:
    """Sampler steps a cascade takes for ``batches`` micro-batches: Σ stage steps × batches."""
    return batches * sum(stage.sampling.steps for stage in cascade.stages)


def step_callback(progress):
    """A sampler callback (i, t, x, x0_hat, variants) that advances ``progress`` by one step."""
    return lambda *_: progress.update(1)


def row_logger(progress, advance: int = 1):
    """A BenchRunner ``log`` (one line per finished row) that prints the line above the bar
    (stderr) and advances it by ``advance`` (one row; 0 when the bar counts prompts)."""

    def log(message: str) -> None:
        progress.write(message, file=sys.stderr)
        progress.update(advance)

    return log


def prompt_ticker(progress):
    """A BenchRunner ``on_batch`` (row, n) that names the row being generated after the counts
    and advances ``progress`` by the batch's n prompts."""

    def tick(row, n: int) -> None:
        progress.set_postfix_str(f"{row.label} [{row.setting}]", refresh=not n)  # n=0: it starts
        progress.update(n)

    return tick
