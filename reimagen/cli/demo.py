"""``reimagen demo`` — the README's first command (paper Fig. 4/6 on the emoji knowledge base).

Builds the emoji knowledge base if it is missing, then, for a few entities the model never
trained on (the split's *unseen* tier), generates each prompt with retrieval (the shipped
Re-Imagen base + SR cascade, K neighbours retrieved from the knowledge base) and without
(the shipped no-retrieval baseline when present, else the same base network with K=0), and
writes one PNG sheet with the retrieved references beside each image.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from reimagen.cli.common import add_threads_argument, apply_threads
from reimagen.cli.main import UserError
from reimagen.core.paths import default_kb_dir

# Unseen entities shown by default (all in the split's unseen tier; never a training target).
DEMO_ENTITIES = ("beaver", "bell pepper", "birthday cake", "flag Germany")
DEMO_SCENES = (
    ("large", "center", "yellow"),
    ("large", "center", "cyan"),
    ("small", "top left", "green"),
    ("large", "center", "pink"),
)


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "demo",
        help="build the KB if needed and draw unseen entities with and without retrieval",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--out", type=Path, default=Path("outputs/demo.png"))
    parser.add_argument(
        "--entities", help="comma-separated CLDR names (default: a fixed set of unseen entities)"
    )
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--setting", default="same-style", choices=("same-style", "cross-style"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, help="sampling steps of the base stage")
    add_threads_argument(parser)
    parser.set_defaults(func=run)


def run(args) -> int:
    from reimagen.cli.common import check_k_option, check_out_path, check_seed
    from reimagen.generation.shipped import DEFAULT_SAMPLING, available_stages, stage_config
    from reimagen.kb.splits import load_split

    out = check_out_path(args.out)
    apply_threads(args.threads)
    check_k_option(args.k)
    check_seed(args.seed)
    if args.steps is not None:  # SamplingConfig says what is allowed, before the KB is built
        DEFAULT_SAMPLING["base"].replace(steps=args.steps)
    split = load_split()
    names = (
        [n.strip() for n in args.entities.split(",")]
        if args.entities is not None
        else list(DEMO_ENTITIES)
    )
    unknown = [n for n in names if n not in split]
    if unknown:
        raise UserError(
            f"--entities: unknown entity name(s) {unknown} (CLDR names, e.g. "
            f"{', '.join(DEMO_ENTITIES[:2])})"
        )
    for stage in available_stages():  # headers only: each file fits its stage
        stage_config(stage)
    started = time.perf_counter()
    kb = _knowledge_base()
    prompts, tiers = _prompts(names, split)
    for prompt, name, tier in zip(prompts, names, tiers):
        print(f"[{tier}] {prompt}")
    _generate(args, kb, prompts, names, tiers, out)
    print(f"demo done in {time.perf_counter() - started:.1f} s")
    return 0


def _knowledge_base():
    from reimagen.kb.knowledge_base import KnowledgeBase

    folder = default_kb_dir()
    # no SHA256SUMS: built before reimagen recorded checksums, which open() refuses
    if not (folder / "kb.json").is_file() or not (folder / "SHA256SUMS").is_file():
        from reimagen.cli.main import main as cli

        print(f"building the emoji knowledge base in {folder} (once) ...")
        if cli(["kb", "build", "--quiet"]) != 0:
            raise UserError("building the knowledge base failed (see above)")
    return KnowledgeBase.open(folder)


def _prompts(names, split):
    from reimagen.kb import scenes as sc

    prompts, tiers = [], []
    for i, name in enumerate(names):
        size, position, colour = DEMO_SCENES[i % len(DEMO_SCENES)]
        scene = sc.Scene(entity=name, background=colour, position=position, size=size)
        prompts.append(sc.prompt(scene, 0))
        tiers.append(split.tier(name))
    return prompts, tiers


def _generate(args, kb, prompts, names, tiers, out: Path) -> None:
    from reimagen.cli.progress import bar, sampling_steps, step_callback
    from reimagen.core.io import atomic_path
    from reimagen.generation.contact_sheet import SheetRow, make_sheet, neighbor_tiles
    from reimagen.generation.pretrained import load_comparison
    from reimagen.generation.shipped import DEFAULT_SAMPLING

    sampling = DEFAULT_SAMPLING["base"]
    if args.steps is not None:
        sampling = sampling.replace(steps=args.steps)
    # the front door, as reimagen.load("default"): with and without retrieval
    pair = load_comparison(kb=kb, k=args.k, setting=args.setting, sampling=sampling)
    total = sampling_steps(pair.retrieving) + sampling_steps(pair.plain)
    with bar(total, "sampling") as progress:
        with_retrieval = pair.retrieving.generate(
            prompts, seed=args.seed, callback=step_callback(progress)
        )
        without = pair.plain.generate(prompts, seed=args.seed, callback=step_callback(progress))

    rows = []
    for b, (prompt, name, tier) in enumerate(zip(prompts, names, tiers)):
        images = (
            (f"Re-Imagen K={args.k}", with_retrieval[-1].images[b]),
            (pair.plain_label, without[-1].images[b]),
        )
        neighbors = neighbor_tiles(kb, with_retrieval[0].neighbor_rows[b])
        rows.append(SheetRow(prompt=f"[{tier}] {prompt}", images=images, neighbors=neighbors))
    with atomic_path(out) as tmp:
        make_sheet(rows).save(tmp, format="PNG")
    seconds = sum(g.seconds for g in (*with_retrieval, *without))
    print(
        f"wrote {out} ({len(prompts)} prompts, {'base+sr' if pair.with_sr else 'base only'}, "
        f"sampling {seconds:.1f} s)"
    )
