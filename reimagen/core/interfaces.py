"""Abstract interfaces of the components (docs/design.md §1–§7). Framework-free.

Each interface is an ``abc.ABC`` whose required methods are ``@abc.abstractmethod``: a subclass
that misses one cannot be instantiated (TypeError naming it). The backends' denoisers and the
cascade subclass their interface directly; the built-in retrievers, encoders and guidance
strategies go through one shared base (retrievers.base.ViewRetriever, encoders.base.
CachingEncoder, diffusion.guidance._Strategy). Samplers and step callbacks are plain functions,
so :class:`Sampler` and :class:`StepCallback` are ``typing.Protocol`` signatures (checked by
type checkers, not at run time).

Array conventions used everywhere on the host:
  images   float32 in [-1, 1], NHWC: [B, H, W, C] with C = UNetConfig.in_channels (3, RGB, in
           every preset); neighbours [B, K, H, W, C]. What the pipeline and the cascade hand
           back to a user is uint8 in [0, 255], [B, H, W, 3] (reimagen.generation.pipeline.
           Generation.images);
  text     TextEncoding(tokens [B, L, D] float32, mask [B, L] bool, pooled [B, D] float32);
  time     t ∈ [0, 1] (t=0 clean, t=1 pure noise), float per batch element: [B].
Backends convert to their own layout (torch NCHW channels_last, JAX NHWC) at the boundary.

Condition variants (docs/design.md §5) name which conditions one ε prediction sees:
  full = (c_p, c_n), text = c_p only, neighbors = c_n only, none = neither.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any, Protocol

import attrs
import numpy as np

VARIANTS = ("full", "text", "neighbors", "none")
# variant -> (use_text, use_neighbors)
VARIANT_MASKS = {
    "full": (True, True),
    "text": (True, False),
    "neighbors": (False, True),
    "none": (False, False),
}


def variant_masks(variants: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(use_text [V] bool, use_neighbors [V] bool) for a tuple of variant names."""
    unknown = [v for v in variants if v not in VARIANT_MASKS]
    if unknown:
        raise ValueError(f"unknown condition variant(s) {unknown}; allowed: {', '.join(VARIANTS)}")
    pairs = np.array([VARIANT_MASKS[v] for v in variants], dtype=bool).reshape(len(variants), 2)
    return pairs[:, 0], pairs[:, 1]


@attrs.frozen
class TextEncoding:
    """Encoded texts: per-token states, a padding mask (True = real token) and a pooled vector."""

    # Any: numpy on the host, a backend's tensors where a backend gathers the encodings on its
    # device (reimagen/backends/torch/scene_composer.py)
    tokens: Any  # [B, L, D] float32
    mask: Any  # [B, L] bool
    pooled: Any  # [B, D] float32

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def take(self, index) -> TextEncoding:
        return TextEncoding(self.tokens[index], self.mask[index], self.pooled[index])


class Encoder(abc.ABC):
    """A frozen text encoder: B texts -> TextEncoding with a fixed length L = ``max_length``
    (tokens [B, L, D] float32, mask [B, L] bool, pooled [B, D] float32, D = ``dim``)."""

    name: str
    dim: int  # D
    max_length: int  # L

    @abc.abstractmethod
    def encode(self, texts: Sequence[str]) -> TextEncoding:
        """Encode B texts. Deterministic; empty strings are allowed (all-False mask but [CLS])."""


@attrs.frozen
class RetrievalResult:
    """Top-k neighbours per query, best first."""

    ids: np.ndarray  # [Q, k] int64 knowledge-base row indices
    scores: np.ndarray  # [Q, k] float32, non-increasing along k


class Retriever(abc.ABC):
    """Text query -> top-k rows of a knowledge base (docs/design.md §6)."""

    name: str

    @abc.abstractmethod
    def fit(self, kb: Any, rows: Sequence[int] | None = None) -> Retriever:
        """Index the knowledge base ``kb`` (only ``rows`` if given: a view). Returns self."""

    @abc.abstractmethod
    def search(
        self, queries: Sequence[str], k: int, exclude: Sequence[Sequence[int]] | None = None
    ) -> RetrievalResult:
        """Top-k KB rows per query, scores sorted descending; rows in ``exclude[q]`` never appear.
        k larger than the indexed rows -> ValueError naming both numbers."""

    @abc.abstractmethod
    def save(self, folder) -> object:
        """Write the index beside the KB, with the KB fingerprint it was built from (the
        built-ins return the folder written; others may return None)."""

    @classmethod
    @abc.abstractmethod
    def load(cls, folder, kb: Any) -> Retriever:
        """Load a saved index; a fingerprint that does not match ``kb`` raises at load time."""


class Denoiser(abc.ABC):
    """The network bound to its conditions for one batch of B samples: ε(x_t, t | variant).

    Built by a backend (:meth:`reimagen.core.backend.ModelBackend.make_denoiser`) as
    ``cls(model, text, neighbor_images, neighbor_text, *, dtype, lowres, aug_level)``: the
    prompts' TextEncoding [B, L, D], the neighbours [B, K, H, W, C] float32 in [-1, 1] and
    their captions' TextEncoding [B, K, L, D], and for a super-resolution stage the upsampled
    low-res image [B, H, W, C]. Neighbours go through the DStack once, at t=0, and are cached
    (docs/design.md §4). One call evaluates every requested variant in ONE batched network pass of
    V·B rows.
    """

    calls: int  # batched network calls so far
    rows: int  # network rows evaluated so far (sum of V·B over calls)

    @abc.abstractmethod
    def __call__(self, x, t: float, variants: Sequence[str]):
        """x [B, H, W, C] backend array, t ∈ [0, 1] a Python float -> ε [V, B, H, W, C]
        float32 backend array, in ``variants`` order (V = len(variants))."""

    @abc.abstractmethod
    def asarray(self, array: np.ndarray):
        """Host numpy -> this backend's array (same dtype, on its device)."""

    @abc.abstractmethod
    def to_numpy(self, array) -> np.ndarray:
        """This backend's array -> host numpy."""


