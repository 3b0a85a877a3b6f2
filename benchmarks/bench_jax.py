"""JAX backend benchmark: one sampling step, JAX (jit) vs PyTorch, same config, same batch.

    .venv/bin/python -m pytest benchmarks/bench_jax.py --benchmark-only -p no:randomly
    .venv/bin/python benchmarks/bench_jax.py            # the same numbers as one table

What is measured (the JAX parity issue): the per-step cost of sampling with the ``small``
preset (8.6M parameters, 32×32), batch 2, K=2 cached neighbours, one interleaved-guidance step
(2 variants = 4 network rows in one call), the same weights (torch's, converted) and the same
host arrays on both backends. The JAX step is the jitted ``eps_rows`` (compiled once, before
timing; the result is waited for with ``block_until_ready``); the torch step is the
``TorchDenoiser`` call under ``inference_mode``. Both are timed in one interleaved loop, so
the machine's state is the same for both, as median wall time and median CPU time of this
process (on a shared machine CPU time is the fairer number). Also: JAX with K=0, for the
neighbour-cache overhead (docs/design.md §10: close to 1).

Threads: ``REIMAGEN_BENCH_THREADS`` (default: each library's default, all cores). With 1,
torch and XLA:CPU both run one thread; use it on a busy machine, where torch's OpenMP threads
spin-wait on each other and its multi-threaded timings blow up.
"""

from __future__ import annotations

import os
import time

import jax
import numpy as np
import pytest
import torch

from reimagen.backends.jax import BACKEND as JAX
from reimagen.backends.jax import convert
from reimagen.backends.torch import BACKEND as TORCH
from reimagen.core.interfaces import TextEncoding
from reimagen.core.unet_config import PRESETS

SMALL = PRESETS["small"]
TEXT_LENGTH = 16
BATCH, K = 2, 2
VARIANTS = ("full", "text")  # one interleaved-guidance step: 2 variants in one call
ROUNDS = int(os.environ.get("REIMAGEN_BENCH_ROUNDS", "30"))

THREADS = int(os.environ.get("REIMAGEN_BENCH_THREADS", "0"))
if THREADS:
    torch.set_num_threads(THREADS)
if THREADS == 1:  # read when XLA's CPU client starts (first use), so setting it here works
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "")
        + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    )


def random_text(rng, lead) -> TextEncoding:
    tokens = rng.standard_normal((*lead, TEXT_LENGTH, SMALL.text_dim), dtype=np.float32)
    mask = np.ones((*lead, TEXT_LENGTH), bool)
    mask[..., TEXT_LENGTH // 2 :] = False  # half padding, as short captions have
    return TextEncoding(tokens, mask, rng.standard_normal((*lead, SMALL.text_dim), np.float32))


def make_steps(k: int = K) -> dict[str, callable]:
    """name -> a zero-argument sampling step, for torch and JAX on identical inputs."""
    rng = np.random.default_rng(0)
    torch_model = TORCH.build_model(SMALL, seed=0)
    with torch.no_grad():  # random weights everywhere (the fresh model zeroes some layers)
        for p in torch_model.parameters():
            p.add_(torch.from_numpy(0.02 * rng.standard_normal(p.shape).astype(np.float32)))
    jax_model = convert.from_torch(torch_model)
    s = SMALL.image_size
    text = random_text(rng, (BATCH,))
    images = rng.uniform(-1, 1, (BATCH, k, s, s, 3)).astype(np.float32)
    nb_text = random_text(rng, (BATCH, k))
    x = rng.standard_normal((BATCH, s, s, 3), dtype=np.float32)
    torch_den = TORCH.make_denoiser(torch_model, text, images, nb_text)
    jax_den = JAX.make_denoiser(jax_model, text, images, nb_text)
    tx, jx = torch_den.asarray(x), jax_den.asarray(x)
    steps = {
        "torch": lambda: torch_den(tx, 0.5, VARIANTS),
        "jax": lambda: jax.block_until_ready(jax_den(jx, 0.5, VARIANTS)),
    }
    for step in steps.values():  # compile (JAX) / create oneDNN primitives (torch)
        step()
        step()
    return steps


def interleaved_medians(steps: dict, rounds: int = ROUNDS) -> dict[str, tuple[float, float]]:
    """name -> (median wall s, median CPU s) per step, the steps alternating in one loop."""
    times = {name: ([], []) for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            wall, cpu = time.perf_counter(), time.process_time()
            step()
            times[name][0].append(time.perf_counter() - wall)
            times[name][1].append(time.process_time() - cpu)
    return {name: (float(np.median(w)), float(np.median(c))) for name, (w, c) in times.items()}


def measure() -> dict[str, tuple[float, float]]:
    steps = make_steps(K)
    no_k = make_steps(0)["jax"]
    return interleaved_medians({**steps, "jax K=0": no_k})


def render(med: dict[str, tuple[float, float]]) -> str:
    torch_wall, torch_cpu = med["torch"]
    jax_wall, jax_cpu = med["jax"]
    header = (
        f"small ({JAX.param_count(SMALL) / 1e6:.2f}M params), B={BATCH}, K={K} cached, "
        f"{len(VARIANTS)} variants/step; torch {torch.__version__} ({torch.get_num_threads()} "
        f"threads), jax {jax.__version__} ({jax.default_backend()}); load {os.getloadavg()[0]:.1f}"
    )
    lines = [
        header,
        f"  torch        {torch_wall * 1e3:7.1f} ms wall   {torch_cpu * 1e3:7.1f} ms CPU",
        f"  jax (jit)    {jax_wall * 1e3:7.1f} ms wall   {jax_cpu * 1e3:7.1f} ms CPU",
        f"  jax / torch  {jax_wall / torch_wall:7.2f}x wall    {jax_cpu / torch_cpu:7.2f}x CPU",
        f"  jax K=2 / K=0 (neighbour cache overhead): {jax_wall / med['jax K=0'][0]:.2f}x wall",
    ]
    return "\n".join(lines)


@pytest.fixture(scope="module")
def steps():
    return make_steps(K)


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_sampling_step(benchmark, steps, backend):
    benchmark.pedantic(steps[backend], rounds=ROUNDS, iterations=1, warmup_rounds=2)
    benchmark.extra_info.update(backend=backend, batch=BATCH, k=K, variants=len(VARIANTS))


def test_sampling_step_ratio(benchmark, steps, bench_summary):
    """JAX vs torch in one interleaved loop: the ratio this benchmark reports."""
    both = {"torch": steps["torch"], "jax": steps["jax"], "jax K=0": make_steps(0)["jax"]}
    med = benchmark.pedantic(interleaved_medians, args=(both,), rounds=1, iterations=1)
    bench_summary["JAX vs torch sampling step"] = lambda: render(med)
    assert all(np.isfinite(v).all() for v in med.values())


def main() -> None:
    print(render(measure()))


if __name__ == "__main__":
    main()
