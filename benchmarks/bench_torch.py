"""PyTorch backend benchmarks (pytest-benchmark; also runnable as a script that prints a table).

    .venv/bin/python -m pytest benchmarks/bench_torch.py --benchmark-only -p no:randomly
    .venv/bin/python benchmarks/bench_torch.py            # the same numbers as one table

What is measured (DESIGN §10, the PyTorch issue):
  * training images/s at batch 64 for the ``small`` preset (8.6M parameters, 32×32), fp32 and
    bf16 autocast, with K=2 neighbours (the Re-Imagen path: 3 DStack rows per example) and K=0
    (the text-only U-Net, the size the peers measured: diffusers 24 img/s, imagen-pytorch
    18.6 img/s at ~8.4M parameters, batch 64);
  * one sampling step (batch 2, interleaved guidance = 2 variants in one call): K=2 with the
    neighbour cache vs K=0 (goal ≤ 1.15×) vs K=2 re-encoding the neighbours every step;
  * U-Net forward GFLOP/s (FLOPs counted by ``torch.utils.flop_counter``) against the ~300
    GFLOP/s fp32 matmul peak of this 2-core machine.

Threads: ``REIMAGEN_BENCH_THREADS`` (default: torch's default, the number of cores).
"""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from reimagen.backends.torch import BACKEND
from reimagen.backends.torch.trainer import Trainer
from reimagen.backends.torch.unet import TextInputs
from reimagen.core.interfaces import TextEncoding
from reimagen.core.training import Batch, TrainConfig, draw_diffusion_inputs
from reimagen.core.unet_config import PRESETS

SMALL = PRESETS["small"]
TEXT_LENGTH = 16
FP32_PEAK_GFLOPS = 300.0
PEERS = {"diffusers": 24.0, "imagen-pytorch": 18.6}  # img/s, ~8.4M params, batch 64

if os.environ.get("REIMAGEN_BENCH_THREADS"):
    torch.set_num_threads(int(os.environ["REIMAGEN_BENCH_THREADS"]))


