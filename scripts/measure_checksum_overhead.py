"""What checking sha256 digests adds to loading (issue #14): the shipped weights, the emoji KB,
its retriever indexes and prompt encoding tables, each timed with and without the check
(median of 5 runs, after one warm-up so the files are in the page cache, as on a second
`reimagen generate`).

    OMP_NUM_THREADS=1 .venv/bin/python scripts/measure_checksum_overhead.py
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

from reimagen.core import digests
from reimagen.core.io import load_safetensors
from reimagen.core.paths import default_kb_dir
from reimagen.generation.shipped import STAGES, weights_path
from reimagen.kb.knowledge_base import KnowledgeBase


def median_ms(action: Callable[[], object], runs: int = 5) -> float:
    action()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def size_mb(paths) -> float:
    return sum(Path(p).stat().st_size for p in paths) / 2**20


def row(what: str, mb: float, check_ms: float, load_ms: float | None = None) -> None:
    load = f"{load_ms:9.1f}" if load_ms is not None else "        -"
    print(f"| {what:<44} | {mb:8.1f} | {check_ms:9.1f} | {load} |")


def main() -> None:
    print("| artifact                                     |       MB |  check ms |   load ms |")
    print("|---|---:|---:|---:|")
    for stage in STAGES:
        path = weights_path(stage)
        row(
            f"weights {stage}.safetensors",
            size_mb([path]),
            median_ms(lambda path=path: digests.verify_safetensors(path)),
            median_ms(lambda path=path: load_safetensors(path, check=False)),
        )
    kb_dir = default_kb_dir()
    files = [kb_dir / name for name in ("kb.json", "manifest.jsonl", "entities.json", "images.npy")]
    row(
        "emoji KB: SHA256SUMS (every open)",
        size_mb(files),
        median_ms(lambda: digests.verify_sums(kb_dir)),
        median_ms(lambda: KnowledgeBase.open(kb_dir, verify=False)),
    )
    kb = KnowledgeBase.open(kb_dir, verify=False)
    pngs = [kb_dir / r.image for r in kb.records]
    row(
        f"emoji KB: {len(pngs)} PNGs (verify=True only)",
        size_mb(pngs),
        median_ms(lambda: [digests.sha256_file(p) for p in pngs], runs=3),
    )
    for folder in [*sorted((kb_dir / "indexes").glob("*")), *(kb_dir / "encodings").glob("*")]:
        names = digests.files_under(folder, skip=(digests.SUMS,))
        if (folder / digests.SUMS).is_file():
            check = median_ms(lambda f=folder: digests.verify_sums(f, complete=True), runs=3)
            row(f"{folder.parent.name}/{folder.name}", size_mb([folder / n for n in names]), check)
        else:  # written before checksums: time the hashing SHA256SUMS would cost
            paths = [folder / n for n in names]
            check = median_ms(lambda paths=paths: [digests.sha256_file(p) for p in paths], runs=3)
            row(
                f"{folder.parent.name}/{folder.name} (hashing; no SUMS yet)",
                size_mb([folder / n for n in names]),
                check,
            )


if __name__ == "__main__":
    main()
