"""``reimagen`` entry point: argparse sub-commands, one module each under reimagen/cli/.

Errors that are the user's (bad argument, unknown component, missing folder, a file that is not
what it should be) print one line ``reimagen: error: ...`` and exit 2; nothing is written before
arguments are checked. Which exceptions count as the user's is a fixed list (USER_ERRORS): any
other exception is a bug and keeps its traceback. ``REIMAGEN_TRACEBACK=1`` shows the traceback of
a user error too.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Sub-command modules, in the order `reimagen --help` lists them.
COMMANDS = (
    "demo",
    "components",
    "presets",
    "kb",
    "retrieve",
    "train",
    "generate",
    "bench",
    "ablate",
)


class UserError(Exception):
    """A problem with the user's input; reported as one line, exit status 2."""


# (module, class) of the library's exceptions that describe bad input or a bad file, not a bug.
# Looked up only in modules already imported: an exception of a module never imported cannot
# have been raised, and `reimagen components` need not import torch to report an error.
USER_ERRORS = (
    ("reimagen.cli.main", "UserError"),
    ("reimagen.core.registry", "RegistryError"),  # unknown component name
    ("reimagen.core.config", "ConfigError"),  # a config value out of range
    ("reimagen.kb.records", "KnowledgeBaseError"),
    ("reimagen.core.digests", "IntegrityError"),  # a file that fails its checksum
    ("reimagen.core.io", "UnsafeFileError"),  # not a safetensors file
    ("reimagen.training.checkpoint", "CheckpointError"),
    ("reimagen.training.run_setup", "RunSetupError"),  # a training run that cannot start as asked
    ("reimagen.generation.shipped", "WeightsError"),  # wrong stage / preset, non-finite weights
    ("reimagen.generation.cascade", "CascadeError"),
    ("reimagen.kb.splits", "SplitError"),
    ("reimagen.retrievers.index", "IndexMismatchError"),
    ("reimagen.bench.prompt_sets", "PromptFileError"),
    ("reimagen.bench.evaluator", "EvaluatorError"),
    ("builtins", "FileNotFoundError"),
    ("builtins", "NotADirectoryError"),  # e.g. a path through a file
    ("builtins", "IsADirectoryError"),  # a folder where a file is expected
    ("builtins", "PermissionError"),
)


def user_error_types() -> tuple[type[BaseException], ...]:
    found = []
    for module_name, class_name in USER_ERRORS:
        module = sys.modules.get(module_name)
        error = getattr(module, class_name, None) if module is not None else None
        if isinstance(error, type) and issubclass(error, BaseException):
            found.append(error)
    return tuple(found)


def disk_full(err: BaseException) -> bool:
    """No space left (ENOSPC, or a quota: EDQUOT): the user's to fix, not a bug. The writers
    leave the previous files intact (tests/test_disk_full.py)."""
    import errno

    return isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)


def one_line(err: BaseException) -> str:
    """The first line of the message, with the file an OSError names."""
    message = str(err).splitlines()[0] if str(err).strip() else type(err).__name__
    filename = getattr(err, "filename", None)
    if isinstance(err, OSError) and filename and str(filename) not in message:
        message = f"{err.strerror or message}: {filename}"
    return message


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line like every other user error (the usage block is
    what ``--help`` prints)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
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
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help (0) or an argument argparse refused (2, one line)
        return done.code if isinstance(done.code, int) else 0
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # output piped into `head` and closed: not an error
        sys.stderr.close()
        return 0
    except Exception as err:
        expected = isinstance(err, user_error_types()) or disk_full(err)
        if not expected or os.environ.get("REIMAGEN_TRACEBACK"):
            raise  # a bug: keep the traceback
        print(f"reimagen: error: {one_line(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    # `python -m reimagen.cli.main` (e.g. under torchrun): run the imported module's main, whose
    # UserError is the class the sub-commands raise (this __main__ copy has its own).
    from reimagen.cli.main import main as package_main

    sys.exit(package_main())
