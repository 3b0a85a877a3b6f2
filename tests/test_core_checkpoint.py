"""reimagen.training.checkpoint on numpy dicts alone (no framework): the commit protocol, the readers,
pruning, and the fault-injection hook under both its names (a real SIGKILL in a subprocess)."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from reimagen.core.unet_config import PRESETS
from reimagen.training import checkpoint as ckpt

CONFIG_JSON = PRESETS["tiny"].to_json()


def arrays(step: int) -> dict:
    rng = np.random.default_rng(step)
    return {"w": rng.standard_normal((3, 4)).astype(np.float32), "b": np.full(4, step, np.float32)}


def write(run_dir, step, keep=2, **override):
    parts = {"model": arrays(step), "ema": arrays(step + 100), "optimizer": arrays(step + 200)}
    parts.update(override)
    return ckpt.write_checkpoint(
        run_dir, step, config_json=CONFIG_JSON, state={"loss": 0.5}, keep=keep, **parts
    )


def test_round_trip_latest_and_prune(tmp_path):
    for step in (1, 2, 3):
        folder = write(tmp_path, step)
    assert folder.name == ckpt.step_dir_name(3) == "step-00000003"
    assert ckpt.has_checkpoint(tmp_path)
    assert ckpt.latest_checkpoint(tmp_path) == folder
    saved = ckpt.read_checkpoint(folder)
    assert saved.step == 3 and saved.state["loss"] == 0.5
    for got, want in (
        (saved.model, arrays(3)),
        (saved.ema, arrays(103)),
        (saved.optimizer, arrays(203)),
    ):
        assert got.keys() == want.keys()
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])
    kept = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert kept == ["latest", "step-00000002", "step-00000003"]  # keep=2
    assert ckpt.resolve_weights(tmp_path) == folder / ckpt.EMA_FILE
    assert ckpt.resolve_weights(tmp_path, ema=False) == folder / ckpt.MODEL_FILE


def test_refusals(tmp_path):
    write(tmp_path, 1)
    with pytest.raises(ckpt.CheckpointError, match="already the committed checkpoint"):
        write(tmp_path, 1)
    bad = arrays(2)
    bad["w"][0, 0] = np.nan
    with pytest.raises(FloatingPointError, match="non-finite checkpoint at step 2: model"):
        write(tmp_path, 2, model=bad)
    assert ckpt.latest_checkpoint(tmp_path).name == "step-00000001"
    (ckpt.latest_checkpoint(tmp_path) / ckpt.OPTIM_FILE).unlink()
    with pytest.raises(ckpt.CheckpointError, match="missing optimizer.safetensors"):
        ckpt.read_checkpoint(ckpt.latest_checkpoint(tmp_path))


CHILD = """
import sys
sys.path.insert(0, {tests!r})
from test_core_checkpoint import write
write({run!r}, 1)
write({run!r}, 2)
"""


@pytest.mark.parametrize("env", ["REIMAGEN_CHECKPOINT_FAULT", "REIMAGEN_TORCH_FAULT"])
@pytest.mark.parametrize("point", ["written", "renamed", "committed"])
def test_fault_hook_kills_at_each_point(tmp_path, env, point):
    """The hook (new name and the old REIMAGEN_TORCH_FAULT) SIGKILLs the writer at the point;
    ``latest`` then names step 1, or step 2 once committed, and step 2 resumes cleanly."""
    code = CHILD.format(tests=os.path.dirname(__file__), run=str(tmp_path))
    proc = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        env={**os.environ, env: f"{point}@2"},
        capture_output=True,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    expected = "step-00000002" if point == "committed" else "step-00000001"
    assert ckpt.latest_checkpoint(tmp_path).name == expected
    assert (tmp_path / "checkpoints" / "step-00000002").is_dir() == (point != "written")
    if point != "committed":
        write(tmp_path, 2)  # the interrupted step commits on the next try
    assert json.loads((ckpt.latest_checkpoint(tmp_path) / ckpt.STATE_FILE).read_text())["step"] == 2
    assert not list((tmp_path / "checkpoints").glob(".step-*"))  # stale partials pruned
