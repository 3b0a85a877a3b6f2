"""Recovering a diverged run (issue #14): resume from an earlier committed step with a new
learning rate. ``lr``, ``warmup_steps`` and ``grad_clip`` may change on resume (logged as a
``config-change``); ``rewind`` / ``resume_from`` / ``reimagen train --resume-from STEP`` make an
earlier step the latest and move the later steps aside, never deleting them.

Oracle for the recovery: a run rewound from step 4 to step 2 and continued at a lower lr ends
bit-identical to a run that stopped at step 2 and continued at that lr, and the steps moved
aside still read back intact.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from test_torch_trainer import SyntheticSource, assert_same_state, config

from reimagen.backends.torch.trainer import Trainer, train
from reimagen.core.config import ConfigError
from reimagen.core.digests import IntegrityError
from reimagen.core.unet_config import PRESETS
from reimagen.training import checkpoint as ckpt
from reimagen.training import rewind as rw
from reimagen.training.resume_check import RESUMABLE_CHANGES, check_resumable

TINY = PRESETS["tiny"]
LOWER_LR = 2e-4  # the recovery's lr; the runs start at config()'s 2e-3


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def events(run: Path, kind: str) -> list[dict]:
    lines = (run / "log.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e.get("event") == kind]


@pytest.fixture(scope="module")
def four_steps(tmp_path_factory) -> Path:
    """A run with steps 1..4 all kept: the copy each test rewinds."""
    run = tmp_path_factory.mktemp("four") / "run"
    train(TINY, config(4), SyntheticSource(), run, progress=False, keep=10)
    return run


@pytest.fixture
def run(tmp_path, four_steps) -> Path:
    import shutil

    shutil.copytree(four_steps, tmp_path / "run")
    return tmp_path / "run"


def test_lr_warmup_and_grad_clip_may_change_on_resume(four_steps):
    saved = ckpt.read_checkpoint(ckpt.latest_checkpoint(four_steps))
    assert {"lr", "warmup_steps", "grad_clip"} <= set(RESUMABLE_CHANGES)
    changes = check_resumable(saved, TINY, config(6, lr=LOWER_LR, warmup_steps=0, grad_clip=0.5))
    assert changes == {
        "steps": [4, 6],
        "lr": [2e-3, LOWER_LR],
        "warmup_steps": [2, 0],
        "grad_clip": [1.0, 0.5],
    }
    with pytest.raises(ConfigError, match="differs from the run's in seed; only steps") as err:
        check_resumable(saved, TINY, config(6, seed=4, lr=LOWER_LR))
    assert "\n" not in str(err.value)


def test_rewind_then_a_lower_lr_is_a_plain_resume_from_that_step(tmp_path, run):
    """Rewound 4 -> 2 and continued at LOWER_LR to step 5 == stopped at 2, continued at
    LOWER_LR to 5: every tensor equal; steps 3 and 4 moved aside, intact; both logged."""
    straight = tmp_path / "straight"
    train(TINY, config(2), SyntheticSource(), straight, progress=False)
    train(TINY, config(5, lr=LOWER_LR), SyntheticSource(), straight, progress=False)
    expected = ckpt.read_checkpoint(ckpt.latest_checkpoint(straight))

    trainer = Trainer(
        TINY, config(5, lr=LOWER_LR), SyntheticSource(), run, progress=False, keep=10, resume_from=2
    )
    assert trainer.step == 2
    aside = run / "checkpoints" / "rewound-2-1"
    assert sorted(p.name for p in aside.iterdir()) == ["step-00000003", "step-00000004"]
    assert ckpt.read_checkpoint(aside / "step-00000004").step == 4  # moved, not damaged
    trainer.run()
    assert_same_state(run, expected)
    assert ckpt.read_checkpoint(ckpt.latest_checkpoint(run)).state["train_config"]["lr"] == LOWER_LR
    [rewind] = events(run, "rewind")
    assert rewind == {
        **rewind,
        "step": 2,
        "to": "step-00000002",
        "aside": "rewound-2-1",
        "moved": ["step-00000003", "step-00000004"],
    }
    [change] = events(run, "config-change")
    assert change["step"] == 2 and change["changes"]["lr"] == [2e-3, LOWER_LR]
    # the new course wrote its own steps 3..5; the old ones are still aside
    assert [p.name for p in ckpt.step_folders(run)][:3] == [
        "step-00000005",
        "step-00000004",
        "step-00000003",
    ]
    assert ckpt.read_checkpoint(aside / "step-00000003").state["train_config"]["lr"] == 2e-3


def test_rewinding_twice_keeps_both_asides(run):
    rw.rewind(run, 3)
    train(TINY, config(4), SyntheticSource(), run, progress=False, keep=10)
    rw.rewind(run, 3)
    root = run / "checkpoints"
    assert sorted(p.name for p in root.glob("rewound-*")) == ["rewound-3-1", "rewound-3-2"]
    assert [p.name for p in ckpt.step_folders(run)] == [
        "step-00000003",
        "step-00000002",
        "step-00000001",
    ]


def test_a_missing_or_damaged_step_is_refused_and_nothing_moves(run):
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    with pytest.raises(
        ckpt.CheckpointError,
        match=r"no committed step-00000009 .*steps there: "
        r"1, 2, 3, 4",
    ) as err:
        rw.rewind(run, 9)
    assert "\n" not in str(err.value)
    model = run / "checkpoints" / "step-00000002" / ckpt.MODEL_FILE
    data = bytearray(model.read_bytes())
    data[-50] ^= 0x01
    model.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="model.safetensors"):
        rw.rewind(run, 2)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before
    assert ckpt.latest_checkpoint(run).name == "step-00000004"


def test_a_crash_before_latest_is_rewritten_resumes_at_the_rewound_step(run, monkeypatch, caplog):
    """rewind moves the later steps first and rewrites ``latest`` last: if it dies in between,
    ``latest`` names a moved step and the resume falls back to the newest step left."""

    def crash(*_):
        raise KeyboardInterrupt("killed before latest was rewritten")

    monkeypatch.setattr(rw, "atomic_write_text", crash)
    with pytest.raises(KeyboardInterrupt):
        rw.rewind(run, 2)
    monkeypatch.undo()
    with caplog.at_level(logging.WARNING, logger="reimagen.training.checkpoint"):
        saved, skipped = ckpt.load_resumable(run)
    assert saved.step == 2 and "step-00000004" in skipped[0]
    rw.rewind(run, 2)  # again: nothing left to move, latest rewritten
    assert ckpt.latest_checkpoint(run).name == "step-00000002"
    assert [p.name for p in (run / "checkpoints").glob("rewound-*")] == ["rewound-2-1"]


# ---- the CLI ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--resume-from", "9"],
            ("--resume-from 9: not a committed step of {run} (its steps: 1, 2, 3, 4)"),
        ),
        (
            ["--resume-from", "2", "--distributed"],
            ("--resume-from cannot be combined with --distributed"),
        ),
        (["--resume-from", "2", "--export-only"], "does not combine with --export-only"),
        (["--keep", "0"], "--keep must be in [1, 1000000]"),
    ],
)
def test_cli_refuses_a_bad_rewind_in_one_line_before_any_work(run, capsys, extra, message):
    from reimagen.cli.main import main

    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    argv = ["train", "--preset", "tiny", "--run-dir", str(run), "--kb", str(run / "nokb"), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message.format(run=run) in err, err
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before


def test_cli_passes_resume_from_and_keep_to_the_trainer(run, monkeypatch):
    """--resume-from / --keep reach the training loop's options (the rest of the CLI run is
    the loop tested above)."""
    from reimagen.backends.torch import BACKEND
    from reimagen.cli import common
    from reimagen.cli.main import main
    from reimagen.training import folder_data as folder_training
    from reimagen.training import run_setup

    seen = {}

    def spy(*args, **options):
        seen.update(options)
        return "the spy trained nothing"

    monkeypatch.setattr(BACKEND, "train", spy)
    monkeypatch.setattr(common, "open_kb", lambda *a, **k: None)
    monkeypatch.setattr(folder_training, "is_collection", lambda kb: False)  # the emoji path
    monkeypatch.setattr(run_setup, "check_training_kb", lambda *a: None)
    monkeypatch.setattr(run_setup, "make_batch_source", lambda *a: None)
    argv = [
        "train",
        "--preset",
        "tiny",
        "--run-dir",
        str(run),
        "--encoder",
        "hash",
        "--resume-from",
        "2",
        "--keep",
        "5",
        "--lr",
        str(LOWER_LR),
    ]
    assert main(argv) == 0
    assert seen["resume_from"] == 2 and seen["keep"] == 5
