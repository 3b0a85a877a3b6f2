"""``reimagen generate PROMPT --out x.png``: retrieve, then run the cascade (docs/design.md §5, §7).

Writes ``x.png`` (the last stage's images side by side), ``x.<stage>.png`` for every stage, and
``x.sheet.png``: each image beside the retrieved neighbours it was grounded on (paper Fig. 4).

``--distributed`` (under torchrun) splits the prompts across the processes by global index;
every sample is seeded from (seed, its index) and the prompts go through the network in the
same global micro-batches (``--batch-size``) whatever the process count, so the images are
byte-identical to a one-process run (reimagen.generation.distributed).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from PIL import Image

from reimagen.cli.common import (
    add_kb_arguments,
    add_sampling_arguments,
    add_threads_argument,
    apply_threads,
    check_k_option,
    check_kb_fits,
    check_out_path,
    check_prompt_args,
    check_seed,
    open_kb,
    sampling_from_args,
)
from reimagen.cli.main import UserError
from reimagen.core import registry
from reimagen.core.io import atomic_path


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "generate",
        help="generate images for prompts with retrieved references",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("prompts", nargs="+", metavar="PROMPT")
    parser.add_argument("--out", type=Path, default=Path("outputs/generated.png"))
    parser.add_argument("--k", type=int, default=2, help="retrieved neighbours K")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", default="torch", help="torch | jax")
    parser.add_argument(
        "--stages",
        default="base,sr",
        help="comma-separated shipped stages: base or baseline, then sr",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=8,
        help="prompts per network batch (global micro-batches: the images do "
        "not depend on the number of processes)",
    )
    parser.add_argument(
        "--distributed",
        action="store_true",
        help="under torchrun: split the prompts across the processes (gloo); "
        "rank 0 writes the outputs",
    )
    add_kb_arguments(parser)
    add_sampling_arguments(parser)
    add_threads_argument(parser)
    parser.set_defaults(func=run)


OUTPUT_SUFFIXES = (".sheet.png", ".base.png", ".baseline.png", ".sr.png")


def parse_stages(text: str) -> tuple[str, ...]:
    from reimagen.generation.pretrained import check_stages

    try:
        return check_stages([s.strip() for s in text.split(",") if s.strip()])
    except ValueError as err:  # "stages: ..." (the front door's message) -> "--stages: ..."
        raise UserError(f"--{err}") from None


def run(args) -> int:
    from reimagen.generation.cascade import CascadeError
    from reimagen.generation.pretrained import check_fit
    from reimagen.generation.shipped import DEFAULT_SAMPLING

    # ---- validate everything before loading a network ----
    out = check_out_path(args.out, siblings=OUTPUT_SUFFIXES)
    check_prompt_args(args.prompts)
    stages = parse_stages(args.stages)
    apply_threads(args.threads)
    check_k_option(args.k)
    check_seed(args.seed)
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    registry.get("backend", args.backend)
    if args.encoder:
        registry.get("encoder", args.encoder)
    sampling = sampling_from_args(args, DEFAULT_SAMPLING[stages[0]])
    k = 0 if stages[0] == "baseline" else args.k
    registry.get("retriever", args.retriever)
    if k and args.retriever == "none":
        raise UserError(
            f"--retriever none retrieves no neighbours; use --k 0, or a retriever for --k {k}"
        )
    try:
        configs = check_fit(stages)  # headers only: each file fits its stage, the cascade fits
    except CascadeError as err:
        raise UserError(f"--{err}") from None
    rank, world = _join(args.distributed)
    try:
        return _generate(args, out, stages, sampling, k, rank, world, configs)
    finally:
        if args.distributed:
            import torch.distributed as dist

            dist.destroy_process_group()


def _generate(
    args, out: Path, stages: tuple[str, ...], sampling, k: int, rank: int, world: int, configs: dict
) -> int:
    """Load the cascade (the front door, reimagen.load's), generate this process's
    micro-batches, and (rank 0) write."""
    from reimagen.cli.progress import bar, sampling_steps, step_callback
    from reimagen.generation.distributed import generate_distributed, micro_batches, shard_indices
    from reimagen.generation.pretrained import load

    kb = open_kb(args.kb)
    # the first stage's size: the SR stage reuses its rows (one, upsampled from a smaller KB)
    check_kb_fits(
        kb, "--kb", image_size=configs[stages[0]].image_size if k else 0, k=k, setting=args.setting
    )
    cascade = load(
        stages=stages,
        kb=kb,
        retriever=args.retriever,
        setting=args.setting,
        k=k,
        encoder=args.encoder,
        backend=args.backend,
        sampling=sampling,
    )
    batches = len(
        shard_indices(len(micro_batches(len(args.prompts), args.batch_size, world)), rank, world)
    )  # this process's micro-batches
    started = time.perf_counter()
    with bar(sampling_steps(cascade, batches), "sampling", show=rank == 0) as progress:
        results = generate_distributed(
            cascade,
            args.prompts,
            args.seed,
            batch_size=args.batch_size,
            callback=step_callback(progress),
        )
    seconds = time.perf_counter() - started
    if rank != 0:  # rank 0 gathered every image and writes the outputs
        return 0
    sheet_path = _write_outputs(out, stages, results, kb, args.prompts)
    nfe = sum(r.nfe for r in results)
    print(f"wrote {out}, {sheet_path} and one image per stage ({', '.join(stages)})")
    print(
        f"{len(args.prompts)} prompt(s), {nfe} network evaluations per sample, {seconds:.1f} s"
        + (f", {world} processes" if world > 1 else "")
    )
    return 0


def _write_outputs(out: Path, stages: tuple[str, ...], results, kb, prompts) -> Path:
    """x.<stage>.png per stage, x.png (the last stage's), and the contact sheet x.sheet.png:
    each prompt's images beside its retrieved neighbours (paper Fig. 4); the sheet's path."""
    from reimagen.generation.contact_sheet import SheetRow, make_sheet, neighbor_tiles

    for name, result in zip(stages, results):
        _save(out.with_suffix(f".{name}.png"), np.concatenate(list(result.images), axis=1))
    final = results[-1]
    _save(out, np.concatenate(list(final.images), axis=1))
    rows = []
    for b, prompt in enumerate(prompts):
        images = tuple(
            (f"{name} {r.images.shape[1]}px", r.images[b]) for name, r in zip(stages, results)
        )
        neighbors = neighbor_tiles(kb, results[0].neighbor_rows[b], results[0].neighbor_scores[b])
        rows.append(SheetRow(prompt=prompt, images=images, neighbors=neighbors))
    sheet_path = out.with_suffix(".sheet.png")
    with atomic_path(sheet_path) as tmp:
        make_sheet(rows).save(tmp, format="PNG")
    return sheet_path


def _join(distributed: bool) -> tuple[int, int]:
    """(rank, world): torchrun's gloo group with ``--distributed``, else (0, 1)."""
    if not distributed:
        return 0, 1
    from reimagen.generation.distributed import init_from_env

    try:
        return init_from_env()
    except (RuntimeError, ValueError) as err:  # ValueError: e.g. LOCAL_RANK missing
        raise UserError(f"--distributed: {err}; launch with torchrun") from err


def _save(path: Path, image: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")
