"""The ablation plots (matplotlib, Agg), written atomically: faithfulness vs K (paper Fig. 7) and
entity faithfulness vs text alignment against the interleave ratio η (paper Fig. 8).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from reimagen.bench.entitybench import RowResult
from reimagen.bench.prompt_sets import TIERS


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
