"""Text (+ retrieved references) -> image: the Re-Imagen generation pipeline (paper Fig. 2).

    prompt ──retriever──▶ K ⟨image, text⟩ neighbours from the knowledge base
       │                         │
       ▼ encoder                 ▼ encoder (captions) + DStack at t=0, cached once (DESIGN §4)
    c_p tokens ──────────▶ denoiser ε(x_t, t | variant) ──sampler + guidance──▶ x̂0

Every piece is looked up by registered name, so a variant is a different set of names.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from reimagen.core import registry
from reimagen.core.augment import noise_augment, resize_bilinear
from reimagen.core.generation import SamplingConfig
from reimagen.core.interfaces import (
    RetrievalResult,
    SamplerNoise,
    TextEncoding,
    sample_generators,
)

DEFAULT_SAMPLING = SamplingConfig()  # frozen, so one shared default is safe


@attrs.frozen
class Generation:
    """What one ``generate`` call produced, on the host."""

    prompts: tuple[str, ...]
    images: np.ndarray  # [B, H, W, 3] uint8
    neighbor_rows: np.ndarray  # [B, K] KB rows (K may be 0)
    neighbor_scores: np.ndarray  # [B, K]
    nfe: int  # network evaluations per sample
    seconds: float
    variants_per_step: tuple[tuple[str, ...], ...]


def to_uint8(images: np.ndarray) -> np.ndarray:
    """[-1, 1] float -> [0, 255] uint8."""
    return np.clip(np.round((np.asarray(images) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def encode_neighbors_text(encoder, kb, rows: np.ndarray) -> TextEncoding:
    """Captions of KB ``rows`` [B, K] -> TextEncoding with tokens [B, K, L, D]."""
    b, k = rows.shape
    flat = encoder.encode([kb.records[int(r)].text for r in rows.reshape(-1)])
    return TextEncoding(
        tokens=flat.tokens.reshape(b, k, *flat.tokens.shape[1:]),
        mask=flat.mask.reshape(b, k, -1),
        pooled=flat.pooled.reshape(b, k, -1),
    )


def make_guidance(sampling: SamplingConfig):
    factory = registry.get("guidance", sampling.guidance)
    return factory(
        w=sampling.w, w_text=sampling.w_text, w_neighbors=sampling.w_neighbors, eta=sampling.eta
    )


def make_thresholding(sampling: SamplingConfig):
    from reimagen.core.thresholding import Thresholding

    return Thresholding(kind=sampling.thresholding, percentile=sampling.percentile)


class Pipeline:
    """A trained network plus the parts around it: knowledge base, retriever, encoder, backend.

    ``retriever`` may be any registered retriever already fitted on (a view of) ``kb``; pass
    ``k=0`` or ``retriever=None`` for the no-retrieval baseline.
    """

    def __init__(
        self, *, model, backend, encoder, kb=None, retriever=None, image_size: int, lowres_size=0
    ):
        self.model = model
        self.backend = backend
        self.encoder = encoder
        self.kb = kb
        self.retriever = retriever
        self.image_size = int(image_size)
        self.lowres_size = int(lowres_size)  # > 0: a super-resolution stage

    @classmethod
    def from_checkpoint(
        cls,
        weights: str | Path,
        *,
        kb=None,
        retriever=None,
        encoder: str | None = None,
        backend: str = "torch",
    ) -> Pipeline:
        """``encoder``: a registered name; default: the one the weights were trained with
        (their metadata, reimagen.core.checkpoint.trained_encoder)."""
        from reimagen.core.checkpoint import trained_encoder

        backend_impl = registry.get("backend", backend)()
        model = backend_impl.load_model(weights)  # refuses a non-safetensors file first
        encoder = encoder or trained_encoder(weights)
        config = backend_impl.model_config(model)
        return cls(
            model=model,
            backend=backend_impl,
            encoder=registry.get("encoder", encoder)(),
            kb=kb,
            retriever=retriever,
            image_size=config.image_size,
            lowres_size=config.lowres_size,
        )

    def retrieve(self, prompts: Sequence[str], k: int) -> RetrievalResult:
        if k == 0 or self.retriever is None:
            empty = np.zeros((len(prompts), 0))
            return RetrievalResult(ids=empty.astype(np.int64), scores=empty.astype(np.float32))
        return self.retriever.search(list(prompts), k)

    def generate(
        self,
        prompts: Sequence[str],
        *,
        k: int = 2,
        sampling: SamplingConfig = DEFAULT_SAMPLING,
        seed: int = 0,
        neighbor_rows: np.ndarray | None = None,
        lowres: np.ndarray | None = None,
        callback: Any = None,
        indices: Sequence[int] | None = None,
    ) -> Generation:
        """Sample one image per prompt. ``neighbor_rows`` [B, K] overrides retrieval;
        ``lowres`` [B, h, w, 3] in [-1, 1] conditions a super-resolution stage.

        ``indices`` [B] (default ``range(B)``): each prompt's global index. All noise of sample
        b (initial, per-step, SR augmentation) is drawn from (seed, indices[b]) alone, so a
        prompt list split into batches with their global indices gives the same images."""
        prompts = tuple(prompts)
        if not prompts or any(not isinstance(p, str) or not p.strip() for p in prompts):
            raise ValueError("prompts must be non-empty strings")
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        indices = _check_indices(indices, len(prompts))
        sampler = registry.get("sampler", sampling.sampler)  # unknown names fail before compute
        guidance = make_guidance(sampling)
        thresholding = make_thresholding(sampling)
        start = time.perf_counter()
        if neighbor_rows is None:
            found = self.retrieve(prompts, k)
            rows, scores = found.ids, found.scores
        else:
            rows = np.asarray(neighbor_rows, dtype=np.int64).reshape(len(prompts), -1)
            scores = np.full(rows.shape, np.nan, dtype=np.float32)
        size = self.image_size
        text = self.encoder.encode(list(prompts))
        if rows.shape[1]:
            nb_images = self.kb.rgb(rows.reshape(-1), size=size).reshape(*rows.shape, size, size, 3)
            nb_text = encode_neighbors_text(self.encoder, self.kb, rows)
        else:
            nb_images = np.zeros((len(prompts), 0, size, size, 3), np.float32)
            nb_text = _empty_neighbor_text(text, len(prompts))
        noise = SamplerNoise.draw_per_sample(seed, indices, (size, size, 3), sampling.steps)
        conditioning = {}
        if self.lowres_size:
            conditioning = self._lowres_conditioning(lowres, sampling.aug_level, seed, indices)
        denoiser = self.backend.make_denoiser(self.model, text, nb_images, nb_text, **conditioning)
        result = sampler(
            denoiser, guidance, noise, steps=sampling.steps, thresholding=thresholding,
            callback=callback,
        )
        images = to_uint8(denoiser.to_numpy(result.x0))
        return Generation(
            prompts=prompts,
            images=images,
            neighbor_rows=rows,
            neighbor_scores=scores,
            nfe=result.nfe,
            seconds=time.perf_counter() - start,
            variants_per_step=result.variants_per_step,
        )


    def _lowres_conditioning(self, lowres, aug_level: float, seed: int, indices) -> dict:
        """Upsample the previous stage's images and corrupt them at the fixed ``aug_level``
        (augmentation noise of row b: stream 1 of (seed, indices[b]), apart from its sampler
        noise)."""
        if lowres is None:
            raise ValueError("lowres images are required by a super-resolution stage")
        lowres = np.asarray(lowres, np.float32)
        if lowres.shape[1:3] != (self.lowres_size, self.lowres_size):
            raise ValueError(
                f"lowres must be {self.lowres_size}x{self.lowres_size}, got "
                f"{lowres.shape[1]}x{lowres.shape[2]}"
            )
        upsampled = resize_bilinear(lowres, self.image_size)
        noise = np.stack([
            rng.standard_normal(upsampled.shape[1:], dtype=np.float32)
            for rng in sample_generators(seed, indices, stream=1)
        ])  # [B, H, W, 3]
        return {"lowres": noise_augment(upsampled, aug_level, noise), "aug_level": aug_level}


def _check_indices(indices, batch: int) -> tuple[int, ...]:
    """Global sample indices [B]: default range(B); distinct integers >= 0."""
    if indices is None:
        return tuple(range(batch))
    indices = tuple(indices)
    if len(indices) != batch:
        raise ValueError(f"indices must give one index per prompt ({batch}), got {len(indices)}")
    if len({int(i) for i in indices}) != batch:
        raise ValueError(f"indices must be distinct, got {list(indices)}")
    return indices


def _empty_neighbor_text(text: TextEncoding, batch: int) -> TextEncoding:
    _, length, dim = text.tokens.shape
    return TextEncoding(
        tokens=np.zeros((batch, 0, length, dim), np.float32),
        mask=np.zeros((batch, 0, length), bool),
        pooled=np.zeros((batch, 0, dim), np.float32),
    )
