"""PyTorch backend (DESIGN §4, §9): the Re-Imagen U-Net, its denoiser, trainer and checkpoints.

Modules (the JAX backend mirrors them file for file):
  layers.py      norms, ResBlock, self/cross/neighbour attention
  unet.py        ReImagenUNet (DStack, neighbour attention, UStack), NeighborCache
  denoiser.py    TorchDenoiser: one batched call per step over V condition variants
  trainer.py     ε-MSE training with AdamW, EMA, clipping, bf16, bit-identical resume
  checkpoint.py  safetensors + JSON checkpoints, atomic commit, pickle-free loading

``BACKEND`` is what the registry's "torch" entry returns.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from reimagen.backends.torch import checkpoint as _checkpoint
from reimagen.backends.torch import trainer as _trainer
from reimagen.backends.torch.denoiser import TorchDenoiser
from reimagen.backends.torch.unet import ReImagenUNet, build_unet
from reimagen.backends.torch.unet import param_count as _param_count
from reimagen.core.interfaces import TextEncoding
from reimagen.core.training import BatchSource, TrainConfig
from reimagen.core.unet_config import UNetConfig


class TorchBackend:
    """The "torch" backend: builds, trains, saves and loads U-Nets and binds denoisers."""

    name = "torch"

    def build_model(self, config: UNetConfig, seed: int = 0) -> ReImagenUNet:
        return build_unet(config, seed=seed)

    def load_model(self, path_or_dir: str | Path, ema: bool = True) -> ReImagenUNet:
        return _checkpoint.load_model(path_or_dir, ema=ema)

    def save_model(self, model: ReImagenUNet, path: str | Path, dtype: str = "float32") -> Path:
        return _checkpoint.save_model(model, path, dtype=dtype)

    def model_config(self, model: ReImagenUNet) -> UNetConfig:
        return model.config

    def make_denoiser(
        self,
        model: ReImagenUNet,
        text: TextEncoding,
        neighbor_images: np.ndarray,
        neighbor_text: TextEncoding,
        dtype: str = "float32",
        *,
        lowres: np.ndarray | None = None,
        aug_level: float = 0.0,
    ) -> TorchDenoiser:
        return TorchDenoiser(
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
    ) -> _trainer.TrainResult:
        return _trainer.train(model_config, train_config, batch_source, run_dir, resume, **options)

    def param_count(self, config: UNetConfig) -> int:
        return _param_count(config)


BACKEND = TorchBackend()

__all__ = ["BACKEND", "ReImagenUNet", "TorchBackend", "TorchDenoiser", "build_unet"]
