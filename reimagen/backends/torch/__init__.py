"""PyTorch backend (docs/design.md §4, §9): the Re-Imagen U-Net, its denoiser, trainer and checkpoints.

Modules (the JAX backend has a twin of the same name for each, except where marked; the
table in ``reimagen/backends/__init__.py`` says why):
  layers.py          norms, TimeMLP, ResBlock, Downsample/Upsample
  attention.py       self-, cross- and neighbour attention
  blocks.py          Block, DStack/UStack levels, MidBlock, down_stack/up_stack
  unet.py            ReImagenUNet (DStack, neighbour attention, UStack), NeighborCache
  denoiser.py        TorchDenoiser: one batched call per step over V condition variants
  trainer.py         ε-MSE training with AdamW, EMA, clipping, bf16, bit-identical resume
  checkpoint.py      weights and AdamW state <-> safetensors checkpoints, pickle-free loading
  distributed.py     torchrun process group, collectives, which rows a rank trains on
  compiled.py        torch only: compile_unet, torch.compile of the forward (an option)
  scene_composer.py  torch only: scene batches composed on the training device

``BACKEND`` is what the registry's "torch" entry returns. The exports match the JAX backend's
name for name, with Torch in place of Jax.
"""

from __future__ import annotations

from pathlib import Path

from reimagen.backends.torch import checkpoint as _checkpoint
from reimagen.backends.torch import trainer as _trainer
from reimagen.backends.torch.denoiser import TorchDenoiser
from reimagen.backends.torch.unet import ReImagenUNet, build_unet
from reimagen.backends.torch.unet import param_count as _param_count
from reimagen.core.backend import ModelBackend
from reimagen.core.unet_config import UNetConfig


class TorchBackend(ModelBackend):
    """The "torch" backend: builds, trains, saves and loads U-Nets and binds denoisers
    (``make_denoiser``, ``train`` and ``model_config`` come from ModelBackend)."""

    name = "torch"
    _denoiser_class = TorchDenoiser
    _trainer_class = _trainer.Trainer

    def build_model(self, config: UNetConfig, seed: int = 0) -> ReImagenUNet:
        return build_unet(config, seed=seed)

    def load_model(self, path_or_dir: str | Path, ema: bool = True) -> ReImagenUNet:
        return _checkpoint.load_model(path_or_dir, ema=ema)

    def save_model(
        self, model: ReImagenUNet, path: str | Path, dtype: str = "float32", metadata=None
    ) -> Path:
        return _checkpoint.save_model(model, path, dtype=dtype, metadata=metadata)

    def param_count(self, config: UNetConfig) -> int:
        return _param_count(config)

    def state_dict(self, model: ReImagenUNet):
        return _checkpoint.weights_to_numpy(model)


BACKEND = TorchBackend()

__all__ = ["BACKEND", "ReImagenUNet", "TorchBackend", "TorchDenoiser", "build_unet"]
