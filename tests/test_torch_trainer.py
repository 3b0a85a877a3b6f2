"""The PyTorch trainer and its checkpoints (paper Eq. 2; docs/design.md §9).

Oracles: the loss of a fixed batch must fall ≥10×; resumed runs must end bit-identical to an
uninterrupted run (model, EMA and AdamW state compared with ``np.array_equal``); processes
killed with SIGKILL at random moments or at each point of the commit protocol must leave a
loadable ``latest`` from which resuming reproduces the uninterrupted run; a NaN batch stops
training naming the step; a pickle under a weights name is refused without being executed.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import pickle
import random
import signal
import time
from pathlib import Path

import attrs
import numpy as np
import pytest
import torch

from reimagen.backends.torch import BACKEND
from reimagen.backends.torch import checkpoint as ckpt
from reimagen.backends.torch.trainer import NonFiniteLossError, Trainer, train
from reimagen.core import digests
from reimagen.core.config import ConfigError
from reimagen.core.interfaces import TextEncoding
from reimagen.core.io import UnsafeFileError
from reimagen.core.unet_config import PRESETS, UNetConfig
from reimagen.training import checkpoint as core_checkpoint
from reimagen.training.contract import Batch, TrainConfig, draw_diffusion_inputs

TINY = PRESETS["tiny"]
TESTS_DIR = Path(__file__).parent


# ---- a synthetic BatchSource: random images and text, a pure function of (seed, step) --------


def random_text(rng: np.random.Generator, lead: tuple[int, ...], length: int, dim: int):
    tokens = rng.standard_normal((*lead, length, dim), dtype=np.float32)
    lengths = rng.integers(1, length + 1, size=lead)
    mask = np.arange(length) < lengths[..., None]  # [..., L]
    return TextEncoding(tokens, mask, rng.standard_normal((*lead, dim), dtype=np.float32))


@attrs.frozen
class SyntheticSource:
    """Random targets, neighbours and captions; ``fixed`` repeats step 0's batch forever;
    ``nan_at`` poisons that step's images (fault injection)."""

    config: UNetConfig = TINY
    batch_size: int = 2
    k: int = 1
    seed: int = 0
    fixed: bool = False
    nan_at: int | None = None
    text_length: int = 5

    def batch(self, step: int) -> Batch:
        rng = np.random.default_rng([self.seed, 0 if self.fixed else step])
        s, c, d = self.config.image_size, self.config.in_channels, self.config.text_dim
        b, k = self.batch_size, self.k
        images = rng.uniform(-1, 1, (b, s, s, c)).astype(np.float32)
        text = random_text(rng, (b,), self.text_length, d)
        neighbor_images = rng.uniform(-1, 1, (b, k, s, s, c)).astype(np.float32)
        neighbor_text = random_text(rng, (b, k), self.text_length, d)
        t, noise, use_text, use_neighbors = draw_diffusion_inputs(rng, images.shape, 0.1, 0.1)
        if step == self.nan_at:
            images[0, 0, 0, 0] = np.nan
        return Batch(
            images=images,
            text=text,
            neighbor_images=neighbor_images,
            neighbor_text=neighbor_text,
            t=t,
            noise=noise,
            use_text=use_text,
            use_neighbors=use_neighbors,
        )


def config(steps: int, **changes) -> TrainConfig:
    base = {
        "steps": steps,
        "batch_size": 2,
        "neighbors": 1,
        "lr": 2e-3,
        "warmup_steps": 2,
        "checkpoint_every": 1,
        "log_every": 2,
        "ema_decay": 0.9,
        "seed": 3,
    }
    return TrainConfig(**{**base, **changes})


N_STEPS = 6


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run of N_STEPS: its final checkpoint's arrays."""
    run_dir = tmp_path_factory.mktemp("reference")
    train(TINY, config(N_STEPS), SyntheticSource(), run_dir, progress=False)
    return ckpt.read_checkpoint(ckpt.latest_checkpoint(run_dir))


