"""Paired comparison of two EntityBench runs on the same prompts (an A/B of two recipes or two
checkpoints, issue #15).

Two `reimagen bench` runs with the same prompts and seed score the same prompt with the same
noise, so per prompt the outcomes pair up. For each row present in both runs and each yes/no
metric it counts the discordant prompts (A right where B is wrong, and the reverse) and gives
the exact two-sided sign test (McNemar's exact test) on them: far more sensitive than two
overlapping Wilson intervals, because the prompts both runs get right or wrong carry no
information about the difference.

    python -m reimagen.bench.compare A/results.json B/results.json [--names A,B]

prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

METRICS = ("faithful", "entity_top1", "entity_top5", "aligned")


def sign_test(a_only: int, b_only: int) -> float:
    """Exact two-sided binomial test of a_only vs b_only discordant pairs at p = 1/2."""
    n = a_only + b_only
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(a_only, b_only) + 1)) / 2**n
    return min(1.0, 2 * tail)


def load_rows(path: Path) -> dict[tuple[str, str], dict]:
    """The generated rows of a results.json by (label, setting); not the ceiling row (the
    target scenes themselves, the same in every run)."""
    from reimagen.bench.entitybench import CEILING

    blob = json.loads(Path(path).read_text())
    return {
        (r["label"], r["setting"]): r
        for r in blob["rows"]
        if r.get("per_prompt") and r["label"] != CEILING
    }


def compare(a: dict, b: dict) -> list[dict]:
    """One entry per (row, metric) of the rows both runs have: counts and the sign test."""
    out = []
    for key in (k for k in a if k in b):
        pa, pb = a[key]["per_prompt"], b[key]["per_prompt"]
        if [p["entity"] for p in pa] != [p["entity"] for p in pb]:
            raise ValueError(f"row {key[0]} [{key[1]}]: the runs scored different prompts")
        for metric in METRICS:
            a_hits = sum(bool(p[metric]) for p in pa)
            b_hits = sum(bool(p[metric]) for p in pb)
            a_only = sum(bool(x[metric]) and not y[metric] for x, y in zip(pa, pb))
            b_only = sum(bool(y[metric]) and not x[metric] for x, y in zip(pa, pb))
            out.append(
                {
                    "row": key[0],
                    "setting": key[1],
                    "metric": metric,
                    "n": len(pa),
                    "a": a_hits,
                    "b": b_hits,
                    "a_only": a_only,
                    "b_only": b_only,
                    "p": sign_test(a_only, b_only),
                }
            )
    return out


def markdown(entries: list[dict], names: tuple[str, str]) -> str:
    a, b = names
    lines = [
        f"| row | setting | metric | {a} | {b} | {a} only | {b} only | p (sign test) |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for e in entries:
        lines.append(
            f"| {e['row']} | {e['setting']} | {e['metric']} | {e['a']}/{e['n']} | "
            f"{e['b']}/{e['n']} | {e['a_only']} | {e['b_only']} | {e['p']:.3g} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path, help="results.json of run A")
    parser.add_argument("b", type=Path, help="results.json of run B (same prompts and seed)")
    parser.add_argument("--names", default="A,B", help="column names for the two runs")
    args = parser.parse_args(argv)
    names = tuple(args.names.split(","))
    if len(names) != 2:
        parser.error(f"--names must be two comma-separated names, got {args.names!r}")
    for path in (args.a, args.b):
        if not path.is_file():
            parser.error(f"{path}: no such file")
    try:
        entries = compare(load_rows(args.a), load_rows(args.b))
    except ValueError as err:
        parser.error(str(err))
    print(markdown(entries, names), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
