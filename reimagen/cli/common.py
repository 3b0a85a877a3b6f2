"""Argument groups and loaders shared by the generate / demo / bench / ablate commands."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from reimagen.cli.main import UserError
from reimagen.core import registry
from reimagen.core.paths import default_kb_dir
from reimagen.diffusion.sampling_config import SamplingConfig
from reimagen.generation.pretrained import ENCODER_RETRIEVERS, SETTINGS  # noqa: F401  (re-exported)
from reimagen.generation.shipped import DEFAULT_RETRIEVER


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("sampling (defaults: the shipped base stage's)")
    group.add_argument("--sampler", help="ddpm | ddim | dpmpp2m (registered sampler name)")
    group.add_argument("--steps", type=int, help="sampling steps")
    group.add_argument("--guidance", help="none | joint | weighted | interleaved")
    group.add_argument("--w", type=float, help="joint guidance weight (Eq. 5)")
    group.add_argument("--w-text", type=float, help="text guidance weight w_p (Eq. 6)")
    group.add_argument("--w-neighbors", type=float, help="neighbour guidance weight w_n (Eq. 6)")
    group.add_argument("--eta", type=float, help="interleave ratio η ∈ [0, 1]")
    group.add_argument("--threshold", choices=("none", "static", "dynamic"), help="x̂0 thresholding")


def sampling_from_args(args, base: SamplingConfig) -> SamplingConfig:
    """Overlay the given command-line values on ``base``; validate names and ranges now."""
    changes = {
        "sampler": args.sampler,
        "steps": args.steps,
        "guidance": args.guidance,
        "w": args.w,
        "w_text": args.w_text,
        "w_neighbors": args.w_neighbors,
        "eta": args.eta,
        "thresholding": args.threshold,
    }
    sampling = base.replace(**{k: v for k, v in changes.items() if v is not None})
    registry.get("sampler", sampling.sampler)
    registry.get("guidance", sampling.guidance)
    return sampling


def add_kb_arguments(parser: argparse.ArgumentParser) -> None:
    """--kb, --retriever, --encoder and the --setting of one generation."""
    add_retrieval_arguments(parser)
    parser.add_argument(
        "--setting",
        default="same-style",
        choices=SETTINGS,
        help="which artists the retriever indexes (docs/design.md §8)",
    )


def add_retrieval_arguments(parser: argparse.ArgumentParser) -> None:
    """--kb, --retriever, --encoder: what is retrieved from, how, and how texts are encoded."""
    parser.add_argument(
        "--kb",
        type=Path,
        default=None,
        help="knowledge-base folder (default: the built-in emoji KB)",
    )
    parser.add_argument(
        "--retriever",
        default=DEFAULT_RETRIEVER,
        help="registered retriever name (bm25: the one the weights were trained with)",
    )
    parser.add_argument(
        "--encoder",
        default=None,
        help="registered text encoder name (default: the one the weights were trained with; the dense retriever: minilm)",
    )


def open_kb(path: Path | None, verify: bool = True):
    from reimagen.kb.knowledge_base import KnowledgeBase

    folder = Path(path) if path else default_kb_dir()
    if not (folder / "kb.json").is_file():
        raise UserError(f"--kb: no knowledge base at {folder}; build it with `reimagen kb build`")
    return KnowledgeBase.open(folder, verify=verify)


def open_retriever(kb, name: str, setting: str, encoder: str | None = None):
    """A saved index for (retriever, view) beside the KB, built on first use."""
    from reimagen.generation import pretrained

    return pretrained.open_retriever(kb, name, setting, encoder)


def check_out_path(path: Path, siblings: tuple[str, ...] = ()) -> Path:
    """A .png output whose folder can be created; ``siblings``: the suffixes of the other
    files written beside it (x.sheet.png ...), which must not be folders either."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise UserError(f"--out must be a .png path, got {path}")
    for target in (path, *(path.with_suffix(s) for s in siblings)):
        check_out_file(target, "--out")
    return path  # its folder is created only when the first file is written (atomically)