class GuidanceStrategy(abc.ABC):
    """Which condition variants a step needs, and how their ε predictions combine (docs/design.md §5).

    ``variants(draw)`` gets the step's host-drawn uniform number R ∈ [0, 1) (used by interleaved
    guidance; ignored by the others). ``combine`` is written once against operators that numpy,
    torch and jax arrays share.
    """

    name: str

    @abc.abstractmethod
    def variants(self, draw: float) -> tuple[str, ...]:
        """The distinct variant names (of VARIANTS) the step with draw R needs."""

    @abc.abstractmethod
    def combine(self, eps: dict[str, Any], draw: float):
        """eps: variant -> ε [B, H, W, C] backend array (the ones ``variants(draw)`` asked
        for) -> the guided ε̂ [B, H, W, C], same array type."""


class StepCallback(Protocol):
    """Called after step i's x̂0: (i, t_i, x_t [B, H, W, C], x̂0 [B, H, W, C] backend arrays,
    the variants evaluated)."""

    def __call__(
        self, step: int, t: float, x: Any, x0_hat: Any, variants: tuple[str, ...]
    ) -> None: ...


@attrs.frozen
class SamplerNoise:
    """All randomness of one sampling run, drawn on the host (docs/design.md §3)."""

    x_T: np.ndarray  # [B, H, W, C] initial noise
    step_noise: np.ndarray  # [steps, B, H, W, C] ancestral noise (zeros-free; unused by ddim)
    guidance_draws: np.ndarray  # [steps] U[0,1) numbers for interleaved guidance

    @classmethod
    def draw(cls, rng: np.random.Generator, shape: Sequence[int], steps: int) -> SamplerNoise:
        """Draw in a fixed order from one Generator so every backend sees the same numbers."""
        shape = tuple(int(s) for s in shape)
        x_T = rng.standard_normal(shape, dtype=np.float32)
        step_noise = rng.standard_normal((steps, *shape), dtype=np.float32)
        draws = rng.random(steps)
        return cls(x_T=x_T, step_noise=step_noise, guidance_draws=draws)

    @classmethod
    def draw_per_sample(
        cls, seed: int, indices: Sequence[int], shape: Sequence[int], steps: int
    ) -> SamplerNoise:
        """Per-sample noise: row b (x_T[b] and step_noise[:, b]) is a pure function of
        (seed, indices[b]), so a sample's pixels do not depend on its batch or its position in
        it. ``shape`` is one sample's [H, W, C]. The guidance draws [steps] are shared by the
        batch (one batched call per step) and depend on ``seed`` only."""
        rngs = sample_generators(seed, indices)
        shape = tuple(int(s) for s in shape)
        x_T = np.zeros((len(rngs), *shape), np.float32)  # [B, H, W, C]
        step_noise = np.zeros((steps, len(rngs), *shape), np.float32)  # [steps, B, H, W, C]
        for b, rng in enumerate(rngs):
            x_T[b] = rng.standard_normal(shape, dtype=np.float32)
            step_noise[:, b] = rng.standard_normal((steps, *shape), dtype=np.float32)
        draws = np.random.default_rng(np.random.SeedSequence(_check_seed(seed))).random(steps)
        return cls(x_T=x_T, step_noise=step_noise, guidance_draws=draws)


def sample_generators(
    seed: int, indices: Sequence[int], stream: int = 0
) -> list[np.random.Generator]:
    """One Generator per sample, seeded from (seed, global index): the spawned descendant
    ``SeedSequence(seed, spawn_key=(index, stream))``, independent of every other index's (and
    stream's) numbers. Stream 0: sampler noise; 1: SR noise augmentation."""
    seed = _check_seed(seed)
    out = []
    for index in indices:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
            raise ValueError(f"indices must be integers >= 0, got {index!r}")
        out.append(
            np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(int(index), int(stream))))
        )
    return out


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    return int(seed)


@attrs.frozen
class SampleResult:
    x0: Any  # [B, H, W, C] backend array in [-1, 1]
    calls: int  # batched denoiser calls (one per step)
    nfe: int  # network evaluations per sample (sum over steps of the variants used)
    variants_per_step: tuple[tuple[str, ...], ...]


class Sampler(Protocol):
    """A sampler is a plain function with this signature (see reimagen.diffusion.samplers)."""

    def __call__(
        self,
        denoiser: Denoiser,
        guidance: GuidanceStrategy,
        noise: SamplerNoise,
        *,
        steps: int,
        schedule: Any = None,
        thresholding: Any = None,
        callback: StepCallback | None = None,
    ) -> SampleResult: ...


class Cascade(abc.ABC):
    """An ordered list of stages (base -> SR -> SR, docs/design.md §7); each its own network, sampler,
    steps and guidance. ``generate`` returns every stage's result."""

    @abc.abstractmethod
    def generate(self, *args: Any, **options: Any) -> list[Any]:
        """``generate(prompts, *, seed=0, **options)``, the options each cascade's own (so the
        signature is the gradual ``*args, **options``: an implementation names its keywords).
        One :class:`reimagen.generation.pipeline.Generation` per stage, lowest resolution
        first: its ``images`` are uint8 [B, H_s, W_s, 3] in [0, 255], beside the neighbour
        rows [B, K] and scores [B, K] the stage used, its NFE and seconds."""
