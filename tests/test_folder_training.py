"""Training and benching on your own collection (issue 17 item 1): reimagen.training.folder_data,
``reimagen train --kb``, ``reimagen bench --kb`` and the ``evaluator`` component kind.

A synthetic collection of 20 drawn shapes (4 colours × 5 shapes, captioned "a red circle") plus a
byte-identical copy of one image under another caption, built into a 16 px KB in a temporary
folder; the tiny preset (16 px) trains on it. Oracles: neighbours are never the record itself
nor a copy of its image; held-out records are never a training example or neighbour; batches
are pure functions of the step; a run resumed halfway ends bit-identical to an uninterrupted one;
a resume on another KB is refused; bench writes its tables and calls a plugin evaluator.
"""

from __future__ import annotations

import json
import shutil
import typing

import numpy as np
import pytest
from PIL import Image

from reimagen import hookimpl
from reimagen.backends.torch import checkpoint as ckpt
from reimagen.bench.evaluators import HeldOutExample, centred_cosine, mse, pixel_metrics, psnr
from reimagen.cli.main import main
from reimagen.core import registry
from reimagen.diffusion.augment import resize_bilinear
from reimagen.diffusion.schedule import CosineSchedule
from reimagen.kb.builder import build_from_source
from reimagen.kb.folder_source import FolderSource
from reimagen.training import folder_data as ft
from reimagen.training.contract import TrainConfig
from reimagen.training.data import DataConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 200, 30),
}
SHAPES = ("circle", "square", "triangle", "cross", "ring")


def shape_mask(shape: str, size: int = 24) -> np.ndarray:
    y, x = np.mgrid[:size, :size] + 0.5
    c, r = size / 2, size * 0.38
    d = np.hypot(x - c, y - c)
    return {
        "circle": d < r,
        "square": (abs(x - c) < 0.8 * r) & (abs(y - c) < 0.8 * r),
        "triangle": (y > c - r) & (y < c + r) & (abs(x - c) < (y - c + r) / 2),
        "cross": (abs(x - c) < 0.3 * r) | (abs(y - c) < 0.3 * r),
        "ring": (d < r) & (d > 0.6 * r),
    }[shape]


