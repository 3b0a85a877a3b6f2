"""Argument groups and loaders shared by the generate / demo / bench / ablate commands."""

from __future__ import annotations

import argparse
from pathlib import Path

from reimagen.cli.main import UserError
from reimagen.core import registry
from reimagen.core.generation import SamplingConfig
from reimagen.core.paths import default_kb_dir
from reimagen.weights import DEFAULT_RETRIEVER

SETTINGS = ("same-style", "cross-style")
ENCODER_RETRIEVERS = ("dense", "hybrid")  # retrievers that take a text encoder (default minilm)


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("sampling (defaults: the shipped base stage's)")
    group.add_argument("--sampler", help="ddpm | ddim | dpmpp2m (registered sampler name)")
    group.add_argument("--steps", type=int, help="sampling steps")
    group.add_argument("--guidance", help="none | joint | weighted | interleaved")
    group.add_argument("--w", type=float, help="joint guidance weight (Eq. 5)")
    group.add_argument("--w-text", type=float, help="text guidance weight w_p (Eq. 6)")
    group.add_argument("--w-neighbors", type=float, help="neighbour guidance weight w_n (Eq. 6)")
    group.add_argument("--eta", type=float, help="interleave ratio η ∈ [0, 1]")
    group.add_argument("--threshold", choices=("none", "static", "dynamic"),
                       help="x̂0 thresholding")


def sampling_from_args(args, base: SamplingConfig) -> SamplingConfig:
    """Overlay the given command-line values on ``base``; validate names and ranges now."""
    changes = {
        "sampler": args.sampler, "steps": args.steps, "guidance": args.guidance, "w": args.w,
        "w_text": args.w_text, "w_neighbors": args.w_neighbors, "eta": args.eta,
        "thresholding": args.threshold,
    }
    sampling = base.replace(**{k: v for k, v in changes.items() if v is not None})
    registry.get("sampler", sampling.sampler)
    registry.get("guidance", sampling.guidance)
    return sampling


def add_kb_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kb", type=Path, default=None,
                        help="knowledge-base folder (default: the built-in emoji KB)")
    parser.add_argument("--retriever", default=DEFAULT_RETRIEVER,
                        help="registered retriever name (bm25: the one the weights were trained with)")
    parser.add_argument("--encoder", default=None,
                        help="registered text encoder name (default: the one the weights were trained with; the dense retriever: minilm)")
    parser.add_argument("--setting", default="same-style", choices=SETTINGS,
                        help="which artists the retriever indexes (DESIGN §8)")


def open_kb(path: Path | None, verify: bool = True):
    from reimagen.core.knowledge_base import KnowledgeBase

    folder = Path(path) if path else default_kb_dir()
    if not (folder / "kb.json").is_file():
        raise UserError(f"--kb: no knowledge base at {folder}; build it with `reimagen kb build`")
    return KnowledgeBase.open(folder, verify=verify)


def open_retriever(kb, name: str, setting: str, encoder: str | None = None):
    """A saved index for (retriever, view) beside the KB, built on first use."""
    from reimagen.data.splits import view_rows
    from reimagen.retrievers.index import index_folder, index_name, open_or_build

    registry.get("retriever", name)
    if name == "none":
        return None
    rows = view_rows(kb, setting)
    options = {"encoder": encoder or "minilm"} if name in ENCODER_RETRIEVERS else {}
    folder = index_folder(kb.folder, index_name(name, encoder=options.get("encoder"),
                                                view=(setting,)))
    retriever, _, _ = open_or_build(kb, folder, name, rows=rows, **options)
    return retriever


def check_out_path(path: Path) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise UserError(f"--out must be a .png path, got {path}")
    return path  # its folder is created only when the first file is written (atomically)


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (0: all cores; 1 is faster on a busy machine)")


def apply_threads(threads: int) -> None:
    """Validate ``--threads`` and apply it to torch (before any network is built)."""
    if threads < 0:
        raise UserError(f"--threads must be >= 0, got {threads}")
    if threads:
        import torch

        torch.set_num_threads(threads)