def random_text(rng, lead, dim=SMALL.text_dim) -> TextEncoding:
    tokens = rng.standard_normal((*lead, TEXT_LENGTH, dim), dtype=np.float32)
    mask = np.ones((*lead, TEXT_LENGTH), bool)
    mask[..., TEXT_LENGTH // 2 :] = False  # half padding, as short captions have
    return TextEncoding(tokens, mask, rng.standard_normal((*lead, dim), dtype=np.float32))


class RandomSource:
    """Random batches (a pure function of step), the shape of the CPU training runs."""

    def __init__(self, batch_size: int, k: int, config=SMALL):
        self.batch_size, self.k, self.config = batch_size, k, config

    def batch(self, step: int) -> Batch:
        rng = np.random.default_rng(step)
        s, b, k = self.config.image_size, self.batch_size, self.k
        images = rng.uniform(-1, 1, (b, s, s, 3)).astype(np.float32)
        t, noise, use_text, use_nb = draw_diffusion_inputs(rng, images.shape, 0.1, 0.1)
        return Batch(
            images=images,
            text=random_text(rng, (b,)),
            neighbor_images=rng.uniform(-1, 1, (b, k, s, s, 3)).astype(np.float32),
            neighbor_text=random_text(rng, (b, k)),
            t=t,
            noise=noise,
            use_text=use_text,
            use_neighbors=use_nb,
        )


# ---- training ----------------------------------------------------------------------------------


def make_trainer(k: int, bf16: bool, batch_size: int = 64) -> tuple[Trainer, Batch]:
    config = TrainConfig(
        steps=10**6,
        batch_size=batch_size,
        neighbors=k,
        bf16=bf16,
        warmup_steps=0,
        checkpoint_every=10**6,
    )
    source = RandomSource(batch_size, k)
    trainer = Trainer(SMALL, config, source, tempfile.mkdtemp(), progress=False)
    batch = source.batch(0)
    trainer.train_step(batch)  # warm-up: oneDNN primitive creation
    return trainer, batch


TRAIN_CASES = [(0, False), (0, True), (2, False), (2, True)]


@pytest.mark.parametrize(("k", "bf16"), TRAIN_CASES, ids=lambda v: str(v))
def test_train_images_per_second(benchmark, k, bf16):
    trainer, batch = make_trainer(k, bf16)
    benchmark.pedantic(trainer.train_step, args=(batch,), rounds=3, iterations=1)
    ips = 64 / benchmark.stats.stats.min
    benchmark.extra_info.update(images_per_s=ips, k=k, bf16=bf16, peers=PEERS)
    print(f"\ntrain small K={k} {'bf16' if bf16 else 'fp32'}: {ips:.1f} img/s (batch 64)")


# ---- sampling ----------------------------------------------------------------------------------


def sampling_setup(k: int, b: int = 2, dtype: str = "float32"):
    rng = np.random.default_rng(0)
    model = BACKEND.build_model(SMALL, seed=0)
    s = SMALL.image_size
    text = random_text(rng, (b,))
    images = rng.uniform(-1, 1, (b, k, s, s, 3)).astype(np.float32)
    denoiser = BACKEND.make_denoiser(model, text, images, random_text(rng, (b, k)), dtype)
    x = torch.from_numpy(rng.standard_normal((b, s, s, 3), dtype=np.float32))
    return model, denoiser, x, (text, images, random_text(rng, (b, k)))


VARIANTS = ("full", "text")  # interleaved guidance, one of its two kinds of step


def step_cached(denoiser, x):
    return denoiser(x, 0.5, VARIANTS)


def step_uncached(model, host, x, dtype="float32"):
    """What a step would cost without the cache: the neighbours re-encoded every step."""
    denoiser = BACKEND.make_denoiser(model, *host, dtype)
    return denoiser(x, 0.5, VARIANTS)


@pytest.mark.parametrize("mode", ["k0", "k2-cached", "k2-uncached"])
def test_sampling_step(benchmark, mode):
    k = 0 if mode == "k0" else 2
    model, denoiser, x, host = sampling_setup(k)
    if mode == "k2-uncached":
        fn, args = step_uncached, (model, host, x)
    else:
        fn, args = step_cached, (denoiser, x)
    fn(*args)
    benchmark.pedantic(fn, args=args, rounds=20, iterations=1, warmup_rounds=2)
    benchmark.extra_info.update(mode=mode, batch=2, variants=len(VARIANTS))


def sampling_ratio(rounds: int = 30, clock=time.perf_counter) -> dict[str, float]:
    """Median step times of the three modes, interleaved in one loop (same machine state);
    ``clock=time.process_time`` measures CPU time instead of wall time."""
    _, k0, x0, _ = sampling_setup(0)
    model, k2, x2, host = sampling_setup(2)
    fns = {
        "k0": lambda: step_cached(k0, x0),
        "k2-cached": lambda: step_cached(k2, x2),
        "k2-uncached": lambda: step_uncached(model, host, x2),
    }
    times = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(rounds):
        for name, fn in fns.items():
            start = clock()
            fn()
            times[name].append(clock() - start)
    return {name: float(np.median(v)) for name, v in times.items()}


def test_sampling_cache_ratio(benchmark):
    """K=2 with the cache vs K=0 in the same loop, CPU time (goal ≤ 1.15×)."""
    med = benchmark.pedantic(
        sampling_ratio, kwargs={"clock": time.process_time}, rounds=1, iterations=1
    )
    benchmark.extra_info.update({f"{name}_ms": value * 1e3 for name, value in med.items()})
    ratio = med["k2-cached"] / med["k0"]
    print(
        f"\nsampling step (B=2, 2 variants): K=0 {med['k0'] * 1e3:.1f} ms, K=2 cached "
        f"{med['k2-cached'] * 1e3:.1f} ms ({ratio:.3f}x), K=2 uncached "
        f"{med['k2-uncached'] * 1e3:.1f} ms ({med['k2-uncached'] / med['k0']:.2f}x)"
    )
    assert ratio < 1.15


# ---- FLOP throughput ---------------------------------------------------------------------------


def forward_gflops(
    dtype: torch.dtype, batch: int = 32, rounds: int = 3, clock=time.perf_counter
) -> tuple[float, float]:
    """(GFLOP per forward of `batch` images, achieved GFLOP/s) for the K=0 small U-Net."""
    model = BACKEND.build_model(SMALL).eval()
    rng = np.random.default_rng(0)
    s = SMALL.image_size
    text = random_text(rng, (batch,))
    args = (
        torch.from_numpy(rng.standard_normal((batch, s, s, 3), dtype=np.float32)),
        torch.rand(batch),
        TextInputs(*(torch.from_numpy(a) for a in (text.tokens, text.mask, text.pooled))),
    )
    flags = {
        "use_text": torch.ones(batch, dtype=torch.bool),
        "use_neighbors": torch.ones(batch, dtype=torch.bool),
    }
    with (
        torch.inference_mode(),
        torch.autocast("cpu", torch.bfloat16, enabled=dtype == torch.bfloat16),
    ):
        with FlopCounterMode(display=False) as counter:
            model(*args, **flags)
        flops = counter.get_total_flops()
        best = float("inf")
        for _ in range(rounds):
            start = clock()
            model(*args, **flags)
            best = min(best, clock() - start)
    return flops / 1e9, flops / best / 1e9


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_forward_gflops(benchmark, dtype):
    gflop, rate = benchmark.pedantic(forward_gflops, args=(dtype,), rounds=1, iterations=1)
    benchmark.extra_info.update(gflop=gflop, gflops_per_s=rate)
    print(
        f"\nforward small B=32 {dtype}: {gflop:.1f} GFLOP, {rate:.0f} GFLOP/s "
        f"({rate / FP32_PEAK_GFLOPS:.0%} of the {FP32_PEAK_GFLOPS:.0f} GFLOP/s fp32 peak)"
    )
    assert rate > 0


def _timed(fn, *args) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call. On a shared machine the CPU
    time is the honest cost: wall time also counts the time other processes held the cores."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn(*args)
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {threads} thread(s); load average {os.getloadavg()}")
    print(
        f"small: {BACKEND.param_count(SMALL) / 1e6:.2f}M parameters; "
        f"paper-64: {BACKEND.param_count(PRESETS['paper-64']) / 1e9:.3f}B (paper: 2.5B)"
    )
    for dtype in (torch.float32, torch.bfloat16):
        gflop, wall_rate = forward_gflops(dtype)
        _, cpu_rate = forward_gflops(dtype, clock=time.process_time)
        print(
            f"forward B=32 {dtype!s:15s} {gflop:6.1f} GFLOP  {wall_rate:6.0f} GFLOP/s wall, "
            f"{cpu_rate * threads:6.0f} GFLOP/s per CPU-second x {threads} "
            f"({cpu_rate * threads / FP32_PEAK_GFLOPS:.0%} of the {FP32_PEAK_GFLOPS:.0f} fp32 peak)"
        )
    med = sampling_ratio(clock=time.process_time)
    print(
        f"sampling step B=2 x2 variants (median CPU time): K=0 {med['k0'] * 1e3:.1f} ms | K=2 cached "
        f"{med['k2-cached'] * 1e3:.1f} ms ({med['k2-cached'] / med['k0']:.3f}x) | K=2 uncached "
        f"{med['k2-uncached'] * 1e3:.1f} ms ({med['k2-uncached'] / med['k0']:.2f}x)"
    )
    for k, bf16 in TRAIN_CASES:
        trainer, batch = make_trainer(k, bf16)
        times = [_timed(trainer.train_step, batch) for _ in range(3)]
        wall, cpu = min(t[0] for t in times), min(t[1] for t in times)
        print(
            f"train small K={k} {'bf16' if bf16 else 'fp32'} batch 64: {64 / wall:6.1f} img/s wall "
            f"({wall:.2f} s/step), {64 / cpu * threads:6.1f} img/s per CPU-second x {threads} "
            f"thread(s) ({cpu:.2f} CPU-s/step)"
        )
    print(f"peers (K=0, fp32, ~8.4M parameters, batch 64): {PEERS} img/s")


if __name__ == "__main__":
    main()