def make_collection(folder, words=("",)) -> None:
    """20 RGBA shapes + a copy of red-circle.png; captions.jsonl. ``words`` vary the captions
    (a second collection with other records)."""
    folder.mkdir(parents=True)
    lines = []
    for colour, rgb in COLOURS.items():
        for shape in SHAPES:
            image = np.zeros((24, 24, 4), np.uint8)
            image[shape_mask(shape)] = (*rgb, 255)
            Image.fromarray(image, "RGBA").save(folder / f"{colour}-{shape}.png")
            lines.append(
                {"image": f"{colour}-{shape}.png", "text": f"a {words[0]}{colour} {shape}"}
            )
    shutil.copy(folder / "red-circle.png", folder / "red-circle-copy.png")
    lines.append({"image": "red-circle-copy.png", "text": "a red disc, the same drawing"})
    (folder / "captions.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


def build_kb(folder, out):
    return build_from_source(FolderSource(folder=folder), out, resolution=16, progress=False)


@pytest.fixture(scope="module")
def kb(tmp_path_factory):
    root = tmp_path_factory.mktemp("collection")
    make_collection(root / "images")
    return build_kb(root / "images", root / "kb")


def config(**changes) -> TrainConfig:
    base = {
        "steps": 4,
        "batch_size": 4,
        "neighbors": 2,
        "lr": 1e-3,
        "warmup_steps": 2,
        "checkpoint_every": 2,
        "seed": 5,
    }
    return TrainConfig(**{**base, **changes})


def source(kb, encoder_name="hash", **options):
    encoder = registry.get("encoder", encoder_name)()
    return ft.FolderBatchSource(
        kb,
        encoder,
        options.pop("config", config()),
        options.pop("data", None),
        image_size=16,
        **options,
    )


# ---- the split and the neighbours --------------------------------------------------------------


def test_the_split_is_a_pure_function_of_each_key(kb):
    train, held = ft.split_rows(kb)
    assert len(train) + len(held) == len(kb) and not np.intersect1d(train, held).size
    held_keys = {kb.records[int(r)].key for r in held}
    assert held_keys == {"folder/green-circle", "folder/blue-triangle", "folder/blue-ring"}
    assert all(ft.held_out(k) for k in held_keys)  # the rule looks at the key alone
    assert not ft.held_out("folder/red-circle") and ft.held_out("folder/x", fraction=1.0 - 1e-12)


def test_neighbours_never_the_record_itself_nor_a_copy_of_its_image(kb):
    made = source(kb, config=config(neighbors=3))
    circle, copy = kb.row("folder/red-circle"), kb.row("folder/red-circle-copy")
    assert kb.records[circle].sha256 == kb.records[copy].sha256  # the byte-identical pair
    for i, row in enumerate(made.train_rows):
        own = ft.same_image_rows(kb, [row])[0]
        assert row in own and not np.isin(made.triples[i], own).any()
    position = int(np.flatnonzero(made.train_rows == circle)[0])
    assert copy in ft.same_image_rows(kb, [circle])[0] and copy not in made.triples[position]
    assert len(set(made.triples[position])) == 3  # K distinct other records
    # the retriever did find its caption twins: "a red circle" -> other red things / circles
    texts = [kb.records[int(r)].text for r in made.triples[position]]
    assert any("red" in t or "circle" in t for t in texts), texts


def test_held_out_records_are_never_trained_on_nor_shown(kb):
    made = source(kb)
    seen_rows, seen_neighbors = set(), set()
    for step in range(60):
        _, info = made.batch_with_info(step)
        seen_rows.update(info.rows.tolist())
        seen_neighbors.update(info.neighbor_rows.ravel().tolist())
    held = set(made.held_out_rows.tolist())
    assert held and not held & seen_rows and not held & seen_neighbors
    assert not held & set(made.triples.ravel().tolist())
    assert len(seen_rows) > len(made.train_rows) // 2  # the draw covers the training split
    retriever = ft.fit_retriever(kb, "bm25", made.train_rows)
    found = ft.eval_neighbors(kb, retriever, made.held_out_rows, 2)
    assert found.shape == (len(held), 2) and not held & set(found.ravel().tolist())


def test_leak_check_fires_on_a_forged_triple(kb):
    made = source(kb)
    made.triples = made.triples.copy()
    made.triples[0, 0] = made.held_out_rows[0]
    with pytest.raises(ft.CollectionLeakError, match="outside the training split"):
        ft.check_no_leak(made)
    made.triples[0, 0] = made.train_rows[0]
    with pytest.raises(ft.CollectionLeakError, match="include its own image"):
        ft.check_no_leak(made)


def test_batches_are_pure_functions_of_the_step(kb):
    first = source(kb)
    assert first.triples_status in ("built", "loaded")
    again = source(kb)
    assert again.triples_status == "loaded" and np.array_equal(first.triples, again.triples)
    later = again.batch(7)
    again.batch(3)
    for a, b in ((first.batch(7), later), (first.batch(3), again.batch(3))):
        assert np.array_equal(a.images, b.images) and np.array_equal(a.noise, b.noise)
        assert np.array_equal(a.neighbor_images, b.neighbor_images)
        assert np.array_equal(a.text.tokens, b.text.tokens)
        assert np.array_equal(a.neighbor_text.tokens, b.neighbor_text.tokens)
        assert np.array_equal(a.use_text, b.use_text) and np.array_equal(a.t, b.t)
    batch, info = first.batch_with_info(7)
    assert batch.images.shape == (4, 16, 16, 3) and batch.neighbor_images.shape == (4, 2, 16, 16, 3)
    assert np.array_equal(batch.images, first.images(info.rows, 16))  # the record's own image
    assert [kb.records[int(r)].text for r in info.rows] == [
        first.prompts[int(np.flatnonzero(first.train_rows == r)[0])] for r in info.rows
    ]


def test_text_and_neighbour_dropout_follow_the_train_config(kb):
    made = source(kb, config=config(batch_size=64, p_drop_text=0.5, p_drop_neighbors=0.0))
    batch = made.batch(0)
    assert batch.use_neighbors.all() and 10 < (~batch.use_text).sum() < 54


def test_sr_stage_pairs_low_and_high_resolution_of_the_same_record(kb):
    made = source(kb, lowres_size=8, data=DataConfig(max_aug_level=0.0))
    batch, info = made.batch_with_info(2)
    assert batch.lowres.shape == (4, 16, 16, 3) and np.all(batch.aug_level == 0.0)
    expected = resize_bilinear(made.images(info.rows, 8), 16)
    # level 0 is t=0 of the cosine schedule, whose log-SNR is clipped at 20: σ(0) = 4.5e-5, not
    # 0, so the corruption leaks σ(0)·ε; |ε| < 6 for these 3,072 draws (fixed seed)
    leak = 6 * float(CosineSchedule().alpha_sigma(0.0)[1])
    np.testing.assert_allclose(batch.lowres, expected, atol=leak + 1e-6, rtol=0)
    noisy = source(kb, lowres_size=8, data=DataConfig(max_aug_level=0.5)).batch(2)
    assert np.all((noisy.aug_level >= 0) & (noisy.aug_level <= 0.5))
    assert not np.allclose(noisy.lowres, expected)


def test_a_kb_too_small_or_too_coarse_is_one_line(kb):
    with pytest.raises(ft.CollectionError, match="stores 16px images; the 32px network"):
        ft.check_collection(kb, image_size=32, k=2)
    with pytest.raises(ft.CollectionError, match="--k 17: the training split of .* has 18"):
        ft.check_collection(kb, image_size=16, k=17)


# ---- the command line: train, resume, export, bench --------------------------------------------


TRAIN = [
    "train",
    "--preset",
    "tiny",
    "--batch-size",
    "4",
    "--k",
    "2",
    "--lr",
    "1e-3",
    "--warmup",
    "2",
    "--checkpoint-every",
    "2",
    "--seed",
    "5",
    "--threads",
    "1",
    "--no-bf16",
]


def train(kb_folder, run_dir, steps, *extra):
    return main(
        [*TRAIN, "--kb", str(kb_folder), "--run-dir", str(run_dir), "--steps", str(steps), *extra]
    )


@pytest.fixture(scope="module")
def trained(kb, tmp_path_factory):
    """A 4-step run exported to <run>/base.safetensors (bare --export)."""
    run_dir = tmp_path_factory.mktemp("run")
    assert train(kb.folder, run_dir, 4, "--export") == 0
    return run_dir


def test_train_resume_is_bit_identical_and_records_the_kb(kb, trained, tmp_path, monkeypatch):
    monkeypatch.setenv("REIMAGEN_HOME", str(tmp_path / "home"))
    assert train(kb.folder, tmp_path / "half", 2) == 0
    assert train(kb.folder, tmp_path / "half", 4) == 0
    ours = ckpt.read_checkpoint(ckpt.latest_checkpoint(tmp_path / "half"))
    theirs = ckpt.read_checkpoint(ckpt.latest_checkpoint(trained))
    assert ours.step == theirs.step == 4
    for part in ("model", "ema", "optimizer"):
        a, b = getattr(ours, part), getattr(theirs, part)
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a), part
    facts = json.loads((trained / "run.json").read_text())
    assert facts["kb"]["fingerprint"] == kb.fingerprint and facts["kb"]["records"] == 21
    assert (trained / "base.safetensors").is_file()  # bare --export: beside the run
    from reimagen.training.checkpoint import training_recipe

    assert training_recipe(trained / "base.safetensors")["kb"]["fingerprint"] == kb.fingerprint


