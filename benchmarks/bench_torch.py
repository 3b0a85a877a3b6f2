"""PyTorch backend benchmarks (pytest-benchmark; also runnable as a script that prints a table).

    .venv/bin/python -m pytest benchmarks/bench_torch.py --benchmark-only -p no:randomly
    .venv/bin/python benchmarks/bench_torch.py            # the same numbers as one table

What is measured (docs/design.md §10, the PyTorch issue, issue 16):
  * training images/s at batch 64 for the ``small`` preset (8.6M parameters, 32×32), fp32 and
    bf16 autocast, with K=2 neighbours (the Re-Imagen path: 3 DStack rows per example) and K=0
    (the text-only U-Net, the size the peers measure: ``make bench-peers`` times them beside us);
  * one sampling step (batch 2, interleaved guidance = 2 variants in one call): K=2 with the
    neighbour cache vs K=0 (goal ≤ 1.15×) vs K=2 re-encoding the neighbours every step;
  * U-Net forward GFLOP/s (FLOPs counted by ``torch.utils.flop_counter``, taught the CPU SDPA
    kernel) as a share of the matmul roofline measured in the same run
    (``benchmarks/roofline.py``: torch.mm on 512²..2048² and the forward's own GEMM shapes,
    and its convolutions alone, fp32 and bf16, best of N, at the start and the end of the run),
    by CPU time and by wall time. Machines differ between rounds and share their cores, so no
    peak is hard-coded.

Threads: ``REIMAGEN_BENCH_THREADS`` (default: torch's default, the number of cores);
``REIMAGEN_BENCH_ROOFLINE_THREADS`` (e.g. "1,2") also times the roofline at other counts.
"""

from __future__ import annotations

import functools
import os
import sys
import tempfile
import time

import numpy as np
import pytest
import torch

from reimagen.backends.torch import BACKEND
from reimagen.backends.torch.trainer import Trainer
from reimagen.backends.torch.unet import TextInputs
from reimagen.core.interfaces import TextEncoding
from reimagen.core.unet_config import PRESETS
from reimagen.training.contract import Batch, TrainConfig, draw_diffusion_inputs

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import roofline  # benchmarks/roofline.py, beside this file

SMALL = PRESETS["small"]
TEXT_LENGTH = 16

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


def make_trainer(
    k: int, bf16: bool, batch_size: int = 64, model_config=SMALL
) -> tuple[Trainer, Batch]:
    config = TrainConfig(
        steps=10**6,
        batch_size=batch_size,
        neighbors=k,
        bf16=bf16,
        warmup_steps=0,
        checkpoint_every=10**6,
    )
    source = RandomSource(batch_size, k, model_config)
    trainer = Trainer(model_config, config, source, tempfile.mkdtemp(), progress=False)
    batch = source.batch(0)
    trainer.train_step(batch)  # warm-up: oneDNN primitive creation
    return trainer, batch


TRAIN_CASES = [(0, False), (0, True), (2, False), (2, True)]


@pytest.mark.parametrize(("k", "bf16"), TRAIN_CASES, ids=lambda v: str(v))
def test_train_images_per_second(benchmark, k, bf16):
    trainer, batch = make_trainer(k, bf16)
    benchmark.pedantic(trainer.train_step, args=(batch,), rounds=3, iterations=1)
    ips = 64 / benchmark.stats.stats.min
    benchmark.extra_info.update(images_per_s=ips, k=k, bf16=bf16)
    print(f"\ntrain small K={k} {'bf16' if bf16 else 'fp32'}: {ips:.1f} img/s (batch 64)")


# ---- sampling ----------------------------------------------------------------------------------


def sampling_setup(k: int, b: int = 2, dtype: str = "float32", model_config=SMALL):
    rng = np.random.default_rng(0)
    model = BACKEND.build_model(model_config, seed=0)
    s = model_config.image_size
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


# ---- FLOP throughput against the roofline of this run -----------------------------------------

PRECISIONS = {torch.float32: "fp32", torch.bfloat16: "bf16"}


def forward_setup(batch: int = 32, model_config=SMALL):
    """A K=0 forward of ``batch`` images: a callable ``forward(dtype)``."""
    model = BACKEND.build_model(model_config).eval()
    rng = np.random.default_rng(0)
    s = model_config.image_size
    text = random_text(rng, (batch,))
    args = (
        torch.from_numpy(rng.standard_normal((batch, s, s, 3), dtype=np.float32)),  # [B,H,W,C]
        torch.rand(batch),
        TextInputs(*(torch.from_numpy(a) for a in (text.tokens, text.mask, text.pooled))),
    )
    flags = {
        "use_text": torch.ones(batch, dtype=torch.bool),
        "use_neighbors": torch.ones(batch, dtype=torch.bool),
    }

    def forward(dtype: torch.dtype = torch.float32):
        with (
            torch.inference_mode(),
            torch.autocast("cpu", torch.bfloat16, enabled=dtype == torch.bfloat16),
        ):
            return model(*args, **flags)

    return forward


@functools.cache
def forward_gemms(batch: int = 32):
    """{(M, K, N): calls} of the small forward's linear layers and convolutions."""
    return roofline.gemm_shapes(forward_setup(batch))


@functools.cache
def run_roofline(log=None) -> roofline.Roofline:
    """torch.mm on 512²..2048² and the forward's main GEMM shapes, fp32 and bf16, at this
    run's thread count (and any in REIMAGEN_BENCH_ROOFLINE_THREADS), best of N."""
    threads = os.environ.get("REIMAGEN_BENCH_ROOFLINE_THREADS")
    extra = [int(n) for n in threads.split(",")] if threads else []
    counts = [n for n in extra if n != torch.get_num_threads()] + [torch.get_num_threads()]
    gemms = forward_gemms()
    return roofline.roofline(roofline.top_shapes(gemms), threads=counts, convs=gemms.convs, log=log)


