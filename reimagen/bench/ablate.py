"""Ablations on EntityBench: K (paper Fig. 7), η (Fig. 8), guidance strategy and neighbour
guidance weight (App. E), sampler.

Each sweep is a list of :class:`~reimagen.bench.entitybench.Row` that differ from a reference
row (the base network, K=``k_ref`` neighbours, the given sampling) in one thing only, run by a
:class:`~reimagen.bench.entitybench.BenchRunner` (identical rows are generated once, so the
reference appears in several sweeps at the cost of one). Plots: :mod:`reimagen.bench.ablate_plots`.

* K ∈ {0..4}: K=0 is the same network with no neighbours, sampled with joint guidance at the
  text weight (interleaving needs both conditions). Paper §4.3: more neighbours, more faithful.
* η ∈ {0, .25, .5, .75, 1} with interleaved guidance (Eq. 6): the share of steps that take the
  text-enhanced ε̂_p. Paper: lower η, more entity fidelity but less text alignment.
* guidance ∈ {joint, weighted, interleaved} (App. E; 2, 3 and 2 network passes per step).
* w_n ∈ {1, 3, 7, 15}: the neighbour guidance weight of the interleaved ε̂_n steps (Eq. 6;
  the paper samples its 64×64 stage at w=30). A larger w_n extrapolates further along
  ε(x|p,n) − ε(x|p), the part of the prediction the neighbours change.
* samplers: ddpm@256 (paper Eq. 4, the paper's step count) vs dpmpp2m@25, with wall time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import attrs

from reimagen.bench.entitybench import NO_RETRIEVAL, Row, RowResult
from reimagen.diffusion.sampling_config import SamplingConfig

SECTIONS = ("k", "eta", "guidance", "w_neighbors", "sampler")
TITLES = {
    "k": "Number of neighbours K (paper Fig. 7)",
    "eta": "Interleave ratio η (paper Fig. 8)",
    "guidance": "Guidance strategy (paper App. E)",
    "w_neighbors": "Neighbour guidance weight w_n, interleaved (paper Eq. 6, App. E)",
    "sampler": "Sampler and step count",
}
PLOTS = ("fig7_k.png", "fig8_eta.png")


@attrs.frozen(kw_only=True)
class Sweep:
    """What to vary. ``samplers`` are (name, steps) pairs."""

    ks: tuple[int, ...] = (0, 1, 2, 3, 4)
    etas: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    guidances: tuple[str, ...] = ("joint", "weighted", "interleaved")
    w_neighbors: tuple[float, ...] = (1.0, 3.0, 7.0, 15.0)
    samplers: tuple[tuple[str, int], ...] = (("ddpm", 256), ("dpmpp2m", 25))
    k_ref: int = 2  # K of every sweep but the K sweep


FULL = Sweep()
QUICK = Sweep(
    ks=(0, 1, 2),
    etas=(0.0, 0.5, 1.0),
    w_neighbors=(1.0, 7.0),
    samplers=(("ddpm", 16), ("dpmpp2m", 4)),
)


def parse_samplers(text: str) -> tuple[tuple[str, int], ...]:
    """ "ddpm@256,dpmpp2m@25" -> (("ddpm", 256), ("dpmpp2m", 25)); ValueError names the item."""
    pairs = []
    for item in (t.strip() for t in text.split(",") if t.strip()):
        name, _, steps = item.partition("@")
        if not name or not steps.isdigit() or int(steps) < 1:
            raise ValueError(f"sampler {item!r} must be NAME@STEPS with STEPS >= 1, e.g. ddpm@256")
        pairs.append((name, int(steps)))
    if not pairs:
        raise ValueError("no sampler given (e.g. ddpm@256,dpmpp2m@25)")
    return tuple(pairs)


def sweep_rows(sweep: Sweep, sampling: SamplingConfig, setting: str) -> dict[str, list[Row]]:
    """Section name -> its rows, all on the base network."""

    def row(label: str, k: int, sampling: SamplingConfig) -> Row:
        return Row(
            label=label,
            network="base",
            k=k,
            setting=setting if k else NO_RETRIEVAL,
            sampling=sampling,
        )

    no_neighbours = sampling.replace(guidance="joint", w=sampling.w_text)
    interleaved = sampling.replace(guidance="interleaved")
    return {
        "k": [row(f"K={k}", k, sampling if k else no_neighbours) for k in sweep.ks],
        "eta": [row(f"η={eta:g}", sweep.k_ref, interleaved.replace(eta=eta)) for eta in sweep.etas],
        "guidance": [row(g, sweep.k_ref, sampling.replace(guidance=g)) for g in sweep.guidances],
        "w_neighbors": [
            row(f"w_n={w:g}", sweep.k_ref, interleaved.replace(w_neighbors=w))
            for w in sweep.w_neighbors
        ],
        "sampler": [
            row(f"{name}@{steps}", sweep.k_ref, sampling.replace(sampler=name, steps=steps))
            for name, steps in sweep.samplers
        ],
    }


def ablate_markdown(
    results: Mapping[str, Sequence[RowResult]],
    *,
    n_prompts: int,
    setting: str,
    seed: int,
    note: str,
    seconds: float,
) -> str:
    """results.md of ``reimagen ablate``: one table per section (Table 2 columns and NFE /
    generation time), the evaluator's ceiling ``note`` and the plots' names."""
    from reimagen.bench.tables import TIMING_COLUMNS, table, tier_columns

    columns = tier_columns() + TIMING_COLUMNS[2:]
    lines = [
        f"# EntityBench ablations ({n_prompts} prompts, setting {setting}, seed {seed})",
        "",
        note,
        "",
    ]
    for name in SECTIONS:
        lines += [f"## {TITLES[name]}", "", table(results[name], columns), ""]
    lines += [
        "Plots: fig7_k.png (faithfulness vs K), fig8_eta.png (entity vs text vs η).",
        f"Wall time {seconds:.1f} s.",
    ]
    return "\n".join(lines) + "\n"