def test_the_python_equivalent_trains_the_same_run(kb, trained, tmp_path):
    """docs/own-data.md's Python snippet: FolderBatchSource + backend.train, bit-identical
    to ``reimagen train --kb`` with the same settings."""
    from reimagen import get

    model = get("preset", "tiny")()
    settings = config(bf16=False)  # TRAIN's flags
    made = ft.FolderBatchSource(kb, get("encoder", "hash")(), settings, image_size=model.image_size)
    get("backend", "torch")().train(model, settings, made, tmp_path / "py", progress=False)
    ours = ckpt.read_checkpoint(ckpt.latest_checkpoint(tmp_path / "py"))
    theirs = ckpt.read_checkpoint(ckpt.latest_checkpoint(trained))
    assert ours.step == theirs.step == 4
    assert all(np.array_equal(ours.ema[k], theirs.ema[k]) for k in theirs.ema)


def test_resume_on_another_kb_is_refused_in_one_line(kb, trained, tmp_path, capsys):
    make_collection(tmp_path / "other", words=("small ",))
    other = build_kb(tmp_path / "other", tmp_path / "otherkb")
    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    before = sorted(p.name for p in run_dir.rglob("*"))
    capsys.readouterr()
    assert train(other.folder, run_dir, 6) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"--kb: the run in {run_dir} was trained on" in err, err
    assert sorted(p.name for p in run_dir.rglob("*")) == before
    assert not (other.folder / "triples").exists()  # refused before any neighbour was built


