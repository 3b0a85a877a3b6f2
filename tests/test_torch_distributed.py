"""Data-parallel torch training under torchrun (issue #9, "Scale-out"): DDP over 2 ranks gives
the one-process losses of the same global batch (≤1e-5 over 20 steps), and a job whose rank 1
is SIGKILLed mid-run and relaunched (torchrun --max-restarts 1) resumes from the last
checkpoint to exactly the uninterrupted job's losses and weights.

Oracle: the same Trainer, config and batches in this pytest process (no process group). The
2-rank jobs run ``tests/torch_ddp_driver.py`` under ``python -m torch.distributed.run``; the
ranks rendezvous at 127.0.0.1 on a port the OS just handed out, Gloo is pinned to the loopback
interface, and every launch has a timeout after which its whole process group is killed.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import attrs
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from reimagen.backends.torch import checkpoint as ckpt
from reimagen.backends.torch import distributed as dist
from reimagen.backends.torch.distributed import rank_step_seed, shard_batch
from reimagen.backends.torch.trainer import Trainer, step_seed
from reimagen.cli.main import main as cli_main

HERE = Path(__file__).resolve().parent
DRIVER = HERE / "torch_ddp_driver.py"
sys.path.insert(0, str(HERE))
import torch_ddp_driver as driver
from test_torch_trainer import TINY, SyntheticSource

LAUNCH_TIMEOUT_S = 120
TOLERANCE = 1e-5
KILL_RANK, KILL_STEP = 1, 12  # after step 12; the last checkpoint is step 10


def loopback_interface() -> str | None:
    """The name of the loopback network interface (Gloo binds to it), if any."""
    names = [name for _, name in socket.if_nameindex()] if hasattr(socket, "if_nameindex") else []
    return next((n for n in names if n == "lo" or n.startswith("lo0")), None)


LOOPBACK = loopback_interface()
needs_loopback = pytest.mark.skipif(LOOPBACK is None, reason="no loopback interface for Gloo")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(out_dir: Path, run_dir: Path, *, max_restarts: int = 0, **env: str) -> int:
    """The driver on 2 ranks over 127.0.0.1; returns torchrun's exit status. Output goes to
    ``out_dir/torchrun.log``; past the timeout the whole process group is killed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "torch.distributed.run",
        "--nproc-per-node", "2", "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
        "--max-restarts", str(max_restarts), "--monitor-interval", "0.2",
        str(DRIVER), str(out_dir),
    ]  # fmt: skip
    own = {*dist.ENV_VARS, "DIE_AT", ckpt.FAULT_ENV}  # the launcher and this test set these
    environ = {k: v for k, v in os.environ.items() if k not in own}
    environ.update(RUN_DIR=str(run_dir), GLOO_SOCKET_IFNAME=LOOPBACK, **env)
    environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    environ["PYTHONPATH"] = os.pathsep.join([str(HERE.parent), environ.get("PYTHONPATH", "")])
    log_path = out_dir / "torchrun.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            command, env=environ, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            return proc.wait(timeout=LAUNCH_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both ranks
            proc.wait()
            pytest.fail(f"torchrun ran past {LAUNCH_TIMEOUT_S}s:\n{log_path.read_text()[-4000:]}")


def read_result(out_dir: Path, rank: int, attempt: int = 0) -> dict:
    result = json.loads((out_dir / f"rank{rank}-attempt{attempt}.json").read_text())
    result["losses"] = {int(k): v for k, v in result["losses"].items()}
    return result


def log_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def max_diff(a: dict[int, float], b: dict[int, float]) -> float:
    assert a.keys() == b.keys()
    return max(abs(a[k] - b[k]) for k in a)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """20 steps in this process, no process group: (losses by step, grad norms, run folder)."""
    run_dir = tmp_path_factory.mktemp("one-process")
    losses = {}
    Trainer(
        TINY, driver.train_config(), driver.source(), run_dir, progress=False,
        callback=lambda step, loss: losses.__setitem__(step, loss),
    ).run()  # fmt: skip
    norms = {r["step"]: r["grad_norm"] for r in log_records(run_dir / "log.jsonl") if "loss" in r}
    assert sorted(losses) == list(range(1, driver.STEPS + 1))
    assert len(set(losses.values())) == driver.STEPS  # a stale or repeated loss would show
    assert max(norms.values()) > driver.train_config().grad_clip  # clipping bites
    return losses, norms, run_dir


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """The same run as 2 DDP ranks under torchrun, uninterrupted."""
    root = tmp_path_factory.mktemp("two-ranks")
    started = time.perf_counter()
    status = torchrun(root / "out", root / "run")
    seconds = time.perf_counter() - started
    assert status == 0, (root / "out" / "torchrun.log").read_text()[-4000:]
    print(f"\n2-rank torchrun job: {seconds:.1f}s")
    return root / "out", root / "run"