def assert_same_state(run_dir: Path, reference: ckpt.Checkpoint) -> None:
    final = ckpt.read_checkpoint(ckpt.latest_checkpoint(run_dir))
    assert final.step == reference.step
    for part in ("model", "ema", "optimizer"):
        ours, theirs = getattr(final, part), getattr(reference, part)
        assert ours.keys() == theirs.keys()
        different = [k for k in ours if not np.array_equal(ours[k], theirs[k])]
        assert not different, f"{part} differs from the uninterrupted run in {different[:4]}"


# ---- learning ------------------------------------------------------------------------------


def test_overfits_one_batch(tmp_path):
    losses = []
    train(
        TINY,
        config(35, batch_size=4, neighbors=0, lr=3e-3, warmup_steps=0, checkpoint_every=1000),
        SyntheticSource(batch_size=4, k=0, fixed=True),
        tmp_path,
        progress=False,
        callback=lambda step, loss: losses.append(loss),
    )
    first, last = losses[0], float(np.mean(losses[-5:]))
    print(f"\noverfit one batch: loss {first:.4f} -> {last:.5f} ({first / last:.0f}x)")
    assert last * 10 <= first


def test_log_and_checkpoint_layout(tmp_path, reference):
    result = train(TINY, config(4, checkpoint_every=2), SyntheticSource(), tmp_path, progress=False)
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if "loss" in r]
    assert steps == [2, 4] and all(np.isfinite(r["loss"]) for r in records if "loss" in r)
    assert {r["step"] for r in records if r.get("event") == "checkpoint"} == {2, 4}
    assert result.checkpoint == ckpt.latest_checkpoint(tmp_path)
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*")) == [
        "step-00000002",
        "step-00000004",
    ]
    state = json.loads((result.checkpoint / "state.json").read_text())
    assert state["step"] == 4 and state["model_config"] == TINY.to_dict()


# ---- checkpoints ---------------------------------------------------------------------------


def test_model_round_trip(tmp_path):
    model = BACKEND.build_model(TINY, seed=1)
    generator = torch.Generator().manual_seed(1)  # a fixed draw, not torch's global generator
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator))
    path = BACKEND.save_model(model, tmp_path / "unet.safetensors")
    loaded = BACKEND.load_model(path)
    assert loaded.config == TINY
    assert loaded.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    original, restored = model.state_dict(), loaded.state_dict()
    assert all(torch.equal(original[k], restored[k]) for k in original)


def test_load_model_prefers_ema(tmp_path):
    train(TINY, config(2), SyntheticSource(), tmp_path, progress=False)
    folder = ckpt.latest_checkpoint(tmp_path)
    ema, _ = ckpt.load_safetensors(folder / "ema.safetensors")
    raw, _ = ckpt.load_safetensors(folder / "model.safetensors")
    key = "conv_in.weight"
    assert not np.array_equal(ema[key], raw[key])
    for path, ema_flag, expected in ((tmp_path, True, ema), (folder, False, raw)):
        model = BACKEND.load_model(path, ema=ema_flag)
        assert np.array_equal(model.state_dict()[key].contiguous().numpy(), expected[key])
    assert not model.training


def test_resume_is_bit_identical(tmp_path, reference):
    half = N_STEPS // 2
    train(TINY, config(half), SyntheticSource(), tmp_path, progress=False)
    result = train(TINY, config(N_STEPS), SyntheticSource(), tmp_path, progress=False)
    assert result.step == N_STEPS
    assert_same_state(tmp_path, reference)


def test_resume_rejects_changed_config(tmp_path):
    train(TINY, config(1), SyntheticSource(), tmp_path, progress=False)
    with pytest.raises(ConfigError, match="differs from the run's in seed"):  # lr may change
        Trainer(TINY, config(2, seed=4), SyntheticSource(), tmp_path)
    with pytest.raises(ValueError, match="resume=True"):
        Trainer(TINY, config(2), SyntheticSource(), tmp_path, resume=False)


