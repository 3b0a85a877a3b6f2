"""reimagen.bench.compare: the paired sign test against hand-computed values, and the pairing."""

from __future__ import annotations

import json
import math

import pytest

from reimagen.bench import compare
from reimagen.bench.entitybench import CEILING


def test_sign_test_matches_the_binomial_tail():
    assert compare.sign_test(0, 0) == 1.0
    # Integer binomial sums divided by 2^n: exact in float64 (2/32), or one rounding of the
    # quotient (2·Σ_{i<=7} C(27, i) / 2^27, a 27-bit integer over a power of two: exact too).
    assert compare.sign_test(5, 0) == 2 / 32  # 2·P(X ≤ 0), X ~ Bin(5, ½)
    assert compare.sign_test(20, 7) == 2 * sum(math.comb(27, i) for i in range(8)) / 2**27  # 0.0192
    assert compare.sign_test(3, 3) == 1.0  # capped at 1


def outcome(entity: str, **hits) -> dict:
    return {"entity": entity, **{m: hits.get(m, False) for m in compare.METRICS}}


def write(path, rows):
    path.write_text(json.dumps({"rows": rows}))
    return path


def test_compare_counts_discordant_prompts_and_skips_the_ceiling(tmp_path, capsys):
    ceiling = {"label": CEILING, "setting": "none", "per_prompt": [outcome("cat")] * 3}
    a = [
        ceiling,
        {
            "label": "K=2",
            "setting": "same-style",
            "per_prompt": [
                outcome("cat", entity_top5=True),
                outcome("dog", entity_top5=True),
                outcome("owl"),
            ],
        },
    ]
    b = [
        ceiling,
        {
            "label": "K=2",
            "setting": "same-style",
            "per_prompt": [
                outcome("cat", entity_top5=True),
                outcome("dog"),
                outcome("owl", entity_top5=True),
            ],
        },
    ]
    entries = compare.compare(
        compare.load_rows(write(tmp_path / "a.json", a)),
        compare.load_rows(write(tmp_path / "b.json", b)),
    )
    top5 = [e for e in entries if e["metric"] == "entity_top5"]
    assert len(entries) == len(compare.METRICS) and len(top5) == 1  # no ceiling row
    assert {k: top5[0][k] for k in ("n", "a", "b", "a_only", "b_only")} == {
        "n": 3,
        "a": 2,
        "b": 2,
        "a_only": 1,
        "b_only": 1,
    }
    assert compare.main([str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--names", "x,y"]) == 0
    assert "| K=2 | same-style | entity_top5 | 2/3 | 2/3 | 1 | 1 | 1 |" in capsys.readouterr().out


def test_runs_on_other_prompts_are_refused(tmp_path):
    a = [{"label": "K=2", "setting": "s", "per_prompt": [outcome("cat")]}]
    b = [{"label": "K=2", "setting": "s", "per_prompt": [outcome("dog")]}]
    with pytest.raises(SystemExit):
        compare.main([str(write(tmp_path / "a.json", a)), str(write(tmp_path / "b.json", b))])
