"""Toy parts several test files share: a six-item folder knowledge base, tiny pipelines, and
tiny exported stages (an 8 px base and its 8 -> 16 px SR)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import attrs
import numpy as np

from reimagen.core import registry
from reimagen.core.unet_config import PRESETS
from reimagen.generation.pipeline import Pipeline
from reimagen.generation.shipped import STAGE_KEY
from reimagen.kb.builder import build_knowledge_base
from reimagen.training.checkpoint import ENCODER_KEY

WORDS = ("apple", "robot", "rocket", "cactus", "violin", "anchor")
TINY_BASE = PRESETS["tiny"].replace(
    image_size=8,
    channel_mults=(1,),
    self_attn_resolutions=(8,),
    cross_attn_resolutions=(8,),
    neighbor_attn_resolutions=(8,),
)
TINY_SR = PRESETS["tiny"].replace(cond_image_channels=3, lowres_size=8)  # 8 -> 16 px


@attrs.frozen
class Rec:
    row: int
    key: str
    text: str
    source: str
    entity: str


class MemoryKB:
    """An in-memory stand-in with the KnowledgeBase attributes retrievers use: records
    (caption, source artist, entity), a content fingerprint, ``rows(sources=)``."""

    def __init__(self, texts, sources=None, entities=None):
        sources = sources or ["a"] * len(texts)
        entities = entities or [""] * len(texts)
        self.records = tuple(
            Rec(i, f"k/{i}", t, s, e) for i, (t, s, e) in enumerate(zip(texts, sources, entities))
        )
        blob = json.dumps([[r.text, r.source] for r in self.records]).encode()
        self.fingerprint = hashlib.sha256(blob).hexdigest()

    def __len__(self):
        return len(self.records)

    def rows(self, sources=None, entities=None):
        return np.array(
            [r.row for r in self.records if sources is None or r.source in sources], dtype=np.int64
        )


def toy_kb(folder: Path):
    """Six 16×16 RGBA squares of random colour, captioned "a drawing of a <word>"."""
    rng = np.random.default_rng(0)
    items = []
    for i, word in enumerate(WORDS):
        image = np.zeros((16, 16, 4), np.uint8)
        image[..., :3] = rng.integers(0, 255, 3, dtype=np.uint8)
        image[4:12, 4:12, 3] = 255
        items.append((f"folder/{i}", f"a drawing of a {word}", "folder", "", image))
    return build_knowledge_base(items, folder, resolution=16, progress=False)


def toy_pipeline(kb, config, seed=0, retriever=None) -> Pipeline:
    """A torch Pipeline around a freshly initialised network of ``config``, hash encoder."""
    backend = registry.get("backend", "torch")()
    return Pipeline(
        model=backend.build_model(config, seed=seed),
        backend=backend,
        encoder=registry.get("encoder", "hash")(),
        kb=kb,
        retriever=retriever,
        image_size=config.image_size,
        lowres_size=config.lowres_size,
    )


def export_stage(path: Path, config, stage: str | None = None, seed: int = 0) -> Path:
    """A freshly initialised torch network saved as an exported stage file (hash encoder;
    ``stage``: the stage its header names, none when None)."""
    backend = registry.get("backend", "torch")()
    metadata = {ENCODER_KEY: "hash", **({STAGE_KEY: stage} if stage else {})}
    return backend.save_model(backend.build_model(config, seed=seed), path, metadata=metadata)


def toy_cascade(root: Path) -> tuple[Path, Path]:
    """(weights folder with a tiny exported base + sr, toy KB folder) under ``root``."""
    export_stage(root / "weights" / "base.safetensors", TINY_BASE, "base", seed=1)
    export_stage(root / "weights" / "sr.safetensors", TINY_SR, "sr", seed=2)
    toy_kb(root / "kb")
    return root / "weights", root / "kb"


# A five-caption corpus for the retrievers' scoring formulas, and its tokens as bm25s makes
# them (lower-cased, the stop word "the" dropped).
FORMULA_TEXTS = ["Red apple", "green apple pie", "apple apple tree", "the rocket", "red red rocket"]
FORMULA_DOCS = [
    ["red", "apple"],
    ["green", "apple", "pie"],
    ["apple", "apple", "tree"],
    ["rocket"],
    ["red", "red", "rocket"],
]
