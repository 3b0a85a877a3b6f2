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
from reimagen.training import step_workers
from reimagen.training.contract import TrainConfig
from reimagen.training.scene_atlas import ScenePlanner, build_atlas

H100_BF16_DENSE = 989e12  # FLOP/s, NVIDIA's H100 SXM figure (dense bf16)
LAUNCH_S = 6e-6  # seconds of host time per kernel launched from eager PyTorch (typical: 4-8)
H100_HOST_BOUND = 6.0  # steps/s of the base alone at batch 256, 12 workers (weights/logs/README)
GOAL = 40.0  # steps/s at batch 256, cpu-base K=2 (issue #16)


def make_source(batch: int):
    from reimagen.core import registry
    from reimagen.core.paths import home
    from reimagen.kb.knowledge_base import KnowledgeBase
    from reimagen.training.run_setup import make_batch_source

    folder = home() / "kb" / "emoji"
    if not (folder / "kb.json").is_file():
        sys.exit(f"bench_composer: no emoji knowledge base at {folder} (reimagen kb build)")
    kb = KnowledgeBase.open(folder, verify=False)
    config = TrainConfig(neighbors=2, batch_size=batch)
    return make_batch_source("base", kb, "hash", config, registry.get("preset", "cpu-base")())


def timed(fn, *args):
    """(seconds, result) of fn(*args)."""
    start = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - start, result


def same(host, device) -> bool:
    pairs = [
        (host.images, device.images),
        (host.neighbor_images, device.neighbor_images),
        (host.noise, device.noise),
        (host.text.tokens, device.text.tokens),
        (host.neighbor_text.tokens, device.neighbor_text.tokens),
    ]
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
    from reimagen.diffusion.schedule import CosineSchedule

    source.config = attrs.evolve(source.config, batch_size=2)
    batch = source.batch(0)
    model = build_unet(registry.get("preset", "cpu-base")(), seed=0).train()
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


class Ready:
    """batch(step): the same ready item for every step (what is left is the pipe's cost)."""

    def __init__(self, item):
        self.item = item

    def batch(self, step: int):
        return self.item


def pipe_times(item, rounds: int) -> list[float]:
    """Seconds per item a worker -> trainer pipe carries (step_workers, one worker)."""
    stream = step_workers.ordered(Ready(item), 0, rounds + 1, workers=1)
    next(stream)
    times = [timed(next, stream)[0] for _ in range(rounds)]
    stream.close()
    return times


def overlap_times(planner, arrays, rounds: int, ops: int) -> dict[str, list[float]]:
    """Seconds per step of getting the step arrays and then running ``ops`` tiny torch ops (a
    stand-in for the trainer launching a step's kernels): received from a worker serially, or
    by the reader thread of step_workers.threaded meanwhile, or drawn in that thread (what
    DeviceBatchSource does with workers=0); and the ops alone."""
    tiny = torch.zeros(1)

    def launches():
        for _ in range(ops):
            tiny.add_(1.0)

    def one(stream):
        next(stream)
        launches()

    out = {"ops": [timed(launches)[0] for _ in range(rounds)]}
    streams = {
        "serial": lambda: step_workers.ordered(Ready(arrays), 0, rounds + 2, workers=1),
        "threaded": lambda: step_workers.threaded(
            step_workers.ordered(Ready(arrays), 0, rounds + 2, workers=1)
        ),
        "drawn": lambda: step_workers.threaded(planner.batch(s) for s in range(rounds + 2)),
    }
    for name, make in streams.items():
        stream = make()
        one(stream)
        out[name] = [timed(one, stream)[0] for _ in range(rounds)]
        stream.close()
    return out


def nbytes(value) -> int:
    """Bytes of the arrays / tensors in a (nested) value."""
    if isinstance(value, torch.Tensor):
        return value.nbytes
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, dict):
        return sum(nbytes(v) for v in value.values())
    if isinstance(value, (tuple, list)):
        return sum(nbytes(v) for v in value)
    if attrs.has(type(value)):
        return sum(nbytes(getattr(value, f.name)) for f in attrs.fields(type(value)))
    return 0


