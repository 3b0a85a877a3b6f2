"""``reimagen ablate``: sweep K, η, guidance strategy and sampler on a small EntityBench set.

Writes ``results.json``, ``results.md``, ``fig7_k.png`` (faithfulness vs K, paper Fig. 7),
``fig8_eta.png`` (entity faithfulness and text alignment vs η, paper Fig. 8) and ``report.html``
(the tables, the plots and every row's images beside their references on one page;
``--no-report``: not) to ``--out``.
``--quick`` is a smoke run: 2 prompts per tier, K ∈ {0, 1, 2}, η ∈ {0, .5, 1}, few steps.
"""

from __future__ import annotations

import argparse
import json
import time

from reimagen.cli.bench import (
    TIMING_COLUMNS,
    add_common_arguments,
    check_components,
    evaluator_note,
    header,
    load_parts,
    load_prompts,
)
from reimagen.cli.common import SETTINGS, add_sampling_arguments, sampling_from_args
from reimagen.cli.main import UserError
from reimagen.core import registry

TITLES = {
    "k": "Number of neighbours K (paper Fig. 7)",
    "eta": "Interleave ratio η (paper Fig. 8)",
    "guidance": "Guidance strategy (paper App. E)",
    "w_neighbors": "Neighbour guidance weight w_n, interleaved (paper Eq. 6, App. E)",
    "sampler": "Sampler and step count",
}
QUICK_N, QUICK_STEPS = 2, 4


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "ablate",
        help="sweep K, η, guidance and sampler on EntityBench; tables and plots",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_common_arguments(parser, out="outputs/ablate", n=4)
    parser.add_argument(
        "--setting",
        default="same-style",
        choices=SETTINGS,
        help="retrieval setting of every K > 0 row",
    )
    parser.add_argument("--ks", default=None, help="K values (default 0,1,2,3,4)")
    parser.add_argument("--etas", default=None, help="η values (default 0,0.25,0.5,0.75,1)")
    parser.add_argument(
        "--guidances", default=None, help="strategies (default joint,weighted,interleaved)"
    )
    parser.add_argument(
        "--w-neighbors-sweep", default=None, metavar="W,...",
        help="neighbour guidance weights w_n >= 1 (default 1,3,7,15)",
    )
    parser.add_argument(
        "--samplers", default=None, help="NAME@STEPS list (default ddpm@256,dpmpp2m@25)"
    )
    parser.add_argument(
        "--k-ref", type=int, default=None, help="K of the η/guidance/sampler sweeps"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke run: {QUICK_N} prompts per tier, short sweeps, {QUICK_STEPS} steps",
    )
    add_sampling_arguments(parser)
    parser.set_defaults(func=run)


def make_sweep(args):
    """The Sweep the options ask for (--quick starts from QUICK), validated."""
    import attrs

    from reimagen.bench.ablate import FULL, QUICK, parse_samplers
    from reimagen.cli.bench import comma_list

    base = QUICK if args.quick else FULL
    changes = {}
    if args.ks is not None:
        changes["ks"] = tuple(comma_list(args.ks, "--ks", cast=int))
    if args.etas is not None:
        changes["etas"] = tuple(comma_list(args.etas, "--etas", cast=float))
    if args.guidances is not None:
        changes["guidances"] = tuple(comma_list(args.guidances, "--guidances"))
    if args.w_neighbors_sweep is not None:
        changes["w_neighbors"] = tuple(
            comma_list(args.w_neighbors_sweep, "--w-neighbors-sweep", cast=float)
        )
    if args.samplers is not None:
        try:
            changes["samplers"] = parse_samplers(args.samplers)
        except ValueError as err:
            raise UserError(f"--samplers: {err}") from None
    if args.k_ref is not None:
        changes["k_ref"] = args.k_ref
    sweep = attrs.evolve(base, **changes)
    if any(k < 0 for k in sweep.ks) or sweep.k_ref < 1:
        raise UserError(f"--ks must be >= 0 and --k-ref >= 1, got {sweep.ks} and {sweep.k_ref}")
    from reimagen.cli.common import check_k_option

    for k in sweep.ks:
        check_k_option(k, "--ks values")
    check_k_option(sweep.k_ref, "--k-ref", low=1)
    if any(not 0.0 <= eta <= 1.0 for eta in sweep.etas):
        raise UserError(f"--etas must lie in [0, 1], got {sweep.etas}")
    if any(not w >= 1.0 for w in sweep.w_neighbors):  # SamplingConfig.w_neighbors >= 1
        raise UserError(f"--w-neighbors-sweep values must be >= 1, got {sweep.w_neighbors}")
    for name in sweep.guidances:
        registry.get("guidance", name)
    for name, _ in sweep.samplers:
        registry.get("sampler", name)
    return sweep


