"""The front door (reimagen.generation.pretrained): Cascade.from_pretrained / Pipeline.from_pretrained on
a folder of tiny exported stages, against the same cascade assembled by hand; bad input."""

import numpy as np
import pytest
from toys import TINY_BASE, TINY_SR, export_stage, toy_cascade

import reimagen
from reimagen.core import registry
from reimagen.core.unet_config import PRESETS
from reimagen.diffusion.sampling_config import SamplingConfig
from reimagen.generation.cascade import Cascade, CascadeError, Stage
from reimagen.generation.pipeline import Pipeline
from reimagen.generation.shipped import DEFAULT_SAMPLING

FAST = SamplingConfig(sampler="ddim", steps=3, guidance="interleaved", eta=0.5)


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """(weights folder with base + sr, KB folder)."""
    return toy_cascade(tmp_path_factory.mktemp("pretrained"))


def test_cascade_from_pretrained_attaches_tuned_sampling_and_draws_the_hand_built_images(parts):
    folder, kb_dir = parts
    cascade = Cascade.from_pretrained(folder, kb=kb_dir, retriever="bm25", k=2, sampling=FAST)
    assert [(s.name, s.k) for s in cascade.stages] == [("base", 2), ("sr", 1)]
    assert cascade.stages[0].sampling == FAST  # the override, first stage only
    assert cascade.stages[1].sampling == DEFAULT_SAMPLING["sr"]  # tuned: w=1.5, aug 0.1
    low, high = cascade.generate(["a drawing of a rocket"], seed=5)
    assert low.images.shape == (1, 8, 8, 3) and high.images.shape == (1, 16, 16, 3)
    assert cascade.kb.records[int(low.neighbor_rows[0, 0])].text == "a drawing of a rocket"

    kb = reimagen.KnowledgeBase.open(kb_dir)
    bm25 = registry.get("retriever", "bm25")().fit(kb)
    by_hand = Cascade(
        [
            Stage(
                "base",
                Pipeline.from_checkpoint(folder / "base.safetensors", kb=kb, retriever=bm25),
                FAST,
                k=2,
            ),
            Stage(
                "sr",
                Pipeline.from_checkpoint(folder / "sr.safetensors", kb=kb, retriever=bm25),
                DEFAULT_SAMPLING["sr"],
                k=1,
            ),
        ]
    )
    low2, high2 = by_hand.generate(["a drawing of a rocket"], seed=5)
    np.testing.assert_array_equal(low.neighbor_rows, low2.neighbor_rows)
    np.testing.assert_array_equal(low.images, low2.images)
    np.testing.assert_array_equal(high.images, high2.images)


def test_pipeline_from_pretrained_tuned_sampling_by_stage_then_by_network_kind(parts, tmp_path):
    folder, kb_dir = parts
    base = Pipeline.from_pretrained(folder / "base.safetensors", kb=kb_dir, retriever="bm25")
    assert base.sampling == DEFAULT_SAMPLING["base"]  # static clipping, w_n = 15
    out = base.generate(["a drawing of a violin"], k=1, sampling=FAST)
    assert base.kb.records[int(out.neighbor_rows[0, 0])].text == "a drawing of a violin"
    assert Pipeline.from_pretrained(folder / "sr.safetensors").sampling == DEFAULT_SAMPLING["sr"]
    # a file that does not name its stage (e.g. a run's checkpoint): by network kind
    unnamed = export_stage(tmp_path / "w.safetensors", TINY_SR)
    assert Pipeline.from_pretrained(unnamed).sampling == DEFAULT_SAMPLING["sr"]
    baseline = export_stage(tmp_path / "b.safetensors", TINY_BASE, "baseline")
    assert Pipeline.from_pretrained(baseline).sampling == DEFAULT_SAMPLING["baseline"]


