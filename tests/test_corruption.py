"""The corruption matrix (issue #14): every artifact reimagen writes and later reads, damaged 80
ways (40 single-bit flips and 40 truncations, at offsets drawn from a fixed seed per artifact
type), must be refused with a one-line IntegrityError naming the damaged file. A load that
returns, or fails with any other exception, counts as undetected.

The default tier damages toy artifacts (the six-item KB of tests/toys.py, the tiny U-Net,
hash-encoder indexes); ``REIMAGEN_SLOW=1`` adds real-size ones (the shipped weights, the emoji
KB's arrays, indexes over its 7,273 captions, a cpu-base-sized checkpoint). ``-s`` prints the
table. Also here: resuming past a damaged checkpoint, and what kill -9 leaves beside a KB.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import attrs
import numpy as np
import pytest
import torch
from test_torch_trainer import SyntheticSource, assert_same_state, config
from toys import WORDS, toy_kb

from reimagen.backends.torch import BACKEND
from reimagen.backends.torch.trainer import Trainer, train
from reimagen.bench import evaluator as ev
from reimagen.core import digests, registry
from reimagen.core.digests import IntegrityError
from reimagen.core.paths import default_kb_dir
from reimagen.core.unet_config import PRESETS
from reimagen.encoders.table import EncodingTable
from reimagen.kb.builder import build_knowledge_base
from reimagen.kb.knowledge_base import KnowledgeBase
from reimagen.kb.records import CHECKED
from reimagen.kb.triples import build_triples, load_triples, save_triples
from reimagen.retrievers.index import index_folder, index_name
from reimagen.training import checkpoint as ckpt

TESTS_DIR = Path(__file__).parent


FLIPS = TRUNCATIONS = 40
TINY = PRESETS["tiny"]


@attrs.frozen
class Artifact:
    files: list[Path]  # the files whose damage must be caught (cases go round-robin over them)
    load: Callable[[], object]  # read the artifact the way the library does


# ---- the matrix ---------------------------------------------------------------------------------


def cases(kind: str, files: list[Path]) -> list[tuple[str, Path, int, int]]:
    """(action, file, offset, bit): 40 bit flips, then 40 truncations to ``offset`` bytes.
    Deterministic: the seed is the artifact type's name."""
    rng = random.Random(zlib.crc32(kind.encode()))
    sizes = {path: path.stat().st_size for path in files}
    out = []
    for action, count in (("flip", FLIPS), ("truncate", TRUNCATIONS)):
        for i in range(count):
            path = files[i % len(files)]
            out.append((action, path, rng.randrange(sizes[path]), rng.randrange(8)))
    return out


def run_matrix(kind: str, artifact: Artifact) -> list[str]:
    """Damage, load, restore, for every case; the cases that were not detected properly."""
    artifact.load()  # intact: it must load
    failures = []
    for action, path, offset, bit in cases(kind, artifact.files):
        original = path.read_bytes()
        damaged = bytearray(original)
        if action == "flip":
            damaged[offset] ^= 1 << bit
        else:
            del damaged[offset:]
        path.write_bytes(bytes(damaged))
        try:
            artifact.load()
            failures.append(f"{action} {path.name}@{offset}: loaded silently")
        except IntegrityError as err:
            message = str(err)
            if "\n" in message or path.name not in message:
                failures.append(f"{action} {path.name}@{offset}: message {message!r}")
        except Exception as err:  # noqa: BLE001 (any other exception is a miss)
            failures.append(f"{action} {path.name}@{offset}: {type(err).__name__}: {err}")
        finally:
            path.write_bytes(original)
    artifact.load()  # restored: it loads again
    total = FLIPS + TRUNCATIONS
    print(f"\n{kind}: {total - len(failures)}/{total} detected ({len(artifact.files)} files)")
    return failures


# ---- toy artifacts ------------------------------------------------------------------------------


def folder_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def retriever(name: str):
    hashed = {"encoder": "hash", "encoder_options": {"dim": 32}}
    options = {
        "bm25": {},
        "tfidf": {},
        "dense": hashed,
        "hybrid": {"encoder": "hash", "dense_options": {"encoder_options": {"dim": 32}}},
        "bm25-sharded": {"shards": 2},
        "dense-sharded": {**hashed, "shards": 2},
    }[name]
    return registry.get("retriever", name)(**options)


