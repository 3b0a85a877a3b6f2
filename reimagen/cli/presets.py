"""``reimagen presets``: every registered network preset, its parameter count per backend
(counted without allocating: torch on the meta device, JAX through ``jax.eval_shape``) beside
the paper's sizes (Re-Imagen §4: 2.5B 64×, 750M 256×, 400M 1024×)."""

from __future__ import annotations

import json

from reimagen.core import registry

PAPER_PARAMS = {"paper-64": 2.5e9, "paper-sr256": 750e6, "paper-sr1024": 400e6}


def add_parser(subparsers):
    parser = subparsers.add_parser("presets", help="network presets and their parameter counts")
    parser.add_argument(
        "--backend",
        action="append",
        help="backend(s) to count with (default: every registered one)",
    )
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(func=run)


def count_params(backends: list[str]) -> dict[str, dict]:
    table = {}
    for name in registry.names("preset"):
        config = registry.get("preset", name)()
        row = {"image_size": config.image_size, "lowres_size": config.lowres_size}
        for backend in backends:
            row[backend] = registry.get("backend", backend)().param_count(config)
        row["paper"] = PAPER_PARAMS.get(name)
        table[name] = row
    return table


def run(args) -> int:
    backends = args.backend or registry.names("backend")
    for backend in backends:
        registry.get("backend", backend)
    table = count_params(backends)
    if args.json:
        print(json.dumps(table, indent=1))
        return 0
    header = f"{'preset':<14}{'resolution':>12}" + "".join(f"{b:>14}" for b in backends)
    print(header + f"{'paper':>10}")
    for name, row in table.items():
        res = (
            f"{row['lowres_size']}→{row['image_size']}"
            if row["lowres_size"]
            else str(row["image_size"])
        )
        counts = "".join(f"{_human(row[b]):>14}" for b in backends)
        paper = _human(row["paper"]) if row["paper"] else "-"
        print(f"{name:<14}{res:>12}{counts}{paper:>10}")
    return 0


def _human(n: float) -> str:
    return f"{n / 1e9:.3f}B" if n >= 1e9 else f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k"