def test_pipeline_generate_uses_its_attached_sampling(parts):
    folder, kb_dir = parts
    pipe = Pipeline.from_pretrained(folder / "base.safetensors", kb=kb_dir, retriever="bm25")
    pipe.sampling = FAST
    implicit = pipe.generate(["a drawing of a cactus"], k=1, seed=2)
    explicit = pipe.generate(["a drawing of a cactus"], k=1, seed=2, sampling=FAST)
    assert implicit.nfe == 2 * FAST.steps
    np.testing.assert_array_equal(implicit.images, explicit.images)


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        (
            {"stages": ("sr",)},
            ValueError,
            r"^stages: sr is not a cascade; allowed: base \| baseline",
        ),
        (
            {"stages": ("base", "huge")},
            ValueError,
            r"^stages: unknown stage\(s\) \['huge'\]; allowed",
        ),
        (
            {"k": 9},
            ValueError,
            r"^k must be an integer in \[0, 8\] \(the base was trained with K=2\), got 9$",
        ),
        ({"k": "2"}, ValueError, r"^k must be an integer in \[0, 8\]"),
        (
            {"setting": "any"},
            ValueError,
            r"^setting must be one of same-style, cross-style; got 'any'$",
        ),
        ({"retriever": "none"}, ValueError, r"^retriever 'none' retrieves no neighbours; use k=0"),
        ({"retriever": "bm26"}, registry.RegistryError, r"unknown retriever 'bm26'"),
        ({"backend": "tpu"}, registry.RegistryError, r"unknown backend 'tpu'"),
        ({"sampling": {"steps": 2}}, TypeError, r"^sampling must be a SamplingConfig, got dict$"),
    ],
)
def test_bad_options_are_one_line_errors_before_any_load(parts, options, error, message):
    folder, kb_dir = parts
    with pytest.raises(error, match=message):
        Cascade.from_pretrained(folder, kb=kb_dir, **options)


def test_missing_or_misfitting_files_name_the_file(parts, tmp_path):
    folder, kb_dir = parts
    with pytest.raises(FileNotFoundError, match=r"^no shipped weights for stage 'base' at .*base"):
        Cascade.from_pretrained(tmp_path, stages=("base", "sr"), kb=kb_dir)
    export_stage(tmp_path / "base.safetensors", PRESETS["tiny"], "base")  # 16 px
    export_stage(tmp_path / "sr.safetensors", TINY_SR, "sr")
    with pytest.raises(
        CascadeError,
        match=r"^stages: .*sr.safetensors upsamples 8px images but "
        r"stage base makes 16px ones$",
    ):
        Cascade.from_pretrained(tmp_path, kb=kb_dir)
    with pytest.raises(FileNotFoundError, match=r"^kb: no knowledge base at .*nokb; build it"):
        Cascade.from_pretrained(folder, kb=tmp_path / "nokb")


def test_load_refuses_an_unknown_name():
    with pytest.raises(
        ValueError,
        match=r"^name must be one of default, base, baseline; "
        r"got 'nope'$",
    ):
        reimagen.load("nope")


def test_pipeline_from_pretrained_reads_a_run_folders_latest_ema(tmp_path):
    """A training run's folder: its latest checkpoint's EMA weights, the SR stage's tuned
    sampling for an SR network (the checkpoint does not name its stage)."""
    from reimagen.training.checkpoint import write_checkpoint

    backend = registry.get("backend", "torch")()
    model, ema = (backend.state_dict(backend.build_model(TINY_SR, seed=s)) for s in (1, 2))
    write_checkpoint(
        tmp_path / "run",
        3,
        model=model,
        ema=ema,
        optimizer={},
        config_json=TINY_SR.to_json(),
        state={"step": 3},
    )
    pipe = Pipeline.from_pretrained(tmp_path / "run", encoder="hash")
    assert pipe.sampling == DEFAULT_SAMPLING["sr"] and pipe.lowres_size == 8
    loaded = pipe.backend.state_dict(pipe.model)
    assert all(np.array_equal(loaded[name], ema[name]) for name in ema)