def test_batch_mismatch_is_reported_before_training(tmp_path):
    with pytest.raises(ValueError, match="K=2 neighbours"):
        train(TINY, config(2), SyntheticSource(k=2), tmp_path, progress=False)
    assert not ckpt.has_checkpoint(tmp_path)


# ---- fault injection -----------------------------------------------------------------------


def test_nan_loss_stops_and_names_the_step(tmp_path):
    with pytest.raises(NonFiniteLossError, match="at step 3"):
        train(TINY, config(N_STEPS), SyntheticSource(nan_at=3), tmp_path, progress=False)
    latest = ckpt.latest_checkpoint(tmp_path)
    assert latest.name == "step-00000003"  # steps 0,1,2 applied; step 3 was not
    saved = ckpt.read_checkpoint(latest)
    assert all(np.isfinite(v).all() for part in (saved.model, saved.ema) for v in part.values())


def test_non_finite_weights_are_never_written(tmp_path):
    trainer = Trainer(TINY, config(2), SyntheticSource(), tmp_path, progress=False)
    with torch.no_grad():
        trainer.model.conv_out.bias[0] = float("inf")
    with pytest.raises(FloatingPointError, match="non-finite"):
        trainer.save(loss=0.0)
    assert not ckpt.has_checkpoint(tmp_path)


@pytest.mark.parametrize("point", ["written", "renamed", "committed"])
def test_crash_at_each_commit_point(tmp_path, reference, monkeypatch, point):
    """A crash between the steps of the commit protocol (simulated in-process: the disk state
    is what a SIGKILL would leave, since every file is fsynced before the next step)."""

    class Crash(Exception):
        pass

    def crash_at(name, step):
        if (name, step) == (point, 4):
            raise Crash

    monkeypatch.setattr(core_checkpoint, "_fault_point", crash_at)  # the shared commit protocol
    with pytest.raises(Crash):
        train(TINY, config(N_STEPS), SyntheticSource(), tmp_path, progress=False)
    monkeypatch.undo()
    expected = 4 if point == "committed" else 3
    assert ckpt.latest_checkpoint(tmp_path).name == ckpt.step_dir_name(expected)
    BACKEND.load_model(tmp_path)
    train(TINY, config(N_STEPS), SyntheticSource(), tmp_path, progress=False)
    assert_same_state(tmp_path, reference)


def _train_child(run_dir: str, fault: str, steps_out) -> None:
    """Body of the trainer process: report each step on the pipe, train to N_STEPS."""
    os.environ[ckpt.FAULT_ENV] = fault
    torch.set_num_threads(1)
    train(
        TINY,
        config(N_STEPS),
        SyntheticSource(),
        run_dir,
        progress=False,
        callback=lambda step, loss: steps_out.send(step),
    )


