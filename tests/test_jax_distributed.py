"""Data-parallel JAX training (issue #9, "Scale-out"): the batch split over a 1-D "batch"
mesh gives the one-device losses (≤1e-5), on two local devices and across two processes.

Oracle: the same Trainer, config, weights and batches on one device, in this pytest process.
The data-parallel runs are subprocesses of this file (``python tests/test_jax_distributed.py
RESULT.json``): the forced host device count must be set before JAX is imported, and
``jax.distributed.initialize`` can run once per process. Processes talk over 127.0.0.1 only,
on a port the OS just handed out, and every subprocess has a timeout.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import attrs
import numpy as np
import pytest

STEPS = 3
SUBPROCESS_TIMEOUT_S = 240
TOLERANCE = 1e-5
HERE = Path(__file__).resolve()


# ---- shared by the pytest process and the workers ----------------------------------------------


def train_config():
    from reimagen.training.contract import TrainConfig

    return TrainConfig(
        steps=STEPS,
        batch_size=4,
        neighbors=2,
        lr=1e-3,
        warmup_steps=0,
        grad_clip=0.5,
        checkpoint_every=STEPS,
        log_every=1,
    )


@attrs.frozen
class Source:
    """Random global batches, a pure function of (seed, step)."""

    seed: int = 0
    batch_size: int = 4

    def batch(self, step: int):
        from reimagen.core.interfaces import TextEncoding
        from reimagen.core.unet_config import PRESETS
        from reimagen.training.contract import Batch, draw_diffusion_inputs

        tiny, k, length = PRESETS["tiny"], 2, 5
        rng = np.random.default_rng([self.seed, step])
        b, s = self.batch_size, tiny.image_size

        def text(lead):
            shape = (*lead, length, tiny.text_dim)
            return TextEncoding(
                rng.standard_normal(shape).astype(np.float32),
                np.arange(length) < rng.integers(1, length + 1, size=lead)[..., None],
                rng.standard_normal((*lead, tiny.text_dim)).astype(np.float32),
            )

        images = rng.uniform(-1, 1, (b, s, s, 3)).astype(np.float32)
        t, noise, use_text, use_neighbors = draw_diffusion_inputs(rng, images.shape, 0.25, 0.25)
        return Batch(
            images=images,
            text=text((b,)),
            neighbor_images=rng.uniform(-1, 1, (b, k, s, s, 3)).astype(np.float32),
            neighbor_text=text((b, k)),
            t=t,
            noise=noise,
            use_text=use_text,
            use_neighbors=use_neighbors,
        )


def pin_numerics():
    """What tests/conftest.py sets for the pytest process (float32, highest precision, CPU)."""
    import jax

    jax.config.update("jax_default_matmul_precision", "highest")
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_disable_most_optimizations", True)  # quick compiles; runs 3 steps
    from reimagen.core.paths import home

    jax.config.update("jax_compilation_cache_dir", str(home() / "jax-cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def run_losses(run_dir, **trainer_options) -> tuple[list[float], object]:
    """Train STEPS steps of the tiny preset; (loss per step, the trainer)."""
    from reimagen.backends.jax.trainer import Trainer
    from reimagen.core.unet_config import PRESETS

    losses = []
    trainer = Trainer(
        PRESETS["tiny"],
        train_config(),
        Source(),
        run_dir,
        progress=False,
        callback=lambda step, loss: losses.append(loss),
        **trainer_options,
    )
    trainer.run()
    return losses, trainer


def worker(result_path: str) -> None:
    """A data-parallel run; joins a multi-process job when REIMAGEN_COORDINATOR is set."""
    if os.environ.get("REIMAGEN_COORDINATOR"):
        from reimagen.backends.jax import distributed

        distributed.initialize(timeout_s=60)
    pin_numerics()
    import jax

    from reimagen.backends.jax import sharding

    run_dir = Path(os.environ["RUN_DIR"])
    losses, trainer = run_losses(run_dir, data_parallel=True)
    weight = trainer.model.conv_in.weight
    rows = sharding.process_rows(trainer.mesh, train_config().batch_size)
    result = {
        "losses": losses,
        "process": jax.process_index(),
        "processes": jax.process_count(),
        "devices": jax.device_count(),
        "weight_devices": len(weight.sharding.device_set),
        "weight_replicated": bool(weight.sharding.is_fully_replicated),
        "rows": [rows.start, rows.stop],
        "checkpoint": str(trainer.checkpoint),
    }
    Path(result_path).write_text(json.dumps(result))


# ---- pytest side -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def worker_env(**extra: str) -> dict[str, str]:
    from reimagen.backends.jax import distributed as dist

    ours = {dist.ENV_COORDINATOR, dist.ENV_NUM_PROCESSES, dist.ENV_PROCESS_ID}
    env = {k: v for k, v in os.environ.items() if k not in ours}
    env.update(JAX_PLATFORMS="cpu", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **extra)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parents[1]), env.get("PYTHONPATH", "")])
    return env


def start(result: Path, env: dict[str, str]) -> subprocess.Popen:
    """A worker writing ``result``; its output goes to ``result`` + ".log"."""
    with open(f"{result}.log", "wb") as log:
        command = [sys.executable, str(HERE), str(result)]
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    proc.log = Path(f"{result}.log")
    return proc


def finish(procs: list[subprocess.Popen]) -> None:
    """Wait for every worker; stop at the first failure or the timeout, kill the rest, and show
    the output of the ones that did not exit 0."""
    deadline = time.monotonic() + SUBPROCESS_TIMEOUT_S
    try:
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            if any(p.poll() not in (None, 0) for p in procs):
                break
            time.sleep(0.1)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p in procs:
        assert p.returncode == 0, f"worker exited {p.returncode}:\n{p.log.read_text()[-4000:]}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> list[float]:
    """The one-device losses (this process: one CPU device, conftest's numerics)."""
    import jax

    assert jax.device_count() == 1
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)  # as the workers
    try:
        losses, trainer = run_losses(tmp_path_factory.mktemp("one-device"))
    finally:
        jax.config.update("jax_disable_most_optimizations", previous)
    assert trainer.mesh is None and len(losses) == STEPS
    assert len(set(losses)) == STEPS  # distinct steps: a stale or repeated loss would show
    return losses