def saved_index(kb, name: str) -> Artifact:
    folder = index_folder(kb.folder, index_name(name))
    retriever(name).fit(kb).save(folder)
    cls = type(retriever(name))
    return Artifact(folder_files(folder), lambda: cls.load(folder, kb).search(["robot"], 2))


def exported_weights(folder: Path) -> Artifact:
    path = BACKEND.save_model(
        BACKEND.build_model(TINY, seed=0), folder / "w.safetensors", dtype="float16"
    )
    return Artifact([path], lambda: BACKEND.load_model(path))


def checkpoint_step(run: Path, sizes: dict[str, tuple[int, ...]]) -> Artifact:
    rng = np.random.default_rng(0)
    arrays = {key: rng.standard_normal(shape, dtype=np.float32) for key, shape in sizes.items()}
    folder = ckpt.write_checkpoint(
        run,
        1,
        model=arrays,
        ema=arrays,
        optimizer=arrays,
        config_json=TINY.to_json(),
        state={"loss": 0.5},
    )
    return Artifact(folder_files(folder), lambda: ckpt.read_checkpoint(folder))


def triples_file(kb, path: Path) -> Artifact:
    found = build_triples(kb.texts, retriever("bm25").fit(kb), 2, [[r] for r in range(len(kb))])
    save_triples(path, found)
    files = [path] + ([digests.sidecar(path)] if path.suffix == ".npz" else [])
    return Artifact(files, lambda: load_triples(path, kb, queries=kb.texts))


def encoding_table(folder: Path) -> Artifact:
    encoder = registry.get("encoder", "hash")()
    texts = [f"a {word} on a red background" for word in WORDS]
    EncodingTable.build_or_load(encoder, texts, folder)
    return Artifact(folder_files(folder), lambda: EncodingTable.load(encoder, texts, folder))


def run_facts_file(run: Path) -> Artifact:
    from reimagen.training.run_record import RUN_FILE, run_facts

    run_facts(run, "hash", {"p_same_style": 0.75})
    path = run / RUN_FILE
    return Artifact([path, digests.sidecar(path)], lambda: run_facts(run, None, None))


def evaluator(folder: Path) -> Artifact:
    shutil.copytree(ev.EVALUATOR_DIR, folder)
    return Artifact(folder_files(folder), lambda: ev.Evaluator.load(folder))


@pytest.fixture(scope="module")
def toys(tmp_path_factory) -> dict[str, Callable[[], Artifact]]:
    root = tmp_path_factory.mktemp("toys")
    kb = toy_kb(root / "kb")
    kb_files = {name: kb.folder / name for name in CHECKED}
    pngs = [kb.folder / r.image for r in kb.records]
    open_kb = KnowledgeBase.open
    artifacts = {
        "checkpoint step folder": lambda: checkpoint_step(root / "run", {"w": (64, 32), "b": (7,)}),
        "exported weights (.safetensors)": lambda: exported_weights(root),
        "KB kb.json, manifest, entities, SHA256SUMS": lambda: Artifact(
            [
                kb_files["kb.json"],
                kb_files["manifest.jsonl"],
                kb_files["entities.json"],
                kb.folder / digests.SUMS,
            ],
            lambda: open_kb(kb.folder, verify=False),
        ),
        "KB packed array (images.npy)": lambda: Artifact(
            [kb_files["images.npy"]], lambda: open_kb(kb.folder, verify=False)
        ),
        "KB images (PNG, open(verify=True))": lambda: Artifact(
            pngs, lambda: open_kb(kb.folder, verify=True)
        ),
        "triples (.safetensors)": lambda: triples_file(kb, root / "t.safetensors"),
        "triples (.npz + .sha256)": lambda: triples_file(kb, root / "t.npz"),
        "prompt encoding table": lambda: encoding_table(root / "table"),
        "evaluator (shipped, a copy)": lambda: evaluator(root / "evaluator"),
        "training run facts (run.json + .sha256)": lambda: run_facts_file(root / "facts"),
    }
    for name in ("bm25", "tfidf", "dense", "hybrid", "bm25-sharded", "dense-sharded"):
        label = f"{name} index" + (" (faiss)" if "dense" in name else "")
        artifacts[label] = lambda name=name: saved_index(kb, name)
    return artifacts