@pytest.fixture(scope="module")
def processes():
    """A forkserver context with torch and this module preloaded: each trainer is a real,
    separate process (SIGKILL-able) that starts in a fraction of a second."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(
        ["torch", "torch._dynamo", "reimagen.backends.torch.trainer", __name__]
    )
    return context


def run_worker(processes, run_dir: Path, kill: tuple[int, float] | None, fault: str = "") -> str:
    """Train in a separate process. ``kill=(n, seconds)``: SIGKILL it ``seconds`` after its
    n-th reported step (a random moment inside step n+1 or its checkpoint commit); ``fault``
    makes it kill itself at a commit point. Returns how it ended: "killed" or "done"."""
    receive, send = processes.Pipe(duplex=False)
    proc = processes.Process(target=_train_child, args=(str(run_dir), fault, send))
    proc.start()
    send.close()
    try:
        if kill is not None:
            steps_seen = 0
            while steps_seen <= kill[0] and receive.poll(120):
                with contextlib.suppress(EOFError):
                    receive.recv()
                steps_seen += 1
            time.sleep(kill[1])
            with contextlib.suppress(ProcessLookupError):  # it may have finished already
                os.kill(proc.pid, signal.SIGKILL)
        proc.join(120)
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join()
    assert proc.exitcode in (0, -signal.SIGKILL), f"trainer process failed: {proc.exitcode}"
    return "killed" if proc.exitcode == -signal.SIGKILL else "done"


def kill_and_resume(processes, run_dir: Path, reference, rng: random.Random, kills: int):
    """Kill ``kills`` subprocess runs at random moments; after each, ``latest`` must load;
    then finish in-process and compare with the uninterrupted run."""
    outcomes = []
    for _ in range(kills):
        done = (
            ckpt.read_checkpoint(ckpt.latest_checkpoint(run_dir)).step
            if ckpt.has_checkpoint(run_dir)
            else 0
        )
        kill = (rng.randrange(max(1, N_STEPS - done - 1)), rng.uniform(0.0, 0.2))
        outcomes.append(run_worker(processes, run_dir, kill))
        if ckpt.has_checkpoint(run_dir):
            BACKEND.load_model(run_dir)  # EMA weights
            ckpt.read_checkpoint(ckpt.latest_checkpoint(run_dir))  # everything resume needs
    train(TINY, config(N_STEPS), SyntheticSource(), run_dir, progress=False)
    assert_same_state(run_dir, reference)
    return outcomes


def test_sigkill_at_a_commit_point_then_random(processes, tmp_path, reference):
    """Fast tier: one real SIGKILL inside the commit protocol, then three at random moments."""
    assert run_worker(processes, tmp_path, kill=None, fault="renamed@3") == "killed"
    assert ckpt.latest_checkpoint(tmp_path).name == "step-00000002"
    assert (tmp_path / "checkpoints" / "step-00000003").is_dir()  # renamed, not yet pointed to
    outcomes = kill_and_resume(processes, tmp_path, reference, random.Random(0), kills=3)
    print(f"\nrandom SIGKILLs: {outcomes}")


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(4))
def test_sigkill_at_random_moments(processes, tmp_path, reference, seed):
    """Slow tier: 4 × 6 = 24 SIGKILLs at random moments."""
    outcomes = kill_and_resume(processes, tmp_path, reference, random.Random(seed), kills=6)
    print(f"\nseed {seed}: {outcomes}")


# ---- no pickle -------------------------------------------------------------------------------


class _Exploit:
    """Unpickling this runs ``os.system(touch marker)``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("name", ["model.safetensors", "model.pt", "weights.bin"])
def test_pickle_is_refused_without_running_it(tmp_path, name):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Exploit(marker))
    (tmp_path / name).write_bytes(payload)
    with pytest.raises(UnsafeFileError, match="not a valid safetensors"):
        BACKEND.load_model(tmp_path / name)
    torch.save({"x": _Exploit(marker)}, tmp_path / "torch_save.pt")  # a real torch.save zip
    with pytest.raises(UnsafeFileError):
        BACKEND.load_model(tmp_path / "torch_save.pt")
    assert not marker.exists()


def test_pickled_checkpoint_folder_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    train(TINY, config(1), SyntheticSource(), tmp_path / "run", progress=False)
    folder = ckpt.latest_checkpoint(tmp_path / "run")
    for name in ("model.safetensors", "ema.safetensors", "optimizer.safetensors"):
        (folder / name).write_bytes(pickle.dumps(_Exploit(marker)))
    with pytest.raises(UnsafeFileError):
        BACKEND.load_model(tmp_path / "run")
    # resume: refused by the step folder's SHA256SUMS, and, with the checksums re-recorded
    # over the pickles, by the safetensors reader; no other step to fall back to
    with pytest.raises(ckpt.CheckpointError, match="reads back intact.*sha256 .* SHA256SUMS"):
        Trainer(TINY, config(2), SyntheticSource(), tmp_path / "run")
    digests.write_sums(folder)
    with pytest.raises(ckpt.CheckpointError, match="not a valid safetensors file"):
        Trainer(TINY, config(2), SyntheticSource(), tmp_path / "run")
    assert not marker.exists()
