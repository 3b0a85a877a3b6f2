"""Bad input matrix (issue 14, item 5): every case the reliability probe found on main, and
neighbours of each, is rejected with ONE line naming the argument, exit status 2, before any
network forward and before any file is written.

Run in-process (``reimagen.cli.main.main``) with an empty ``REIMAGEN_HOME``, as on a fresh CI
machine with no knowledge base built: a check that only happened after the KB opened would
show up here as a "no knowledge base" error instead of the argument's own message.
"""

from __future__ import annotations

import pytest

from reimagen.backends.torch.unet import ReImagenUNet
from reimagen.cli.main import main

SHIPPED_SR = "reimagen/assets/weights/sr.safetensors"


def _files(tmp):
    (tmp / "afile").write_text("a file, not a folder")
    (tmp / "notweights.safetensors").write_bytes(b"not weights")
    (tmp / "bad.jsonl").write_bytes(b'{"prompt": "\xff\xfe bad"}\n')


# (argv, a substring of the one-line error). {t} is the test's temporary folder.
CASES = [
    (["generate", ""], "PROMPT 1 is empty"),
    (["generate", "x" * 5000], "PROMPT 1 has 5,000 characters"),
    (["generate", "x", "--k", "100000"], "--k must be in [0, 8]"),
    (["generate", "x", "--k", "65"], "--k must be in [0, 8]"),
    (["generate", "x", "--k", "-1"], "--k must be in [0, 8]"),
    (["generate", "x", "--seed", "-1"], "--seed must be in [0, 2**63 - 1]"),
    (["generate", "x", "--seed", "abc"], "argument --seed: invalid int value"),
    (["generate", "x", "--stages", "sr"], "--stages: sr is not a cascade"),
    (["generate", "x", "--stages", "base,base"], "--stages: base,base is not a cascade"),
    (["generate", "x", "--stages", "base,baseline"], "--stages: base,baseline is not a cascade"),
    (["generate", "x", "--out", "{t}/afile/x.png"], "--out: {t}/afile is a file"),
    (["generate", "x", "--retriever", "none", "--k", "2"], "--retriever none retrieves no"),
    (["generate", "x", "--retriever", "nope"], "unknown retriever 'nope'"),
    (["generate", "x", "--steps", "0"], "SamplingConfig.steps must be in [1,"),
    (["train", "--threads", "-1"], "--threads must be in [0, 256]"),
    (
        ["train", "--init-from", "{t}/notweights.safetensors", "--run-dir", "{t}/run"],
        "--init-from: {t}/notweights.safetensors is not a valid safetensors file",
    ),
    (
        ["train", "--init-from", SHIPPED_SR, "--run-dir", "{t}/run"],
        "--init-from: reimagen/assets/weights/sr.safetensors holds preset 'sr-small'",
    ),
    (["train", "--steps", "-5", "--run-dir", "{t}/run"], "TrainConfig.steps must be in [1,"),
    (["train", "--batch-size", "0", "--run-dir", "{t}/run"], "TrainConfig.batch_size must be in"),
    (["train", "--lr", "nan", "--run-dir", "{t}/run"], "TrainConfig.lr must be in (0.0, 1.0]"),
    (["retrieve", ""], "PROMPT 1 is empty"),
    (["retrieve", "x", "--retriever", "nope"], "unknown retriever 'nope'"),
    (["kb", "build", "--processes", "100000"], "--processes must be in [1, 64]"),
    (["bench", "--n", "100000000"], "--n must be in [1, 10000]"),
    (["ablate", "--n", "-3"], "--n must be in [1, 10000]"),
    (["bench", "--out", "{t}/afile"], "--out: {t}/afile is a file"),
    (["ablate", "--out", "{t}/afile"], "--out: {t}/afile is a file"),
    (["bench", "--prompts", "{t}/bad.jsonl"], "{t}/bad.jsonl:1: not UTF-8"),
    (["bench", "--prompts", "{t}/missing.jsonl"], "--prompts: no such file"),
    (["bench", "--tiers", "nope"], "--tiers: unknown value(s) ['nope']"),
    (["demo", "--threads", "-2"], "--threads must be in [0, 256]"),
]


@pytest.fixture
def no_forward(monkeypatch):
    """A spy: any U-Net forward during a rejected command fails the test."""

    def forbidden(*args, **kwargs):
        raise AssertionError("a network forward ran before the bad input was rejected")

    monkeypatch.setattr(ReImagenUNet, "forward", forbidden)


@pytest.mark.parametrize("argv, message", CASES, ids=[" ".join(c[0])[:60] for c in CASES])
def test_rejected_in_one_line_before_any_work(
    argv, message, tmp_path, monkeypatch, capsys, no_forward
):
    home = tmp_path / "home"
    monkeypatch.setenv("REIMAGEN_HOME", str(home))  # a fresh machine: no KB, no run folders
    _files(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    argv = [a.replace("{t}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "error" in err and message.replace("{t}", str(tmp_path)) in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written (no run dir)
    assert not home.exists() or not any(home.rglob("*"))