TOY_KINDS = [
    "checkpoint step folder",
    "exported weights (.safetensors)",
    "KB kb.json, manifest, entities, SHA256SUMS",
    "KB packed array (images.npy)",
    "KB images (PNG, open(verify=True))",
    "bm25 index",
    "tfidf index",
    "dense index (faiss)",
    "hybrid index",
    "bm25-sharded index",
    "dense-sharded index (faiss)",
    "triples (.safetensors)",
    "triples (.npz + .sha256)",
    "prompt encoding table",
    "evaluator (shipped, a copy)",
    "training run facts (run.json + .sha256)",
]


@pytest.mark.parametrize("kind", TOY_KINDS)
def test_every_damage_is_detected(toys, kind):
    failures = run_matrix(kind, toys[kind]())
    assert not failures, f"{kind}: {len(failures)} of 80 not detected: {failures[:5]}"


# ---- real size (slow tier) ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_kb(tmp_path_factory):
    """A copy of the emoji KB's checked files (not its PNGs: open(verify=False) reads none)."""
    source = default_kb_dir()
    if not (source / digests.SUMS).is_file():
        pytest.skip(f"no emoji KB with checksums at {source} (reimagen kb build)")
    folder = tmp_path_factory.mktemp("real") / "kb"
    folder.mkdir()
    for name in (*CHECKED, digests.SUMS):
        shutil.copyfile(source / name, folder / name)
    return KnowledgeBase.open(folder, verify=False)


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["base", "sr"])
def test_real_size_shipped_weights(tmp_path, stage):
    from reimagen.generation.shipped import weights_path

    path = tmp_path / f"{stage}.safetensors"
    shutil.copyfile(weights_path(stage), path)
    assert not run_matrix(
        f"shipped {stage} weights", Artifact([path], lambda: BACKEND.load_model(path))
    )


@pytest.mark.slow
def test_real_size_kb(real_kb):
    files = [real_kb.folder / name for name in (*CHECKED, digests.SUMS)]
    artifact = Artifact(files, lambda: KnowledgeBase.open(real_kb.folder, verify=False))
    assert not run_matrix("emoji KB (kb.json, manifest, entities, images.npy)", artifact)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["bm25", "dense", "tfidf"])
def test_real_size_index(real_kb, name):
    options = {"encoder": "hash", "encoder_options": {"dim": 384}} if name == "dense" else {}
    folder = index_folder(real_kb.folder, index_name(name))
    registry.get("retriever", name)(**options).fit(real_kb).save(folder)
    cls = registry.get("retriever", name)
    artifact = Artifact(folder_files(folder), lambda: cls.load(folder, real_kb))
    assert not run_matrix(f"emoji KB {name} index", artifact)


