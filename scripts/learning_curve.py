"""The learning curve of the shipped base network (issue #15): examples seen -> unseen-entity
faithful rate, entity top-1, top-5 and text alignment (95% Wilson intervals), one point per measured
checkpoint, and a projection of the examples the goal needs.

    python scripts/learning_curve.py docs/results/learning-curve-points.json \
        --out docs/results/learning-curve

Each point of the JSON list names a `reimagen bench` results.json and how many training
examples the weights had seen (an export's `reimagen.recipe` metadata says: examples_total):

    [{"label": "shipped (hash)", "examples": 862464,
      "results": "docs/results/curve/shipped/results.json"}, ...]

From every results.json it reads the row "Re-Imagen K=<k>" of the setting asked (default K=2,
same-style) over the unseen tier. Writes <out>.md (the table and the projection), <out>.png
(the plot) and <out>.json (the numbers), each atomically.

The projection fits logit(faithful rate) as a straight line in log(examples) by least squares
over the points (a power law at small rates) and solves it for the goal rate. It is a guide to
the order of magnitude, not a prediction: a handful of points close together on the x axis,
each with a Wilson interval as wide as the effect, constrain the slope weakly; the table says
how many points the fit used. A point with ``"fit": false`` is drawn and tabled but left out
of the fit (e.g. weights of another lineage: the hash-encoder base the minilm runs started from).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from reimagen.bench.significance import wilson_interval
from reimagen.core.io import atomic_write_bytes, atomic_write_text

METRICS = ("faithful", "entity_top1", "entity_top5", "aligned")  # aligned: the text alignment


def read_point(point: dict, k: int, setting: str, tier: str) -> dict:
    """One curve point: {label, examples, n, <metric>: (rate, low, high), ...}."""
    blob = json.loads(Path(point["results"]).read_text())
    label = f"Re-Imagen K={k}"
    rows = [r for r in blob["rows"] if r["label"] == label and r["setting"] == setting]
    if not rows:
        raise SystemExit(f"{point['results']}: no row {label!r} [{setting}]")
    metrics = rows[0]["metrics"][f"tier/{tier}"]
    n = int(metrics["n"])
    out = {
        "label": point["label"],
        "examples": int(point["examples"]),
        "n": n,
        "results": point["results"],
        "fit": bool(point.get("fit", True)),  # false: shown, but not part of the projection
    }
    for name in METRICS:
        hits = round(metrics[name] * n)
        out[name] = (hits / n, *wilson_interval(hits, n))
    return out


def project(points: list[dict], goal: float) -> dict:
    """Least-squares logit(faithful) = a + b·ln(examples); the examples where it reaches
    ``goal`` (None when the fit has fewer than 2 usable points or does not rise)."""
    usable = [p for p in points if p.get("fit", True) and 0.0 < p["faithful"][0] < 1.0]
    fit = {"goal": goal, "points_used": len(usable), "examples_for_goal": None, "slope": None}
    if len({p["examples"] for p in usable}) < 2:
        return fit
    x = np.log([p["examples"] for p in usable])
    y = np.array([math.log(r / (1 - r)) for r in (p["faithful"][0] for p in usable)])
    slope, intercept = np.polyfit(x, y, 1)
    fit["slope"] = float(slope)
    if slope > 0:
        fit["examples_for_goal"] = float(
            math.exp((math.log(goal / (1 - goal)) - intercept) / slope)
        )
    return fit


def markdown(points: list[dict], fit: dict, k: int, setting: str, tier: str) -> str:
    lines = [
        f"# Learning curve: {tier} entities, Re-Imagen K={k}, {setting}",
        "",
        (
            "Examples seen by the weights (their whole lineage) against the EntityBench rates, "
            "95% Wilson intervals."
        ),
        "",
        "| weights | examples | prompts | faithful | entity top-1 | entity top-5 | text aligned |",
        "|---|---:|---:|---|---|---|---|",
    ]
    for p in points:
        cells = [f"{r:.3f} [{lo:.3f}, {hi:.3f}]" for r, lo, hi in (p[m] for m in METRICS)]
        label = p["label"] + ("" if p.get("fit", True) else " (not in the fit)")
        lines.append(f"| {label} | {p['examples']:,} | {p['n']} | " + " | ".join(cells) + " |")
    lines += ["", "## Projection", ""]
    if fit["examples_for_goal"] is None:
        lines.append(
            f"No projection: the fit of logit(faithful) on ln(examples) used "
            f"{fit['points_used']} point(s) with a non-zero rate"
            + ("" if fit["slope"] is None else f" and its slope is {fit['slope']:.2f} (not rising)")
            + "."
        )
    else:
        lines.append(
            f"logit(faithful) on ln(examples), least squares over {fit['points_used']} points: "
            f"slope {fit['slope']:.2f}; faithful {fit['goal']:.2f} at about "
            f"{fit['examples_for_goal']:.3g} examples. An order of magnitude, not a prediction "
            "(few points, close together, intervals as wide as the effect)."
        )
    return "\n".join(lines) + "\n"


def plot(points: list[dict], path: Path, k: int, setting: str, tier: str) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    x = np.array([p["examples"] for p in points], float)
    for name, marker in zip(METRICS, "os^D"):
        rate = np.array([p[name][0] for p in points])
        err = np.array([[p[name][0] - p[name][1], p[name][2] - p[name][0]] for p in points]).T
        ax.errorbar(x, rate, yerr=err, marker=marker, capsize=3, label=name.replace("_", " "))
    ax.set_xscale("log")
    millions = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v / 1e6:.3g}M")
    ax.xaxis.set_major_formatter(millions)
    ax.xaxis.set_minor_formatter(millions)
    ax.set_xlabel("training examples seen (log)")
    ax.set_ylabel(f"rate over {points[0]['n']} {tier} prompts")
    ax.set_title(f"Re-Imagen K={k}, {setting}")
    ax.grid(alpha=0.3)
    ax.legend()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("points", type=Path, help="JSON list of {label, examples, results}")
    parser.add_argument("--out", type=Path, required=True, help="output path without suffix")
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--setting", default="same-style", choices=("same-style", "cross-style"))
    parser.add_argument("--tier", default="unseen", choices=("frequent", "rare", "unseen"))
    parser.add_argument("--goal", type=float, default=0.20, help="faithful rate to project")
    args = parser.parse_args(argv)
    if not 0.0 < args.goal < 1.0:
        parser.error(f"--goal must be in (0, 1), got {args.goal}")
    specs = json.loads(args.points.read_text())
    points = sorted(
        (read_point(p, args.k, args.setting, args.tier) for p in specs), key=lambda p: p["examples"]
    )
    fit = project(points, args.goal)
    text = markdown(points, fit, args.k, args.setting, args.tier)
    atomic_write_text(args.out.with_suffix(".md"), text)
    atomic_write_text(
        args.out.with_suffix(".json"),
        json.dumps({"points": points, "projection": fit}, indent=1) + "\n",
    )
    plot(points, args.out.with_suffix(".png"), args.k, args.setting, args.tier)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