def trainer_process(source, planner, rounds: int, ops: int) -> dict:
    """Per-step cost in the training process outside the composer, at the source's batch size:
    receiving the step from a worker (a compacted host batch, as --workers sends it, vs the
    device path's step arrays) and, on the host path, making the network inputs (x_t in float64
    on the host, the text to float32); and the bytes each path copies to the device."""
    from reimagen.backends.torch.trainer import model_kwargs
    from reimagen.diffusion.schedule import CosineSchedule
    from reimagen.training.prefetch import compact_batch

    host, arrays = compact_batch(source.batch(1)), planner.batch(1)
    inputs = model_kwargs(host, CosineSchedule())
    return {
        "pipe host": pipe_times(host, rounds),
        "pipe device": pipe_times(arrays, rounds),
        "inputs host": [timed(model_kwargs, host, CosineSchedule())[0] for _ in range(rounds)],
        **{f"overlap {k}": v for k, v in overlap_times(planner, arrays, rounds, ops).items()},
        "bytes host": nbytes(inputs) + host.noise.nbytes,
        "bytes device": nbytes(arrays),
    }


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
    print(
        f"setup {time.perf_counter() - start:.0f} s: {len(source.entities)} drawings, "
        f"{len(source.view)} neighbour rows, pool {len(source.pool)}; torch threads "
        f"{torch.get_num_threads()}, {args.rounds} rounds round-robin"
    )
    print("\nms per batch, median / min of the rounds (1 thread, CPU tensors)")
    print(
        f"{'batch':>5} {'host':>17} {'device (plan+compose)':>22} {'plan':>17} "
        f"{'compose':>17} {'host/device':>12} {'host/plan':>10}"
    )
    results = {}
    for b in sizes:
        t = results[b] = measure(source, planner, scenes, b, args.rounds)
        med = {k: statistics.median(v) for k, v in t.items()}
        print(
            f"{b:>5} {summary(t['host']):>17} {summary(t['device']):>22} "
            f"{summary(t['plan']):>17} {summary(t['compose']):>17} "
            f"{med['host'] / med['device']:>11.2f}× {med['host'] / med['plan']:>9.2f}×"
        )
    flops, ops = network_step_counts(source)
    source.config = attrs.evolve(source.config, batch_size=sizes[-1])
    trainer = trainer_process(source, planner, args.rounds, ops.kernels)
    print(f"\ntrainer process per step at batch {source.config.batch_size}, ms median / min")
    print(
        f"  host path: receive a compacted batch {summary(trainer['pipe host'])}, network "
        f"inputs on the host {summary(trainer['inputs host'])}; "
        f"{trainer['bytes host'] / 2**20:.1f} MiB to the device"
    )
    print(
        f"  device path: receive the step arrays {summary(trainer['pipe device'])}; "
        f"{trainer['bytes device'] / 2**20:.1f} MiB to the device"
    )
    print(
        f"  device path, receive + {ops.kernels} tiny CPU ops (a stand-in for launching the "
        f"step): serial {summary(trainer['overlap serial'])}, reader thread "
        f"{summary(trainer['overlap threaded'])}, drawn in a thread "
        f"{summary(trainer['overlap drawn'])}, the ops alone {summary(trainer['overlap ops'])}"
    )
    arrays = planner.batch(0)
    with OpCount() as compose_ops:
        scenes.compose(arrays)
    project(results, trainer, flops, ops, compose_ops)
    return 0


def project(results, trainer, flops_per_example, ops: OpCount, compose_ops: OpCount) -> None:
    """GPU steps/s at batch 256, cpu-base K=2, host vs device composer: a projection (no GPU
    here) from the costs measured in this run on this CPU and the network's counted FLOPs and
    kernels. A step is bounded by the workers (W / their per-step cost), by the trainer process
    (receive + host inputs + kernel launches, serial in one thread) and by the GPU's FLOPs."""
    b = 256 if 256 in results else max(results)
    med = {k: statistics.median(v) for k, v in results[b].items()}
    tm = {k: statistics.median(v) for k, v in trainer.items() if not k.startswith("bytes")}
    # what the trainer thread still waits for, beyond its own ops: received, or drawn in a thread
    exposed = {k: max(tm[f"overlap {k}"] - tm["overlap ops"], 0.0) for k in ("threaded", "drawn")}
    step_flops = flops_per_example * b
    print(
        f"\nProjection for an H100-class GPU at batch {b}, cpu-base K=2 -- NOT measured on a "
        "GPU; this CPU's costs, counted FLOPs and kernels"
    )
    print(
        f"  network step: {step_flops / 1e12:.2f} TFLOP (fwd+bwd), {ops.kernels} kernels "
        f"(+{ops.views} views) in eager mode; the device composer adds {compose_ops.kernels}"
    )
    flop_bound = 0.25 * H100_BF16_DENSE / step_flops
    print(f"  FLOP bound at 25% of the bf16 dense peak: {flop_bound:.0f} steps/s")
    paths = {
        "host": (med["host"], tm["pipe host"] + tm["inputs host"], ops.kernels),
        "device": (med["plan"], exposed["threaded"], ops.kernels + compose_ops.kernels),
        "device, 0 workers": (None, exposed["drawn"], ops.kernels + compose_ops.kernels),
    }
    for name, (work, receive, kernels) in paths.items():
        launches = kernels * LAUNCH_S
        trainer_bound = 1.0 / (receive + launches)
        worker_bound = float("inf") if work is None else 12 / work
        projected = min(worker_bound, trainer_bound, flop_bound)
        print(
            f"  {name:>17}: 12 workers ≤ {worker_bound:5.0f}, trainer ≤ {trainer_bound:4.0f} "
            f"(waits {receive * 1e3:.1f} ms + launches {launches * 1e3:.1f} ms at "
            f"{LAUNCH_S * 1e6:.0f} µs) -> {projected:4.0f} steps/s (goal {GOAL:.0f})"
        )
    print(
        f"  (the H100 runs logged ~{H100_HOST_BOUND:.0f} steps/s with the host composer and 12 "
        "workers; device receive = what the reader thread leaves exposed, measured above)"
    )


if __name__ == "__main__":
    raise SystemExit(main())
