"""The backend interface (the registry's "backend" kind: "torch", "jax"; docs/design.md §1).

Each backend package defines ``BACKEND``, an instance of a direct subclass of
:class:`ModelBackend` that implements its abstract methods (the U-Net builder, the weight files
it reads and writes, its parameter count, its weights as host arrays) and sets three class
attributes: ``name``, its :class:`~reimagen.core.interfaces.Denoiser` class and its trainer (a
:class:`~reimagen.training.loop.TrainLoop`). The concrete methods here only wire those to the
API the pipeline, the cascade and the CLI call. No framework is imported here.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from reimagen.core.interfaces import Denoiser, TextEncoding
from reimagen.core.unet_config import UNetConfig
from reimagen.training.contract import BatchSource, TrainConfig
from reimagen.training.loop import TrainLoop, TrainResult


class ModelBackend(abc.ABC):
    """A backend: builds, loads, saves and counts U-Nets (``model``: the backend's own network
    object, with a ``.config`` UNetConfig), binds them to conditions and trains them."""

    REQUIRED_ATTRIBUTES = ("name", "_denoiser_class", "_trainer_class")
    name: ClassVar[str]  # the registry name, e.g. "torch"
    # a Denoiser subclass, built by make_denoiser; Callable: the abstract Denoiser declares no
    # __init__, each backend's takes the arguments interfaces.Denoiser documents
    _denoiser_class: ClassVar[Callable[..., Denoiser]]
    _trainer_class: ClassVar[type[TrainLoop]]  # run by train

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        missing = [a for a in cls.REQUIRED_ATTRIBUTES if not hasattr(cls, a)]
        if missing:
            raise TypeError(f"backend {cls.__name__} must set {', '.join(missing)}")

    @abc.abstractmethod
    def build_model(self, config: UNetConfig, seed: int = 0) -> Any:
        """A freshly initialised network for ``config`` (a pure function of ``seed``)."""

    @abc.abstractmethod
    def load_model(self, path_or_dir: str | Path, ema: bool = True) -> Any:
        """A safetensors file or checkpoint folder written by either backend (``ema``: the
        EMA weights of a checkpoint folder) -> the network, its config from the metadata."""

    @abc.abstractmethod
    def save_model(
        self, model: Any, path: str | Path, dtype: str = "float32", metadata=None
    ) -> Path:
        """Write the weights (``dtype`` "float32" | "bfloat16") and config to a safetensors
        file both backends read; returns its path."""

    @abc.abstractmethod
    def param_count(self, config: UNetConfig) -> int:
        """Parameters of the network ``config`` describes, counted without allocating it."""

    @abc.abstractmethod
    def state_dict(self, model: Any) -> dict[str, np.ndarray]:
        """The weights as host arrays under the canonical (torch ``state_dict``) keys, for
        checks that read values (reimagen.generation.shipped: finiteness, trained neighbour
        attention). A backend that cannot export them raises NotImplementedError and those
        checks are skipped."""

    def model_config(self, model: Any) -> UNetConfig:
        return model.config

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