def assert_same_losses(actual: list[float], expected: list[float]) -> float:
    diff = float(np.max(np.abs(np.asarray(actual) - np.asarray(expected))))
    assert len(actual) == len(expected) and diff <= TOLERANCE, (actual, expected, diff)
    return diff


def test_two_local_devices_match_one_device(reference, tmp_path):
    env = worker_env(
        XLA_FLAGS="--xla_force_host_platform_device_count=2", RUN_DIR=str(tmp_path / "run")
    )
    proc = start(tmp_path / "result.json", env)
    finish([proc])
    result = json.loads((tmp_path / "result.json").read_text())
    assert (result["devices"], result["processes"]) == (2, 1)
    assert result["weight_devices"] == 2 and result["weight_replicated"]
    assert result["rows"] == [0, 4]  # one process feeds the whole global batch
    diff = assert_same_losses(result["losses"], reference)
    print(f"2 local devices vs 1: max |loss diff| = {diff:.3g}")
    assert Path(result["checkpoint"]).name == f"step-{STEPS:08d}"


def _loopback_hostname() -> bool:
    """Gloo binds to the address this machine's hostname resolves to."""
    from reimagen.backends.jax.distributed import is_loopback

    return is_loopback(f"{socket.gethostname()}:0")


@pytest.mark.skipif(
    not _loopback_hostname(),
    reason="the hostname does not resolve to a loopback address, so Gloo would listen on a "
    "network interface; this test talks over 127.0.0.1 only",
)
def test_two_processes_match_one_device(reference, tmp_path):
    """jax.distributed over 127.0.0.1 (Gloo CPU collectives), one CPU device per process:
    each process uploads its half of the global batch; process 0 alone checkpoints."""
    from reimagen.backends.jax.distributed import process_env

    coordinator, run_dir = f"127.0.0.1:{free_port()}", tmp_path / "run"
    procs = [
        start(
            tmp_path / f"result-{i}.json",
            worker_env(
                XLA_FLAGS="--xla_force_host_platform_device_count=1",
                RUN_DIR=str(run_dir),
                **process_env(coordinator, 2, i),
            ),
        )
        for i in range(2)
    ]
    finish(procs)
    results = [json.loads((tmp_path / f"result-{i}.json").read_text()) for i in range(2)]
    for i, result in enumerate(results):
        assert (result["process"], result["processes"], result["devices"]) == (i, 2, 2)
        assert result["weight_devices"] == 2 and result["weight_replicated"]
        diff = assert_same_losses(result["losses"], reference)
        print(f"process {i} of 2 vs 1 device: max |loss diff| = {diff:.3g}")
    assert [r["rows"] for r in results] == [[0, 2], [2, 4]]  # row = process · 2 + i
    committed = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert committed == ["latest", f"step-{STEPS:08d}"]  # one writer, nothing left half-done
    assert {r["checkpoint"] for r in results} == {str(run_dir / "checkpoints" / committed[1])}
    logged = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "loss" in r] == [1, 2, 3]  # process 0's lines only
    assert (run_dir / "process-1" / "log.jsonl").is_file()