@needs_loopback
def test_two_ranks_match_one_process(one_process, two_ranks):
    losses, norms, one_dir = one_process
    out, run_dir = two_ranks
    ranks = [read_result(out, r) for r in (0, 1)]
    assert [(r["rank"], r["world_size"]) for r in ranks] == [(0, 2), (1, 2)]
    assert ranks[0]["losses"] == ranks[1]["losses"]  # every rank logs the global loss
    diff = max_diff(ranks[0]["losses"], losses)
    print(f"\n2 ranks vs 1 process, 20 steps: max |loss diff| = {diff:.3g}")
    assert diff <= TOLERANCE
    # the global gradient norm (clipping) on both ranks: rank 0's log and rank 1's own
    for log in (run_dir / "log.jsonl", run_dir / "process-1" / "log.jsonl"):
        ddp_norms = {r["step"]: r["grad_norm"] for r in log_records(log) if "loss" in r}
        assert max_diff(ddp_norms, norms) <= TOLERANCE * max(norms.values())
    # the weights after 20 steps: rank 0's checkpoint vs the one-process run's
    ddp, ref = (ckpt.read_checkpoint(ckpt.latest_checkpoint(d)) for d in (run_dir, one_dir))
    assert ddp.step == ref.step == driver.STEPS and ddp.state["world_size"] == 2
    weight_diff = max(float(np.max(np.abs(ddp.model[k] - ref.model[k]))) for k in ref.model)
    print(f"max |weight diff| after 20 steps = {weight_diff:.3g}")
    assert weight_diff <= TOLERANCE
    # one writer: committed folders only, every rank names the same final checkpoint
    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert names == ["latest", "step-00000015", "step-00000020"]
    assert {r["checkpoint"] for r in ranks} == {str(run_dir / "checkpoints" / "step-00000020")}
    steps = [r["step"] for r in log_records(run_dir / "log.jsonl") if "loss" in r]
    assert steps == list(range(1, driver.STEPS + 1))  # rank 0's lines only


@needs_loopback
def test_killed_rank_relaunches_to_the_same_losses(two_ranks, tmp_path):
    """Rank 1 SIGKILLs itself after step 12; torchrun tears the job down and relaunches both
    ranks, which resume from step 10 and must retrace steps 11..20 exactly."""
    uninterrupted = read_result(two_ranks[0], 0)["losses"]
    out, run_dir = tmp_path / "out", tmp_path / "run"
    started = time.perf_counter()
    status = torchrun(out, run_dir, max_restarts=1, DIE_AT=f"{KILL_RANK}@{KILL_STEP}")
    seconds = time.perf_counter() - started
    assert status == 0, (out / "torchrun.log").read_text()[-4000:]
    print(f"\nkilled + relaunched job: {seconds:.1f}s")
    first = [read_result(out, r, attempt=0)["losses"] for r in (0, 1)]
    assert max(first[KILL_RANK]) == KILL_STEP  # it died right there ...
    assert max(first[0]) in (KILL_STEP, KILL_STEP + 1)  # ... and took rank 0 down with it
    for rank in (0, 1):
        again = read_result(out, rank, attempt=1)
        assert sorted(again["losses"]) == list(range(11, driver.STEPS + 1))  # from step 10
        assert again["losses"] == {k: uninterrupted[k] for k in again["losses"]}  # bit-equal
        assert {k: first[rank][k] for k in range(1, KILL_STEP + 1)} == {
            k: uninterrupted[k] for k in range(1, KILL_STEP + 1)
        }
    relaunched = ckpt.read_checkpoint(ckpt.latest_checkpoint(run_dir))
    reference = ckpt.read_checkpoint(ckpt.latest_checkpoint(two_ranks[1]))
    assert relaunched.step == driver.STEPS
    for part in ("model", "ema", "optimizer"):
        ours, theirs = getattr(relaunched, part), getattr(reference, part)
        assert ours.keys() == theirs.keys()
        assert all(np.array_equal(ours[k], theirs[k]) for k in ours), part
    starts = [r for r in log_records(run_dir / "log.jsonl") if r.get("event") == "start"]
    assert [(r["step"], r["resumed"]) for r in starts] == [(0, False), (10, True)]


