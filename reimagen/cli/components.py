"""``reimagen components``: every registered component kind and name (``--json`` for machines)."""

from __future__ import annotations

import json

from reimagen.core import registry


def add_parser(subparsers):
    parser = subparsers.add_parser("components", help="list registered components by kind")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=run)


def run(args) -> int:
    reg = registry.default_registry()
    table = {kind: reg.names(kind) for kind in registry.kinds()}
    if args.json:
        origins = {
            kind: {name: reg.origin(kind, name) for name in names} for kind, names in table.items()
        }
        print(json.dumps({"components": table, "origins": origins}, indent=2))
        return 0
    width = max(map(len, table))
    for kind, names in table.items():
        print(f"{kind:<{width}}  {', '.join(names) if names else '(none)'}")
    return 0