def forward_gflops(dtype: torch.dtype, batch: int = 32, rounds: int = 3) -> tuple[float, dict]:
    """(GFLOP per forward of `batch` images, {clock: GFLOP/s of the best of `rounds`}) for the
    K=0 small U-Net."""
    forward = forward_setup(batch)
    flops = roofline.count_flops(lambda: forward(dtype))
    forward(dtype)
    times = [roofline.timed(lambda: forward(dtype)) for _ in range(rounds)]
    return flops / 1e9, {c: flops / min(t[c] for t in times) / 1e9 for c in roofline.CLOCKS}


def share_of_roofline(rate: float, dtype: torch.dtype, rl: roofline.Roofline, clock="cpu") -> str:
    """'NN% of the P GFLOP/s <prec> peak (torch.mm or conv), NN% of the torch.mm peak, MM% of
    what its own GEMM shapes reach'."""
    precision = PRECISIONS[dtype]
    peak, mm_peak = rl.peak(clock)[precision], rl.peak(clock, "mm")[precision]
    gemms = forward_gemms()
    bound_s, covered = rl.shape_bound(gemms, precision, clock)
    bound_rate = roofline.gemm_flops(gemms) / bound_s / 1e9  # GFLOP/s at its shapes' speed
    return (
        f"{rate / peak:.0%} of the {peak:.0f} GFLOP/s {precision} peak (torch.mm or conv), "
        f"{rate / mm_peak:.0%} of the {mm_peak:.0f} GFLOP/s torch.mm peak, "
        f"{rate / bound_rate:.0%} of the {bound_rate:.0f} GFLOP/s its GEMM shapes reach "
        f"({covered:.0%} of its GEMM FLOPs timed at their shape)"
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_forward_gflops(benchmark, dtype):
    rl = run_roofline()
    gflop, rates = benchmark.pedantic(forward_gflops, args=(dtype,), rounds=1, iterations=1)
    benchmark.extra_info.update(gflop=gflop, gflops_per_s=rates, matmul_peak=rl.to_dict())
    for clock, rate in rates.items():
        print(
            f"\nforward small B=32 {dtype}: {gflop:.1f} GFLOP, {rate:.0f} GFLOP/s by {clock} time "
            f"({share_of_roofline(rate, dtype, rl, clock)})"
        )
    assert rates["cpu"] > 0


def main() -> None:
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {threads} thread(s); load average {os.getloadavg()}")
    print(
        f"small: {BACKEND.param_count(SMALL) / 1e6:.2f}M parameters; "
        f"paper-64: {BACKEND.param_count(PRESETS['paper-64']) / 1e9:.3f}B (paper: 2.5B)"
    )
    print("matmul roofline (start of run):")
    start = run_roofline(log=print)
    forward = {dtype: forward_gflops(dtype) for dtype in (torch.float32, torch.bfloat16)}
    med = sampling_ratio(clock=time.process_time)
    print(
        f"sampling step B=2 x2 variants (median CPU time): K=0 {med['k0'] * 1e3:.1f} ms | K=2 cached "
        f"{med['k2-cached'] * 1e3:.1f} ms ({med['k2-cached'] / med['k0']:.3f}x) | K=2 uncached "
        f"{med['k2-uncached'] * 1e3:.1f} ms ({med['k2-uncached'] / med['k0']:.2f}x)"
    )
    train = {}
    for k, bf16 in TRAIN_CASES:
        trainer, batch = make_trainer(k, bf16)
        flops = roofline.count_flops(functools.partial(trainer.train_step, batch))
        times = [roofline.timed(functools.partial(trainer.train_step, batch)) for _ in range(3)]
        best = {c: min(t[c] for t in times) for c in roofline.CLOCKS}
        train[k, bf16] = (flops, best)
        print(
            f"train small K={k} {'bf16' if bf16 else 'fp32'} batch 64, min of 3: "
            f"{64 / best['cpu']:6.1f} img/s by CPU time ({best['cpu']:.2f} s/step), "
            f"{64 / best['wall']:6.1f} img/s by wall time ({best['wall']:.2f} s/step)"
        )
    print("matmul roofline (end of run):")
    gemms = forward_gemms()
    end = roofline.roofline(roofline.top_shapes(gemms), convs=gemms.convs, log=print)
    rl = start.merged(end)
    print(f"% of peak below: best of N over start and end, at {threads} thread(s)")
    for clock in roofline.CLOCKS:
        for dtype, (gflop, rates) in forward.items():
            print(
                f"forward B=32 {dtype!s:15s} {gflop:6.1f} GFLOP {rates[clock]:6.0f} GFLOP/s by "
                f"{clock} time (best of 3): {share_of_roofline(rates[clock], dtype, rl, clock)}"
            )
        for (k, bf16), (flops, best) in train.items():
            precision = "bf16" if bf16 else "fp32"
            rate = flops / best[clock] / 1e9
            peak = rl.peak(clock)[precision]
            print(
                f"train small K={k} {precision}: {flops / 1e9:.0f} GFLOP/step, {rate:.0f} GFLOP/s "
                f"by {clock} time = {rate / peak:.0%} of the {precision} peak (torch.mm or conv)"
            )
    for bf16 in (False, True):
        ratio = train[2, bf16][1]["cpu"] / train[0, bf16][1]["cpu"]
        print(
            f"K=2 / K=0 CPU time per example, {'bf16' if bf16 else 'fp32'}: {ratio:.2f}x "
            "(goal <= 1.6)"
        )


if __name__ == "__main__":
    main()
