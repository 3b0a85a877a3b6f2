"""Ablations on EntityBench: K (paper Fig. 7), η (Fig. 8), guidance strategy and neighbour
guidance weight (App. E), sampler.

Each sweep is a list of :class:`~reimagen.bench.entitybench.Row` that differ from a reference
row (the base network, K=``k_ref`` neighbours, the given sampling) in one thing only, run by a
:class:`~reimagen.bench.entitybench.BenchRunner` (identical rows are generated once, so the
reference appears in several sweeps at the cost of one). Plots are matplotlib (Agg), written
atomically.

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

from collections.abc import Sequence
from pathlib import Path

import attrs

from reimagen.bench.entitybench import NO_RETRIEVAL, TIERS, Row, RowResult
from reimagen.diffusion.sampling_config import SamplingConfig

SECTIONS = ("k", "eta", "guidance", "w_neighbors", "sampler")


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
QUICK = Sweep(ks=(0, 1, 2), etas=(0.0, 0.5, 1.0), w_neighbors=(1.0, 7.0),
              samplers=(("ddpm", 16), ("dpmpp2m", 4)))


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


def _series(results: Sequence[RowResult], group: str, metric: str) -> list[float]:
    return [r.summary[group][metric] if group in r.summary else float("nan") for r in results]


def plot_k(results: Sequence[RowResult], path: Path) -> None:
    """Fig. 7 analogue: faithfulness (all and per tier) and entity top-1 against K."""
    ks = [r.row.k for r in results]

    def draw(axes):
        left, right = axes
        for group, style in (("all", "k-o"), *((f"tier/{t}", "--o") for t in TIERS)):
            left.plot(ks, _series(results, group, "faithful"), style, label=group.split("/")[-1])
            right.plot(
                ks, _series(results, group, "entity_top1"), style, label=group.split("/")[-1]
            )
        left.set(
            xlabel="K (retrieved neighbours)",
            ylabel="faithful (entity ∧ text)",
            title="Faithfulness vs K",
        )
        right.set(
            xlabel="K (retrieved neighbours)",
            ylabel="entity top-1",
            title="Entity faithfulness vs K",
        )
        for ax in axes:
            ax.set_xticks(ks)
            ax.set_ylim(-0.02, 1.02)
            ax.legend(fontsize=8)

    _figure(path, draw, ncols=2)


def plot_eta(results: Sequence[RowResult], path: Path) -> None:
    """Fig. 8 analogue: entity faithfulness and text alignment against η (the trade-off)."""
    etas = [r.row.sampling.eta for r in results]

    def draw(axes):
        (ax,) = axes
        ax.plot(etas, _series(results, "all", "entity_top1"), "o-", label="entity top-1")
        ax.plot(etas, _series(results, "all", "aligned"), "s-", label="text alignment")
        ax.plot(etas, _series(results, "all", "faithful"), "k^--", label="faithful (both)")
        ax.set(
            xlabel="η (share of text-guided steps)",
            ylabel="fraction of prompts",
            title="Interleaved guidance: entity vs text",
            ylim=(-0.02, 1.02),
        )
        ax.set_xticks(etas)
        ax.legend(fontsize=8)

    _figure(path, draw, ncols=1)


def _figure(path: Path, draw, ncols: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from reimagen.core.io import atomic_path

    figure, axes = plt.subplots(1, ncols, figsize=(4.5 * ncols, 3.6), squeeze=False)
    try:
        draw(list(axes[0]))
        figure.tight_layout()
        with atomic_path(path) as tmp:
            figure.savefig(tmp, format="png", dpi=110)
    finally:
        plt.close(figure)
