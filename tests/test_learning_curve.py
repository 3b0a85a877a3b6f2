"""scripts/learning_curve.py: the projection on points with a known answer, and the files."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).parent.parent / "scripts" / "learning_curve.py"
spec = importlib.util.spec_from_file_location("learning_curve", SCRIPT)
learning_curve = importlib.util.module_from_spec(spec)
spec.loader.exec_module(learning_curve)


def logistic(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def point(examples: int, faithful: float) -> dict:
    return {"examples": examples, "faithful": (faithful, 0.0, 1.0)}


def test_projection_recovers_an_exact_power_law():
    """logit(rate) = −10 + 0.5·ln(examples): 0.20 at exp((logit 0.2 + 10) / 0.5)."""
    points = [point(n, logistic(-10 + 0.5 * math.log(n))) for n in (1e5, 1e6, 1e7)]
    fit = learning_curve.project(points, 0.20)
    want = math.exp((math.log(0.2 / 0.8) + 10) / 0.5)
    # The points lie on the line up to the logistic/logit round trip (a few float64 roundings,
    # ~1e-15 of y). np.polyfit solves the 3×2 least squares backward-stably, so for a
    # zero-residual fit the slope's relative error is <= ~4κ·u with κ = cond([ln n, 1]) = 104
    # and u = 2^-53: 4.6e-14 (measured 1.2e-15; it was approx's default rel=1e-6).
    x = [math.log(n) for n in (1e5, 1e6, 1e7)]
    slope_rel = 4 * np.linalg.cond(np.stack([x, np.ones(3)], 1)) * 2**-53
    assert fit["points_used"] == 3
    assert fit["slope"] == pytest.approx(0.5, rel=slope_rel, abs=0)
    # examples = exp(E), E = (logit(goal) − a)/b = ln(examples) = 17.2: the intercept is off by
    # ~x̄·δb (x̄ = 13.8), so E is off by (x̄ + E)·(δb/b) absolute, the relative error of exp(E):
    # 31·4.6e-14 = 1.4e-12 (measured 3.6e-15; it was rel=1e-9).
    examples_rel = (np.mean(x) + math.log(want)) * slope_rel + 2**-52
    assert fit["examples_for_goal"] == pytest.approx(want, rel=examples_rel, abs=0)


def test_no_projection_from_one_point_zero_rates_or_a_falling_curve():
    assert learning_curve.project([point(1e6, 0.1), point(2e6, 0.0)], 0.2)["slope"] is None
    falling = learning_curve.project([point(1e6, 0.1), point(2e6, 0.05)], 0.2)
    assert falling["slope"] < 0 and falling["examples_for_goal"] is None


def test_a_point_marked_fit_false_is_left_out_of_the_projection():
    """Another lineage's point (here a high rate first) would make the curve fall; marked
    "fit": false, the projection uses the other two, which rise."""
    other = {**point(1e6, 0.3), "fit": False}
    rising = [point(2e6, 0.01), point(4e6, 0.02)]
    fit = learning_curve.project([other, *rising], 0.2)
    assert fit["points_used"] == 2 and fit["slope"] > 0
    assert fit == learning_curve.project(rising, 0.2)
    assert learning_curve.project([{**other, "fit": True}, *rising], 0.2)["slope"] < 0


def test_writes_table_plot_and_numbers(tmp_path):
    rows = []
    for n, hits in ((333, 8), (333, 20)):
        metrics = {
            "n": n,
            "faithful": hits / n,
            "entity_top1": 2 * hits / n,
            "entity_top5": 3 * hits / n,
            "aligned": 0.5,
        }
        rows.append(
            {
                "rows": [
                    {
                        "label": "Re-Imagen K=2",
                        "setting": "same-style",
                        "metrics": {"tier/unseen": metrics},
                    }
                ]
            }
        )
    specs = []
    for i, (blob, examples) in enumerate(zip(rows, (900_000, 1_800_000))):
        path = tmp_path / f"r{i}.json"
        path.write_text(json.dumps(blob))
        specs.append({"label": f"w{i}", "examples": examples, "results": str(path)})
    (tmp_path / "points.json").write_text(json.dumps(specs))
    out = tmp_path / "curve"
    assert learning_curve.main([str(tmp_path / "points.json"), "--out", str(out)]) == 0
    text = out.with_suffix(".md").read_text()
    assert "| w0 | 900,000 | 333 | 0.024 [" in text and "| w1 | 1,800,000 | 333 | 0.060 [" in text
    assert "faithful 0.20 at about" in text
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    blob = json.loads(out.with_suffix(".json").read_text())
    assert blob["projection"]["points_used"] == 2 and blob["points"][0]["n"] == 333
