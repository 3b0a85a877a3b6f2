"""Evaluators for ``reimagen bench --kb COLLECTION``: the component kind ``evaluator``.

The contract (hook ``reimagen_register_evaluators``, reimagen.core.hookspecs)::

    factory(**options) -> evaluate
    evaluate(images, examples) -> {metric name: float}

``images`` is uint8 [N, H, W, 3], the image generated for each of N held-out records;
``examples`` the N :class:`HeldOutExample` in the same order (the record's key and caption, its
target and its retrieved references, uint8 at the generated size). An evaluator returns means
over the N examples; each metric name becomes a column of the bench table and a field of each
row in results.json. A plugin registers one like this::

    from reimagen import hookimpl

    def sharpness(images, examples):
        return {"edge energy": float(np.abs(np.diff(images / 255.0, axis=2)).mean())}

    @hookimpl
    def reimagen_register_evaluators(register):
        register("sharpness", lambda **options: sharpness)

The built-in ``pixel`` evaluator (registered here, through the same hook) measures pixel-space
similarity, with images in [0, 1]:

* ``target PSNR`` (dB, higher is closer) and ``target MSE`` to the held-out record's own image;
* ``target corr``: cosine similarity of the mean-centred pixel vectors (Pearson's r over all
  pixels and channels): 1 = the same picture up to brightness and contrast; uncentred cosine
  would be ~1 for any two drawings on a white background;
* ``ref PSNR``: PSNR to the *nearest* of the retrieved references (the one closest to the
  output): how close the output is to copying a neighbour.

numpy only.
"""

from __future__ import annotations

import attrs
import numpy as np

from reimagen.core.hookspecs import hookimpl

PSNR_CAP = 100.0  # dB reported for identical images (MSE 0)


@attrs.frozen
class HeldOutExample:
    """One held-out record as an evaluator sees it."""

    key: str  # the record's id, "folder/<path>"
    text: str  # its caption (the prompt)
    target: np.ndarray  # [H, W, 3] uint8: the record's image at the generated size, on white
    references: np.ndarray  # [K, H, W, 3] uint8: its retrieved neighbours (training records)
    reference_keys: tuple[str, ...]  # [K]


def mse(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mean squared error over the last three axes, images uint8 scaled to [0, 1]."""
    diff = a.astype(np.float64) / 255.0 - b.astype(np.float64) / 255.0
    return np.mean(diff**2, axis=(-3, -2, -1))


def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """10·log10(1 / MSE) in dB (peak 1), capped at PSNR_CAP for identical images."""
    error = mse(a, b)
    with np.errstate(divide="ignore"):
        return np.minimum(10.0 * np.log10(1.0 / error), PSNR_CAP)


def centred_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine of the mean-centred pixel vectors (Pearson's r); 0 when either is flat."""
    x = a.reshape(*a.shape[:-3], -1).astype(np.float64)
    y = b.reshape(*b.shape[:-3], -1).astype(np.float64)
    x = x - x.mean(axis=-1, keepdims=True)
    y = y - y.mean(axis=-1, keepdims=True)
    norm = np.linalg.norm(x, axis=-1) * np.linalg.norm(y, axis=-1)
    return np.divide((x * y).sum(axis=-1), norm, out=np.zeros_like(norm), where=norm > 0)


def pixel_metrics(images: np.ndarray, examples) -> dict[str, float]:
    """The ``pixel`` evaluator: similarity to the target and to the nearest reference."""
    targets = np.stack([e.target for e in examples])  # [N, H, W, 3]
    out = {
        "target PSNR": float(psnr(images, targets).mean()),
        "target MSE": float(mse(images, targets).mean()),
        "target corr": float(centred_cosine(images, targets).mean()),
    }
    nearest = [
        float(psnr(e.references, image[None]).max())
        for image, e in zip(images, examples)
        if len(e.references)
    ]  # max over the K references
    if nearest:
        out["ref PSNR"] = float(np.mean(nearest))
    return out


def check_metrics(name: str, metrics) -> dict[str, float]:
    """An evaluator's answer, checked: a dict of metric name -> finite float."""
    if not isinstance(metrics, dict):
        raise TypeError(
            f"evaluator {name!r} returned {type(metrics).__name__}; expected a "
            "dict of metric name -> float"
        )
    checked = {}
    for key, value in metrics.items():
        if not isinstance(key, str) or not key:
            raise TypeError(
                f"evaluator {name!r}: metric names must be non-empty strings, got {key!r}"
            )
        try:
            checked[key] = float(value)
        except (TypeError, ValueError):
            raise TypeError(
                f"evaluator {name!r}: metric {key!r} is {value!r}, not a number"
            ) from None
    return checked


@hookimpl
def reimagen_register_evaluators(register):
    register("pixel", lambda **options: pixel_metrics)


__all__ = ["HeldOutExample", "centred_cosine", "check_metrics", "mse", "pixel_metrics", "psnr"]