@pytest.mark.slow
@needs_loopback
def test_rank0_killed_inside_a_commit_then_relaunched(two_ranks, tmp_path):
    """Slow tier: rank 0 SIGKILLs itself between renaming step 15 and pointing ``latest`` at
    it; torchrun gives up (no restarts); a second torchrun resumes from step 10."""
    uninterrupted = read_result(two_ranks[0], 0)["losses"]
    run_dir = tmp_path / "run"
    assert torchrun(tmp_path / "out1", run_dir, **{ckpt.FAULT_ENV: "renamed@15"}) != 0
    assert ckpt.latest_checkpoint(run_dir).name == "step-00000010"
    assert torchrun(tmp_path / "out2", run_dir) == 0
    again = read_result(tmp_path / "out2", 0)["losses"]
    assert again == {k: uninterrupted[k] for k in range(11, driver.STEPS + 1)}


# ---- in-process: argument checks and the pure helpers ------------------------------------------


@pytest.fixture
def torchrun_env(monkeypatch):
    """This process looks like rank 0 of 2 (no process group is ever joined by these tests)."""
    for name, value in {
        "RANK": "0",
        "WORLD_SIZE": "2",
        "LOCAL_RANK": "0",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "1",
    }.items():
        monkeypatch.setenv(name, value)


def test_batch_size_must_divide_by_world_size(torchrun_env, tmp_path):
    config = attrs.evolve(driver.train_config(), batch_size=5)
    with pytest.raises(ValueError) as err:
        Trainer(
            TINY, config, SyntheticSource(batch_size=5, k=1), tmp_path / "run", distributed=True
        )
    assert str(err.value) == (
        "TrainConfig.batch_size=5 must be divisible by the world size 2 (torchrun processes)"
    )
    assert not dist.is_initialized() and not (tmp_path / "run").exists()


def test_time_limit_is_refused(torchrun_env, tmp_path):
    with pytest.raises(ValueError, match="^time_limit must be None with distributed=True"):
        Trainer(TINY, driver.train_config(), driver.source(), tmp_path, distributed=True,
                time_limit=60.0)  # fmt: skip
    assert not dist.is_initialized()


def test_cli_checks(torchrun_env, monkeypatch, tmp_path, capsys):
    run = ["train", "--preset", "tiny", "--steps", "2", "--run-dir", str(tmp_path / "run")]
    cases = [
        ([], "WORLD_SIZE=2 (started by torchrun?): pass --distributed"),
        (["--distributed", "--batch-size", "5"], "--batch-size 5 must be divisible by the world size 2"),
        (["--distributed", "--time-limit", "1"], "--time-limit cannot be combined with --distributed"),
    ]  # fmt: skip
    for extra, message in cases:
        assert cli_main(run + extra) == 2
        assert message in capsys.readouterr().err
    monkeypatch.delenv("RANK")
    assert cli_main(run + ["--distributed"]) == 2
    assert "RANK and WORLD_SIZE are not set" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_device_per_rank():
    assert dist.rank_device("cpu", 3) == "cpu" and dist.backend_for("cpu") == "gloo"
    assert dist.backend_for("cuda:1") == "nccl"
    with pytest.raises(ValueError, match="^device must be 'cpu', 'cuda' or 'auto'"):
        dist.rank_device("cuda:1", 0)
    if not torch.cuda.is_available():
        assert dist.rank_device("auto", 0) == "cpu"
    assert (dist.rank(), dist.world_size(), dist.gather_ints(7)) == (0, 1, [7])


@settings(max_examples=25, deadline=None)
@given(world=st.sampled_from([1, 2, 3, 4, 6]), per_rank=st.integers(1, 3), step=st.integers(0, 99))
def test_shards_are_the_global_rows_in_rank_order(world, per_rank, step):
    batch = SyntheticSource(batch_size=world * per_rank, k=1).batch(step)
    shards = [shard_batch(batch, r, world) for r in range(world)]
    assert all(s.size == per_rank for s in shards)
    for field in ("images", "neighbor_images", "t", "noise", "use_text", "use_neighbors"):
        joined = np.concatenate([getattr(s, field) for s in shards])
        assert np.array_equal(joined, getattr(batch, field)), field
    for field in ("text", "neighbor_text"):
        for part in ("tokens", "mask", "pooled"):
            joined = np.concatenate([getattr(getattr(s, field), part) for s in shards])
            assert np.array_equal(joined, getattr(getattr(batch, field), part))


def test_rank_seeds():
    assert rank_step_seed(3, 7, 0) == step_seed(3, 7)  # one process keeps its numbers
    seeds = {rank_step_seed(3, step, rank) for step in range(50) for rank in range(8)}
    assert len(seeds) == 50 * 8 and all(0 <= s < 2**63 - 1 for s in seeds)
