"""Disk full during each writer (issue #14, item 3).

Each writer (KB build, index build, triples, a training checkpoint, a weights export, bench
output) first writes its artifact on a small tmpfs; then the tmpfs is filled until only a
fraction of the new artifact's size is free (0 %, 10 %, ..., 90 %) and the writer runs again
over it. Each time it runs out of space: an ENOSPC error that the CLI prints as one line naming
where it was writing, the previous artifact byte-identical and loadable, no temp file or folder
left behind. (A writer that needs less room than its whole artifact may finish at the larger
fractions: then the new artifact must load.) Once the filler is gone, a rerun completes.
Mounting needs root (``mount -t tmpfs``): skipped, with the reason, where that is not
permitted (CI as non-root).
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import attrs
import numpy as np
import pytest
from toys import toy_kb

from reimagen.core import registry
from reimagen.core.unet_config import PRESETS
from reimagen.kb.builder import build_knowledge_base
from reimagen.kb.knowledge_base import KnowledgeBase
from reimagen.training import checkpoint as ckpt

TINY = PRESETS["tiny"]
DISK_MB = 48
FREE_FRACTIONS = tuple(i / 10 for i in range(10))  # of the new artifact's size
MIN_FULL = 3  # cases per writer that must really run out of space
FILLER = "filler.bin"


@pytest.fixture(scope="module")
def disk(tmp_path_factory) -> Path:
    """A DISK_MB tmpfs, unmounted afterwards."""
    folder = tmp_path_factory.mktemp("tmpfs")
    if os.geteuid() != 0:
        pytest.skip("disk-full tests mount a tmpfs, which needs root (not on CI as non-root)")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


def wipe(folder: Path) -> None:
    for path in folder.iterdir():
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()


def fill(folder: Path, leave: int) -> None:
    """Write a filler file so that about ``leave`` bytes stay free (tmpfs counts 4 KiB pages)."""
    stats = os.statvfs(folder)
    free = stats.f_bavail * stats.f_frsize
    size = max(0, free - leave)
    with open(folder / FILLER, "wb") as handle:
        chunk = b"\0" * (1 << 20)
        while size > 0:
            try:
                handle.write(chunk[: min(size, len(chunk))])
            except OSError:
                break  # the page rounding: full a little earlier than statvfs said
            size -= len(chunk)


def used_bytes(path: Path) -> int:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_blocks * 512 for p in files)


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (the filler aside) -> sha256: what must survive."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != FILLER
    }


@attrs.frozen
class Writer:
    artifact: str  # its path under the disk
    old: Callable[[Path], None]  # write the previous artifact (and what it needs) under disk
    new: Callable[[Path], None]  # write the new artifact over it
    load: Callable[[Path], object]  # read it the way the library does


# ---- the writers ------------------------------------------------------------------------------


def kb_items(n: int, seed: int):
    rng = np.random.default_rng(seed)
    for i in range(n):
        image = rng.integers(0, 255, (16, 16, 4), np.uint8)
        yield (f"t/{i}", f"a drawing of thing {i}", "t", "", image)


def build_kb(folder: Path, n: int, seed: int):
    return build_knowledge_base(kb_items(n, seed), folder, resolution=16, progress=False)


def index_writer(name: str) -> Writer:
    options = {"encoder": "hash", "encoder_options": {"dim": 64}} if name == "dense" else {}
    make = registry.get("retriever", name)

    def old(disk):
        make(**options).fit(toy_kb(disk / "kb")).save(disk / "index")

    def new(disk):
        kb = KnowledgeBase.open(disk / "kb")
        make(**options).fit(kb).save(disk / "index")

    def load(disk):
        return make.load(disk / "index", KnowledgeBase.open(disk / "kb")).search(["robot"], 2)

    return Writer("index", old, new, load)


def triples_writer(suffix: str) -> Writer:
    from reimagen.kb.triples import build_triples, load_triples, save_triples

    path = f"t{suffix}"

    def write(disk, k):
        kb = KnowledgeBase.open(disk / "kb")
        found = build_triples(
            kb.texts, registry.get("retriever", "bm25")().fit(kb), k, [[r] for r in range(len(kb))]
        )
        save_triples(disk / path, found)

    def old(disk):
        toy_kb(disk / "kb")
        write(disk, 1)

    def load(disk):
        kb = KnowledgeBase.open(disk / "kb")
        return load_triples(disk / path, kb, queries=kb.texts)

    return Writer(path, old, lambda disk: write(disk, 3), load)


def checkpoint_writer() -> Writer:
    def arrays(seed):
        rng = np.random.default_rng(seed)
        return {"w": rng.standard_normal((256, 256), np.float32), "b": np.ones(7, np.float32)}

    def write(disk, step):
        a = arrays(step)
        ckpt.write_checkpoint(
            disk / "run",
            step,
            model=a,
            ema=a,
            optimizer=a,
            config_json=TINY.to_json(),
            state={"loss": 0.5},
        )

    def load(disk):
        saved, skipped = ckpt.load_resumable(disk / "run")
        assert not skipped, skipped
        return saved

    return Writer("run", lambda disk: write(disk, 1), lambda disk: write(disk, 2), load)


def export_writer() -> Writer:
    from reimagen.backends.torch import BACKEND

    def write(disk, seed):
        BACKEND.save_model(
            BACKEND.build_model(TINY, seed=seed), disk / "w.safetensors", dtype="float16"
        )

    return Writer(
        "w.safetensors",
        lambda disk: write(disk, 0),
        lambda disk: write(disk, 1),
        lambda disk: BACKEND.load_model(disk / "w.safetensors"),
    )


@attrs.frozen
class Prompt:  # what write_outputs reads of a BenchPrompt
    text: str

    def to_dict(self):
        return {"prompt": self.text}


@attrs.frozen
class Result:
    images: np.ndarray


def bench_writer() -> Writer:
    """reimagen bench's outputs (results.json, results.md, prompts.jsonl, grid PNGs)."""
    import json

    from reimagen.bench.result_files import write_outputs

    def write(disk, seed):
        rng = np.random.default_rng(seed)
        results = [Result(rng.integers(0, 255, (32, 32, 32, 3), np.uint8)) for _ in range(3)]
        blob = {"rows": [float(x) for x in rng.random(200)]}
        prompts = [Prompt(f"p{i} of run {seed}") for i in range(32)]
        write_outputs(disk / "bench", blob, f"# run {seed}\n", prompts, results)

    def load(disk):
        return json.loads((disk / "bench" / "results.json").read_text())

    return Writer("bench", lambda disk: write(disk, 0), lambda disk: write(disk, 1), load)


