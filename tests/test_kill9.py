"""kill -9 at random moments, at least 50 per writer (issue #14, item 3; slow tier:
``REIMAGEN_SLOW=1``; ``-s`` prints the figures).

Each writer (KB build, index build, triples, training with its checkpoints, weights export)
rewrites a toy artifact in a separate process, which is SIGKILLed at a moment drawn uniformly
over the write's own duration (measured first; fixed seed per writer). After each kill the
artifact must read back as the old one or the complete new one (never missing, unloadable or
partial); then a rerun in this process must complete, leave no temp file or folder behind and,
for training, end bit-identical to a run that was never interrupted. Kills that came after the
write had finished are not counted; attempts go on until 50 landed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import random
import shutil
import signal
import statistics
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import attrs
import numpy as np
import pytest
import torch

from reimagen.core import registry
from reimagen.core.unet_config import PRESETS
from reimagen.kb.builder import build_knowledge_base
from reimagen.kb.knowledge_base import KnowledgeBase
from reimagen.training import checkpoint as ckpt

pytestmark = pytest.mark.slow

TINY = PRESETS["tiny"]
KILLS = int(os.environ.get("REIMAGEN_KILLS", "50"))  # that landed mid-write, per writer
MAX_ATTEMPTS = 150
TEMP_MARKS = (".tmp", ".building-", ".old-", ".partial-", ".writing-")


@attrs.frozen
class Writer:
    setup: Callable[[Path], None]  # the old artifact (and what it needs) under the folder
    write: Callable[[Path], None]  # the new one over it: what the child runs and is killed in
    state: Callable[[Path], str]  # "old" or "new"; raises if it reads back as neither
    after_rerun: Callable[[Path], None] = lambda folder: None  # extra checks after the rerun
    prepare: Callable[[], None] = lambda: None  # in the child, before the write (and the clock)


# ---- the writers ------------------------------------------------------------------------------


def kb_items(n: int, seed: int):
    rng = np.random.default_rng(seed)
    for i in range(n):
        yield (
            f"t/{i}",
            f"a drawing of thing {i}",
            "t",
            "",
            rng.integers(0, 255, (16, 16, 4), np.uint8),
        )


def build_kb(folder: Path, n: int, seed: int):
    return build_knowledge_base(kb_items(n, seed), folder, resolution=16, progress=False)


def kb_writer() -> Writer:
    """8 items, with an index inside (carried over), rebuilt as 300 (fingerprint: the manifest's
    sha256, so a content check)."""
    fingerprints = {}

    def setup(root):
        fingerprints["new"] = build_kb(root / "reference", 300, 1).fingerprint
        shutil.rmtree(root / "reference")
        fingerprints["old"] = build_kb(root / "kb", 8, 0).fingerprint
        (root / "kb" / "indexes").mkdir()
        (root / "kb" / "indexes" / "marker").write_text("an index of the old KB")

    def state(root):
        found = KnowledgeBase.open(root / "kb", verify=True).fingerprint
        return {v: k for k, v in fingerprints.items()}[found]

    def after_rerun(root):
        assert (root / "kb" / "indexes" / "marker").read_text() == "an index of the old KB"

    return Writer(setup, lambda root: build_kb(root / "kb", 300, 1), state, after_rerun)


def index_writer(name: str) -> Writer:
    """The same retriever over the toy KB, old and new told apart by an option."""
    cls = registry.get("retriever", name)
    options = {
        "bm25": ({"k1": 1.2}, {"k1": 1.7}),
        "dense": (
            {"encoder": "hash", "encoder_options": {"dim": 32}},
            {"encoder": "hash", "encoder_options": {"dim": 48}},
        ),
    }[name]

    def save(root, which):
        kb = KnowledgeBase.open(root / "kb", verify=False)
        cls(**options[which]).fit(kb).save(root / "index")

    def setup(root):
        build_kb(root / "kb", 300, 2)
        save(root, 0)

    def state(root):
        loaded = cls.load(root / "index", KnowledgeBase.open(root / "kb", verify=False))
        loaded.search(["thing 7"], 2)
        return {json.dumps(o, sort_keys=True): s for s, o in zip(("old", "new"), options)}[
            json.dumps({k: loaded.options[k] for k in options[0]}, sort_keys=True)
        ]

    return Writer(setup, lambda root: save(root, 1), state)


def triples_writer() -> Writer:
    from reimagen.kb.triples import build_triples, load_triples, save_triples

    def write(root, k):
        kb = KnowledgeBase.open(root / "kb", verify=False)
        found = build_triples(
            kb.texts, registry.get("retriever", "bm25")().fit(kb), k, [[r] for r in range(len(kb))]
        )
        save_triples(root / "t.safetensors", found)

    def setup(root):
        build_kb(root / "kb", 300, 3)
        write(root, 1)

    def state(root):
        kb = KnowledgeBase.open(root / "kb", verify=False)
        found = load_triples(root / "t.safetensors", kb, queries=kb.texts)
        return {1: "old", 4: "new"}[found.ids.shape[-1]]

    return Writer(setup, lambda root: write(root, 4), state)


def export_writer() -> Writer:
    from reimagen.backends.torch import BACKEND

    digests, models = {}, {}
    preset = PRESETS["cpu-base"]  # 5.3M parameters: a write long enough to land in

    def model(seed):
        if seed not in models:
            models[seed] = BACKEND.build_model(preset, seed=seed)
        return models[seed]

    def write(root, seed):
        BACKEND.save_model(model(seed), root / "w.safetensors", dtype="float16")

    def setup(root):
        for which, seed in (("new", 1), ("old", 0)):
            write(root, seed)
            digests[_tensors_sha(root / "w.safetensors")] = which

    def state(root):
        BACKEND.load_model(root / "w.safetensors")
        return digests[_tensors_sha(root / "w.safetensors")]

    return Writer(setup, lambda root: write(root, 1), state, prepare=lambda: model(1))


def _tensors_sha(path: Path) -> str:
    """sha256 of the tensors (checked against the file's digest on the way): not of the file,
    whose header lists the metadata in a per-process order (a Rust HashMap)."""
    tensors, _ = ckpt.read_weights(path)
    digest = hashlib.sha256()
    for key in sorted(tensors):
        digest.update(key.encode() + tensors[key].tobytes())
    return digest.hexdigest()


# training: steps 1..2 committed; the child trains on to TRAIN_STEPS, checkpointing each step
TRAIN_STEPS = 5


def _train(run: Path, steps: int) -> None:
    from test_torch_trainer import SyntheticSource, config

    from reimagen.backends.torch.trainer import train

    torch.set_num_threads(1)
    train(TINY, config(steps), SyntheticSource(), run, progress=False)


def training_writer() -> Writer:
    from test_torch_trainer import assert_same_state

    reference = {}

    def setup(root):
        if not reference:
            _train(root / "reference", TRAIN_STEPS)
            reference["final"] = ckpt.read_checkpoint(ckpt.latest_checkpoint(root / "reference"))
            shutil.rmtree(root / "reference")
        _train(root / "run", 2)

    def state(root):
        from reimagen.backends.torch import BACKEND

        saved, skipped = ckpt.load_resumable(root / "run")
        assert not skipped, skipped  # `latest` itself read back intact
        BACKEND.load_model(root / "run")
        return "old" if saved.step == 2 else "new"  # new: one of the steps the child committed

    def after_rerun(root):
        assert_same_state(root / "run", reference["final"])

    return Writer(setup, lambda root: _train(root / "run", TRAIN_STEPS), state, after_rerun)


WRITERS = {
    "kb build": kb_writer,
    "index build (bm25)": lambda: index_writer("bm25"),
    "index build (dense, faiss)": lambda: index_writer("dense"),
    "triples": triples_writer,
    "training checkpoints": training_writer,
    "weights export": export_writer,
}


# ---- the harness ------------------------------------------------------------------------------


def _child(name: str, root: str, started) -> None:
    """The writer's process: say when the write starts, then write (until killed)."""
    torch.set_num_threads(1)
    writer = WRITERS[name]()
    writer.prepare()
    started.send(time.perf_counter())
    writer.write(Path(root))


@pytest.fixture(scope="module")
def processes():
    """forkserver with torch and this module preloaded: each writer is a separate process that
    starts in a fraction of a second."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(
        [
            "torch",
            "bm25s",
            "faiss",
            "reimagen.backends.torch.trainer",
            "reimagen.retrievers.bm25",
            "reimagen.retrievers.dense",
            "test_torch_trainer",
            __name__,
        ]
    )
    return context


def run_child(processes, name: str, root: Path, delay: float | None) -> tuple[str, float]:
    """Run the writer in a child; SIGKILL it ``delay`` s after its write began (None: let it
    finish). (how it ended: "killed" | "done", seconds from the write's start to the end)."""
    receive, send = processes.Pipe(duplex=False)
    proc = processes.Process(target=_child, args=(name, str(root), send))
    proc.start()
    send.close()
    try:
        assert receive.poll(120), "the writer process did not start"
        receive.recv()
        began = time.perf_counter()
        if delay is not None:
            time.sleep(delay)
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
        proc.join(300)
        took = time.perf_counter() - began
    finally:
        receive.close()
        if proc.is_alive():
            proc.kill()
            proc.join()
    assert proc.exitcode in (0, -signal.SIGKILL), f"{name}: the writer failed ({proc.exitcode})"
    return ("killed" if proc.exitcode == -signal.SIGKILL else "done"), took


def leftovers(root: Path) -> list[str]:
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob(".*")
        if any(mark in p.name for mark in TEMP_MARKS)
    )


def kill_matrix(processes, name: str, root: Path) -> dict:
    writer = WRITERS[name]()
    pristine, work = root / "pristine", root / "work"
    pristine.mkdir()
    writer.setup(pristine)
    assert writer.state(pristine) == "old"
    durations = []
    for _ in range(3):  # how long the write takes, start to finish, in a child
        shutil.copytree(pristine, work)
        durations.append(run_child(processes, name, work, None)[1])
        assert writer.state(work) == "new"
        shutil.rmtree(work)
    span = statistics.median(durations)
    rng = random.Random(zlib.crc32(name.encode()))
    counts = {"killed": 0, "survived": 0, "finished first": 0, "old": 0, "new": 0}
    failures = []
    for attempt in range(MAX_ATTEMPTS):
        if counts["killed"] >= KILLS:
            break
        shutil.copytree(pristine, work)
        ended, _ = run_child(processes, name, work, rng.uniform(0.0, span))
        if ended == "done":
            counts["finished first"] += 1
            shutil.rmtree(work)
            continue
        counts["killed"] += 1
        try:
            seen = writer.state(work)  # old or new, nothing else
            counts[seen] += 1
            writer.write(work)  # the rerun
            assert writer.state(work) == "new"
            assert not leftovers(work), leftovers(work)
            writer.after_rerun(work)
            counts["survived"] += 1
        except Exception as err:  # noqa: BLE001 (every failure is collected and reported)
            failures.append(f"kill {attempt}: {type(err).__name__}: {str(err)[:200]}")
        shutil.rmtree(work)
    counts["write seconds"] = round(span, 3)
    return {"counts": counts, "failures": failures}


@pytest.mark.parametrize("name", WRITERS)
def test_kill_9_at_random_moments(processes, tmp_path, name):
    result = kill_matrix(processes, name, tmp_path)
    counts = result["counts"]
    print(
        f"\n{name}: {counts['survived']}/{counts['killed']} kills survived "
        f"(read back old {counts['old']}, new {counts['new']}; {counts['finished first']} "
        f"writes finished before their kill; a write takes {counts['write seconds']} s)"
    )
    assert not result["failures"], result["failures"][:5]
    assert counts["killed"] >= KILLS, counts
