"""Text (+ retrieved references) -> image: the Re-Imagen generation pipeline (paper Fig. 2).

    prompt ──retriever──▶ K ⟨image, text⟩ neighbours from the knowledge base
       │                         │
       ▼ encoder                 ▼ encoder (captions) + DStack at t=0, cached once (docs/design.md §4)
    c_p tokens ──────────▶ denoiser ε(x_t, t | variant) ──sampler + guidance──▶ x̂0

Every piece is looked up by registered name, so a variant is a different set of names.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from reimagen.core import registry
from reimagen.core.checks import check_k
from reimagen.core.images import to_uint8
from reimagen.core.interfaces import (
    RetrievalResult,
    SamplerNoise,
    TextEncoding,
    sample_generators,
)
from reimagen.diffusion.augment import noise_augment, resize_bilinear
from reimagen.diffusion.sampling_config import SamplingConfig

DEFAULT_SAMPLING = SamplingConfig()  # frozen, so one shared default is safe
# Longest prompt generate() takes. The text encoders read at most max_length tokens (32 by
# default, MiniLM's ceiling is 512) and drop the rest, so a longer text is a mistake (a file
# pasted as a prompt), not a description; refusing it also bounds retrieval's work.
MAX_PROMPT_CHARS = 1000


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
    from reimagen.diffusion.thresholding import Thresholding

    return Thresholding(kind=sampling.thresholding, percentile=sampling.percentile)


class Pipeline:
    """A trained network plus the parts around it: knowledge base, retriever, encoder, backend.

    ``retriever`` may be any registered retriever already fitted on (a view of) ``kb``; pass
    ``k=0`` or ``retriever=None`` for the no-retrieval baseline. ``sampling``: what
    :meth:`generate` samples with when not told otherwise (from_pretrained attaches the tuned
    settings of the stage).
    """

    def __init__(
        self,
        *,
        model,
        backend,
        encoder,
        kb=None,
        retriever=None,
        image_size: int,
        lowres_size=0,
        sampling: SamplingConfig = DEFAULT_SAMPLING,
    ):
        self.sampling = sampling
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
        (their metadata, reimagen.training.checkpoint.trained_encoder)."""
        from reimagen.generation.shipped import WeightsError, check_finite
        from reimagen.training.checkpoint import trained_encoder

        if not isinstance(weights, (str, os.PathLike)):
            raise TypeError(
                f"weights must be a path (str or os.PathLike) to a .safetensors file "
                f"or a run folder, got {type(weights).__name__}"
            )
        backend_impl = registry.get("backend", backend)()
        model = backend_impl.load_model(weights)  # refuses a non-safetensors file first
        try:  # NaN/Inf weights would sample all-black images without any error
            check_finite(weights, backend_impl.state_dict(model))
        except NotImplementedError:  # a plugin backend that cannot export its weights
            pass
        encoder = encoder or trained_encoder(weights)
        config = backend_impl.model_config(model)
        text_encoder = registry.get("encoder", encoder)()
        if text_encoder.dim != config.text_dim:  # e.g. REIMAGEN_T5_PATH names another T5 size
            raise WeightsError(
                f"{weights}: trained on {config.text_dim}-dim text states; "
                f"encoder {encoder!r} gives {text_encoder.dim}-dim ones"
            )
        return cls(
            model=model,
            backend=backend_impl,
            encoder=text_encoder,
            kb=kb,
            retriever=retriever,
            image_size=config.image_size,
            lowres_size=config.lowres_size,
        )

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        kb=None,
        retriever: Any = None,
        setting: str = "same-style",
        encoder: str | None = None,
        backend: str = "torch",
    ) -> Pipeline:
        """Any trained stage: an exported ``.safetensors`` file, a run folder (its latest
        checkpoint's EMA weights) or a step folder, with the tuned sampling of its stage
        attached (reimagen.generation.pretrained.tuned_sampling). ``kb``: a KnowledgeBase or its folder;
        ``retriever``: a fitted retriever, a registered name (its index over the ``setting``
        view, saved beside the KB and built on first use) or None (no retrieval)."""
        from reimagen.generation.pretrained import open_kb, open_retriever, tuned_sampling

        kb = open_kb(kb) if kb is not None else None
        pipeline = cls.from_checkpoint(path, kb=kb, encoder=encoder, backend=backend)
        pipeline.sampling = tuned_sampling(path)
        if isinstance(retriever, str):  # after the network: a bad file fails before a build
            retriever = open_retriever(kb, retriever, setting, encoder)
        pipeline.retriever = retriever
        return pipeline

    def retrieve(self, prompts: Sequence[str], k: int) -> RetrievalResult:
        prompts = check_prompts(prompts)  # an empty query would return arbitrary rows at score 0
        if k == 0 or self.retriever is None:
            empty = np.zeros((len(prompts), 0))
            return RetrievalResult(ids=empty.astype(np.int64), scores=empty.astype(np.float32))
        return self.retriever.search(list(prompts), k)

    def generate(
        self,
        prompts: Sequence[str],
        *,
        k: int = 2,
        sampling: SamplingConfig | None = None,
        seed: int = 0,
        neighbor_rows: np.ndarray | None = None,
        lowres: np.ndarray | None = None,
        callback: Any = None,
        indices: Sequence[int] | None = None,
    ) -> Generation:
        """Sample one image per prompt. ``neighbor_rows`` [B, K] overrides retrieval;
        ``lowres`` [B, h, w, 3] in [-1, 1] conditions a super-resolution stage. ``sampling``:
        default ``self.sampling``.

        ``indices`` [B] (default ``range(B)``): each prompt's global index. All noise of sample
        b (initial, per-step, SR augmentation) is drawn from (seed, indices[b]) alone, so a
        prompt list split into batches with their global indices gives the same images."""
        prompts, k, sampling, indices = self._check_request(
            prompts, k, sampling, indices, neighbor_rows, lowres
        )
        sampler = registry.get("sampler", sampling.sampler)  # unknown names fail before compute
        guidance, thresholding = make_guidance(sampling), make_thresholding(sampling)
        start = time.perf_counter()
        # 1. retrieve (Fig. 2, left): KB rows [B, K] of each prompt's neighbours, their scores
        rows, scores = self._neighbors(prompts, k, neighbor_rows)
        # 2. encode: prompt c_p tokens [B, L, D]; neighbours c_n as images [B, K, H, W, 3] in
        #    [-1, 1] and caption tokens [B, K, L, D]
        text, nb_images, nb_text = self._encode(prompts, rows)
        # 3. sample: x_T ~ N(0, I) per (seed, index), denoised by ε(x_t, t | c_p, c_n) under
        #    the guidance of Eq. 5 (joint) or Eq. 6 (text / neighbour weights, interleaved)
        size, steps = self.image_size, sampling.steps
        noise = SamplerNoise.draw_per_sample(seed, indices, (size, size, 3), steps)
        denoiser = self._denoiser(
            text, nb_images, nb_text, lowres, sampling.aug_level, seed, indices
        )
        result = sampler(
            denoiser, guidance, noise, steps=steps, thresholding=thresholding, callback=callback
        )
        # 4. image: x̂0 [B, H, W, 3] in [-1, 1] -> uint8
        return Generation(
            prompts=prompts,
            images=to_uint8(denoiser.to_numpy(result.x0)),
            neighbor_rows=rows,
            neighbor_scores=scores,
            nfe=result.nfe,
            seconds=time.perf_counter() - start,
            variants_per_step=result.variants_per_step,
        )

    def _check_request(
        self, prompts, k, sampling, indices, neighbor_rows, lowres
    ) -> tuple[tuple[str, ...], int, SamplingConfig, tuple[int, ...]]:
        """generate's arguments, checked before any work (one-line errors): (prompts, k,
        sampling, indices)."""
        prompts = check_prompts(prompts)
        k = check_k(k)
        _check_neighbor_source(k, self.retriever is not None or neighbor_rows is not None)
        sampling = _check_sampling(self.sampling if sampling is None else sampling)
        indices = _check_indices(indices, len(prompts))
        if lowres is not None and not self.lowres_size:
            raise ValueError(
                "lowres only applies to a super-resolution stage; this pipeline is a "
                f"{self.image_size}px base stage (pass lowres=None)"
            )
        return prompts, k, sampling, indices

    def _denoiser(self, text, nb_images, nb_text, lowres, aug_level: float, seed: int, indices):
        """The backend's ε(x_t, t | c_p, c_n) over this batch; a super-resolution stage also
        conditioned on the noise-augmented upsampled ``lowres`` (Imagen §2.5)."""
        conditioning = {}
        if self.lowres_size:
            conditioning = self._lowres_conditioning(lowres, aug_level, seed, indices)
        return self.backend.make_denoiser(self.model, text, nb_images, nb_text, **conditioning)

    def _neighbors(
        self, prompts: tuple[str, ...], k: int, neighbor_rows: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(KB rows [B, K] int64, scores [B, K]): retrieved, or ``neighbor_rows`` as given
        (scores NaN: nothing was scored)."""
        if neighbor_rows is None:
            found = self.retrieve(prompts, k)
            rows, scores = found.ids, found.scores
        else:
            rows = _check_neighbor_rows(neighbor_rows, len(prompts), k)
            scores = np.full(rows.shape, np.nan, dtype=np.float32)
        self._check_kb(rows.shape[1])
        return rows, scores

    def _encode(self, prompts: tuple[str, ...], rows: np.ndarray):
        """(prompt TextEncoding [B, L, D], neighbour images [B, K, H, W, 3], neighbour
        captions TextEncoding [B, K, L, D]); K = 0 gives empty neighbour arrays."""
        size = self.image_size
        text = self.encoder.encode(list(prompts))
        if rows.shape[1]:
            nb_images = self.kb.rgb(rows.reshape(-1), size=size).reshape(*rows.shape, size, size, 3)
            nb_text = encode_neighbors_text(self.encoder, self.kb, rows)
        else:
            nb_images = np.zeros((len(prompts), 0, size, size, 3), np.float32)
            nb_text = _empty_neighbor_text(text, len(prompts))
        return text, nb_images, nb_text

    def _check_kb(self, k: int) -> None:
        """Neighbour images come from the KB (resized to this network's size: a KB stored
        smaller is upsampled here, which the command line refuses, reimagen.cli.common.
        check_kb_fits; tests cascade toy KBs into larger SR stages on purpose)."""
        if k and self.kb is None:
            raise ValueError(f"k={k} neighbours need a knowledge base; this pipeline has none")

    def _lowres_conditioning(self, lowres, aug_level: float, seed: int, indices) -> dict:
        """Upsample the previous stage's images and corrupt them at the fixed ``aug_level``
        (augmentation noise of row b: stream 1 of (seed, indices[b]), apart from its sampler
        noise)."""
        if lowres is None:
            raise ValueError("lowres images are required by a super-resolution stage")
        lowres = np.asarray(lowres)
        want = (len(indices), self.lowres_size, self.lowres_size, 3)
        if lowres.shape != want:
            raise ValueError(
                f"lowres must have shape {list(want)} ([B, h, w, 3]), got {list(lowres.shape)}"
            )
        if not np.issubdtype(lowres.dtype, np.floating):
            raise ValueError(f"lowres must be floats in [-1, 1], got dtype {lowres.dtype}")
        if not np.isfinite(lowres).all():
            raise ValueError("lowres must be finite floats in [-1, 1], got NaN or Inf")
        lowres = lowres.astype(np.float32)
        upsampled = resize_bilinear(lowres, self.image_size)
        noise = np.stack(
            [
                rng.standard_normal(upsampled.shape[1:], dtype=np.float32)
                for rng in sample_generators(seed, indices, stream=1)
            ]
        )  # [B, H, W, 3]
        return {"lowres": noise_augment(upsampled, aug_level, noise), "aug_level": aug_level}


def check_prompts(prompts) -> tuple[str, ...]:
    """A non-empty sequence of non-blank strings of at most MAX_PROMPT_CHARS characters (a bare
    string is refused: it would be read as one prompt per character)."""
    if isinstance(prompts, (str, bytes)):
        raise TypeError("prompts must be a sequence of strings, not a single string; wrap it")
    prompts = tuple(prompts)
    if not prompts:
        raise ValueError("prompts is empty: give at least one prompt")
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"prompt {i} is {prompt!r}; prompts must be non-empty strings")
        if len(prompt) > MAX_PROMPT_CHARS:
            raise ValueError(
                f"prompt {i} has {len(prompt):,} characters; allowed: at most {MAX_PROMPT_CHARS:,}"
            )
    return prompts


def _check_neighbor_source(k: int, can_have_neighbors: bool) -> None:
    if k and not can_have_neighbors:
        raise ValueError(
            f"k={k} needs a retriever or neighbor_rows; this pipeline has no "
            "retriever (pass k=0 for no retrieval)"
        )


def _check_sampling(sampling) -> SamplingConfig:
    if not isinstance(sampling, SamplingConfig):
        raise TypeError(f"sampling must be a SamplingConfig, got {type(sampling).__name__}")
    return sampling


def _check_neighbor_rows(neighbor_rows, batch: int, k: int) -> np.ndarray:
    """KB rows [B, k] of integer dtype (range checked by the knowledge base)."""
    rows = np.asarray(neighbor_rows)
    if rows.ndim != 2 or rows.shape[0] != batch or rows.shape[1] != k:
        raise ValueError(
            f"neighbor_rows must have shape [{batch}, {k}] ([B, K]), got {list(rows.shape)}"
        )
    if rows.size and not np.issubdtype(rows.dtype, np.integer):
        raise ValueError(f"neighbor_rows must be integer KB rows, got dtype {rows.dtype}")
    return rows.astype(np.int64)


def _check_indices(indices, batch: int) -> tuple[int, ...]:
    """Global sample indices [B]: default range(B); distinct integers >= 0."""
    if indices is None:
        return tuple(range(batch))
    indices = tuple(indices)
    if len(indices) != batch:
        raise ValueError(f"indices must give one index per prompt ({batch}), got {len(indices)}")
    bad = [
        i for i in indices if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or i < 0
    ]
    if bad:
        raise ValueError(f"indices must be integers >= 0, got {bad[0]!r}")
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
