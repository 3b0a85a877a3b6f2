"""``reimagen`` entry point: argparse sub-commands, one module each under reimagen/cli/.

Errors that are the user's (bad argument, unknown component, missing folder) print one line
``reimagen: error: ...`` and exit 2; nothing is written before arguments are checked.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from reimagen.core.config import ConfigError
from reimagen.core.knowledge_base import KnowledgeBaseError
from reimagen.core.registry import RegistryError

# Sub-command modules, in the order `reimagen --help` lists them.
COMMANDS = ("demo", "components", "presets", "kb", "retrieve", "train", "generate", "bench", "ablate")


class UserError(Exception):
    """A problem with the user's input; reported as one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reimagen",
        description="Re-Imagen: retrieval-augmented text-to-image diffusion, as composable parts.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"reimagen.cli.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"reimagen.cli.{name}":
                raise
            continue
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (UserError, RegistryError, ConfigError, KnowledgeBaseError, FileNotFoundError) as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        if isinstance(err, FileNotFoundError) and err.filename and str(err.filename) not in message:
            message = f"{message}: {err.filename}"
        print(f"reimagen: error: {message}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and closed: not an error
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    # `python -m reimagen.cli.main` (e.g. under torchrun): run the imported module's main, whose
    # UserError is the class the sub-commands raise (this __main__ copy has its own).
    from reimagen.cli.main import main as package_main

    sys.exit(package_main())
