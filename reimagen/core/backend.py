"""The part of a backend object (the registry's "torch" / "jax" entries, DESIGN §1) that does not
depend on the framework.

Each backend package defines ``BACKEND``, an instance of a subclass that says what is its own:
the U-Net builder, the weight files it reads and writes, its parameter count, and two class
attributes, its :class:`~reimagen.core.interfaces.Denoiser` class and its trainer (a
:class:`~reimagen.training.loop.TrainLoop`). The methods below only wire those to the
backend API the pipeline, the cascade and the CLI call. No framework is imported here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from reimagen.core.interfaces import Denoiser, TextEncoding
from reimagen.training.loop import TrainLoop, TrainResult
from reimagen.training.contract import BatchSource, TrainConfig
from reimagen.core.unet_config import UNetConfig


class ModelBackend:
    """Shared methods of the backend objects; subclasses set the class attributes and
    implement build_model, load_model, save_model and param_count."""

    name: ClassVar[str]
    _denoiser_class: ClassVar[type[Denoiser]]
    _trainer_class: ClassVar[type[TrainLoop]]

    def model_config(self, model: Any) -> UNetConfig:
        return model.config

    def state_dict(self, model: Any) -> dict[str, np.ndarray]:
        """The weights as host arrays under the canonical (torch ``state_dict``) keys, for
        checks that read values (reimagen.generation.shipped: finiteness, trained neighbour attention).
        A backend that cannot say raises NotImplementedError and those checks are skipped."""
        raise NotImplementedError(f"backend {self.name!r} does not export its weights")

    def make_denoiser(
        self,
        model: Any,
        text: TextEncoding,
        neighbor_images: np.ndarray,
        neighbor_text: TextEncoding,
        dtype: str = "float32",
        *,
        lowres: np.ndarray | None = None,
        aug_level: float = 0.0,
    ) -> Denoiser:
        """``model`` bound to B prompts and their [B, K, H, W, C] neighbours (cached once)."""
        return self._denoiser_class(
            model,
            text,
            neighbor_images,
            neighbor_text,
            dtype=dtype,
            lowres=lowres,
            aug_level=aug_level,
        )

    def train(
        self,
        model_config: UNetConfig,
        train_config: TrainConfig,
        batch_source: BatchSource,
        run_dir: str | Path,
        resume: bool = True,
        **options,
    ) -> TrainResult:
        """Train (or resume) in ``run_dir``; ``options``: see the backend trainer (progress,
        callback, workers, time_limit, and e.g. torch's device)."""
        return self._trainer_class.train(
            model_config, train_config, batch_source, run_dir, resume, **options
        )