class SpyEvaluator:
    """A plugin evaluator: records what it was given, returns one metric."""

    calls: typing.ClassVar[list] = []

    @hookimpl
    def reimagen_register_evaluators(self, register):
        def evaluate(images, examples):
            SpyEvaluator.calls.append((images.copy(), list(examples)))
            return {"mean brightness": float(images.mean() / 255.0)}

        register("spy", lambda **options: evaluate)


@pytest.fixture
def spy_registry():
    SpyEvaluator.calls = []
    yield registry.reset(extra_plugins=(SpyEvaluator(),), autoload=False)
    registry.reset()


def test_bench_kb_writes_the_tables_and_calls_a_plugin_evaluator(
    kb, trained, tmp_path, spy_registry, capsys
):
    out = tmp_path / "bench"
    argv = [
        "bench",
        "--kb",
        str(kb.folder),
        "--weights",
        str(trained),
        "--n",
        "3",
        "--k",
        "2",
        "--sampler",
        "ddim",
        "--steps",
        "2",
        "--threads",
        "1",
        "--out",
        str(out),
        "--evaluators",
        "pixel,spy",
    ]
    assert main(argv) == 0
    text = (out / "results.md").read_text()
    assert "| K | right | shuffled | none | right vs shuffled |" in text
    assert "| row | target PSNR | target MSE | target corr | ref PSNR | mean brightness |" in text
    blob = json.loads((out / "results.json").read_text())
    assert [r["label"] for r in blob["rows"]] == [
        "copy top-1 reference (no network)",
        "no retrieval (K=0)",
        "Re-Imagen K=2",
    ]
    assert blob["kb"]["held_out"] == 3 and blob["evaluators"] == ["pixel", "spy"]
    assert all(
        np.isfinite(r["mean brightness"]) and np.isfinite(r["target PSNR"]) for r in blob["rows"]
    )
    assert sorted(p.name for p in out.iterdir()) == [
        "grid_00.png",
        "grid_01.png",
        "grid_02.png",
        "report.html",
        "results.json",
        "results.md",
        "targets.png",
    ]
    assert len(SpyEvaluator.calls) == 3  # the copy row, K=0 and K=2
    images, examples = SpyEvaluator.calls[-1]
    held = {kb.records[int(r)].key for r in ft.split_rows(kb)[1]}
    assert images.shape == (3, 16, 16, 3) and images.dtype == np.uint8
    assert all(isinstance(e, HeldOutExample) for e in examples)
    assert {e.key for e in examples} == held  # only held-out records are evaluated
    assert all(
        e.references.shape == (2, 16, 16, 3) and not set(e.reference_keys) & held for e in examples
    )
    copy_images, _ = SpyEvaluator.calls[0]  # the copy row shows each top-1 reference
    assert np.array_equal(copy_images, np.stack([e.references[0] for e in examples]))
    signal = blob["signal"][0]
    assert signal["k"] == 2 and all(np.isfinite(signal[c]) for c in ("right", "shuffled", "none"))


