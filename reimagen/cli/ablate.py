"""``reimagen ablate``: sweep K, η, guidance strategy and sampler on a small EntityBench set.

Writes ``results.json``, ``results.md``, ``fig7_k.png`` (faithfulness vs K, paper Fig. 7),
``fig8_eta.png`` (entity faithfulness and text alignment vs η, paper Fig. 8) and ``report.html``
(the tables, the plots and every row's images beside their references on one page;
``--no-report``: not) to ``--out``.
``--quick`` is a smoke run: 2 prompts per tier, K ∈ {0, 1, 2}, η ∈ {0, .5, 1}, few steps.
The sweeps, tables and plots are :mod:`reimagen.bench.ablate` and
:mod:`reimagen.bench.ablate_plots`; loading and running, :mod:`reimagen.bench.session`.
"""

from __future__ import annotations

import argparse
import time

import attrs

from reimagen.cli.bench import (
    add_common_arguments,
    check_components,
    comma_list,
    load_prompts,
    open_parts,
    run_header,
)
from reimagen.cli.common import SETTINGS, add_sampling_arguments, sampling_from_args
from reimagen.cli.main import UserError
from reimagen.core import registry

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
        "--w-neighbors-sweep",
        default=None,
        metavar="W,...",
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
    from reimagen.bench.ablate import FULL, QUICK, parse_samplers

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


def run(args) -> int:
    from reimagen.bench.ablate import ablate_markdown, sweep_rows
    from reimagen.bench.session import evaluator_note
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
    parts = open_parts(args, [args.setting], k_max > 0, k_max)
    parts.pipelines.pop("baseline", None)  # every sweep is over the base network
    results = _run_sections(args, prompts, parts, sections)
    seconds = time.perf_counter() - started
    markdown = ablate_markdown(
        results,
        n_prompts=len(prompts),
        setting=args.setting,
        seed=args.seed,
        note=evaluator_note(meta),
        seconds=seconds,
    )
    blob = run_header(args, meta, parts.pipelines, prompts, seconds)
    blob.update(
        setting=args.setting,
        sweep=attrs.asdict(sweep),
        sections={name: [r.to_dict() for r in rs] for name, rs in results.items()},
    )
    _write(args, blob, markdown, results, prompts, kb=parts.pipelines["base"].kb)
    print(markdown)
    print(
        f"wrote {args.out}/results.json, results.md, fig7_k.png, fig8_eta.png"
        + ("" if args.no_report else ", report.html")
    )
    return 0


def _run_sections(args, prompts, parts, sections) -> dict:
    """Section name -> its rows' results; a progress bar over the distinct rows (a row shared
    by several sweeps runs once). Every row is checked before the first one runs."""
    from reimagen.bench.session import make_runner
    from reimagen.cli.progress import bar, row_logger

    distinct = {row.key() for rows in sections.values() for row in rows}
    with bar(len(distinct), "ablation rows", unit="row") as progress:
        runner = make_runner(
            prompts, parts, seed=args.seed, batch_size=args.batch_size, log=row_logger(progress)
        )
        runner.check([row for rows in sections.values() for row in rows])
        return {name: runner.run(rows) for name, rows in sections.items()}


def _write(args, blob, markdown, results, prompts, kb) -> None:
    """results.json, results.md, the two plots and (unless --no-report) report.html, as one
    set (an earlier run's report.html goes when this run writes none)."""
    from reimagen.bench.ablate import PLOTS, SECTIONS, TITLES
    from reimagen.bench.ablate_plots import plot_eta, plot_k
    from reimagen.bench.result_files import json_text, text_file, write_file_set

    writers = {
        "results.json": text_file(json_text(blob, newline=False)),
        "results.md": text_file(markdown),
        "fig7_k.png": lambda path: plot_k(results["k"], path),
        "fig8_eta.png": lambda path: plot_eta(results["eta"], path),
    }
    if not args.no_report:
        from reimagen.bench.report import render

        def report(path):
            plots = {name: path.parent / name for name in PLOTS}  # the staged plots
            sections = [(TITLES[name], results[name]) for name in SECTIONS]
            text_file(render(markdown, sections, prompts, kb=kb, plots=plots))(path)

        writers["report.html"] = report
    write_file_set(args.out, writers, replaces=("report.html",))
