"""``reimagen kb``: build a knowledge base and describe one (docs/design.md §6, §8).

    reimagen kb build                                   # every emoji × every installed artist
    reimagen kb build --source folder --folder DIR      # DIR/captions.jsonl, see folder_source
    reimagen kb info [DIR] [--json]

The default output is ``reimagen.core.paths.default_kb_dir(<source>)`` (``.cache/kb/emoji`` in a
source checkout). Arguments are checked before any rendering starts; a failed build leaves the
old knowledge base (if any) untouched and nothing half-written.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from reimagen.core import paths, registry
from reimagen.kb.builder import build_from_source
from reimagen.kb.knowledge_base import KnowledgeBase
from reimagen.kb.records import ARTISTS, MAX_RESOLUTION, MIN_RESOLUTION, KnowledgeBaseError


def add_parser(subparsers):
    parser = subparsers.add_parser("kb", help="build or describe a knowledge base")
    commands = parser.add_subparsers(dest="kb_command", required=True, metavar="ACTION")

    build = commands.add_parser("build", help="build a knowledge base from a registered source")
    build.add_argument(
        "--source",
        default="emoji",
        help="registered source name: emoji (default), folder, or a plugin's",
    )
    build.add_argument("--folder", type=Path, help="input folder (source 'folder': captions.jsonl)")
    build.add_argument("--out", type=Path, help="output folder (default: $REIMAGEN_HOME/kb/<name>)")
    build.add_argument(
        "--resolution",
        type=int,
        default=64,
        help=f"side of the packed images, {MIN_RESOLUTION}..{MAX_RESOLUTION}",
    )
    build.add_argument("--artists", help=f"emoji: comma-separated subset of {','.join(ARTISTS)}")
    build.add_argument("--limit", type=int, help="emoji: only this many entities (a quick look)")
    build.add_argument("--processes", type=int, default=2, help="emoji: rendering processes")
    build.add_argument("--quiet", action="store_true", help="no progress bar")
    build.set_defaults(func=run_build)

    info = commands.add_parser("info", help="counts, coverage and fingerprint of a knowledge base")
    info.add_argument("folder", nargs="?", type=Path, help="KB folder (default: the emoji KB)")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.add_argument("--no-verify", action="store_true", help="skip the file hash check")
    info.set_defaults(func=run_info)


def _user_error(message: str):
    from reimagen.cli.main import UserError

    return UserError(message)


def source_options(args) -> dict:
    """Command-line flags -> the source factory's options; flags that do not apply -> error."""
    if args.source == "folder":
        if args.folder is None:
            raise _user_error("--folder is required with --source folder")
        stray = [
            flag
            for flag, value in (("--artists", args.artists), ("--limit", args.limit))
            if value is not None
        ]
        if stray:
            raise _user_error(f"{', '.join(stray)} only apply to --source emoji")
        return {"folder": args.folder}
    if args.folder is not None and args.source == "emoji":
        raise _user_error("--folder only applies to --source folder")
    options: dict = {}
    if args.source == "emoji":
        options["processes"] = args.processes
        if args.artists is not None:
            options["artists"] = [a.strip() for a in args.artists.split(",") if a.strip()]
        if args.limit is not None:
            options["limit"] = args.limit
    return options


def default_out(args) -> Path:
    if args.out is not None:
        return args.out
    if args.source == "folder":
        return paths.default_kb_dir(f"folder-{Path(args.folder).resolve().name}")
    return paths.default_kb_dir(args.source)


def run_build(args) -> int:
    if not MIN_RESOLUTION <= args.resolution <= MAX_RESOLUTION:
        raise _user_error(
            f"--resolution must be in [{MIN_RESOLUTION}, {MAX_RESOLUTION}], got {args.resolution}"
        )
    from reimagen.cli.common import check_out_folder
    from reimagen.kb.emoji_source import MAX_PROCESSES

    if not 1 <= args.processes <= MAX_PROCESSES:
        raise _user_error(f"--processes must be in [1, {MAX_PROCESSES}], got {args.processes}")
    factory = registry.get("source", args.source)  # unknown name -> error listing the known
    options = source_options(args)
    out = check_out_folder(default_out(args))
    started = time.perf_counter()
    try:
        source = factory(**options)
        for artist, reason in getattr(source, "skipped", {}).items():
            print(f"note: skipping optional artist {artist}: {reason}")
        info = source.info() if hasattr(source, "info") else {}
        kb = build_from_source(
            source, out, resolution=args.resolution, progress=not args.quiet, info=info
        )
    except KnowledgeBaseError as err:
        raise _user_error(str(err)) from None
    seconds = time.perf_counter() - started
    counts = ", ".join(f"{name} {n:,}" for name, n in kb.source_counts().items())
    print(f"built {len(kb):,} records ({counts}) at {kb.resolution}px in {seconds:.1f} s -> {out}")
    return 0


def run_info(args) -> int:
    folder = args.folder or paths.default_kb_dir("emoji")
    try:
        kb = KnowledgeBase.open(folder, verify=not args.no_verify)
    except KnowledgeBaseError as err:
        raise _user_error(str(err)) from None
    summary = kb.summary()
    if args.json:
        print(json.dumps(summary, indent=1))
        return 0
    print(format_summary(summary))
    return 0


def format_summary(summary: dict) -> str:
    with_target = summary["entities_with_twemoji"]
    other = summary["other_renditions"]
    histogram = ", ".join(f"{k}: {n:,}" for k, n in other.items()) or "-"
    undrawn = len(summary["entities_undrawn"])
    lines = [
        f"knowledge base      {summary['folder']}",
        f"records             {summary['records']:,}",
        *(f"  {name:<17} {n:,}" for name, n in summary["counts"].items()),
        f"entities            {summary['entities']:,} ({summary['entities_drawn']:,} drawn)",
        f"with twemoji        {with_target:,}",
        f">=1 other artist    {summary['fraction_with_other']:.1%} of those",
        f"  other artists per entity -> entities: {histogram}",
        f"resolution          {summary['resolution']}",
        f"fingerprint         {summary['fingerprint']}",
        f"built               {summary['built_at']} in {summary['build_seconds']} s",
        f"disk                {summary['disk_bytes'] / 2**20:.1f} MiB",
    ]
    if undrawn:
        after = next(i for i, line in enumerate(lines) if line.startswith("with twemoji"))
        lines.insert(after + 1, f"drawn by no artist  {undrawn} (left out, listed in kb.json)")
    return "\n".join(lines)
