"""Where does a base-stage training step spend its time? Host input vs network, on any device.

The H100 leases trained the base at ~6 steps/s (batch 256, K=2; reimagen/assets/weights/logs),
far below what the GPU computes for a 5.3M-parameter U-Net. This script separates the parts,
each measured alone, then the real loop, so one short device run says what bounds it:

  compose   source.batch(step) inline, one process (the work of one prefetch worker)
  stream    prefetch.batches(workers=W, compact=True) consumed with no training: the most
            batches per second the worker pool + pipes deliver to the trainer process
  convert   the trainer's host side for one batch: noisy inputs, tensors, copy to the device
  step      Trainer.train_step on one batch over and over (conversion + network + AdamW + EMA)
  loop      Trainer.run with W workers: what a training run gets

    python scripts/profile_train_input.py --kb DIR [--device cuda] [--workers 12] [--batch 256]
           [--steps 30] [--json OUT.json]

On the GPU machine (after scripts/make_gpu_pack.py, with the pack carried):
    PYTHONPATH=.gpupack/src python3 .gpupack/src/scripts/profile_train_input.py \
        --kb /tmp/kb --device cuda --workers 12 --json $OUT/profile.json
(copy the pack's KB to /tmp/kb first, as scripts/train_gpu.sh does).
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def timed(fn, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls (after one untimed call)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kb", type=Path, required=True, help="the emoji knowledge base")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--steps", type=int, default=30, help="steps per timed part")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.workers < 1 or args.batch < 1 or args.steps < 3:
        parser.error("--workers and --batch must be >= 1, --steps >= 3")

    import torch

    from reimagen.backends.torch.trainer import Trainer, model_kwargs, resolve_device
    from reimagen.core.io import atomic_write_text
    from reimagen.core.unet_config import PRESETS
    from reimagen.diffusion.schedule import CosineSchedule
    from reimagen.kb.knowledge_base import KnowledgeBase
    from reimagen.training import prefetch
    from reimagen.training.contract import TrainConfig
    from reimagen.training.run_setup import make_batch_source

    device = resolve_device(args.device)
    kb = KnowledgeBase.open(args.kb, verify=False)
    config = TrainConfig(
        steps=10**6,
        batch_size=args.batch,
        neighbors=args.k,
        lr=1e-4,
        warmup_steps=0,
        checkpoint_every=10**6,
    )
    model_config = PRESETS["cpu-base"]
    source = make_batch_source("base", kb, "hash", config, model_config)
    source.warm()
    n, b = args.steps, args.batch
    out: dict = {
        "device": device,
        "batch": b,
        "k": args.k,
        "workers": args.workers,
        "torch": torch.__version__,
    }
    if device.startswith("cuda"):
        out["gpu"] = torch.cuda.get_device_name(device)

    # compose: one process, inline
    steps = iter(range(1, 10**9))
    out["compose_s"] = timed(lambda: source.batch(next(steps)), min(n, 10))
    batch = prefetch.compact_batch(source.batch(0))
    out["pickled_mb"] = len(pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL)) / 1e6

    # stream: the worker pool alone (the first 2·W batches fill the window: not timed)
    fill = 2 * args.workers
    stream = prefetch.batches(source, 0, fill + n, workers=args.workers, compact=True)
    for i, _ in enumerate(stream):
        if i == fill - 1:
            start = time.perf_counter()
    out["stream_s"] = (time.perf_counter() - start) / n

    # convert and step: one batch, over and over
    schedule = CosineSchedule()

    def convert():
        kwargs = model_kwargs(batch, schedule, device)
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)
        return kwargs

    out["convert_s"] = timed(convert, n)
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(model_config, config, source, run_dir, device=device, progress=False)
        out["step_s"] = timed(lambda: trainer.train_step(batch), n)

    # loop: a real run (the first log window includes the pool's start)
    with tempfile.TemporaryDirectory() as run_dir:
        loop_config = config.replace(steps=fill + n, log_every=fill + n)
        result = Trainer(
            model_config,
            loop_config,
            source,
            run_dir,
            device=device,
            progress=False,
            workers=args.workers,
        ).run()
        out["loop_images_per_s"] = result.images_per_second

    for part in ("compose", "stream", "convert", "step"):
        out[f"{part}_images_per_s"] = b / out[f"{part}_s"]
    print(json.dumps(out, indent=1))
    if args.json is not None:
        atomic_write_text(args.json, json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
