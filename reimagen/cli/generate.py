"""``reimagen generate PROMPT --out x.png``: retrieve, then run the cascade (DESIGN §5, §7).

Writes ``x.png`` (the last stage's images side by side), ``x.<stage>.png`` for every stage, and
``x.sheet.png``: each image beside the retrieved neighbours it was grounded on (paper Fig. 4).

``--distributed`` (under torchrun) splits the prompts across the processes by global index;
every sample is seeded from (seed, its index) and the prompts go through the network in the
same global micro-batches (``--batch-size``) whatever the process count, so the images are
byte-identical to a one-process run (reimagen.distributed_generation).
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import numpy as np
from PIL import Image

from reimagen.cli.common import (
    add_kb_arguments,
    add_sampling_arguments,
    add_threads_argument,
    apply_threads,
    check_k,
    check_kb_fits,
    check_out_path,
    check_prompt_args,
    check_seed,
    open_kb,
    open_retriever,
    sampling_from_args,
)
from reimagen.cli.main import UserError
from reimagen.core import registry
from reimagen.core.io import atomic_path


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "generate", help="generate images for prompts with retrieved references",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("prompts", nargs="+", metavar="PROMPT")
    parser.add_argument("--out", type=Path, default=Path("outputs/generated.png"))
    parser.add_argument("--k", type=int, default=2, help="retrieved neighbours K")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", default="torch", help="torch | jax")
    parser.add_argument("--stages", default="base,sr",
                        help="comma-separated shipped stages: base or baseline, then sr")
    parser.add_argument("--batch-size", type=int, default=8,
                        help="prompts per network batch (global micro-batches: the images do "
                             "not depend on the number of processes)")
    parser.add_argument("--distributed", action="store_true",
                        help="under torchrun: split the prompts across the processes (gloo); "
                             "rank 0 writes the outputs")
    add_kb_arguments(parser)
    add_sampling_arguments(parser)
    add_threads_argument(parser)
    parser.set_defaults(func=run)


OUTPUT_SUFFIXES = (".sheet.png", ".base.png", ".baseline.png", ".sr.png")
CASCADES = ("base", "baseline", "base,sr", "baseline,sr")  # the shipped stages that fit together


def parse_stages(text: str) -> list[str]:
    from reimagen.weights import STAGES

    stages = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in stages if s not in STAGES]
    if bad or not stages:
        raise UserError(f"--stages: unknown stage(s) {bad}; allowed: {', '.join(STAGES)}")
    if ",".join(stages) not in CASCADES:  # e.g. sr first, base twice, base then baseline
        raise UserError(f"--stages: {','.join(stages)} is not a cascade; allowed: "
                        f"{' | '.join(CASCADES)}")
    return stages


def run(args) -> int:
    from reimagen.weights import DEFAULT_SAMPLING, stage_config

    # ---- validate everything before loading a network ----
    out = check_out_path(args.out, siblings=OUTPUT_SUFFIXES)
    check_prompt_args(args.prompts)
    stages = parse_stages(args.stages)
    apply_threads(args.threads)
    check_k(args.k)
    check_seed(args.seed)
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    registry.get("backend", args.backend)
    if args.encoder:
        registry.get("encoder", args.encoder)
    first = stages[0]
    sampling = {s: DEFAULT_SAMPLING[s] for s in stages}
    sampling[first] = sampling_from_args(args, DEFAULT_SAMPLING[first])
    k = 0 if first == "baseline" else args.k
    registry.get("retriever", args.retriever)
    if k and args.retriever == "none":
        raise UserError(f"--retriever none retrieves no neighbours; use --k 0, or a retriever "
                        f"for --k {k}")
    configs = {name: stage_config(name) for name in stages}  # headers only: fit each stage
    _check_cascade(stages, configs)
    rank, world = _join(args.distributed)
    try:
        return _generate(args, out, stages, sampling, k, rank, world, configs)
    finally:
        if args.distributed:
            import torch.distributed as dist

            dist.destroy_process_group()


def _generate(args, out: Path, stages: list[str], sampling: dict, k: int, rank: int,
              world: int, configs: dict) -> int:
    """Load the cascade, generate this process's micro-batches, and (rank 0) write."""
    from reimagen.cascade import Cascade, Stage
    from reimagen.distributed_generation import generate_distributed
    from reimagen.viz import SheetRow, make_sheet, neighbor_tiles
    from reimagen.weights import SR_NEIGHBORS, load_stage

    kb = open_kb(args.kb)
    # the first stage's size: the SR stage reuses its rows (one, upsampled from a smaller KB)
    check_kb_fits(kb, "--kb", image_size=configs[stages[0]].image_size if k else 0, k=k,
                  setting=args.setting)
    # the networks first: a bad weights file fails before an index is built beside the KB
    pipelines = [load_stage(name, kb=kb, encoder=args.encoder, backend=args.backend)
                 for name in stages]
    retriever = open_retriever(kb, args.retriever, args.setting, args.encoder) if k else None
    for pipeline in pipelines:
        pipeline.retriever = retriever
    cascade = Cascade([
        Stage(name, pipeline, sampling[name], k=k if index == 0 else min(k, SR_NEIGHBORS))
        for index, (name, pipeline) in enumerate(zip(stages, pipelines, strict=True))
    ])
    started = time.perf_counter()
    results = generate_distributed(cascade, args.prompts, args.seed, batch_size=args.batch_size)
    seconds = time.perf_counter() - started
    if rank != 0:  # rank 0 gathered every image and writes the outputs
        return 0

    for name, result in zip(stages, results):
        _save(out.with_suffix(f".{name}.png"), np.concatenate(list(result.images), axis=1))
    final = results[-1]
    _save(out, np.concatenate(list(final.images), axis=1))
    rows = []
    for b, prompt in enumerate(args.prompts):
        images = tuple((f"{name} {r.images.shape[1]}px", r.images[b])
                       for name, r in zip(stages, results))
        neighbors = neighbor_tiles(kb, results[0].neighbor_rows[b], results[0].neighbor_scores[b])
        rows.append(SheetRow(prompt=prompt, images=images, neighbors=neighbors))
    sheet_path = out.with_suffix(".sheet.png")
    with atomic_path(sheet_path) as tmp:
        make_sheet(rows).save(tmp, format="PNG")
    nfe = sum(r.nfe for r in results)
    print(f"wrote {out}, {sheet_path} and one image per stage ({', '.join(stages)})")
    print(f"{len(args.prompts)} prompt(s), {nfe} network evaluations per sample, {seconds:.1f} s"
          + (f", {world} processes" if world > 1 else ""))
    return 0


def _check_cascade(stages: list[str], configs: dict) -> None:
    """Each stage's input is the previous stage's output (from the weights' headers)."""
    from reimagen.weights import weights_path

    for before, after in itertools.pairwise(stages):
        want, have = configs[after].lowres_size, configs[before].image_size
        if want != have:
            raise UserError(f"--stages: {weights_path(after)} upsamples {want}px images but "
                            f"stage {before} makes {have}px ones")


def _join(distributed: bool) -> tuple[int, int]:
    """(rank, world): torchrun's gloo group with ``--distributed``, else (0, 1)."""
    if not distributed:
        return 0, 1
    from reimagen.distributed_generation import init_from_env

    try:
        return init_from_env()
    except (RuntimeError, ValueError) as err:  # ValueError: e.g. LOCAL_RANK missing
        raise UserError(f"--distributed: {err}; launch with torchrun") from err


def _save(path: Path, image: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")