def test_batch_size_must_divide_by_device_count(tmp_path):
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); from test_jax_distributed import *\n"
        "from reimagen.backends.jax.trainer import Trainer\n"
        "from reimagen.core.unet_config import PRESETS\n"
        "try:\n"
        "    Trainer(PRESETS['tiny'], train_config().replace(batch_size=5), Source(), "
        "sys.argv[2], data_parallel=True)\n"
        "except ValueError as err:\n"
        "    print('ERROR', err)\n"
    )
    env = worker_env(XLA_FLAGS="--xla_force_host_platform_device_count=2")
    out = subprocess.run(
        [sys.executable, "-c", code, str(HERE.parent), str(tmp_path / "run")],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    lines = out.stdout.strip().splitlines()
    assert lines[-1] == (
        "ERROR TrainConfig.batch_size=5 must be divisible by the device count 2 of the "
        "data-parallel mesh"
    )
    assert not (tmp_path / "run").exists()  # refused before anything was written


# ---- the launcher's argument handling ----------------------------------------------------------


def test_distributed_arguments(monkeypatch):
    from reimagen.backends.jax import distributed as dist

    for name in (dist.ENV_COORDINATOR, dist.ENV_NUM_PROCESSES, dist.ENV_PROCESS_ID):
        monkeypatch.delenv(name, raising=False)
    assert dist.resolve() is None  # nothing given: JAX's own cluster detection
    assert dist.resolve("h:1", 2, 1) == ("h:1", 2, 1)
    for name, value in dist.process_env("127.0.0.1:5", 3, 2).items():
        monkeypatch.setenv(name, value)
    assert dist.resolve() == ("127.0.0.1:5", 3, 2)
    assert dist.resolve(process_id=0) == ("127.0.0.1:5", 3, 0)  # arguments win
    with pytest.raises(ValueError, match=r"process_id must be in \[0, 2\]; got 3"):
        dist.resolve(process_id=3)
    monkeypatch.delenv(dist.ENV_NUM_PROCESSES)
    with pytest.raises(ValueError, match="^num_processes missing"):
        dist.resolve()
    with pytest.raises(ValueError, match="coordinator must be 'host:port'"):
        dist.resolve("nohost", 2, 0)
    monkeypatch.setenv(dist.ENV_NUM_PROCESSES, "two")
    with pytest.raises(ValueError, match="REIMAGEN_NUM_PROCESSES must be an integer"):
        dist.resolve()
    assert dist.is_loopback("127.0.0.1:80") and dist.is_loopback("[::1]:80")
    assert dist.is_loopback("localhost:80") and not dist.is_loopback("10.1.2.3:80")


if __name__ == "__main__":
    worker(sys.argv[1])
