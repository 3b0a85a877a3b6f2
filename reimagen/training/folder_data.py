"""Training on your own collection: any knowledge base of ⟨image, caption⟩ records without
entities (``reimagen kb build --source folder``), the paper's setting (§3.2 "KNN-ImageText").

Every record of the *training split* is a training example: its caption is the prompt c_p, its
image (composited on white, KnowledgeBase.rgb, resized by area to the stage's resolution) the
target x0, and its K neighbours c_n the top-K records the configured retriever finds for the
caption among the training split, **excluding the query itself** (and any record whose image
file is byte-identical to it: a duplicate would hand the network its own target). The
neighbours are computed once, stored with :mod:`reimagen.kb.triples` under
``<kb>/triples/collection-<digest>.safetensors`` (atomically) and reused while the KB, split,
retriever and K are unchanged.

Held-out split (the evaluation set of ``reimagen bench --kb``): a record is held out when
sha256("reimagen-eval:" + key) falls in the first ``HELD_OUT_FRACTION`` (10%) of the hash
range. The rule looks at the record alone, so adding records to a collection never moves an old
record between the splits. Held-out records are never a training example and never a neighbour
of one: the retriever indexes the training split only. At evaluation a held-out record's
neighbours come from the same training split (it is not in that index, so it never retrieves
itself; byte-identical duplicates in the training split are excluded too).

``FolderBatchSource.batch(step)`` is a pure function of (TrainConfig.seed, step), like the emoji
source (reimagen.training.emoji_batches), so a resumed run sees the batches an uninterrupted one
would. Draw order of a step: example indices, then draw_diffusion_inputs (t, ε, the text and
neighbour drops of TrainConfig.p_drop_text / p_drop_neighbors), then for the SR stage the
augmentation level and noise. Captions hold no entity name to drop: the text dropout is the
whole prompt (TrainConfig.p_drop_text). Of DataConfig, this source reads ``retriever`` and
``max_aug_level`` (the emoji scene-recipe fields do not apply).

SR stage (``lowres_size`` > 0): target = the record at the stage's size (e.g. 64), lowres = the
same record at ``lowres_size`` (e.g. 32, what the base stage learns to draw), upsampled
bilinearly and corrupted at a level a ~ U[0, max_aug_level] (Imagen's noise-conditioning
augmentation, reimagen.diffusion.augment), exactly as the emoji SR source does.

numpy only (the encoder and retriever are passed in or looked up by name).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import attrs
import numpy as np

from reimagen.core.images import from_uint8, to_uint8
from reimagen.core.interfaces import TextEncoding
from reimagen.diffusion.augment import noise_augment, resize_bilinear
from reimagen.kb.records import KnowledgeBaseError
from reimagen.training.contract import Batch, TrainConfig, draw_diffusion_inputs

HELD_OUT_FRACTION = 0.1
HELD_OUT_SALT = "reimagen-eval:"
BACKGROUND = (255, 255, 255)  # KnowledgeBase.rgb's default: what inference shows
IMAGE_BLOCK = 256  # images are rendered in fixed blocks of KB rows (values never depend on history)
TRIPLES_DIR = "triples"
ENCODINGS_DIR = "encodings"


class CollectionError(KnowledgeBaseError):
    """A knowledge base that cannot train or evaluate this stage (one line, naming it)."""


class CollectionLeakError(RuntimeError):
    """A held-out record (or the example itself) reached a training example or neighbour."""


# ---- what a collection is, and its split ---------------------------------------------------------


def is_collection(kb) -> bool:
    """A knowledge base without entities (a folder source, or a plugin source of plain
    ⟨image, caption⟩ pairs); the emoji KB has entities and trains on the scene composer."""
    return not kb.entities


def held_out(key: str, fraction: float = HELD_OUT_FRACTION) -> bool:
    """Whether the record ``key`` belongs to the held-out split (a pure function of the key)."""
    digest = hashlib.sha256((HELD_OUT_SALT + key).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < fraction


def split_rows(kb, fraction: float = HELD_OUT_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, held-out rows), int64 ascending, disjoint, covering every row."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"held-out fraction must be in [0, 1), got {fraction}")
    mask = np.array([held_out(r.key, fraction) for r in kb.records], bool)
    return np.flatnonzero(~mask).astype(np.int64), np.flatnonzero(mask).astype(np.int64)


def same_image_rows(kb, rows: np.ndarray) -> list[list[int]]:
    """For each of ``rows``, every KB row whose image file has the same sha256 (itself
    included): what a neighbour must never be."""
    by_hash: dict[str, list[int]] = {}
    for record in kb.records:
        by_hash.setdefault(record.sha256, []).append(record.row)
    return [by_hash[kb.records[int(r)].sha256] for r in rows]


def kb_facts(kb) -> dict:
    """What run.json records of the collection a run trains on (a resume on another is refused)."""
    return {
        "path": str(Path(kb.folder).resolve()),
        "fingerprint": kb.fingerprint,
        "records": len(kb),
    }


def check_collection(
    kb, *, image_size: int, k: int, lowres_size: int = 0, fraction: float = HELD_OUT_FRACTION
) -> None:
    """The collection can feed a network of ``image_size`` with K neighbours: images stored at
    least that large, more training records than K + the largest duplicate group. One-line
    CollectionError naming the KB otherwise (before any triple or network is built)."""
    if not is_collection(kb):
        raise CollectionError(
            f"--kb: {kb.folder} names entities (the emoji knowledge base); "
            "collection training needs a KB of plain image-caption records"
        )
    if kb.resolution < image_size:
        raise CollectionError(
            f"--kb: {kb.folder} stores {kb.resolution}px images; the "
            f"{image_size}px network needs >= {image_size}px (rebuild it with "
            f"`reimagen kb build --resolution {image_size}`)"
        )
    train, _ = split_rows(kb, fraction)
    excluded = max((len(e) for e in same_image_rows(kb, train)), default=1)
    if len(train) < k + excluded:
        raise CollectionError(
            f"--k {k}: the training split of {kb.folder} has {len(train)} "
            f"records; allowed: at most {max(len(train) - excluded, 0)}"
        )
    if lowres_size and lowres_size >= image_size:
        raise CollectionError(f"lowres_size {lowres_size} must be < image_size {image_size}")


# ---- neighbours -------------------------------------------------------------------------------


def fit_retriever(kb, name: str, rows: np.ndarray):
    """The registered retriever ``name`` over KB ``rows`` (the training split)."""
    from reimagen.core import registry

    return registry.get("retriever", name)().fit(kb, rows=rows)


def eval_neighbors(kb, retriever, rows: np.ndarray, k: int) -> np.ndarray:
    """int64 [n, K]: the top-K training records for each held-out row's caption, never a
    byte-identical copy of its image. ``retriever`` indexes the training split."""
    if k == 0:
        return np.zeros((len(rows), 0), np.int64)
    queries = [kb.records[int(r)].text for r in rows]
    found = retriever.search(queries, k, exclude=same_image_rows(kb, rows))
    return np.asarray(found.ids, np.int64)


@attrs.frozen
class CollectionBatchInfo:
    """Ground truth of one batch, for tests and leak checks."""

    rows: np.ndarray  # [B] int64 KB row of each example
    neighbor_rows: np.ndarray  # [B, K] int64 KB rows shown as its neighbours


class FolderBatchSource:
    """The BatchSource (reimagen.training.contract) over a collection knowledge base.

    kb: an opened KnowledgeBase without entities; encoder: a text Encoder (every caption of the
    training split is encoded once into an EncodingTable cached under ``<kb>/encodings/``);
    config: TrainConfig (seed, batch_size, neighbors K, drop probabilities); data: DataConfig
    (retriever, max_aug_level); image_size: the stage's resolution; lowres_size: > 0 for the
    super-resolution stage. ``cache_dir``: where triples go (default ``<kb>/triples``)."""

    def __init__(
        self,
        kb,
        encoder,
        config: TrainConfig,
        data=None,
        *,
        image_size: int,
        lowres_size: int = 0,
        cache_dir: str | Path | None = None,
        encodings_dir: str | Path | None = None,
        progress: bool = False,
        fraction: float = HELD_OUT_FRACTION,
    ):
        from reimagen.training.data import DataConfig

        check_collection(
            kb,
            image_size=image_size,
            k=config.neighbors,
            lowres_size=lowres_size,
            fraction=fraction,
        )
        self.kb, self.config = kb, config
        self.data = DataConfig() if data is None else data
        self.image_size, self.lowres_size = int(image_size), int(lowres_size)
        self.progress = progress
        self.train_rows, self.held_out_rows = split_rows(kb, fraction)  # [N], [M]
        self.prompts = tuple(kb.records[int(r)].text for r in self.train_rows)  # [N]
        self.triples_path: Path | None = None
        self.triples_status = "none"
        self.triples = self._load_or_build_triples(cache_dir)  # [N, K] int64 KB rows
        check_no_leak(self)
        self.encoder = self._encoding_table(encoder, encodings_dir)
        self._images: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # size -> (uint8, have)

    # ---- setup -------------------------------------------------------------------------

    def _load_or_build_triples(self, cache_dir) -> np.ndarray:
        k = self.config.neighbors
        if k == 0:
            return np.zeros((len(self.train_rows), 0), np.int64)
        from reimagen.kb import triples as tr

        exclude = same_image_rows(self.kb, self.train_rows)  # itself and byte-identical copies
        folder = Path(cache_dir) if cache_dir is not None else Path(self.kb.folder) / TRIPLES_DIR
        path = folder / f"collection-{self._triples_key(exclude)}.safetensors"
        self.triples_path = path
        if path.is_file():
            try:
                found = tr.load_triples(path, self.kb, queries=self.prompts)
                if found.meta.k == k and found.meta.exclude_hash == tr.exclude_hash(exclude):
                    self.triples_status = "loaded"
                    return found.ids
            except (tr.TriplesMismatchError, ValueError) as err:
                print(f"note: rebuilding {path.name}: {err}", file=sys.stderr)
        retriever = fit_retriever(self.kb, self.data.retriever, self.train_rows)
        report = _report("training neighbours") if self.progress else None
        found = tr.build_triples(self.prompts, retriever, k, exclude, progress=report)
        tr.save_triples(path, found)
        self.triples_status = "built"
        return found.ids

    def _triples_key(self, exclude) -> str:
        """Digest of everything the triples depend on (in the file name: a change makes a new
        file rather than silently reusing an old one)."""
        from reimagen.kb import triples as tr

        blob = json.dumps(
            {
                "kb": self.kb.fingerprint,
                "rows": hashlib.sha256(self.train_rows.astype("<i8").tobytes()).hexdigest(),
                "queries": tr.queries_hash(self.prompts),
                "exclude": tr.exclude_hash(exclude),
                "retriever": self.data.retriever,
                "k": self.config.neighbors,
            },
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def _encoding_table(self, encoder, folder):
        """Every training caption encoded once (prompts and neighbour captions are all training
        captions): a step spends no time in the text encoder."""
        from reimagen.encoders.table import EncodingTable

        if folder is None:
            name = f"{encoder.name}-collection-{len(self.prompts)}"
            folder = Path(self.kb.folder) / ENCODINGS_DIR / name
        report = _report("captions encoded") if self.progress else None
        return EncodingTable.build_or_load(encoder, self.prompts, folder, progress=report)

    def warm(self) -> None:
        """Render every training image once (before prefetch workers fork: one shared copy)."""
        for size in filter(None, (self.image_size, self.lowres_size)):
            self.images(self.train_rows, size)

    # ---- one batch ---------------------------------------------------------------------------

    def batch(self, step: int) -> Batch:
        return self.batch_with_info(step)[0]

    def batch_with_info(self, step: int) -> tuple[Batch, CollectionBatchInfo]:
        rng = _rng(self.config.seed, step)
        b, k, size = self.config.batch_size, self.config.neighbors, self.image_size
        pick = rng.integers(len(self.train_rows), size=b)  # [B] positions in the training split
        rows = self.train_rows[pick]  # [B] KB rows
        neighbor_rows = self.triples[pick]  # [B, K]
        images = self.images(rows, size)  # [B, S, S, 3]
        neighbor_images = self.images(neighbor_rows.reshape(-1), size).reshape(b, k, size, size, 3)
        t, noise, use_text, use_neighbors = draw_diffusion_inputs(
            rng, images.shape, self.config.p_drop_text, self.config.p_drop_neighbors
        )
        batch = Batch(
            images=images,
            text=self.encoder.encode([self.prompts[i] for i in pick]),  # [B, L, D]
            neighbor_images=neighbor_images,
            neighbor_text=self._captions(neighbor_rows),  # [B, K, L, D]
            t=t,
            noise=noise,
            use_text=use_text,
            use_neighbors=use_neighbors,
        )
        if self.lowres_size:
            batch = self._add_lowres(rng, batch, rows)
        return batch, CollectionBatchInfo(rows=rows, neighbor_rows=neighbor_rows)

    def _add_lowres(self, rng, batch: Batch, rows: np.ndarray) -> Batch:
        """SR inputs: the record at lowres_size, upsampled to the stage's size, corrupted at
        a ~ U[0, max_aug_level] (same draws as reimagen.training.emoji_batches.SRBatchSource)."""
        up = resize_bilinear(self.images(rows, self.lowres_size), self.image_size)  # [B, S, S, 3]
        level = rng.uniform(0.0, self.data.max_aug_level, size=batch.size).astype(np.float32)
        noise = rng.standard_normal(up.shape, dtype=np.float32)
        return attrs.evolve(batch, lowres=noise_augment(up, level, noise), aug_level=level)

    def images(self, rows: np.ndarray, size: int) -> np.ndarray:
        """float32 [n, size, size, 3] in [-1, 1]: KB ``rows`` on white, area-resized; rendered
        in whole blocks of IMAGE_BLOCK rows and cached as uint8 (as the emoji source does)."""
        if size not in self._images:
            self._images[size] = (
                np.zeros((len(self.kb), size, size, 3), np.uint8),
                np.zeros(len(self.kb), bool),
            )
        cache, have = self._images[size]
        rows = np.asarray(rows, np.int64)
        for block in np.unique(rows[~have[rows]] // IMAGE_BLOCK):
            span = np.arange(block * IMAGE_BLOCK, min((block + 1) * IMAGE_BLOCK, len(self.kb)))
            rgb = self.kb.rgb(span, size=size, background=BACKGROUND)  # [n, s, s, 3] in [-1, 1]
            cache[span] = to_uint8(rgb)
            have[span] = True
        return from_uint8(cache[rows])

    def _captions(self, rows: np.ndarray) -> TextEncoding:
        """Captions of KB ``rows`` [B, K] -> tokens [B, K, L, D] (from the encoding table)."""
        b, k = rows.shape
        length, dim = self.encoder.max_length, self.encoder.dim
        if k == 0:
            return TextEncoding(
                tokens=np.zeros((b, 0, length, dim), np.float32),
                mask=np.zeros((b, 0, length), bool),
                pooled=np.zeros((b, 0, dim), np.float32),
            )
        flat = self.encoder.encode([self.kb.records[int(r)].text for r in rows.reshape(-1)])
        return TextEncoding(
            tokens=flat.tokens.reshape(b, k, *flat.tokens.shape[1:]),
            mask=flat.mask.reshape(b, k, -1),
            pooled=flat.pooled.reshape(b, k, -1),
        )


def check_no_leak(source: FolderBatchSource) -> None:
    """Raise CollectionLeakError if a held-out record is a training example or neighbour, or a
    neighbour is the example's own record (or a byte-identical copy of its image)."""
    if np.intersect1d(source.train_rows, source.held_out_rows).size:
        raise CollectionLeakError("held-out records are in the training split")
    if np.setdiff1d(source.triples, source.train_rows).size:
        raise CollectionLeakError("training neighbours hold records outside the training split")
    exclude = same_image_rows(source.kb, source.train_rows)
    for i, own in enumerate(exclude):
        if np.isin(source.triples[i], own).any():
            key = source.kb.records[int(source.train_rows[i])].key
            raise CollectionLeakError(f"the neighbours of {key!r} include its own image")


def _rng(seed: int, step: int) -> np.random.Generator:
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
        raise ValueError(f"step must be an int >= 0, got {step!r}")
    return np.random.default_rng((seed, int(step)))


def _report(what: str):
    def report(done: int, total: int) -> None:
        print(f"\r{what} {done}/{total}", end="" if done < total else "\n", file=sys.stderr)

    return report


__all__ = [
    "HELD_OUT_FRACTION",
    "CollectionBatchInfo",
    "CollectionError",
    "CollectionLeakError",
    "FolderBatchSource",
    "check_collection",
    "check_no_leak",
    "eval_neighbors",
    "fit_retriever",
    "held_out",
    "is_collection",
    "kb_facts",
    "same_image_rows",
    "split_rows",
]