def _fields(sweep) -> dict:
    import attrs

    return attrs.asdict(sweep)


def run(args) -> int:
    from reimagen.bench.ablate import SECTIONS, plot_eta, plot_k, sweep_rows
    from reimagen.bench.entitybench import BenchRunner, table, tier_columns
    from reimagen.cli.progress import bar, row_logger
    from reimagen.core.io import atomic_write_text
    from reimagen.generation.shipped import DEFAULT_SAMPLING

    if args.quick:
        args.n = min(args.n, QUICK_N)
        args.steps = args.steps or QUICK_STEPS
    sweep = make_sweep(args)
    sampling = sampling_from_args(args, DEFAULT_SAMPLING["base"])
    sections = sweep_rows(sweep, sampling, args.setting)
    k_max = max(row.k for rows in sections.values() for row in rows)
    check_components(args, need_retrieval=k_max > 0)
    prompts, meta = load_prompts(args)

    started = time.perf_counter()
    pipelines, retrievers, evaluator = load_parts(args, [args.setting], k_max > 0, k_max)
    pipelines.pop("baseline", None)  # every sweep is over the base network
    distinct = {row.key() for rows in sections.values() for row in rows}  # shared rows run once
    with bar(len(distinct), "ablation rows", unit="row") as progress:
        runner = BenchRunner(
            prompts,
            pipelines=pipelines,
            retrievers=retrievers,
            evaluator=evaluator,
            seed=args.seed,
            batch_size=args.batch_size,
            log=row_logger(progress),
        )
        runner.check([row for rows in sections.values() for row in rows])
        results = {name: runner.run(rows) for name, rows in sections.items()}
    seconds = time.perf_counter() - started

    args.out.mkdir(parents=True, exist_ok=True)
    plot_k(results["k"], args.out / "fig7_k.png")
    plot_eta(results["eta"], args.out / "fig8_eta.png")
    columns = tier_columns() + TIMING_COLUMNS[2:]
    lines = [
        (
            f"# EntityBench ablations ({len(prompts)} prompts, setting {args.setting}, "
            f"seed {args.seed})"
        ),
        "",
        evaluator_note(meta),
        "",
    ]
    for name in SECTIONS:
        lines += [f"## {TITLES[name]}", "", table(results[name], columns), ""]
    lines += [
        "Plots: fig7_k.png (faithfulness vs K), fig8_eta.png (entity vs text vs η).",
        f"Wall time {seconds:.1f} s.",
    ]
    markdown = "\n".join(lines) + "\n"
    blob = header(args, meta, pipelines, prompts, seconds)
    blob.update(
        setting=args.setting,
        sweep=_fields(sweep),
        sections={name: [r.to_dict() for r in rs] for name, rs in results.items()},
    )
    atomic_write_text(args.out / "results.json", json.dumps(blob, indent=1, ensure_ascii=False))
    atomic_write_text(args.out / "results.md", markdown)
    if args.no_report:  # not an earlier run's page beside this run's results
        (args.out / "report.html").unlink(missing_ok=True)
    else:
        from reimagen.bench.report import render, write_report

        plots = {name: args.out / name for name in ("fig7_k.png", "fig8_eta.png")}
        sections = [(TITLES[name], results[name]) for name in SECTIONS]
        write_report(args.out / "report.html", render(markdown, sections, prompts,
                                                      kb=pipelines["base"].kb, plots=plots))
    print(markdown)
    print(f"wrote {args.out}/results.json, results.md, fig7_k.png, fig8_eta.png"
          + ("" if args.no_report else ", report.html"))
    return 0
