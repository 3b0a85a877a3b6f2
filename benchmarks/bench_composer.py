"""Host vs device-side scene composer, batches/s in one run (issue #16 item 3). A script:

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_composer.py [--rounds 7] [--batches 64,256]

The base stage's real training source (the emoji KB in <home>/kb/emoji, the pool of 50,000
prompts with its float16 EncodingTable, K=2, the cpu-base network's 32×32), on ONE thread:

* host: ``EmojiBatchSource.batch(step)``, what a --workers process makes per step today;
* device on CPU tensors: ``DeviceSceneComposer.compose(ScenePlanner.batch(step))``, split into
  its two halves: the plan (the random draws and index arrays, what stays on the host and runs
  in the --workers with --composer device) and the compose (what the device runs);

measured round-robin (host, plan, compose in turn, a new step each round): median and min of
the rounds, and their ratios. Each batch size first checks one device batch against the host's
(torch.equal). Then a projection for an H100-class GPU, from the cost measured here and the
network step's FLOPs and kernel count (counted here on the CPU at batch 2, scaled): it is a
projection, not a GPU measurement.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import attrs
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reimagen.backends.torch.scene_composer import DeviceSceneComposer
from reimagen.core.training import TrainConfig
from reimagen.data.scene_atlas import ScenePlanner, build_atlas

H100_BF16_DENSE = 989e12  # FLOP/s, NVIDIA's H100 SXM figure (dense bf16)
LAUNCH_S = 6e-6  # seconds of host time per kernel launched from eager PyTorch (typical: 4-8)
H100_HOST_BOUND = 6.0  # steps/s of the base alone at batch 256, 12 workers (weights/logs/README)
GOAL = 40.0  # steps/s at batch 256, cpu-base K=2 (issue #16)


def make_source(batch: int):
    from reimagen.cli.train import make_batch_source
    from reimagen.core import registry
    from reimagen.core.knowledge_base import KnowledgeBase
    from reimagen.core.paths import home

    folder = home() / "kb" / "emoji"
    if not (folder / "kb.json").is_file():
        sys.exit(f"bench_composer: no emoji knowledge base at {folder} (reimagen kb build)")
    kb = KnowledgeBase.open(folder, verify=False)
    config = TrainConfig(neighbors=2, batch_size=batch)
    return make_batch_source("base", kb, "hash", config, registry.get("denoiser", "cpu-base")())


def timed(fn, *args):
    """(seconds, result) of fn(*args)."""
    start = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - start, result


def same(host, device) -> bool:
    pairs = [(host.images, device.images), (host.neighbor_images, device.neighbor_images),
             (host.noise, device.noise), (host.text.tokens, device.text.tokens),
             (host.neighbor_text.tokens, device.neighbor_text.tokens)]
    return all(torch.equal(torch.from_numpy(np.asarray(a)), b) for a, b in pairs)


def measure(source, planner, scenes, batch: int, rounds: int) -> dict[str, list[float]]:
    source.config = attrs.evolve(source.config, batch_size=batch)
    step0 = 1000 * batch
    assert same(source.batch(step0), scenes.compose(planner.batch(step0))), "not bit-identical"
    times = {"host": [], "plan": [], "compose": []}
    for r in range(rounds):
        step = step0 + 1 + r
        times["host"].append(timed(source.batch, step)[0])
        seconds, arrays = timed(planner.batch, step)
        times["plan"].append(seconds)
        times["compose"].append(timed(scenes.compose, arrays)[0])
    times["device"] = [p + c for p, c in zip(times["plan"], times["compose"])]
    return times


class OpCount:
    """Counts the aten ops a block dispatches (views apart: they launch no kernel)."""

    def __init__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        counter = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                counter.views += bool(func.is_view)
                counter.kernels += not func.is_view
                return func(*args, **(kwargs or {}))

        self.mode, self.views, self.kernels = Mode(), 0, 0

    def __enter__(self):
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        self.mode.__exit__(*exc)


def network_step_counts(source) -> tuple[float, OpCount]:
    """(training FLOPs per example, ops of one training step): the cpu-base K=2 step (bf16
    autocast forward, backward, grad clip, fused AdamW, EMA) counted at batch 2 on the CPU
    (the op count does not depend on the batch)."""
    from torch.utils.flop_counter import FlopCounterMode

    from reimagen.backends.torch.denoiser import autocast
    from reimagen.backends.torch.trainer import model_kwargs
    from reimagen.backends.torch.unet import build_unet
    from reimagen.core import registry
    from reimagen.core.schedule import CosineSchedule

    source.config = attrs.evolve(source.config, batch_size=2)
    batch = source.batch(0)
    model = build_unet(registry.get("denoiser", "cpu-base")(), seed=0).train()
    ema = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    kwargs = model_kwargs(batch, CosineSchedule())
    noise = torch.from_numpy(batch.noise)

    def step():
        with autocast(torch.bfloat16, "cpu"):
            eps = model(**kwargs)
        loss = torch.mean((eps.float() - noise) ** 2)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        torch._foreach_lerp_(ema, [p.detach() for p in model.parameters()], 0.001)

    step()  # the optimizer's state exists before counting
    with FlopCounterMode(display=False) as flops:
        step()
    with OpCount() as ops:
        step()
    return flops.get_total_flops() / 2, ops


def summary(values: list[float]) -> str:
    return f"{statistics.median(values) * 1e3:8.1f} / {min(values) * 1e3:7.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batches", default="64,256")
    args = parser.parse_args()
    if args.rounds < 1:
        sys.exit(f"bench_composer: --rounds must be >= 1, got {args.rounds}")
    torch.set_num_threads(1)
    sizes = [int(b) for b in args.batches.split(",")]
    start = time.perf_counter()
    source = make_source(sizes[0])
    source.warm()
    atlas = build_atlas(source)
    planner, scenes = ScenePlanner(source, atlas), DeviceSceneComposer(atlas, "cpu")
    print(f"setup {time.perf_counter() - start:.0f} s: {len(source.entities)} drawings, "
          f"{len(source.view)} neighbour rows, pool {len(source.pool)}; torch threads "
          f"{torch.get_num_threads()}, {args.rounds} rounds round-robin")
    print("\nms per batch, median / min of the rounds (1 thread, CPU tensors)")
    print(f"{'batch':>5} {'host':>17} {'device (plan+compose)':>22} {'plan':>17} "
          f"{'compose':>17} {'host/device':>12} {'host/plan':>10}")
    results = {}
    for b in sizes:
        t = results[b] = measure(source, planner, scenes, b, args.rounds)
        med = {k: statistics.median(v) for k, v in t.items()}
        print(f"{b:>5} {summary(t['host']):>17} {summary(t['device']):>22} "
              f"{summary(t['plan']):>17} {summary(t['compose']):>17} "
              f"{med['host'] / med['device']:>11.2f}× {med['host'] / med['plan']:>9.2f}×")
    arrays = planner.batch(0)
    with OpCount() as compose_ops:
        scenes.compose(arrays)
    flops, ops = network_step_counts(source)
    project(results, flops, ops, compose_ops)
    return 0


def project(results, flops_per_example: float, ops: OpCount, compose_ops: OpCount) -> None:
    """GPU steps/s at batch 256, cpu-base K=2: a projection (no GPU here), from ratios measured
    in this run and the network's counted FLOPs and kernels."""
    b = 256 if 256 in results else max(results)
    med = {k: statistics.median(v) for k, v in results[b].items()}
    ratio = med["host"] / med["plan"]
    step_flops = flops_per_example * b
    print(f"\nProjection for an H100-class GPU at batch {b}, cpu-base K=2 -- NOT measured on a "
          "GPU")
    print(f"  host side: a step's host work drops to the plan, 1/{ratio:.1f} of the host "
          f"composer's (measured above). The H100 runs were host-bound at ~{H100_HOST_BOUND:.0f} "
          f"steps/s with 12 workers composing: the same workers drawing plans: "
          f"~{H100_HOST_BOUND * ratio:.0f} steps/s")
    print(f"  device side, compose: {compose_ops.kernels} kernels (+{compose_ops.views} views) "
          f"per batch, ~{compose_ops.kernels * LAUNCH_S * 1e3:.2f} ms of launches at "
          f"{LAUNCH_S * 1e6:.0f} µs")
    print(f"  device side, network step: {step_flops / 1e12:.2f} TFLOP (fwd+bwd), "
          f"{ops.kernels} kernels (+{ops.views} views) in eager mode")
    for share in (0.1, 0.25):
        print(f"    FLOP-bound at {share:.0%} of the bf16 dense peak: "
              f"{share * H100_BF16_DENSE / step_flops:.0f} steps/s")
    for launch in (4e-6, LAUNCH_S, 8e-6):
        total = (ops.kernels + compose_ops.kernels) * launch
        print(f"    launch-bound at {launch * 1e6:.0f} µs per kernel: {1 / total:.0f} steps/s")
    print(f"  goal {GOAL:.0f} steps/s: projected = min(host side, FLOP bound, launch bound)")


if __name__ == "__main__":
    raise SystemExit(main())