WRITERS: dict[str, Callable[[], Writer]] = {
    "kb build": lambda: Writer(
        "kb",
        lambda disk: build_kb(disk / "kb", 6, 0),
        lambda disk: build_kb(disk / "kb", 60, 1),
        lambda disk: KnowledgeBase.open(disk / "kb", verify=True),
    ),
    "index build (bm25)": lambda: index_writer("bm25"),
    "index build (dense, faiss)": lambda: index_writer("dense"),
    "index build (tfidf)": lambda: index_writer("tfidf"),
    "triples (.safetensors)": lambda: triples_writer(".safetensors"),
    "triples (.npz)": lambda: triples_writer(".npz"),
    "training checkpoint": checkpoint_writer,
    "weights export": export_writer,
    "bench output": bench_writer,
}


def one_line(err: BaseException) -> str:
    from reimagen.cli.main import one_line as cli_line

    return cli_line(err)


def disk_full_cases(disk: Path, writer: Writer) -> tuple[list[str], int]:
    """Run the writer at each free fraction; (failures, cases where the disk filled up)."""
    wipe(disk)
    writer.old(disk)
    before = used_bytes(disk / writer.artifact)
    writer.new(disk)
    size = max(used_bytes(disk / writer.artifact), before, 4096)  # the new artifact's bytes
    failures, full = [], 0
    for fraction in FREE_FRACTIONS:
        wipe(disk)
        writer.old(disk)
        writer.load(disk)
        kept = snapshot(disk)
        fill(disk, int(size * fraction))
        try:
            writer.new(disk)
            writer.load(disk)  # it had room: the new artifact, whole
            (disk / FILLER).unlink()
            continue
        except OSError as err:
            full += 1
            line = one_line(err)
            if err.errno != errno.ENOSPC or "\n" in line or str(disk) not in line:
                failures.append(f"{fraction:.0%} free: {type(err).__name__}: {line}")
        except Exception as err:  # noqa: BLE001 (not the disk-full error)
            failures.append(f"{fraction:.0%} free: {type(err).__name__}: {err}")
        after = snapshot(disk)
        if after != kept:
            changed = sorted(set(after) ^ set(kept) | {k for k in kept if after.get(k) != kept[k]})
            failures.append(f"{fraction:.0%} free: files changed or left behind: {changed[:4]}")
        try:
            writer.load(disk)
        except Exception as err:  # noqa: BLE001
            failures.append(f"{fraction:.0%} free: the old artifact no longer loads: {err}")
        (disk / FILLER).unlink()
        writer.new(disk)  # space again: the rerun completes
        writer.load(disk)
    return failures, full


@pytest.mark.parametrize("name", list(WRITERS))
def test_disk_full_keeps_the_previous_artifact(disk, name):
    failures, full = disk_full_cases(disk, WRITERS[name]())
    print(
        f"\n{name}: ran out of space in {full}/{len(FREE_FRACTIONS)} cases, "
        f"{full - len(failures)}/{full} a one-line ENOSPC with the old artifact intact"
    )
    assert not failures, f"{name}: {failures}"
    assert full >= MIN_FULL, f"{name}: the disk filled up in only {full} cases"


def test_the_cli_reports_a_full_disk_in_one_line(disk, capsys):
    """`reimagen train --export-only` onto a full disk: one line, status 2, old file intact."""
    from test_torch_trainer import SyntheticSource, config

    from reimagen.backends.torch.trainer import train
    from reimagen.cli.main import main

    wipe(disk)
    run = disk / "run"
    train(TINY, config(1), SyntheticSource(), run, progress=False)
    export = disk / "w.safetensors"
    argv = [
        "train",
        "--preset",
        "tiny",
        "--run-dir",
        str(run),
        "--export-only",
        "--export",
        str(export),
    ]
    assert main(argv) == 0
    kept = export.read_bytes()
    fill(disk, 0)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device" in err, err
    assert "w.safetensors" in err, err
    assert export.read_bytes() == kept
    (disk / FILLER).unlink()
