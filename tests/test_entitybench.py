"""EntityBench scoring, prompt sets and the bench / ablate commands (reimagen.bench).

Scoring is checked on hand-made cases with the shipped evaluator and real Twemoji composites: a
composite scored against its own ground truth is faithful; a prompt that asks for another colour
or corner is not aligned (and so not faithful) while the entity still counts. The commands run
end to end on a tiny network, a tiny emoji knowledge base and the hash encoder."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from reimagen.bench import entitybench as eb
from reimagen.bench import prompt_sets as ps
from reimagen.bench import scoring, tables
from reimagen.bench.evaluator import Evaluator, read_meta
from reimagen.bench.scene_composer import target_drawings
from reimagen.bench.significance import fisher_greater, wilson_interval
from reimagen.cli.main import main
from reimagen.kb import scenes as sc
from reimagen.kb.splits import load_split

NAMES = ["red apple", "dragon", "flag Japan", "rocket", "pizza", "violin"]
COLOUR = {
    "red apple": "blue",
    "dragon": "white",
    "flag Japan": "blue",
    "rocket": "yellow",
    "pizza": "blue",
    "violin": "white",
}  # a background each drawing is legible on


@pytest.fixture(scope="module")
def judge():
    return Evaluator.load()


@pytest.fixture(scope="module")
def known():
    return frozenset(read_meta()["entities"])


@pytest.fixture(scope="module")
def split():
    return load_split()


def _prompt(split, name, background, position, size) -> ps.BenchPrompt:
    scene = sc.Scene(entity=name, background=background, position=position, size=size)
    return ps.BenchPrompt(
        prompt=sc.prompt(scene, 0),
        scene=scene,
        tier=split.tier(name),
        category=split.category(name),
    )


# ---- scoring ----------------------------------------------------------------------------------


def test_a_composite_against_its_own_truth_is_faithful_and_a_wrong_prompt_is_not(judge, split):
    _, drawings = target_drawings(NAMES)
    truth, images = [], []
    for name, drawing in zip(NAMES, drawings):
        assert COLOUR[name] in sc.legible_colours(drawing)
        truth.append(_prompt(split, name, COLOUR[name], "center", "large"))
        images.append(sc.compose(drawing, truth[-1].scene, 32))
    images = np.stack(images)
    right = scoring.score_images(judge, truth, images)
    for metric in scoring.METRICS:
        assert right[metric].all(), metric
    assert right["predicted"] == NAMES

    other = next(c for c in sc.COLOURS if c != truth[0].scene.background)
    wrong = [
        _prompt(split, NAMES[0], other, "center", "large"),  # another background colour
        _prompt(split, NAMES[1], truth[1].scene.background, "top right", "large"),  # corner
        _prompt(split, NAMES[2], truth[2].scene.background, "center", "small"),  # size only
        _prompt(split, NAMES[4], truth[3].scene.background, "center", "large"),  # entity only
    ]
    scored = scoring.score_images(judge, wrong, images[:4])
    np.testing.assert_array_equal(scored["background"], [False, True, True, True])
    np.testing.assert_array_equal(scored["position"], [True, False, True, True])
    np.testing.assert_array_equal(scored["size"], [True, True, False, True])
    np.testing.assert_array_equal(scored["aligned"], [False, False, True, True])
    np.testing.assert_array_equal(scored["entity_top1"], [True, True, True, False])
    np.testing.assert_array_equal(scored["faithful"], [False, False, True, False])


def test_summarise_counts_and_means_by_tier_and_category(split):
    frequent = split.frequent[:2]
    unseen = split.unseen[:1]
    prompts = [_prompt(split, n, "blue", "center", "large") for n in (*frequent, *unseen)]
    scores = {m: np.array([True, False, True]) for m in scoring.METRICS}
    scores["aligned"] = np.array([True, True, False])
    summary = scoring.summarise(prompts, scores)
    # summarise reports rates rounded to 4 decimals: half a unit of the 4th decimal is the bound.
    assert summary["all"]["n"] == 3
    assert summary["all"]["faithful"] == pytest.approx(2 / 3, rel=0, abs=5e-5)
    assert summary["all"]["aligned"] == pytest.approx(2 / 3, rel=0, abs=5e-5)
    assert summary["tier/frequent"] == {"n": 2, **{m: 0.5 for m in scoring.METRICS}, "aligned": 1.0}
    assert summary["tier/unseen"]["n"] == 1 and summary["tier/unseen"]["faithful"] == 1.0
    assert "tier/rare" not in summary
    categories = {p.category for p in prompts}
    assert {f"category/{c}" for c in categories} == {g for g in summary if g.startswith("cat")}
    assert sum(summary[f"category/{c}"]["n"] for c in categories) == 3


# ---- prompt sets ------------------------------------------------------------------------------


def test_default_prompts_are_a_pure_function_of_the_seed(known, split):
    one = ps.default_prompts(3, seed=5, known=known)
    assert one == ps.default_prompts(3, seed=5, known=known)
    assert one != ps.default_prompts(3, seed=6, known=known)
    assert [p.tier for p in one] == ["frequent"] * 3 + ["rare"] * 3 + ["unseen"] * 3
    _, drawings = target_drawings([p.entity for p in one])
    for p, drawing in zip(one, drawings):
        assert split.tier(p.entity) == p.tier and split.category(p.entity) == p.category
        assert sc.display_name(p.entity) in p.prompt  # the entity is always named
        assert p.scene.background in sc.legible_colours(drawing)


def _write(path, lines):
    path.write_text("\n".join(json.dumps(x) if isinstance(x, dict) else x for x in lines) + "\n")
    return path


GOOD = {
    "prompt": "a small red apple in the top left corner on a blue background",
    "entity": "red apple",
    "background": "blue",
    "position": "top left",
    "size": "small",
}


def test_read_prompts_parses_a_valid_file(tmp_path, known, split):
    path = _write(tmp_path / "p.jsonl", [GOOD, "", {**GOOD, "entity": "dragon"}])
    prompts = ps.read_prompts(path, known)
    assert [p.entity for p in prompts] == ["red apple", "dragon"]
    assert prompts[0].scene == sc.Scene(
        entity="red apple", background="blue", position="top left", size="small"
    )
    assert prompts[1].tier == split.tier("dragon")
    ps.write_prompts(tmp_path / "again.jsonl", prompts)  # the writer's output reads back
    assert ps.read_prompts(tmp_path / "again.jsonl", known) == prompts


@pytest.mark.parametrize(
    "line, message",
    [
        (
            {**GOOD, "entity": "red appel"},
            r":3: unknown entity 'red appel' \(did you mean 'red apple'.*\); entity must be one of the",
        ),
        (
            {**GOOD, "background": "teal"},
            r":3: unknown background 'teal'; allowed: red, orange, yellow, .*, black$",
        ),
        (
            {**GOOD, "position": "middle"},
            r":3: unknown position 'middle'; allowed: center, top left",
        ),
        ({**GOOD, "size": "huge"}, r":3: unknown size 'huge'; allowed: small, large$"),
        ({"prompt": "x", "entity": "dragon"}, r":3: missing field\(s\) background, position, size"),
        ("{not json", r":3: not valid JSON"),
        ({**GOOD, "prompt": "  "}, r":3: prompt must be a non-empty string"),
    ],
)
def test_read_prompts_rejects_a_bad_line_naming_it(tmp_path, known, line, message):
    path = _write(tmp_path / "p.jsonl", [GOOD, "", line, GOOD])  # the bad line is line 3
    with pytest.raises(ps.PromptFileError, match=message) as caught:
        ps.read_prompts(path, known)
    assert str(caught.value).startswith(str(path)) and "\n" not in str(caught.value)


# ---- the commands, end to end on a tiny network -------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny emoji KB (twemoji + openmoji of NAMES, 32 px) and a tiny random 32×32 base network
    in a REIMAGEN_WEIGHTS folder; torch runs one thread (restored afterwards)."""
    import torch

    from reimagen.core import registry
    from reimagen.core.unet_config import PRESETS
    from reimagen.kb.builder import build_from_source
    from reimagen.kb.emoji_source import EmojiSource

    root = tmp_path_factory.mktemp("bench")
    source = EmojiSource(names=NAMES, artists=["twemoji", "openmoji"], processes=1, size=32)
    build_from_source(source, root / "kb", resolution=32, progress=False)
    config = PRESETS["tiny"].replace(
        image_size=32,
        self_attn_resolutions=(16,),
        cross_attn_resolutions=(16,),
        neighbor_attn_resolutions=(16,),
    )
    backend = registry.get("backend", "torch")()
    backend.save_model(backend.build_model(config, seed=0), root / "weights" / "base.safetensors")
    before, threads = os.environ.get("REIMAGEN_WEIGHTS"), torch.get_num_threads()
    os.environ["REIMAGEN_WEIGHTS"] = str(root / "weights")
    yield root
    torch.set_num_threads(threads)
    if before is None:
        del os.environ["REIMAGEN_WEIGHTS"]
    else:
        os.environ["REIMAGEN_WEIGHTS"] = before