def check_out_file(path: Path, option: str) -> Path:
    """An output file: not an existing folder, its folder creatable (checked before any work,
    so a long run does not fail at its last step)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{option}: {path} is a folder; allowed: a file path")
    _check_creatable(path.parent, option)
    return path


def check_out_folder(path: Path, option: str = "--out") -> Path:
    """An output folder: an existing folder or one that can be created."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{option}: {path} is a file; allowed: a folder (existing or new)")
    _check_creatable(path, option)
    return path


def _check_creatable(folder: Path, option: str) -> None:
    """The nearest existing ancestor of ``folder`` is a folder this process may write in."""
    for ancestor in (folder, *folder.parents):
        if ancestor.is_dir():
            if not os.access(ancestor, os.W_OK | os.X_OK):
                raise UserError(f"{option}: cannot write in {ancestor} (permission denied)")
            return
        if ancestor.exists():  # a file where a folder has to be
            raise UserError(
                f"{option}: {ancestor} is a file, not a folder; allowed: a path "
                "whose parents are folders (existing or new)"
            )


MAX_SEED = 2**63 - 1  # TrainConfig.seed's range; numpy seeds any integer >= 0


def check_seed(seed: int, option: str = "--seed") -> int:
    if not 0 <= seed <= MAX_SEED:
        raise UserError(f"{option} must be in [0, 2**63 - 1], got {seed}")
    return seed


def check_k_option(k: int, option: str = "--k", low: int = 0) -> int:
    """A neighbours option for the shipped networks: reimagen.core.checks.check_k over
    [low, MAX_NEIGHBORS], its message reported as a UserError."""
    from reimagen.core.checks import check_k
    from reimagen.generation.shipped import MAX_NEIGHBORS, MAX_NEIGHBORS_WHY

    try:
        return check_k(k, option, low, MAX_NEIGHBORS, why=MAX_NEIGHBORS_WHY)
    except ValueError as err:
        raise UserError(str(err)) from None


def check_prompt_args(prompts: list[str]) -> list[str]:
    """PROMPT arguments: non-blank, at most MAX_PROMPT_CHARS characters each."""
    from reimagen.generation.pipeline import MAX_PROMPT_CHARS

    for i, prompt in enumerate(prompts, 1):
        if not prompt.strip():
            raise UserError(f"PROMPT {i} is empty; allowed: a non-blank text")
        if len(prompt) > MAX_PROMPT_CHARS:
            raise UserError(
                f"PROMPT {i} has {len(prompt):,} characters; allowed: at most {MAX_PROMPT_CHARS:,}"
            )
    return prompts


def check_kb_fits(kb, option: str, *, image_size: int, k: int, setting: str) -> None:
    """The knowledge base can feed a network of ``image_size`` with ``k`` neighbours from the
    ``setting`` view (after the KB is opened, before any network is loaded)."""
    from reimagen.kb.splits import view_rows

    if kb.resolution < image_size:
        raise UserError(
            f"{option}: {kb.folder} stores {kb.resolution}px images; the network "
            f"needs neighbours at {image_size}px (build it with --resolution "
            f"{image_size} or more)"
        )
    if k:
        rows = len(view_rows(kb, setting))
        if k > rows:
            raise UserError(
                f"--k {k} is more than the {rows} records the {setting} view of "
                f"{kb.folder} has; allowed: at most {rows}"
            )


MAX_THREADS = 256  # a typo guard: torch would start that many OpenMP threads


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads (0: all cores; 1 is faster on a busy machine)",
    )


def check_threads(threads: int) -> int:
    if not 0 <= threads <= MAX_THREADS:
        raise UserError(f"--threads must be in [0, {MAX_THREADS}] (0: all cores), got {threads}")
    return threads


def apply_threads(threads: int) -> None:
    """Validate ``--threads`` and apply it to torch (before any network is built)."""
    if check_threads(threads):
        import torch

        torch.set_num_threads(threads)
