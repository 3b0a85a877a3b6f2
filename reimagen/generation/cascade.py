"""A cascade of stages, base → SR → SR (paper §3.1, docs/design.md §7).

Each stage is a :class:`~reimagen.generation.pipeline.Pipeline` (its own network, retriever view, encoder,
backend) with its own sampling settings and K. The base stage retrieves the neighbours once; the
super-resolution stages reuse the same KB rows at their own resolution and are conditioned on
the previous stage's output (upsampled and noise-augmented at a fixed level, Imagen §2.5).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import attrs
import numpy as np

from reimagen.core.images import from_uint8
from reimagen.core.interfaces import Cascade as CascadeInterface
from reimagen.diffusion.sampling_config import SamplingConfig
from reimagen.generation.pipeline import Generation, Pipeline


class CascadeError(ValueError):
    """Stages that do not fit together."""


@attrs.frozen
class Stage:
    name: str
    pipeline: Pipeline
    sampling: SamplingConfig = attrs.Factory(SamplingConfig)
    k: int = 2


class Cascade(CascadeInterface):
    def __init__(self, stages: Sequence[Stage]):
        self.stages = tuple(stages)
        check_stages(self.stages)

    @classmethod
    def from_pretrained(cls, folder=None, **options) -> Cascade:
        """Exported stage files ``<folder>/<stage>.safetensors`` (default: the shipped ones) as
        a cascade, each stage with its tuned sampling; options as reimagen.generation.pretrained.
        from_pretrained (stages, kb, retriever, setting, k, encoder, backend, sampling)."""
        from reimagen.generation.pretrained import from_pretrained

        return from_pretrained(folder, **options)

    @property
    def kb(self):
        """The knowledge base the first stage retrieves from (None without retrieval)."""
        return self.stages[0].pipeline.kb

    def generate(
        self,
        prompts: Sequence[str],
        *,
        seed: int = 0,
        neighbor_rows: np.ndarray | None = None,
        callback=None,
        indices: Sequence[int] | None = None,
    ) -> list[Generation]:
        """Every stage's Generation, lowest resolution first. ``indices`` [B]: the prompts'
        global indices (default range(B)); each sample's noise depends on (seed, its index)
        only (Pipeline.generate)."""
        results: list[Generation] = []
        for index, stage in enumerate(self.stages):
            previous = results[-1] if results else None
            rows = neighbor_rows if previous is None else previous.neighbor_rows[:, : stage.k]
            lowres = None if previous is None else from_uint8(previous.images)
            results.append(
                stage.pipeline.generate(
                    prompts,
                    k=stage.k,
                    sampling=stage.sampling,
                    seed=seed + 1000 * index,
                    neighbor_rows=rows,
                    lowres=lowres,
                    callback=callback,
                    indices=indices,
                )
            )
        return results


def check_stages(stages: Sequence[Stage]) -> None:
    """Fail before any compute if a stage's input resolution is not the previous output's."""
    if not stages:
        raise CascadeError("a cascade needs at least one stage")
    if stages[0].pipeline.lowres_size:
        raise CascadeError(
            f"stage {stages[0].name!r} is a super-resolution stage "
            f"({stages[0].pipeline.lowres_size}→{stages[0].pipeline.image_size}) and cannot come first"
        )
    for before, after in itertools.pairwise(stages):
        want, have = after.pipeline.lowres_size, before.pipeline.image_size
        if want != have:
            raise CascadeError(
                f"stage {after.name!r} expects {want}x{want} input but stage {before.name!r} "
                f"outputs {have}x{have}"
            )
        if after.k > before.k:
            raise CascadeError(
                f"stage {after.name!r} uses k={after.k} neighbours but stage {before.name!r} "
                f"retrieved only k={before.k}"
            )