def _common(tiny, out):
    return ["--kb", str(tiny / "kb"), "--encoder", "hash", "--threads", "1", "--out", str(out)]


def test_bench_rejects_a_bad_prompt_file_before_generating(tiny, tmp_path, capsys):
    path = _write(tmp_path / "p.jsonl", [GOOD, {**GOOD, "background": "teal"}])
    out = tmp_path / "out"
    assert main(["bench", "--prompts", str(path), *_common(tiny, out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{path}:2: unknown background 'teal'" in err
    assert "allowed: red, orange" in err
    assert not out.exists()  # nothing generated, nothing written

    _write(path, [{**GOOD, "entity": "unicorn face"}])
    assert main(["bench", "--prompts", str(path), *_common(tiny, out)]) == 2
    assert f"{path}:1: unknown entity 'unicorn face'" in capsys.readouterr().err
    assert main(["bench", "--k", "0", *_common(tiny, out)]) == 2
    assert "--k values must be >= 1" in capsys.readouterr().err
    assert main(["bench", "--settings", "training", *_common(tiny, out)]) == 2
    assert "--settings: unknown value(s) ['training']" in capsys.readouterr().err
    assert main(["bench", "--tiers", "unseen,common", *_common(tiny, out)]) == 2
    assert (
        "--tiers: unknown value(s) ['common']; allowed: frequent, rare, unseen"
        in capsys.readouterr().err
    )
    assert not out.exists()


def test_bench_writes_the_table_on_a_tiny_run(tiny, tmp_path, capsys):
    lines = [
        {
            "prompt": f"a large {name} in the centre on {COLOUR[name]}",
            "entity": name,
            "background": COLOUR[name],
            "position": "center",
            "size": "large",
        }
        for name in NAMES[:3]
    ]
    path = _write(tmp_path / "p.jsonl", lines)
    out = tmp_path / "out"
    args = ["--prompts", str(path), "--k", "1,2", "--steps", "2", "--batch-size", "2"]
    assert main(["bench", *args, *_common(tiny, out)]) == 0, capsys.readouterr().err
    blob = json.loads((out / "results.json").read_text())
    labels = [(r["label"], r["setting"], r["k"]) for r in blob["rows"]]
    assert labels == [
        (eb.CEILING, "none", 0),
        ("Imagen (no retrieval): base network, K=0", "none", 0),
        ("Re-Imagen K=1", "same-style", 1),
        ("Re-Imagen K=2", "same-style", 2),
        ("Re-Imagen K=1", "cross-style", 1),
        ("Re-Imagen K=2", "cross-style", 2),
    ]
    ceiling = blob["rows"][0]
    assert ceiling["metrics"]["all"]["faithful"] == 1.0  # the targets score as faithful
    assert [p["predicted"] for p in ceiling["per_prompt"]] == NAMES[:3]
    for row in blob["rows"][1:]:
        assert row["metrics"]["all"]["n"] == 3 and len(row["per_prompt"]) == 3
        assert all(0.0 <= row["metrics"]["all"][m] <= 1.0 for m in scoring.METRICS)
        assert row["nfe"] == 2 * 2 and row["seconds"] > 0  # interleaved / joint: 2 passes
        # the tiny KB holds every prompt's entity, drawn by two artists: retrieval finds it
        assert row["k"] == 0 or row["neighbor_recall"] == 1.0
    markdown = (out / "results.md").read_text()
    assert "## same-style" in markdown and "## cross-style" in markdown
    # "red apple" is the one unseen prompt: counts out of 1, the baseline row has no ratio
    unseen = markdown.split("## Unseen entities: with vs without retrieval")[1]
    assert "| Imagen (no retrieval): base network, K=0 | none | " in unseen
    assert unseen.count("/1 = ") == 2 * 5 and "| - | - |" in unseen
    assert "| faithful frequent | faithful rare | faithful unseen |" in markdown
    assert len(list(out.glob("grid_*.png"))) == 6  # one per row
    assert ps.read_prompts(out / "prompts.jsonl", frozenset(NAMES))[0].entity == NAMES[0]


def test_ablate_quick_writes_tables_and_plots(tiny, tmp_path, capsys):
    out = tmp_path / "ablate"
    code = main(
        [
            "ablate",
            "--quick",
            "--n",
            "1",
            "--ks",
            "0,1",
            "--etas",
            "0,1",
            "--guidances",
            "joint,interleaved",
            "--samplers",
            "ddpm@2,dpmpp2m@2",
            "--k-ref",
            "1",
            "--w-neighbors-sweep",
            "1,7",
            *_common(tiny, out),
        ]
    )
    assert code == 0, capsys.readouterr().err
    blob = json.loads((out / "results.json").read_text())
    assert [r["label"] for r in blob["sections"]["k"]] == ["K=0", "K=1"]
    assert [r["sampling"]["eta"] for r in blob["sections"]["eta"]] == [0.0, 1.0]
    assert [r["nfe"] for r in blob["sections"]["guidance"]] == [2 * 4, 2 * 4]  # 2 passes/step
    assert [
        (r["label"], r["sampling"]["guidance"], r["sampling"]["w_neighbors"])
        for r in blob["sections"]["w_neighbors"]
    ] == [("w_n=1", "interleaved", 1.0), ("w_n=7", "interleaved", 7.0)]
    assert [
        (r["sampling"]["sampler"], r["sampling"]["steps"]) for r in blob["sections"]["sampler"]
    ] == [("ddpm", 2), ("dpmpp2m", 2)]
    assert all(r["seconds"] > 0 for rows in blob["sections"].values() for r in rows)
    for name in ("fig7_k.png", "fig8_eta.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "## Interleave ratio η (paper Fig. 8)" in (out / "results.md").read_text()
    assert main(["ablate", "--samplers", "ddpm", *_common(tiny, tmp_path / "x")]) == 2
    assert "NAME@STEPS" in capsys.readouterr().err
    assert main(["ablate", "--w-neighbors-sweep", "0.5,3", *_common(tiny, tmp_path / "x")]) == 2
    assert "--w-neighbors-sweep values must be >= 1, got (0.5, 3.0)" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_bench_images_depend_on_the_seed_and_not_on_the_batch_size(tiny, judge, split):
    """Prompt i is drawn from the noise of (seed, i): batches of 1 and of 3 give the same
    images (up to one uint8 level of float summation order); another seed does not."""
    from reimagen.core import registry
    from reimagen.diffusion.sampling_config import SamplingConfig
    from reimagen.generation.shipped import load_stage
    from reimagen.kb.knowledge_base import KnowledgeBase

    kb = KnowledgeBase.open(tiny / "kb")
    retriever = registry.get("retriever", "bm25")().fit(kb)
    pipe = load_stage("base", kb=kb, retriever=retriever, encoder="hash")
    prompts = [_prompt(split, name, COLOUR[name], "center", "large") for name in NAMES[:3]]
    row = eb.Row(
        label="K=1",
        network="base",
        k=1,
        setting="same-style",
        sampling=SamplingConfig(steps=2, guidance="joint"),
    )

    def images(batch_size, seed=0):
        runner = eb.BenchRunner(
            prompts,
            pipelines={"base": pipe},
            retrievers={"same-style": retriever},
            evaluator=judge,
            seed=seed,
            batch_size=batch_size,
            log=lambda _: None,
        )
        return runner.run_row(row).images.astype(int)

    one, three = images(1), images(3)
    assert one.shape == (3, 32, 32, 3)
    assert np.abs(one - three).max() <= 1 and (one == three).mean() > 0.99
    assert np.abs(one - images(3, seed=1)).mean() > 5  # the seed does change the noise


def test_wilson_interval_matches_known_values_and_brackets_the_rate():
    # z²/(n+z²) for 0 of 10 (float64, a handful of operations: 1e-15 relative); the 5-of-10 values
    # are published to 5 decimals, so half a unit of the 5th decimal is the bound.
    assert wilson_interval(0, 10) == pytest.approx((0.0, 3.8416 / 13.8416), rel=1e-15, abs=0)
    assert wilson_interval(5, 10) == pytest.approx((0.23659, 0.76341), rel=0, abs=5e-6)
    assert wilson_interval(96, 96)[1] == 1.0 and wilson_interval(96, 96)[0] > 0.96
    for n in (1, 7, 96, 333):
        for hits in range(0, n + 1, max(1, n // 9)):
            lo, hi = wilson_interval(hits, n)
            assert 0.0 <= lo <= hits / n <= hi <= 1.0
    assert all(np.isnan(wilson_interval(0, 0)))


def test_one_tier_alone_gives_that_tiers_prompts_of_the_full_set(known, split):
    full = ps.default_prompts(3, seed=5, known=known, split=split)
    unseen = ps.default_prompts(3, seed=5, known=known, split=split, tiers=("unseen",))
    assert unseen == [p for p in full if p.tier == "unseen"] and len(unseen) == 3
    with pytest.raises(ValueError, match="tiers must be a non-empty subset of frequent, rare"):
        ps.default_prompts(3, known=known, split=split, tiers=("common",))


def test_fisher_one_sided_matches_the_hypergeometric_tail():
    # 3 of 4 vs 0 of 4: the 4 tables with >= 3 pooled successes in row 1, C(4,3)·C(4,0)/C(8,3)
    # A ratio of small integer binomial products: exact up to the final division's rounding.
    assert fisher_greater(3, 4, 0, 4) == pytest.approx(4 / 56, rel=2**-52, abs=0)
    assert fisher_greater(0, 10, 0, 10) == 1.0  # nothing to tell apart
    assert fisher_greater(13, 333, 2, 333) < 0.01 < fisher_greater(4, 96, 1, 96)
    # equal rates are never "significant"; a higher row is less likely under the null
    assert fisher_greater(5, 50, 5, 50) > 0.5
    assert fisher_greater(9, 50, 5, 50) < fisher_greater(7, 50, 5, 50)


def test_interval_table_counts_ratios_and_the_zero_cases(split):
    from types import SimpleNamespace

    prompts = [_prompt(split, name, COLOUR[name], "center", "large") for name in NAMES]
    unseen = [p.tier == "unseen" for p in prompts]  # red apple, violin

    def result(label, faithful):
        scores = {"faithful": np.array(faithful), "entity_top1": np.array(faithful)}
        return SimpleNamespace(row=SimpleNamespace(label=label, setting="s"), scores=scores)

    zero = result("base", [False] * 6)
    both = result("both", unseen)  # the two unseen prompts, and nothing else
    none = result("none", [not u for u in unseen])  # only seen prompts are faithful
    lines = tables.interval_table([zero, both, none], prompts, zero).splitlines()
    assert lines[2].startswith("| base | s | 0/2 = 0.000 | [0.000, 0.658] | - | - |")
    assert "| both | s | 2/2 = 1.000 | [0.342, 1.000] | ∞ (0 baseline) | 0.17 |" in lines[3]
    assert "| none | s | 0/2 = 0.000 | [0.000, 0.658] | - (0 and 0) | 1 |" in lines[4]
    ratio = tables.interval_table([both, none], prompts, both).splitlines()[3]
    assert "| 0.0 | 1 |" in ratio  # 0 of 2 against 2 of 2: no evidence of "higher"


def test_bench_weights_names_the_folder_of_stages_it_measures(tiny, tmp_path, capsys):
    """--weights FOLDER (e.g. a training run's export) replaces $REIMAGEN_WEIGHTS; a path that
    is not a folder, or a folder without base.safetensors, is one line before any work."""
    import shutil

    folder = tmp_path / "candidate"
    folder.mkdir()
    shutil.copy(tiny / "weights" / "base.safetensors", folder / "base.safetensors")
    line = {
        "prompt": f"a large {NAMES[0]} in the centre on {COLOUR[NAMES[0]]}",
        "entity": NAMES[0],
        "background": COLOUR[NAMES[0]],
        "position": "center",
        "size": "large",
    }
    path = _write(tmp_path / "p.jsonl", [line])
    out = tmp_path / "out"
    args = [
        "--prompts",
        str(path),
        "--k",
        "1",
        "--settings",
        "same-style",
        "--steps",
        "1",
        "--weights",
        str(folder),
    ]
    assert main(["bench", *args, *_common(tiny, out)]) == 0, capsys.readouterr().err
    blob = json.loads((out / "results.json").read_text())
    assert blob["networks"] == {"base": str(folder / "base.safetensors")}
    capsys.readouterr()
    for bad, message in (
        (folder / "base.safetensors", "is not a folder"),
        (tmp_path, "no base network at"),
    ):
        args[-1] = str(bad)
        assert main(["bench", *args, *_common(tiny, tmp_path / "out2")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0
        assert message in err
    assert not (tmp_path / "out2").exists()


def test_bench_outputs_move_in_as_one_set(tmp_path):
    """write_outputs: a rerun with fewer rows removes the earlier run's extra grids, keeps
    files that are not bench outputs, and removes a staging folder a killed run left."""
    import os

    import attrs

    from reimagen.bench.result_files import STAGING_PREFIX, write_outputs

    @attrs.frozen
    class Result:
        images: np.ndarray

    @attrs.frozen
    class Prompt:  # what write_outputs reads of a BenchPrompt
        def to_dict(self):
            return {"prompt": "a cat"}

    prompt = Prompt()
    out = tmp_path / "out"

    def write(rows: int, tag: str) -> None:
        images = np.zeros((1, 8, 8, 3), np.uint8)
        write_outputs(out, {"tag": tag}, f"# {tag}\n", [prompt], [Result(images)] * rows)

    write(3, "first")
    (out / "notes.txt").write_text("mine")
    dead = out / f"{STAGING_PREFIX}999999999-x"  # a pid no process has
    dead.mkdir()
    os.utime(dead, (0, 0))
    write(2, "second")
    assert sorted(p.name for p in out.iterdir()) == [
        "grid_00.png",
        "grid_01.png",
        "notes.txt",
        "prompts.jsonl",
        "results.json",
        "results.md",
    ]
    assert json.loads((out / "results.json").read_text()) == {"tag": "second"}