@pytest.mark.slow
def test_real_size_checkpoint(tmp_path):
    sizes = {"w": (5_330_000 // 2,), "v": (5_330_000 // 2,)}  # cpu-base: 5.33M parameters
    assert not run_matrix("cpu-base-sized checkpoint", checkpoint_step(tmp_path, sizes))


# ---- resuming past a damaged checkpoint ---------------------------------------------------------


def flip_byte(path: Path, offset: int = -100) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


DAMAGES = {  # what happens to a run with steps 1 and 2, latest -> step 2; (damage, resumes at)
    "flipped byte in the latest step": (
        lambda c: flip_byte(c / "step-00000002" / "ema.safetensors"),
        1,
    ),
    "truncated state.json of the latest step": (
        lambda c: (c / "step-00000002" / "state.json").write_text("{"),
        1,
    ),
    "garbage latest": (lambda c: (c / "latest").write_bytes(b"\x00\xffgarbage"), 2),
    "latest names a missing step": (lambda c: (c / "latest").write_text("step-00000009\n"), 2),
    "deleted latest": (lambda c: (c / "latest").unlink(), 2),
    "garbage latest and a damaged step 2": (
        lambda c: [
            (c / "latest").write_text("zzz"),
            flip_byte(c / "step-00000002" / "model.safetensors"),
        ],
        1,
    ),
}


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # bit-identity needs one thread count throughout
    run = tmp_path_factory.mktemp("reference")
    train(TINY, config(3), SyntheticSource(), run, progress=False)
    yield ckpt.read_checkpoint(ckpt.latest_checkpoint(run))
    torch.set_num_threads(threads)


@pytest.mark.parametrize("damage", DAMAGES)
def test_resume_falls_back_to_the_newest_good_checkpoint(tmp_path, caplog, reference_run, damage):
    run = tmp_path / "run"
    train(TINY, config(2), SyntheticSource(), run, progress=False)  # keeps steps 1 and 2
    harm, expected = DAMAGES[damage]
    harm(run / "checkpoints")
    with caplog.at_level(logging.WARNING, logger="reimagen.training.checkpoint"):
        trainer = Trainer(TINY, config(3), SyntheticSource(), run, progress=False)
    assert trainer.step == expected, damage
    warnings = [r.getMessage() for r in caplog.records if "not the latest" in r.getMessage()]
    assert warnings and all("\n" not in w for w in warnings), caplog.text
    trainer.run()  # on to step 3: the same tensors as a run that was never damaged
    assert_same_state(run, reference_run)
    events = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert any(e.get("event") == "resume-fallback" for e in events)


def test_no_good_checkpoint_is_an_error_not_step_0(tmp_path):
    run = tmp_path / "run"
    train(TINY, config(2), SyntheticSource(), run, progress=False)
    for step in (1, 2):
        flip_byte(run / "checkpoints" / ckpt.step_dir_name(step) / "model.safetensors")
    with pytest.raises(ckpt.CheckpointError, match=r"no checkpoint .* reads back intact") as err:
        Trainer(TINY, config(3), SyntheticSource(), run, progress=False)
    assert "\n" not in str(err.value) and "model.safetensors" in str(err.value)


def test_a_checkpoint_from_before_checksums_is_read_with_a_warning(tmp_path, caplog):
    """Runs that began before SHA256SUMS existed keep resuming (their steps have none)."""
    run = tmp_path / "run"
    train(TINY, config(1), SyntheticSource(), run, progress=False)
    folder = ckpt.latest_checkpoint(run)
    (folder / digests.SUMS).unlink()
    with caplog.at_level(logging.WARNING, logger="reimagen.training.checkpoint"):
        assert ckpt.read_checkpoint(folder).step == 1
    assert "unverified" in caplog.text
    with pytest.raises(ckpt.CheckpointError, match="already the committed checkpoint"):
        ckpt.write_checkpoint(run, 1, model={}, ema={}, optimizer={}, config_json="{}", state={})


# ---- caches rebuild; a KB without checksums is refused ------------------------------------------


def test_a_damaged_encoding_table_is_encoded_again(tmp_path, caplog):
    artifact = encoding_table(tmp_path / "table")
    flip_byte(tmp_path / "table" / "tokens.npy")
    encoder = registry.get("encoder", "hash")()
    texts = [f"a {word} on a red background" for word in WORDS]
    with caplog.at_level(logging.WARNING, logger="reimagen.encoders.table"):
        table = EncodingTable.build_or_load(encoder, texts, tmp_path / "table")
    assert "tokens.npy" in caplog.text
    np.testing.assert_array_equal(table.encode(texts).pooled, encoder.encode(texts).pooled)
    artifact.load()  # whole again


def test_a_damaged_index_is_rebuilt_by_open_or_build(tmp_path, caplog):
    from reimagen.retrievers.index import open_or_build

    kb = toy_kb(tmp_path / "kb")
    folder = index_folder(kb.folder, index_name("bm25"))
    open_or_build(kb, folder, "bm25")
    flip_byte(folder / "bm25s" / "data.csc.index.npy", offset=-4)
    with caplog.at_level(logging.WARNING, logger="reimagen.retrievers.index"):
        _, status, reason = open_or_build(kb, folder, "bm25")
    assert status == "rebuilt" and "data.csc.index.npy" in reason and "rebuilding" in caplog.text
    assert open_or_build(kb, folder, "bm25")[1] == "loaded"


def test_a_kb_without_checksums_is_refused_with_how_to_rebuild(tmp_path):
    kb = toy_kb(tmp_path / "kb")
    (kb.folder / digests.SUMS).unlink()
    with pytest.raises(IntegrityError, match=r"SHA256SUMS: missing .*reimagen kb build"):
        KnowledgeBase.open(kb.folder, verify=False)


def test_the_cli_reports_a_damaged_kb_in_one_line(tmp_path, capsys):
    from reimagen.cli.main import main

    kb = toy_kb(tmp_path / "kb")
    flip_byte(kb.folder / "kb.json", offset=10)
    assert main(["retrieve", "--kb", str(kb.folder), "--retriever", "bm25", "robot"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "kb.json" in err and "Traceback" not in err


# ---- what kill -9 during `kb build` leaves, and the rerun that cleans it ------------------------

CHILD = """
import os, signal, sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
import numpy as np
from reimagen.core import folder_swap
from reimagen.kb import builder as kbm

folder, point = Path({folder!r}), {point!r}
rng = np.random.default_rng(0)

def items(n):
    for i in range(n):
        if point == "items" and i == 40:
            os.kill(os.getpid(), signal.SIGKILL)  # mid-staging: thousands of files in real life
        yield (f"t/{{i}}", f"caption {{i}}", "t", "", rng.integers(0, 255, (8, 8, 4), np.uint8))

real_replace, real_carry, real_exchange = os.replace, kbm._carry_over, folder_swap.exchange
def replace(src, dst):
    if point == "renames" and Path(src).name.startswith(f".{{folder.name}}.building-"):
        os.kill(os.getpid(), signal.SIGKILL)  # the old KB is aside, the new one not in place
    return real_replace(src, dst)
def carry(old, new):
    if point in ("carry", "renames-carry"):
        os.kill(os.getpid(), signal.SIGKILL)  # swapped; the old KB still aside, index in it
    return real_carry(old, new)
def exchange(a, b):
    if point.startswith("renames"):
        return False  # the two-rename fallback (no renameat2)
    done = real_exchange(a, b)
    if point == "swap":
        os.kill(os.getpid(), signal.SIGKILL)  # exchanged: the old KB at the staging name
    return done
os.replace, kbm._carry_over, folder_swap.exchange = replace, carry, exchange
kbm.build_knowledge_base(items(60), folder, resolution=8, progress=False)
"""


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(".kb."))


@pytest.mark.parametrize("point", ["items", "swap", "carry", "renames", "renames-carry"])
def test_rerun_cleans_what_kill_9_left(tmp_path, point):
    folder = tmp_path / "kb"
    toy_kb(folder)
    (folder / "indexes").mkdir()
    (folder / "indexes" / "marker").write_text("an index of the old KB")
    child = subprocess.run(
        [sys.executable, "-c", CHILD.format(tests=str(TESTS_DIR), folder=str(folder), point=point)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert leftovers(tmp_path), "the kill left nothing behind: the fault point was not reached"
    kb = toy_kb(folder)  # the rerun
    assert leftovers(tmp_path) == []
    assert len(KnowledgeBase.open(kb.folder)) == len(WORDS)
    assert (folder / "indexes" / "marker").read_text() == "an index of the old KB"


HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(60)
"""


def test_a_running_build_is_left_alone(tmp_path):
    """A staging folder another live process holds (flock) survives a concurrent build."""
    staging = tmp_path / f".kb.building-{os.getpid()}-live"
    staging.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(staging)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        old = time.time() - 7200  # even an old folder: the lock says a build is running
        os.utime(staging, (old, old))
        toy_kb(tmp_path / "kb")
        assert staging.is_dir()
    finally:
        holder.kill()
        holder.wait()
    toy_kb(tmp_path / "kb")
    assert not staging.exists()


def test_a_build_with_nothing_left_over_leaves_nothing(tmp_path):
    build_knowledge_base(
        [("a/0", "one", "a", "", np.zeros((8, 8, 4), np.uint8))],
        tmp_path / "kb",
        resolution=8,
        progress=False,
    )
    assert leftovers(tmp_path) == []