def test_pixel_metrics_on_known_images():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    assert np.all(psnr(a, a) == 100.0) and np.all(mse(a, a) == 0.0)
    np.testing.assert_allclose(centred_cosine(a, a), 1.0)
    np.testing.assert_allclose(centred_cosine(a, 255 - a), -1.0)
    black, white = np.zeros((1, 4, 4, 3), np.uint8), np.full((1, 4, 4, 3), 255, np.uint8)
    assert mse(black, white)[0] == 1.0 and psnr(black, white)[0] == 0.0
    example = HeldOutExample(
        key="k",
        text="t",
        target=a[0],
        references=np.stack([a[1], a[0]]),
        reference_keys=("r1", "r0"),
    )
    metrics = pixel_metrics(a[:1], [example])
    assert metrics["target PSNR"] == 100.0 and metrics["ref PSNR"] == 100.0  # nearest: r0


def test_evaluator_is_a_registered_kind_with_the_builtin_pixel():
    assert "evaluator" in registry.kinds() and "pixel" in registry.names("evaluator")
    assert registry.get("evaluator", "pixel")() is pixel_metrics


# ---- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "case, line, message",
    [
        ("missing image", 2, "missing.png: image file not found ({f}/captions.jsonl: line 2)"),
        ("empty caption", 2, "{f}/captions.jsonl: line 2: empty caption for image 'b.png'"),
        (
            "duplicate id",
            2,
            ("{f}/captions.jsonl: line 2: image 'a.jpg' has the record id 'folder/a' of line 1"),
        ),
        ("duplicate path", 3, "{f}/captions.jsonl: line 3: image 'a.png' already listed on line 1"),
        ("non-image file", 2, "{f}/captions.jsonl: line 2: notes.txt is not an image Pillow reads"),
        (
            "odd characters",
            2,
            (
                "{f}/captions.jsonl: line 2: image 'a_b.png' would be stored as "
                "images/folder/a_b.png like line 1's"
            ),
        ),
    ],
)
def test_bad_folder_is_one_line_naming_the_line(case, line, message, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("REIMAGEN_HOME", str(tmp_path / "home"))
    folder = tmp_path / "f"
    folder.mkdir()
    for name in ("a.png", "b.png", "a b.png", "a_b.png"):
        Image.new("RGB", (8, 8), "red").save(folder / name)
    Image.new("RGB", (8, 8), "blue").save(folder / "a.jpg")
    (folder / "notes.txt").write_text("not an image")
    second = {
        "missing image": "missing.png",
        "empty caption": "b.png",
        "duplicate id": "a.jpg",
        "duplicate path": "b.png",
        "non-image file": "notes.txt",
        "odd characters": "a_b.png",
    }
    first = "a b.png" if case == "odd characters" else "a.png"
    lines = [
        {"image": first, "text": "one"},
        {"image": second[case], "text": " " if case == "empty caption" else "two"},
    ]
    if case == "duplicate path":
        lines.append({"image": "a.png", "text": "three"})
    (folder / "captions.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    before = sorted(tmp_path.rglob("*"))
    argv = [
        "kb",
        "build",
        "--source",
        "folder",
        "--folder",
        str(folder),
        "--out",
        str(tmp_path / "kb"),
        "--quiet",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"line {line}" in err, err
    assert message.replace("{f}", str(folder)) in err, err
    assert sorted(tmp_path.rglob("*")) == before  # nothing half-written


def test_kb_that_is_an_unbuilt_folder_is_one_line(kb, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("REIMAGEN_HOME", str(tmp_path / "home"))
    make_collection(tmp_path / "images")  # the source folder, not a KB
    for argv in (
        ["train", "--kb", str(tmp_path / "images"), "--run-dir", str(tmp_path / "r")],
        ["bench", "--kb", str(tmp_path / "images"), "--out", str(tmp_path / "o")],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "--kb: no knowledge base at" in err, err
    assert not (tmp_path / "r").exists() and not (tmp_path / "o").exists()
