"""Progress bars (reimagen.cli.progress): one tick per sampler step of every stage and micro-
batch, so `generate` and `demo` end at 100% of the steps they announced; ablate's rows; bench's
prompts, row by row; the captions a dense index embeds; shown on a terminal only, or as
REIMAGEN_PROGRESS says."""

import re

import numpy as np
import pytest
from test_entitybench import _common, tiny  # noqa: F401 (the tiny emoji KB + network fixture)
from toys import toy_cascade

from reimagen.cli.main import main
from reimagen.cli.progress import bar, row_logger, sampling_steps, step_callback
from reimagen.diffusion.sampling_config import SamplingConfig
from reimagen.generation.cascade import Cascade


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """(weights folder with a tiny base + sr, KB folder)."""
    return toy_cascade(tmp_path_factory.mktemp("progress"))


@pytest.mark.parametrize(
    ("sampler", "guidance"), [("ddpm", "joint"), ("ddim", "interleaved"), ("dpmpp2m", "weighted")]
)
def test_one_callback_per_sampler_step_and_stage(parts, sampler, guidance):
    folder, kb = parts
    first = SamplingConfig(sampler=sampler, steps=4, guidance=guidance)
    cascade = Cascade.from_pretrained(folder, kb=kb, retriever="bm25", k=2, sampling=first)
    ticks = []
    cascade.generate(["a drawing of a robot", "a rocket"], callback=lambda *a: ticks.append(a[0]))
    assert len(ticks) == sampling_steps(cascade) == 4 + cascade.stages[1].sampling.steps


def test_generate_bar_counts_every_step_of_every_micro_batch(parts, tmp_path, monkeypatch, capsys):
    folder, kb = parts
    monkeypatch.setenv("REIMAGEN_WEIGHTS", str(folder))
    monkeypatch.setenv("REIMAGEN_PROGRESS", "1")  # captured stderr is not a terminal
    argv = [
        "generate",
        "an apple",
        "a robot",
        "a rocket",
        "--kb",
        str(kb),
        "--retriever",
        "bm25",
        "--sampler",
        "ddim",
        "--steps",
        "3",
        "--batch-size",
        "2",
        "--out",
        str(tmp_path / "x.png"),
    ]
    assert main(argv) == 0
    total = 2 * (3 + 15)  # 2 micro-batches × (base 3 steps + the SR stage's tuned 15)
    err = capsys.readouterr().err
    assert "sampling: 100%" in err and f"{total}/{total}" in err, err

    monkeypatch.setenv("REIMAGEN_PROGRESS", "0")
    assert main(argv) == 0
    assert "sampling" not in capsys.readouterr().err


def test_row_logger_prints_each_row_above_the_bar(monkeypatch, capsys):
    monkeypatch.setenv("REIMAGEN_PROGRESS", "1")
    with bar(2, "ablation rows", unit="row") as progress:
        log = row_logger(progress)
        log("K=1 [same-style]: faithful 0.500")
        log("K=2 [same-style]: faithful 0.250")
    err = capsys.readouterr().err
    assert "K=1 [same-style]: faithful 0.500\n" in err and "K=2 [same-style]" in err
    assert "ablation rows: 100%" in err and "2/2" in err


def test_bar_is_silent_off_a_terminal_and_when_told(monkeypatch, capsys):
    monkeypatch.delenv("REIMAGEN_PROGRESS", raising=False)
    with bar(3, "quiet") as progress:  # captured stderr: not a terminal
        step_callback(progress)(0, 1.0, np.zeros(1), np.zeros(1), ("text",))
    with bar(3, "rank 1", show=False) as progress:
        progress.update(3)
    assert capsys.readouterr().err == ""


def test_bench_bar_counts_the_prompts_of_every_distinct_row(
    tiny,  # noqa: F811
    tmp_path,
    monkeypatch,
    capsys,
):
    monkeypatch.setenv("REIMAGEN_PROGRESS", "1")
    out = tmp_path / "bench"
    argv = [
        "bench",
        "--tiers",
        "unseen",
        "--n",
        "2",
        "--k",
        "1,2",
        "--settings",
        "same-style",
        "--steps",
        "2",
        "--batch-size",
        "1",
        "--no-report",
        *_common(tiny, out),
    ]
    assert main(argv) == 0
    err = capsys.readouterr().err
    total = 3 * 2  # rows: no retrieval, K=1, K=2; 2 prompts each
    assert "bench: 100%" in err and f"{total}/{total}" in err, err
    # each row is named in the bar from its start (2 of 6 done: the K=1 row's first prompt)
    assert re.search(r"2/6 \[[^\]]*, Re-Imagen K=1 \[same-style\]\]", err), err
    assert err.count("Re-Imagen K=1 [same-style]: faithful") == 1

    monkeypatch.setenv("REIMAGEN_PROGRESS", "0")
    assert main(argv) == 0
    assert "bench:" not in capsys.readouterr().err


def test_dense_index_build_shows_the_captions_embedded(parts, monkeypatch, capsys):
    from reimagen.retrievers import dense

    _, kb = parts
    monkeypatch.setenv("REIMAGEN_PROGRESS", "1")
    monkeypatch.setattr(dense, "PROGRESS_BATCHES", 0)  # the toy KB's 6 captions: one batch
    argv = [
        "retrieve",
        "a robot",
        "--retriever",
        "dense",
        "--encoder",
        "hash",
        "--k",
        "2",
        "--kb",
        str(kb),
    ]
    assert main([*argv, "--rebuild"]) == 0
    err = capsys.readouterr().err
    assert "embedding captions (hash): 100%" in err and "6/6" in err, err
    assert main(argv) == 0  # the saved index: the query alone is embedded
    err = capsys.readouterr().err
    assert "1/1" in err and "6/6" not in err, err
    monkeypatch.setattr(dense, "PROGRESS_BATCHES", 4)  # a single batch: no bar, even forced
    assert main([*argv, "--rebuild"]) == 0
    assert "embedding captions" not in capsys.readouterr().err
