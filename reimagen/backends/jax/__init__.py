"""JAX backend (docs/design.md §1, §4, §9): the Re-Imagen U-Net in Equinox, its denoiser, trainer,
checkpoints and the weight converter. It mirrors the torch backend's package file for file,
except where marked (the table in ``reimagen/backends/__init__.py`` says why):

  layers.py       Linear, Conv2d, norms, TimeMLP, ResBlock, Downsample/Upsample (NHWC, HWIO)
  attention.py    self-, cross- and neighbour attention
  blocks.py       Block, DStack/UStack levels, MidBlock, down_stack/up_stack, split_keys
  unet.py         ReImagenUNet (DStack, neighbour attention, UStack), NeighborCache
  denoiser.py     JaxDenoiser: one batched, jitted call per step over V condition variants
  trainer.py      ε-MSE training with optax AdamW, EMA, clipping; torch's checkpoint layout
  checkpoint.py   weights and AdamW state <-> safetensors checkpoints, pickle-free loading
  distributed.py  jax.distributed across processes (coordinator, process ids)
  convert.py      JAX only: torch state_dict (canonical keys) <-> Equinox module, both ways
  sharding.py     JAX only: the 1-D "batch" device mesh of data-parallel training

Both backends read and write the same safetensors files, so a checkpoint trained on either one
loads on the other. ``BACKEND`` is what the registry's "jax" entry returns; it has the same
methods as the torch one, and the exports match the torch backend's with Jax for Torch.
"""

from __future__ import annotations

from pathlib import Path

from reimagen.backends.jax import checkpoint as _checkpoint
from reimagen.backends.jax import trainer as _trainer
from reimagen.backends.jax.denoiser import JaxDenoiser
from reimagen.backends.jax.unet import ReImagenUNet, build_unet
from reimagen.backends.jax.unet import param_count as _param_count
from reimagen.core.backend import ModelBackend
from reimagen.core.unet_config import UNetConfig


class JaxBackend(ModelBackend):
    """The "jax" backend: builds, trains, saves and loads U-Nets and binds denoisers
    (``make_denoiser``, ``train`` and ``model_config`` come from ModelBackend)."""

    name = "jax"
    _denoiser_class = JaxDenoiser
    _trainer_class = _trainer.Trainer

    def build_model(self, config: UNetConfig, seed: int = 0) -> ReImagenUNet:
        return build_unet(config, seed=seed)

    def load_model(self, path_or_dir: str | Path, ema: bool = True) -> ReImagenUNet:
        """A file or checkpoint folder written by either backend (EMA weights by default)."""
        return _checkpoint.load_model(path_or_dir, ema=ema)

    def save_model(
        self, model: ReImagenUNet, path: str | Path, dtype: str = "float32", metadata=None
    ) -> Path:
        return _checkpoint.save_model(model, path, dtype=dtype, metadata=metadata)

    def param_count(self, config: UNetConfig) -> int:
        return _param_count(config)

    def state_dict(self, model: ReImagenUNet):
        return _checkpoint.weights_to_numpy(model)


BACKEND = JaxBackend()

__all__ = ["BACKEND", "JaxBackend", "JaxDenoiser", "ReImagenUNet", "build_unet"]
