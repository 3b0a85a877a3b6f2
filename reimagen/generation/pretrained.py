"""The front door: the shipped cascade, or any trained stage, in one call (issue #17).

    import reimagen
    cascade = reimagen.load("default")   # shipped 32px base + 64px SR, tuned sampling, emoji KB
    base, sr = cascade.generate(["a large beaver in the centre on a yellow background"], seed=0)

:func:`load` names a shipped cascade; :func:`from_pretrained` (``Cascade.from_pretrained``) takes
any folder of exported stage files (``<stage>.safetensors``, as ``reimagen train --export`` writes
them); ``Pipeline.from_pretrained`` one stage from a weights file, run folder or step folder.
``reimagen generate`` and ``reimagen demo`` assemble their cascades here too, so the Python
example and the command line draw the same images for the same seed (tests/test_readme.py).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from reimagen.core import registry
from reimagen.core.checks import check_k
from reimagen.diffusion.sampling_config import SamplingConfig

# Shipped cascades by name: their stages (weights/<stage>.safetensors), lowest resolution first.
PRETRAINED = {"default": ("base", "sr"), "base": ("base",), "baseline": ("baseline", "sr")}
CASCADES = ("base", "baseline", "base,sr", "baseline,sr")  # the shipped stages that fit together
SETTINGS = ("same-style", "cross-style")  # which artists the retriever indexes (docs/design.md §8)
ENCODER_RETRIEVERS = ("dense", "hybrid")  # retrievers that take a text encoder (default minilm)
DEFAULT = "default"  # retriever="default": reimagen.generation.shipped.DEFAULT_RETRIEVER, read at call time


def load(
    name: str = "default",
    *,
    stages: Sequence[str] | None = None,
    kb: Any = None,
    retriever: Any = DEFAULT,
    setting: str = "same-style",
    k: int = 2,
    encoder: str | None = None,
    backend: str = "torch",
    sampling: SamplingConfig | None = None,
):
    """The shipped cascade ``name`` (one of PRETRAINED: "default" is base + SR) with each
    stage's tuned sampling (reimagen.generation.shipped.DEFAULT_SAMPLING). ``stages``: other
    shipped stages instead of ``name``'s (one of CASCADES, e.g. ("baseline",), as ``reimagen
    generate --stages`` asks); ``sampling``: the first stage's settings instead of its tuned
    ones; the other arguments as :func:`from_pretrained`. ``reimagen generate`` and ``reimagen
    demo`` (:func:`load_comparison`) load their cascades here."""
    if not isinstance(name, str) or name not in PRETRAINED:
        raise ValueError(f"name must be one of {', '.join(PRETRAINED)}; got {name!r}")
    return from_pretrained(
        None,
        stages=PRETRAINED[name] if stages is None else stages,
        kb=kb,
        retriever=retriever,
        setting=setting,
        k=k,
        encoder=encoder,
        backend=backend,
        sampling=sampling,
    )


class Comparison(NamedTuple):
    """The shipped cascades that draw the same prompts with and without retrieval (paper
    Fig. 4/6, ``reimagen demo``)."""

    retrieving: Any  # Cascade: the Re-Imagen base (+ SR when shipped), K neighbours
    plain: Any  # Cascade: the no-retrieval baseline (+ SR) when shipped, else the base at K=0
    plain_label: str  # "no retrieval (baseline)" | "no retrieval (K=0)"
    with_sr: bool  # the SR stage is shipped: both cascades end in it


def load_comparison(
    *,
    kb: Any = None,
    k: int = 2,
    setting: str = "same-style",
    sampling: SamplingConfig | None = None,
) -> Comparison:
    """:class:`Comparison` of the shipped stages found (reimagen.generation.shipped.
    available_stages); ``sampling``: the base stage's (default: its tuned ones). Without a
    shipped baseline, the base network itself samples with K=0 and joint guidance (Eq. 5:
    interleaved guidance, Eq. 6, needs neighbours)."""
    from reimagen.generation.shipped import DEFAULT_SAMPLING, available_stages

    found = available_stages()
    if "base" not in found:
        raise FileNotFoundError(
            "no shipped base weights (reimagen/assets/weights/base."
            "safetensors); train them with `reimagen train --stage base "
            "--export`"
        )
    sr = ("sr",) if "sr" in found else ()
    sampling = DEFAULT_SAMPLING["base"] if sampling is None else sampling
    retrieving = load(stages=("base", *sr), kb=kb, k=k, setting=setting, sampling=sampling)
    if "baseline" in found:
        plain = load(stages=("baseline", *sr), kb=kb, k=0, setting=setting)
        return Comparison(retrieving, plain, "no retrieval (baseline)", bool(sr))
    plain = load(
        stages=("base", *sr),
        kb=kb,
        k=0,
        setting=setting,
        sampling=sampling.replace(guidance="joint"),
    )
    return Comparison(retrieving, plain, "no retrieval (K=0)", bool(sr))


def from_pretrained(
    folder: str | Path | None = None,
    *,
    stages: Sequence[str] = ("base", "sr"),
    kb: Any = None,
    retriever: Any = DEFAULT,
    setting: str = "same-style",
    k: int = 2,
    encoder: str | None = None,
    backend: str = "torch",
    sampling: SamplingConfig | None = None,
):
    """A Cascade of the exported ``stages`` in ``folder`` (default: the shipped weights).

    ``kb``: a KnowledgeBase or its folder (default: the emoji KB, when ``k`` > 0).
    ``retriever``: a registered name (its index over the ``setting`` view, saved beside the KB
    and built on first use), a fitted retriever, or None; "default" is the shipped default.
    ``k``: neighbours the first stage retrieves (a "baseline" first stage retrieves none); the
    SR stage reuses min(k, SR_NEIGHBORS) of them. ``sampling``: the first stage's settings
    (default: its tuned ones); later stages keep their tuned ones. Everything is checked
    (names, ranges, the files' headers) before a network is loaded; the networks are loaded
    before an index is built."""
    from reimagen.generation.shipped import load_stage

    stages = check_stages(stages)
    k = _check_first_k(stages, k)
    retriever = _resolve_default(retriever)
    check_options(retriever, setting, k, encoder, backend, sampling)
    check_fit(stages, folder)
    kb = open_kb(kb) if kb is not None or k else None
    pipelines = [
        load_stage(name, kb=kb, encoder=encoder, backend=backend, folder=folder) for name in stages
    ]
    if isinstance(retriever, str):
        retriever = open_retriever(kb, retriever, setting, encoder) if k else None
    for pipeline in pipelines:
        pipeline.retriever = retriever
    if sampling is not None:
        pipelines[0].sampling = sampling
    return _cascade(stages, pipelines, k)


def _check_first_k(stages: tuple[str, ...], k: int) -> int:
    """Neighbours the first stage retrieves: ``k`` checked, or 0 for a "baseline" first stage."""
    from reimagen.generation.shipped import MAX_NEIGHBORS, MAX_NEIGHBORS_WHY

    return 0 if stages[0] == "baseline" else check_k(k, high=MAX_NEIGHBORS, why=MAX_NEIGHBORS_WHY)


def _resolve_default(retriever: Any) -> Any:
    """retriever="default": the shipped default retriever's name; anything else as given."""
    from reimagen.generation.shipped import DEFAULT_RETRIEVER

    return DEFAULT_RETRIEVER if isinstance(retriever, str) and retriever == DEFAULT else retriever


def _cascade(stages: tuple[str, ...], pipelines: list, k: int):
    """The Cascade of the loaded stages, each with its pipeline's sampling: the first retrieves
    ``k`` neighbours, a later (SR) stage reuses min(k, SR_NEIGHBORS) of them."""
    from reimagen.generation.cascade import Cascade, Stage
    from reimagen.generation.shipped import SR_NEIGHBORS

    return Cascade(
        [
            Stage(name, pipeline, pipeline.sampling, k=k if index == 0 else min(k, SR_NEIGHBORS))
            for index, (name, pipeline) in enumerate(zip(stages, pipelines, strict=True))
        ]
    )


def check_stages(stages: Sequence[str]) -> tuple[str, ...]:
    """Shipped stage names that form a cascade (one of CASCADES)."""
    from reimagen.generation.shipped import STAGES

    stages = (stages,) if isinstance(stages, str) else tuple(stages)
    bad = [s for s in stages if s not in STAGES]
    if bad or not stages:
        raise ValueError(f"stages: unknown stage(s) {bad}; allowed: {', '.join(STAGES)}")
    if ",".join(stages) not in CASCADES:  # e.g. sr first, base twice, base then baseline
        raise ValueError(
            f"stages: {','.join(stages)} is not a cascade; allowed: {' | '.join(CASCADES)}"
        )
    return stages


def check_options(
    retriever: Any,
    setting: str,
    k: int,
    encoder: str | None,
    backend: str,
    sampling: SamplingConfig | None,
) -> None:
    """Registered names and values, before anything is read from disk."""
    registry.get("backend", backend)
    if encoder is not None:
        registry.get("encoder", encoder)
    if setting not in SETTINGS:
        raise ValueError(f"setting must be one of {', '.join(SETTINGS)}; got {setting!r}")
    if isinstance(retriever, str):
        registry.get("retriever", retriever)
    if k and retriever in (None, "none"):
        raise ValueError(
            f"retriever {retriever!r} retrieves no neighbours; use k=0, or a retriever for k={k}"
        )
    if sampling is not None and not isinstance(sampling, SamplingConfig):
        raise TypeError(f"sampling must be a SamplingConfig, got {type(sampling).__name__}")


def check_fit(stages: Sequence[str], folder: str | Path | None = None) -> dict:
    """{stage: UNetConfig} from the files' headers (no tensors read), after checking each file
    fits its stage and each stage's input is the previous stage's output."""
    from reimagen.generation.cascade import CascadeError
    from reimagen.generation.shipped import stage_config, weights_path

    configs = {name: stage_config(name, folder) for name in stages}
    for before, after in itertools.pairwise(stages):
        want, have = configs[after].lowres_size, configs[before].image_size
        if want != have:
            raise CascadeError(
                f"stages: {weights_path(after, folder)} upsamples {want}px "
                f"images but stage {before} makes {have}px ones"
            )
    return configs


def open_kb(kb: Any = None, verify: bool = True):
    """A KnowledgeBase as is, or the one in folder ``kb`` (default: the emoji KB)."""
    from reimagen.core.paths import default_kb_dir
    from reimagen.kb.knowledge_base import KnowledgeBase

    if isinstance(kb, KnowledgeBase):
        return kb
    if kb is not None and not isinstance(kb, (str, os.PathLike)):
        raise TypeError(
            f"kb must be a KnowledgeBase or its folder (str or os.PathLike), got "
            f"{type(kb).__name__}"
        )
    folder = Path(kb) if kb is not None else default_kb_dir()
    if not (folder / "kb.json").is_file():
        raise FileNotFoundError(
            f"kb: no knowledge base at {folder}; build it with `reimagen kb build`"
        )
    return KnowledgeBase.open(folder, verify=verify)


def open_retriever(kb, name: str, setting: str, encoder: str | None = None):
    """The registered retriever ``name`` over the ``setting`` view of ``kb``: its saved index
    beside the KB, built on first use (None for "none")."""
    from reimagen.kb.splits import view_rows
    from reimagen.retrievers.index import index_folder, index_name, open_or_build

    registry.get("retriever", name)
    if name == "none":
        return None
    if kb is None:
        raise ValueError(f"retriever {name!r} needs a knowledge base; pass kb")
    rows = view_rows(kb, setting)
    options: dict[str, Any] = {"encoder": encoder or "minilm"} if name in ENCODER_RETRIEVERS else {}
    folder = index_folder(
        kb.folder, index_name(name, encoder=options.get("encoder"), view=(setting,))
    )
    found, _, _ = open_or_build(kb, folder, name, rows=rows, **options)
    return found


def tuned_sampling(path: str | Path) -> SamplingConfig:
    """The tuned SamplingConfig (reimagen.generation.shipped.DEFAULT_SAMPLING) of the stage a weights file
    (or run / step folder) holds: the stage an exported file names in its header, else by
    network kind, the SR stage's for a super-resolution network and the base's otherwise."""
    from reimagen.generation.shipped import DEFAULT_SAMPLING, STAGE_KEY, read_config
    from reimagen.training.checkpoint import resolve_weights

    config, metadata = read_config(resolve_weights(path))
    stage = metadata.get(STAGE_KEY) or ("sr" if config.is_super_resolution else "base")
    return DEFAULT_SAMPLING.get(stage, DEFAULT_SAMPLING["base"])
