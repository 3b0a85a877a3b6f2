"""EntityBench's judge: a small CNN that names the emoji drawn in a generated scene (docs/design.md §8).

The paper scores EntityDrawBench with human raters (§4.2, Table 2: "faithful to both the entity
appearance and the text description"). Here entity faithfulness is automatic: a classifier
trained on EVERY entity's Twemoji drawing (all tiers, unseen included: it is the judge, not the
generator) composed into random scenes exactly as the training targets are composed
(reimagen.kb.scenes), at the output resolution, with augmentation mild enough to look like a
generator's output (sub-pixel shift and scale, blur, colour gain, pixel noise).

Its accuracy on clean composites is the benchmark's *ceiling*: a generator that drew every
target perfectly would score that. Measured on fresh random composites (4 per entity, a seed
training never used; the scene space is finite, so "fresh" means new draws and new crops of the
augmentation, not unseen drawings - every drawing is a class). It ships in the repo
(``reimagen/assets/evaluator/``: ``evaluator.safetensors`` + ``evaluator.json`` with the entity
names, image size, config and measured accuracy), so benchmark numbers are reproducible; retrain
with ``python -m reimagen.bench.evaluator --train``.

Why a plain 7-conv CNN and not a library model: nothing pretrained may be downloaded, the input is
32×32, and the machine is two shared CPU cores. Seven 3×3 conv + BatchNorm + ReLU layers (widths
16-32-32-64-64-128-128, three stride-2), global average pooling and a linear head over 1,902
classes: 0.54M parameters, ~11M multiply-adds per image. Convolutions run in bf16 autocast (AMX),
the 1,902-way head in float32. One thread is several times faster than two on a busy 2-core
machine. The 1,902-way problem sits on a plateau at ln(1902) ≈ 7.55 for the first ~300 steps
(200 classes start learning at ~100), so it needs thousands of steps: the shipped one took
5,000 steps of 128 (24 min on one shared core).

This module is the judge itself (:class:`Evaluator`: load, predict, save) and its entry point;
the network, its config and augmentation are :mod:`reimagen.bench.evaluator_network`, the
drawings and scenes :mod:`reimagen.bench.scene_composer`, training and accuracy
:mod:`reimagen.bench.evaluator_training`. torch is imported inside functions: importing this
module (e.g. for ``reimagen --help``) loads no framework.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from reimagen.core import digests
from reimagen.core import io as rio

if TYPE_CHECKING:
    from reimagen.bench.evaluator_network import EvaluatorConfig

EVALUATOR_DIR = Path(__file__).resolve().parents[1] / "assets" / "evaluator"
WEIGHTS_FILE = "evaluator.safetensors"
META_FILE = "evaluator.json"
FORMAT = "reimagen-evaluator"
FORMAT_VERSION = 1
TOP = 5


class EvaluatorError(ValueError):
    """A missing, damaged or mismatched evaluator file, or bad input to the evaluator."""


class EvaluatorIntegrityError(EvaluatorError, digests.IntegrityError):
    """An evaluator file whose bytes differ from its recorded sha256 (SHA256SUMS)."""


class Evaluator:
    """A trained judge: ``predict(images)`` names the entity in each image.

    entities: the class names (CLDR), in logit order; image_size: the side it judges at."""

    def __init__(self, network, entities: Sequence[str], image_size: int, meta: dict | None = None):
        self.network = network.eval()
        self.entities = tuple(entities)
        self.image_size = int(image_size)
        self.meta = dict(meta or {})
        self._index = {name: i for i, name in enumerate(self.entities)}

    def index(self, name: str) -> int:
        try:
            return self._index[name]
        except KeyError:
            raise EvaluatorError(f"entity {name!r} is not one the evaluator knows") from None

    def logits(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """uint8 [B, H, W, 3] -> float32 [B, E] logits (float32 inference, eval-mode BN)."""
        import torch

        from reimagen.bench.evaluator_network import to_input

        x = to_input(images, self.image_size)
        out = []
        with torch.inference_mode():
            for start in range(0, len(x), batch_size):
                out.append(self.network(x[start : start + batch_size]).float().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.entities)), np.float32)

    def predict(
        self, images: np.ndarray, top: int = TOP
    ) -> tuple[list[tuple[str, ...]], np.ndarray]:
        """uint8 [B, H, W, 3] -> (the ``top`` most likely entity names per image, best first;
        their softmax probabilities float32 [B, top])."""
        logits = self.logits(images)  # [B, E]
        order = np.argsort(-logits, axis=1, kind="stable")[:, :top]  # [B, top]
        shifted = logits - logits.max(1, keepdims=True)
        probs = np.exp(shifted) / np.exp(shifted).sum(1, keepdims=True)  # [B, E]
        names = [tuple(self.entities[j] for j in row) for row in order]
        return names, np.take_along_axis(probs, order, 1).astype(np.float32)

    # -- files
    @classmethod
    def load(cls, folder: str | Path | None = None) -> Evaluator:
        """The shipped evaluator (or the one in ``folder``): safetensors weights + JSON, checked
        against each other (sha256, class count); never unpickled."""
        import torch

        from reimagen.bench.evaluator_network import EvaluatorConfig, build_network

        folder = Path(EVALUATOR_DIR if folder is None else folder)
        meta = read_meta(folder)
        weights = folder / WEIGHTS_FILE
        if rio.sha256_file(weights) != meta["weights_sha256"]:
            raise EvaluatorIntegrityError(
                f"{weights}: sha256 does not match {META_FILE} (file replaced?)"
            )
        tensors, _ = rio.load_safetensors(weights, check=False)  # hash checked just above
        config = EvaluatorConfig.from_dict(meta["config"])
        network = build_network(config, len(meta["entities"]))
        state = {k: torch.from_numpy(np.array(v)) for k, v in tensors.items()}
        try:
            network.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise EvaluatorError(f"{weights}: does not fit the config in {META_FILE} ({err})")
        network = network.float().to(memory_format=torch.channels_last)
        return cls(network, meta["entities"], config.image_size, meta)

    def save(self, folder: str | Path, config: EvaluatorConfig, extra: dict | None = None) -> Path:
        """Weights first, then the JSON that names their hash (a reader never sees a JSON
        pointing at weights that are not there)."""
        folder = Path(folder)
        tensors = {k: v.detach().cpu().numpy() for k, v in self.network.state_dict().items()}
        rio.atomic_save_safetensors(folder / WEIGHTS_FILE, tensors, {"format": FORMAT})
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "image_size": self.image_size,
            "config": config.to_dict(),
            "weights_sha256": rio.sha256_file(folder / WEIGHTS_FILE),
            "parameters": int(sum(v.size for v in tensors.values())),
            **(extra or {}),
            "entities": list(self.entities),
        }
        rio.atomic_write_text(folder / META_FILE, json.dumps(meta, indent=1, ensure_ascii=False))
        digests.write_sums(folder, [WEIGHTS_FILE, META_FILE])  # evaluator.json's own checksum
        self.meta = meta
        return folder


def read_meta(folder: str | Path | None = None) -> dict[str, Any]:
    """evaluator.json of ``folder`` (default: the shipped one), format-checked. Cheap: no
    framework, so prompt files can be validated against the entity list before any work."""
    folder = Path(EVALUATOR_DIR if folder is None else folder)
    path = folder / META_FILE
    if not path.is_file():
        raise EvaluatorError(
            f"no evaluator at {folder} (train one: python -m reimagen.bench.evaluator --train)"
        )
    try:  # SHA256SUMS covers evaluator.json itself (its weights' hash is inside it)
        digests.verify_sums(folder, required=[META_FILE, WEIGHTS_FILE])
        meta = json.loads(path.read_text(encoding="utf-8"))
    except digests.IntegrityError as err:
        raise EvaluatorIntegrityError(str(err)) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:  # e.g. a pickle in its place
        raise EvaluatorError(f"{path}: not valid JSON ({err})") from None
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise EvaluatorError(f"{path}: not a {FORMAT} v{FORMAT_VERSION} file")
    for key in ("entities", "config", "weights_sha256", "image_size"):
        if key not in meta:
            raise EvaluatorError(f"{path}: missing {key!r}")
    return meta


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m reimagen.bench.evaluator [--train] [--steps N] [--out DIR]``: train and ship
    the evaluator, or (default) report the shipped one's accuracy."""
    import argparse

    from reimagen.bench.evaluator_network import EvaluatorConfig
    from reimagen.bench.evaluator_training import measure_accuracy, train_evaluator
    from reimagen.bench.scene_composer import SceneComposer, target_drawings

    parser = argparse.ArgumentParser(
        prog="python -m reimagen.bench.evaluator", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--train", action="store_true", help="train and write a new evaluator")
    parser.add_argument("--steps", type=int, default=EvaluatorConfig().steps)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--out", type=Path, default=EVALUATOR_DIR)
    args = parser.parse_args(argv)
    if args.train:
        config = EvaluatorConfig(steps=args.steps, image_size=args.image_size)
        evaluator, composer, log = train_evaluator(config, progress=True)
        accuracy = {
            "clean": measure_accuracy(evaluator, composer),
            "augmented": measure_accuracy(evaluator, composer, augmented=True, config=config),
        }
        evaluator.save(args.out, config, {"training": log, "accuracy": accuracy})
        print(json.dumps({"training": log, "accuracy": accuracy}, indent=1))
        return 0
    evaluator = Evaluator.load(args.out)
    composer = SceneComposer(target_drawings(evaluator.entities)[1], evaluator.image_size)
    print(json.dumps(measure_accuracy(evaluator, composer), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
