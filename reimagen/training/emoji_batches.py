"""The EntityBench training stream: scene targets, prompts and K neighbours per example
(docs/design.md §8; paper §3.2 "KNN-ImageText"; Imagen's noise-conditioning augmentation for SR).

``EmojiBatchSource.batch(step)`` is a pure function of (TrainConfig.seed, step): every random
choice of a step comes from ``np.random.default_rng((seed, step))``, in a fixed order, so a
resumed run sees the batches an uninterrupted one would (reimagen.training.contract.BatchSource).
Captions are encoded in fixed blocks, so their encodings never depend on history either. The
one exception is the encoder's own LRU cache of prompts: a batched network (minilm) rounds a
text differently in different batches (~2e-6), so for bit-exact resumes with minilm build it
with ``cache_size=0`` (the hash encoder is exact either way).

Each step draws B examples from the fixed pool (reimagen.training.entity_pool) whose K
retrieved neighbours were found once (reimagen.training.pool_triples). The recipe that forces
identity through the neighbours (docs/design.md §8, the probes): with probability ``p_true_neighbor``
one neighbour slot shows the true entity, either its Twemoji drawing AUGMENTED (random scale,
shift, flip, colour jitter: the model must redraw, not paste; reimagen.training.neighbor_augment)
or another artist's rendition; the other slots keep the retrieved neighbours. Neighbour images
are KB renditions on the neutral background inference uses (KnowledgeBase.rgb's white), at the
target resolution; neighbour texts are their captions, encoded once per KB row and cached.

No unseen entity ever enters: targets, pool and triples are re-checked at construction
(reimagen.training.leak_checks).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import numpy as np

from reimagen.core.images import from_uint8, to_uint8
from reimagen.core.interfaces import TextEncoding
from reimagen.diffusion.augment import noise_augment, resize_bilinear
from reimagen.kb import scenes as sc
from reimagen.kb.splits import TARGET_ARTIST, EntitySplit, view_rows
from reimagen.training.contract import Batch, TrainConfig, draw_diffusion_inputs
from reimagen.training.data import NEIGHBOR_BACKGROUND, BatchInfo, BatchPlan, DataConfig
from reimagen.training.entity_pool import make_pool
from reimagen.training.leak_checks import check_no_leak
from reimagen.training.neighbor_augment import augment_drawings, draw_augmentation
from reimagen.training.pool_triples import load_or_build_triples

CAPTION_BLOCK = 64  # captions are encoded in fixed blocks of the training view


class EmojiBatchSource:
    """The base-stage (32×32) BatchSource over an emoji knowledge base and an entity split.

    kb: an opened KnowledgeBase with Twemoji drawings; split: :class:`EntitySplit`; encoder: a
    text Encoder (``registry.get("encoder", "minilm")()``); config: TrainConfig (seed,
    batch_size, neighbors K, drop probabilities); data: :class:`DataConfig`.
    """

    def __init__(
        self,
        kb,
        split: EntitySplit,
        encoder,
        config: TrainConfig,
        data: DataConfig | None = None,
        *,
        image_size: int = 32,
        cache_dir: str | Path | None = None,
        progress: bool = False,
    ):
        if image_size < 16:
            raise ValueError(f"image_size must be >= 16, got {image_size}")
        self.kb, self.split, self.encoder = kb, split, encoder
        self.config, self.image_size = config, int(image_size)
        self.data = DataConfig() if data is None else data
        self.progress = progress
        self.view = view_rows(kb, "training", split)  # [R] rows a training neighbour may be
        self._index_targets()
        if config.neighbors > len(self.view) - 1:  # -1: an example never gets its own image
            raise ValueError(
                f"TrainConfig.neighbors K={config.neighbors} needs more than the "
                f"{len(self.view)} rows of the training view of {kb.folder}"
            )
        self.pool = make_pool(self.entities, self.weights, self.colours, self.data)
        found = load_or_build_triples(
            kb,
            self.view,
            self.pool.prompts,
            self.target_row[self.pool.entity],  # never an example's own image
            k=config.neighbors,
            retriever=self.data.retriever,
            cache_dir=cache_dir,
            progress=progress,
        )
        self.triples = found.ids  # [N, K] int64 KB rows, or None when K = 0
        self.triples_path, self.triples_status = found.path, found.status
        check_no_leak(self)
        self._fitted = {self.image_size: self._fit_all(self.image_size)}
        self._nb_cache = np.zeros((len(kb), self.image_size, self.image_size, 3), np.uint8)
        self._nb_have = np.zeros(len(kb), bool)
        self._caption_cache: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    # ---- setup ---------------------------------------------------------------------------

    def _index_targets(self) -> None:
        """Seen entities with a Twemoji drawing in the training view: their target row, the
        other artists' rows, and the colours each drawing is legible on."""
        by_entity: dict[str, list[int]] = {}
        for row in self.view.tolist():
            by_entity.setdefault(self.kb.records[row].entity, []).append(row)
        names, target, others = [], [], []
        for name in self.split.seen:  # by Zipf rank
            rows = by_entity.get(name, [])
            twemoji = [r for r in rows if self.kb.records[r].source == TARGET_ARTIST]
            if twemoji:
                names.append(name)
                target.append(twemoji[0])
                others.append(np.array([r for r in rows if r != twemoji[0]], np.int64))
        if not names:
            raise ValueError(
                f"knowledge base {self.kb.folder} has no Twemoji drawing of a seen entity of the "
                "split: nothing to train on (build it with the twemoji artist)"
            )
        self.entities = tuple(names)  # [E]
        self.target_row = np.array(target, np.int64)  # [E]
        self.other_rows = tuple(others)  # [E] arrays of other artists' rows
        # the same, flat (for _neighbor_slots): rows of entity e are
        # other_flat[other_start[e] : other_start[e] + other_count[e]]
        self.other_count = np.array([len(o) for o in others], np.int64)  # [E]
        self.other_start = np.concatenate([[0], np.cumsum(self.other_count)[:-1]])  # [E]
        self.other_flat = np.concatenate([np.zeros(0, np.int64), *others])
        self.row_entity = np.full(len(self.kb), -1, np.int64)  # KB row -> e (view rows)
        for e, name in enumerate(names):
            self.row_entity[by_entity[name]] = e
        self.weights = self.split.weights(self.entities)  # [E] Zipf, renormalised
        self.colours = tuple(
            np.array(
                [sc.COLOUR_NAMES.index(c) for c in sc.legible_colours(self.kb.images[r])], np.int8
            )
            for r in self.target_row
        )  # [E] legible colour indices

    def _fit_all(self, canvas: int) -> dict[str, list[np.ndarray]]:
        """size -> per entity the Twemoji drawing fitted to that size's box at ``canvas``."""
        return {
            size: [
                sc.fit_drawing(np.asarray(self.kb.images[r]), sc.box("center", size, canvas)[2])
                for r in self.target_row
            ]
            for size in sc.SIZES
        }

    def warm(self) -> None:
        """Fill the caches every batch reads (neighbour renditions and caption encodings of
        the whole training view, fitted drawings): called before prefetch workers fork, so
        they share one copy instead of each building its own."""
        self._plain(self.view, self.image_size)
        blocks = range((len(self.view) + CAPTION_BLOCK - 1) // CAPTION_BLOCK)
        for block in blocks:
            if int(self.view[block * CAPTION_BLOCK]) not in self._caption_cache:
                self._encode_caption_block(block)

    # ---- one batch -------------------------------------------------------------------------

    def batch(self, step: int) -> Batch:
        return self.batch_with_info(step)[0]

    def batch_with_info(self, step: int) -> tuple[Batch, BatchInfo]:
        """The batch of ``step`` and its ground truth: the step's :meth:`plan`, composed."""
        rng = self._rng(step)
        batch, info = self._compose(self._draw(rng))
        return self._finish(rng, batch, info)

    def plan(self, step: int) -> BatchPlan:
        """The random choices of ``step`` (the stream ``batch_with_info`` draws)."""
        return self._draw(self._rng(step))

    def _draw(self, rng: np.random.Generator) -> BatchPlan:
        """Draw order (fixed): pool indices, neighbour recipe, augmentation, then
        draw_diffusion_inputs (SR draws its own after these, in ``_finish``)."""
        b, s = self.config.batch_size, self.image_size
        index = rng.integers(len(self.pool), size=b)  # [B]
        rows, augmented = self._neighbor_slots(rng, index, self.pool.entity[index])  # [B, K]
        augmentation = draw_augmentation(rng, rows.size, self.data)
        t, noise, use_text, use_nb = draw_diffusion_inputs(
            rng, (b, s, s, 3), self.config.p_drop_text, self.config.p_drop_neighbors
        )
        return BatchPlan(index, rows, augmented, augmentation, t, noise, use_text, use_nb)

    def _compose(self, plan: BatchPlan) -> tuple[Batch, BatchInfo]:
        """The batch a plan describes, composed on the host (numpy), and its ground truth."""
        index, rows, augmented = plan.index, plan.rows, plan.augmented
        entity = self.pool.entity[index]  # [B]
        scenes = tuple(self.pool.scene(i, self.entities[e]) for i, e in zip(index, entity))
        images = self._targets(entity, scenes, self.image_size)  # [B, S, S, 3]
        nb_images = self._neighbor_images(rows, augmented, plan.augmentation, self.image_size)
        prompts = tuple(self.pool.prompts[i] for i in index)
        text = self.encoder.encode(list(prompts))  # [B, L, D]
        batch = Batch(
            images=images,
            text=text,
            neighbor_images=nb_images,
            neighbor_text=self._captions(rows),
            t=plan.t,
            noise=plan.noise,
            use_text=plan.use_text,
            use_neighbors=plan.use_neighbors,
        )
        info = BatchInfo(
            pool_index=index.astype(np.int64),
            entity_index=entity,
            entities=tuple(self.entities[e] for e in entity),
            target_rows=self.target_row[entity],
            prompts=prompts,
            scenes=scenes,
            neighbor_rows=rows,
            augmented=augmented,
        )
        return batch, info

    def _finish(self, rng, batch: Batch, info: BatchInfo) -> tuple[Batch, BatchInfo]:
        return batch, info  # the SR stage adds its low-res input here

    def _rng(self, step: int) -> np.random.Generator:
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
            raise ValueError(f"step must be an int >= 0, got {step!r}")
        return np.random.default_rng((self.config.seed, int(step)))

    def _targets(self, entity: np.ndarray, scenes, canvas: int) -> np.ndarray:
        """Scene composites, float32 [B, canvas, canvas, 3] in [-1, 1]."""
        fitted = self._fitted.get(canvas)
        if fitted is None:
            fitted = self._fitted[canvas] = self._fit_all(canvas)
        out = np.stack(
            [
                sc.compose_fitted(fitted[scene.size][e], scene, canvas)
                for e, scene in zip(entity, scenes)
            ]
        )  # [B, S, S, 3] uint8
        return from_uint8(out)

    def _neighbor_slots(self, rng, index, entity) -> tuple[np.ndarray, np.ndarray]:
        """KB rows [B, K] per slot and which slots show the augmented Twemoji drawing.

        Start from the retrieved triples; with p_true_neighbor put the true entity in a random
        slot: its Twemoji drawing augmented (p_same_style, or when no other artist drew it),
        else another artist's rendition (unless one is already retrieved)."""
        b, k, d = len(index), self.config.neighbors, self.data
        true = rng.random(b) < d.p_true_neighbor
        same = rng.random(b) < d.p_same_style
        slot = rng.integers(max(k, 1), size=b)
        pick = rng.random(b)
        # [B, K]; triples is None exactly when K = 0
        rows = np.zeros((b, k), np.int64) if self.triples is None else self.triples[index].copy()
        augmented = np.zeros((b, k), bool)
        if k == 0:
            return rows, augmented
        count, target = self.other_count[entity], self.target_row[entity]  # [B], [B]
        # another artist's rendition of the entity among the retrieved rows, per example
        retrieved = ((self.row_entity[rows] == entity[:, None]) & (rows != target[:, None])).any(1)
        own = true & (same | (count == 0))  # its Twemoji drawing, augmented
        other = true & ~own & ~retrieved  # another artist's rendition
        i = np.flatnonzero(own)
        rows[i, slot[i]], augmented[i, slot[i]] = target[i], True
        i = np.flatnonzero(other)
        choice = (pick[i] * count[i]).astype(np.int64)  # int(pick · len(others))
        rows[i, slot[i]] = self.other_flat[self.other_start[entity[i]] + choice]
        return rows, augmented

    def _neighbor_images(self, rows, augmented, params, canvas: int) -> np.ndarray:
        """float32 [B, K, canvas, canvas, 3] in [-1, 1]: KB renditions on the neutral
        background; augmented slots redrawn from the RGBA drawing. Augmentation parameters
        ``params`` are drawn for every slot (fixed stream), used where ``augmented``."""
        b, k = rows.shape
        out = self._plain(rows.reshape(-1), canvas).astype(np.float32)  # [B·K, S, S, 3] uint8
        flat_aug = np.flatnonzero(augmented.reshape(-1))
        if flat_aug.size:
            rgba = np.asarray(self.kb.images[rows.reshape(-1)[flat_aug]])  # [n, S', S', 4]
            chosen = {name: value[flat_aug] for name, value in params.items()}
            out[flat_aug] = augment_drawings(rgba, canvas, chosen) * 255.0
        out = out / 127.5 - 1.0
        return out.reshape(b, k, canvas, canvas, 3).astype(np.float32)

    def _plain(self, rows: np.ndarray, canvas: int) -> np.ndarray:
        """uint8 [n, canvas, canvas, 3] renditions on the neutral background, cached per row."""
        if canvas != self.image_size:
            raise ValueError(f"neighbours are rendered at {self.image_size}, not {canvas}")
        cache, have = self._nb_cache, self._nb_have
        missing = np.unique(rows[~have[rows]])
        if missing.size:
            rgb = self.kb.rgb(missing, size=canvas, background=NEIGHBOR_BACKGROUND)
            cache[missing] = to_uint8(rgb)
            have[missing] = True
        return cache[rows]

    def _captions(self, rows: np.ndarray) -> TextEncoding:
        """Caption encodings of KB ``rows`` [B, K] -> tokens [B, K, L, D], each caption encoded
        once and cached (trimmed to its real tokens)."""
        b, k = rows.shape
        length, dim = self.encoder.max_length, self.encoder.dim
        for block in self._caption_blocks(rows):
            self._encode_caption_block(block)
        tokens = np.zeros((b, k, length, dim), np.float32)
        mask = np.zeros((b, k, length), bool)
        pooled = np.zeros((b, k, dim), np.float32)
        for (i, j), row in np.ndenumerate(rows):
            t, m, p = self._caption_cache[int(row)]
            tokens[i, j, : len(t)], mask[i, j, : len(m)], pooled[i, j] = t, m, p
        return TextEncoding(tokens=tokens, mask=mask, pooled=pooled)

    def _caption_blocks(self, rows: np.ndarray) -> list[int]:
        """Blocks (of CAPTION_BLOCK consecutive training-view rows) holding uncached rows."""
        missing = [int(r) for r in np.unique(rows) if int(r) not in self._caption_cache]
        return sorted({int(np.searchsorted(self.view, r)) // CAPTION_BLOCK for r in missing})

    def _encode_caption_block(self, block: int) -> None:
        """Encode one whole block of view captions in one call. Always the same texts together,
        so a caption's encoding never depends on which batch first needed it (a batched
        network's float rounding depends on its batch; this keeps batch(step) pure)."""
        rows = self.view[block * CAPTION_BLOCK : (block + 1) * CAPTION_BLOCK].tolist()
        fresh = self.encoder.encode([self.kb.records[r].text for r in rows])
        for i, row in enumerate(rows):
            real = int(np.flatnonzero(fresh.mask[i]).max(initial=0)) + 1
            self._caption_cache[row] = (
                fresh.tokens[i, :real].copy(),
                fresh.mask[i, :real].copy(),
                fresh.pooled[i].copy(),
            )


class SRBatchSource(EmojiBatchSource):
    """The 32→64 super-resolution stage: target 64×64 composite, ``lowres`` = the same scene
    composed at 32, upsampled back to 64 (bilinear) and corrupted at a random aug level
    a ~ U[0, max_aug_level] (Imagen's noise-conditioning augmentation, reimagen.diffusion.augment);
    neighbours at 64. Shares the pool and triples file with the base stage."""

    def __init__(
        self,
        kb,
        split,
        encoder,
        config,
        data: DataConfig | None = None,
        *,
        image_size: int = 64,
        lowres_size: int = 32,
        **options: Any,
    ):
        if lowres_size >= image_size:
            raise ValueError(f"lowres_size {lowres_size} must be < image_size {image_size}")
        self.lowres_size = int(lowres_size)
        super().__init__(kb, split, encoder, config, data, image_size=image_size, **options)

    def warm(self) -> None:
        super().warm()
        if self.lowres_size not in self._fitted:
            self._fitted[self.lowres_size] = self._fit_all(self.lowres_size)

    def _finish(self, rng, batch: Batch, info: BatchInfo) -> tuple[Batch, BatchInfo]:
        low = self._targets(info.entity_index, info.scenes, self.lowres_size)  # [B, s, s, 3]
        up = resize_bilinear(low, self.image_size)  # [B, S, S, 3]
        level = rng.uniform(0.0, self.data.max_aug_level, size=batch.size).astype(np.float32)
        noise = rng.standard_normal(up.shape, dtype=np.float32)
        lowres = noise_augment(up, level, noise)
        return attrs.evolve(batch, lowres=lowres, aug_level=level), info


__all__ = ["CAPTION_BLOCK", "EmojiBatchSource", "SRBatchSource"]
