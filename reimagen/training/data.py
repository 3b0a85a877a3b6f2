"""The EntityBench training stream: scene targets, prompts and K neighbours per example
(DESIGN §8; paper §3.2 "KNN-ImageText"; Imagen's noise-conditioning augmentation for SR).

``EmojiBatchSource.batch(step)`` is a pure function of (TrainConfig.seed, step): every random
choice of a step comes from ``np.random.default_rng((seed, step))``, in a fixed order, so a
resumed run sees the batches an uninterrupted one would (reimagen.training.contract.BatchSource).
Captions are encoded in fixed blocks, so their encodings never depend on history either. The
one exception is the encoder's own LRU cache of prompts: a batched network (minilm) rounds a
text differently in different batches (~2e-6), so for bit-exact resumes with minilm build it
with ``cache_size=0`` (the hash encoder is exact either way).

Pool and triples (built once, cached beside the knowledge base). A fixed pool of N scene
examples is drawn from the seen entities with the split's Zipf weights: entity, background (a
colour the drawing is legible on), position, size (large and centred with p=0.5), template, and
whether the prompt names the entity (p=0.5; otherwise it says "emoji", so the text alone cannot
name it). For each pool prompt the bm25 retriever over the *training view* (seen entities only,
every artist) gives the top-K neighbours, never the example's own Twemoji drawing; these
triples are stored with reimagen.kb.triples under ``<kb>/triples/`` and reused while the KB,
view, pool and retriever are unchanged. ``batch(step)`` draws B examples from the pool.

The recipe that forces identity through the neighbours (DESIGN §8, the probes): with
probability ``p_true_neighbor`` one neighbour slot shows the true entity, either its Twemoji
drawing AUGMENTED (random scale, shift, flip, colour jitter: the model must redraw, not paste)
or another artist's rendition; the other slots keep the retrieved neighbours. Neighbour images
are KB renditions on the neutral background inference uses (KnowledgeBase.rgb's white), at the
target resolution; neighbour texts are their captions, encoded once per KB row and cached.

No unseen entity ever enters: the pool samples seen entities only, the retriever indexes the
training view only, the true-entity slot comes from the training view, and :func:`check_no_leak`
re-checks targets, pool and triples at construction (a leak raises :class:`DataLeakError`).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from reimagen.diffusion.augment import noise_augment, resize_bilinear
from reimagen.core.config import ConfigMixin, config, in_range
from reimagen.core.interfaces import TextEncoding
from reimagen.training.contract import Batch, TrainConfig, draw_diffusion_inputs
from reimagen.kb import scenes as sc
from reimagen.kb.splits import TARGET_ARTIST, EntitySplit, view_rows

NEIGHBOR_BACKGROUND = (255, 255, 255)  # KnowledgeBase.rgb's default: what inference shows
TRIPLES_DIR = "triples"
CAPTION_BLOCK = 64  # captions are encoded in fixed blocks of the training view
POOL_STREAM = 0x5CE7E  # second word of the pool Generator's seed (independent of batch streams)


class DataLeakError(RuntimeError):
    """An unseen entity (or a row outside the training view) reached a training target,
    the pool or a training triple."""


@config
class DataConfig(ConfigMixin):
    """How scene examples and their neighbours are made (the training recipe, DESIGN §8)."""

    pool_size: int = attrs.field(default=50_000, validator=in_range(1, 10**8))
    pool_seed: int = attrs.field(default=0, validator=in_range(0, 2**63 - 1))
    retriever: str = "bm25"
    p_drop_name: float = attrs.field(default=0.5, validator=in_range(0.0, 1.0))
    p_large_centred: float = attrs.field(default=0.5, validator=in_range(0.0, 1.0))
    p_true_neighbor: float = attrs.field(default=0.9, validator=in_range(0.0, 1.0))
    p_same_style: float = attrs.field(default=0.5, validator=in_range(0.0, 1.0))
    aug_scale_min: float = attrs.field(default=0.6, validator=in_range(0.2, 1.0))
    aug_scale_max: float = attrs.field(default=0.95, validator=in_range(0.2, 0.97))
    aug_shift: float = attrs.field(default=0.12, validator=in_range(0.0, 0.5))  # × canvas
    aug_flip: float = attrs.field(default=0.5, validator=in_range(0.0, 1.0))
    aug_gain: float = attrs.field(default=0.15, validator=in_range(0.0, 0.5))  # per channel ±
    aug_brightness: float = attrs.field(default=0.08, validator=in_range(0.0, 0.5))  # ±, [0,1]
    max_aug_level: float = attrs.field(default=0.5, validator=in_range(0.0, 1.0))  # SR stage

    def __attrs_post_init__(self):
        if self.aug_scale_min > self.aug_scale_max:
            raise ValueError(
                f"DataConfig.aug_scale_min {self.aug_scale_min} > aug_scale_max {self.aug_scale_max}"
            )


@attrs.frozen
class Pool:
    """The fixed pool of scene examples (all [N])."""

    entity: np.ndarray  # int32 index into EmojiBatchSource.entities
    background: np.ndarray  # int8 index into scenes.COLOURS
    position: np.ndarray  # int8 index into scenes.POSITIONS
    size: np.ndarray  # int8 index into scenes.SIZES
    template: np.ndarray  # int8 template id of the scene's kind
    named: np.ndarray  # bool: the prompt names the entity
    prompts: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.prompts)

    def scene(self, i: int, entity: str) -> sc.Scene:
        return sc.Scene(
            entity=entity,
            background=sc.COLOUR_NAMES[self.background[i]],
            position=sc.POSITIONS[self.position[i]],
            size=sc.SIZES[self.size[i]],
        )


@attrs.frozen
class BatchPlan:
    """Every random choice of one step, drawn in the fixed order of ``batch_with_info``, before
    any pixel is composed: the host composes a batch from it, and so does the device-side
    composer (reimagen.training.scene_atlas, reimagen.backends.torch.scene_composer)."""

    index: np.ndarray  # [B] int64 pool rows
    rows: np.ndarray  # [B, K] int64 KB row shown in each neighbour slot
    augmented: np.ndarray  # [B, K] bool: the slot shows an augmented same-style drawing
    augmentation: dict[str, np.ndarray]  # draw_augmentation's arrays for the B·K slots
    t: np.ndarray  # [B] float32
    noise: np.ndarray  # [B, S, S, 3] float32
    use_text: np.ndarray  # [B] bool
    use_neighbors: np.ndarray  # [B] bool


@attrs.frozen
class BatchInfo:
    """Ground truth of one batch, for tests, leak checks and logging."""

    pool_index: np.ndarray  # [B] int64
    entity_index: np.ndarray  # [B] index into EmojiBatchSource.entities
    entities: tuple[str, ...]  # [B] target entity names
    target_rows: np.ndarray  # [B] int64 KB row of each target's Twemoji drawing
    prompts: tuple[str, ...]  # [B]
    scenes: tuple[sc.Scene, ...]  # [B]
    neighbor_rows: np.ndarray  # [B, K] int64 KB row shown in each slot (augmented: its source)
    augmented: np.ndarray  # [B, K] bool: the slot shows an augmented same-style drawing


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
        self.pool = self._make_pool()
        self.triples_path: Path | None = None
        self.triples_status = "none"
        self.triples = self._load_or_build_triples(cache_dir)  # [N, K] int64 or None
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

    def _make_pool(self) -> Pool:
        """N examples from a Generator of its own (pool_seed), vectorised, fixed draw order."""
        d, n = self.data, self.data.pool_size
        rng = np.random.default_rng((d.pool_seed, POOL_STREAM))
        entity = rng.choice(len(self.entities), size=n, p=self.weights).astype(np.int32)
        colour_pick = rng.random(n)
        forced = rng.random(n) < d.p_large_centred
        position = rng.integers(len(sc.POSITIONS), size=n).astype(np.int8)
        size = rng.integers(len(sc.SIZES), size=n).astype(np.int8)
        position[forced], size[forced] = 0, sc.SIZES.index("large")  # POSITIONS[0] = center
        template_pick = rng.random(n)
        named = rng.random(n) >= d.p_drop_name
        background = np.array(
            [self._pick(self.colours[e], u) for e, u in zip(entity, colour_pick)], np.int8
        )
        kinds = [sc.TEMPLATES["centred" if p == 0 else "corner"] for p in position]
        template = np.array([int(u * len(k)) for u, k in zip(template_pick, kinds)], np.int8)
        pool = Pool(entity, background, position, size, template, named, prompts=())
        prompts = tuple(
            sc.prompt(
                pool.scene(i, self.entities[entity[i]]),
                int(template[i]),
                name_entity=bool(named[i]),
            )
            for i in range(n)
        )
        return attrs.evolve(pool, prompts=prompts)

    @staticmethod
    def _pick(options: np.ndarray, u: float) -> int:
        if len(options) == 0:
            return 0  # a drawing legible on no colour: never happens for Twemoji; keep going
        return int(options[int(u * len(options))])

    def _fit_all(self, canvas: int) -> dict[str, list[np.ndarray]]:
        """size -> per entity the Twemoji drawing fitted to that size's box at ``canvas``."""
        return {
            size: [
                sc.fit_drawing(np.asarray(self.kb.images[r]), sc.box("center", size, canvas)[2])
                for r in self.target_row
            ]
            for size in sc.SIZES
        }

    # ---- triples -------------------------------------------------------------------------

    def _load_or_build_triples(self, cache_dir) -> np.ndarray | None:
        k = self.config.neighbors
        if k == 0:
            return None
        from reimagen.kb import triples as tr

        exclude = [[int(self.target_row[e])] for e in self.pool.entity]  # never its own image
        folder = Path(cache_dir) if cache_dir is not None else Path(self.kb.folder) / TRIPLES_DIR
        path = folder / f"scenes-{self._triples_key(exclude)}.safetensors"
        self.triples_path = path
        if path.is_file():
            try:
                found = tr.load_triples(path, self.kb, queries=self.pool.prompts)
                if found.meta.k == k and found.meta.exclude_hash == tr.exclude_hash(exclude):
                    self.triples_status = "loaded"
                    return found.ids
            except (tr.TriplesMismatchError, ValueError) as err:
                print(f"note: rebuilding {path.name}: {err}", file=sys.stderr)
        retriever = self._retriever()
        found = tr.build_triples(
            self.pool.prompts,
            retriever,
            k,
            exclude,
            progress=self._report if self.progress else None,
        )
        tr.save_triples(path, found)
        self.triples_status = "built"
        return found.ids

    def _triples_key(self, exclude: list[list[int]]) -> str:
        """Digest of everything the triples depend on (file name, so a change means a new
        file rather than a silently reused one)."""
        from reimagen.kb import triples as tr

        blob = json.dumps(
            {
                "kb": self.kb.fingerprint,
                "view": hashlib.sha256(self.view.astype("<i8").tobytes()).hexdigest(),
                "queries": tr.queries_hash(self.pool.prompts),
                "exclude": tr.exclude_hash(exclude),
                "retriever": self.data.retriever,
                "k": self.config.neighbors,
            },
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def _retriever(self):
        from reimagen.core import registry

        return registry.get("retriever", self.data.retriever)().fit(self.kb, rows=self.view)

    @staticmethod
    def _report(done: int, total: int) -> None:
        print(
            f"\rtraining triples {done}/{total}", end="" if done < total else "\n", file=sys.stderr
        )

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
        return out.astype(np.float32) / 127.5 - 1.0

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
        rows = np.zeros((b, k), np.int64) if k == 0 else self.triples[index].copy()  # [B, K]
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
            cache[missing] = np.clip(np.rint((rgb + 1.0) * 127.5), 0, 255).astype(np.uint8)
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


# ---- augmentation of same-style neighbours ------------------------------------------------------


def draw_augmentation(rng: np.random.Generator, n: int, data: DataConfig) -> dict[str, np.ndarray]:
    """Random scale, shift, flip and colour jitter for n drawings (fixed draw order)."""
    return {
        "scale": rng.uniform(data.aug_scale_min, data.aug_scale_max, n),  # [n]
        "shift": rng.uniform(-data.aug_shift, data.aug_shift, (n, 2)),  # [n, (y, x)] × canvas
        "flip": rng.random(n) < data.aug_flip,  # [n] horizontal
        "gain": 1.0 + rng.uniform(-data.aug_gain, data.aug_gain, (n, 3)),  # [n, RGB]
        "brightness": rng.uniform(-data.aug_brightness, data.aug_brightness, n),  # [n]
    }


def augment_drawings(
    rgba: np.ndarray, canvas: int, params: dict[str, np.ndarray], background=NEIGHBOR_BACKGROUND
) -> np.ndarray:
    """Redraw RGBA drawings uint8 [n, S, S, 4] scaled about the centre, shifted, flipped and
    colour-jittered, over ``background`` -> float32 [n, canvas, canvas, 3] in [0, 1].

    Premultiplied colour is first area-averaged to ``canvas`` when S is larger (exactly what
    KnowledgeBase.rgb does, so scale 1 reproduces the plain rendition and nothing aliases),
    then warped. The warp is axis-aligned, so bilinear resampling is separable: two 2-tap
    gathers (rows, then columns). Gathers rather than interpolation matrices: small batched
    GEMMs stall when OpenBLAS threads compete for 2 cores with the trainer. scale < 1 always
    (DataConfig), so the result is never the plain rendition."""
    n = rgba.shape[0]
    colour = premultiplied_drawings(rgba, canvas)  # [n, side + 2, side + 2, 4]
    batch = np.arange(n)[:, None]
    (lo_y, frac_y), (lo_x, frac_x) = warp_taps(params, colour.shape[1] - 2, canvas)
    rows = (
        colour[batch, lo_y] * (1 - frac_y)[..., None, None]
        + colour[batch, lo_y + 1] * frac_y[..., None, None]
    )  # [n, canvas(y), side+2(x), 4]
    sampled = (
        rows[batch, :, lo_x] * (1 - frac_x)[..., None, None]
        + rows[batch, :, lo_x + 1] * frac_x[..., None, None]
    )  # [n, canvas(x), canvas(y), 4]
    sampled = sampled.transpose(0, 2, 1, 3)  # [n, canvas(y), canvas(x), 4]
    alpha = sampled[..., 3:]
    ink = sampled[..., :3] * params["gain"][:, None, None, :].astype(np.float32)
    ink = ink + params["brightness"][:, None, None, None].astype(np.float32) * alpha
    ink = np.clip(ink, 0.0, alpha)  # premultiplied colour stays within alpha
    back = np.asarray(background, np.float32) / 255.0
    return (ink + back * (1.0 - alpha)).astype(np.float32)  # [n, canvas, canvas, 3] "over"


def premultiplied_drawings(rgba: np.ndarray, canvas: int) -> np.ndarray:
    """RGBA drawings uint8 [n, S, S, 4] -> premultiplied float32 [n, side + 2, side + 2, 4],
    area-averaged to ``canvas`` when S is larger (side = min(S, canvas)), with a zero border
    (= outside the drawing) for the warp's taps."""
    from reimagen.kb.image_pack import resize_area

    colour = rgba.astype(np.float32) / 255.0  # [n, S, S, 4]
    colour[..., :3] *= colour[..., 3:]  # premultiplied
    if colour.shape[1] > canvas:
        colour = resize_area(colour, canvas)  # [n, canvas, canvas, 4]
    return np.pad(colour, ((0, 0), (1, 1), (1, 1), (0, 0)))  # zero border = outside


def warp_taps(params: dict[str, np.ndarray], side: int, canvas: int):
    """The augmentation warp's bilinear taps, ((lo, frac) of the rows, (lo, frac) of the
    columns), each [n, canvas]: see :func:`_taps` (flip is horizontal: columns only)."""
    n = len(params["scale"])
    rows = _taps(params["scale"], params["shift"][:, 0], np.zeros(n, bool), side, canvas)
    cols = _taps(params["scale"], params["shift"][:, 1], params["flip"], side, canvas)
    return rows, cols


def _taps(scale, shift, flip, side: int, work: int) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear taps of one axis of the warp q = (p - 1/2 - shift)/scale + 1/2 (p, q in [0, 1]
    of the canvas / drawing; flipped: q -> 1 - q) at ``work`` output pixel centres: (lo [n, W] int64
    index into the drawing padded by one zero pixel, frac [n, W] float32 weight of lo + 1)."""
    p = (np.arange(work) + 0.5) / work  # [W] output centres
    q = (p[None] - 0.5 - shift[:, None]) / scale[:, None] + 0.5  # [n, W]
    q = np.where(flip[:, None], 1.0 - q, q)
    x = np.clip(q * side - 0.5 + 1.0, 0.0, side + 0.999)  # padded pixel coordinates
    lo = np.floor(x).astype(np.int64)
    return lo, (x - lo).astype(np.float32)


# ---- leak checks -----------------------------------------------------------------------------


def check_no_leak(source: EmojiBatchSource) -> None:
    """Raise DataLeakError if an unseen (or unknown) entity is a target, a pool example, a
    training-view row or a triple neighbour, or a triple returns the example's own image."""
    split, kb = source.split, source.kb
    bad_targets = [e for e in source.entities if not _seen(split, e)]
    if bad_targets:
        raise DataLeakError(f"training targets include non-seen entities {bad_targets[:5]}")
    bad_view = sorted(
        {kb.records[r].entity for r in source.view if not _seen(split, kb.records[r].entity)}
    )
    if bad_view:
        raise DataLeakError(f"the training view holds rows of non-seen entities {bad_view[:5]}")
    if source.triples is not None:
        outside = np.setdiff1d(source.triples, source.view)
        if outside.size:
            names = sorted({kb.records[int(r)].entity for r in outside})
            raise DataLeakError(
                f"training triples hold rows outside the training view: {names[:5]}"
            )
        own = source.target_row[source.pool.entity][:, None]  # [N, 1]
        if (source.triples == own).any():
            raise DataLeakError("a training triple contains the example's own target image")


def find_leaks(split: EntitySplit, kb, info: BatchInfo) -> list[str]:
    """Entities of a batch (targets and every neighbour slot) that are not seen entities."""
    names = list(info.entities) + [kb.records[int(r)].entity for r in info.neighbor_rows.ravel()]
    return sorted({n for n in names if not _seen(split, n)})


def _seen(split: EntitySplit, name: str) -> bool:
    return name in split and split.tier(name) != "unseen"


__all__ = [
    "BatchInfo",
    "BatchPlan",
    "DataConfig",
    "DataLeakError",
    "EmojiBatchSource",
    "SRBatchSource",
    "augment_drawings",
    "check_no_leak",
    "draw_augmentation",
    "find_leaks",
    "premultiplied_drawings",
    "warp_taps",
]
