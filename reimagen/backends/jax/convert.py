"""Weights between the JAX (Equinox) and PyTorch U-Nets: a path -> array mapping (docs/design.md §9).

The canonical layout is the torch ``state_dict``: its keys (``down.1.blocks.0.res.conv1.weight``)
and its array layouts are what safetensors checkpoints hold, whichever backend wrote them. The
Equinox module tree has the same attribute names, so the key of a JAX leaf is its pytree path
written torch-style (``.down[1].blocks[0]`` -> ``down.1.blocks.0``). Only one array changes
layout: a convolution kernel, OIHW in torch and HWIO here (NHWC convolutions). Every other
parameter (Linear ``[out, in]``, norms, null tokens) is stored identically.

Conversion is strict: a torch key with no JAX leaf, a JAX leaf with no torch key, or a shape
that disagrees raises :class:`KeyMismatchError` naming the keys. Transposes are exact, so
torch -> JAX -> torch returns bit-identical arrays. The functions work on any module of the
tree (a single ResBlock as well as the whole U-Net), which is what the per-module parity tests
use. Nothing here imports torch except :func:`from_torch` / :func:`to_torch`, lazily.

JAX only: a torch module's ``state_dict`` already is the canonical layout, so the torch backend
needs no converter. Weights files and optimizer state are ``checkpoint.py`` (both backends).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import DictKey, GetAttrKey, SequenceKey

from reimagen.backends.jax.layers import Conv2d
from reimagen.backends.jax.unet import ReImagenUNet
from reimagen.core.unet_config import UNetConfig

OIHW_TO_HWIO = (2, 3, 1, 0)  # torch conv kernel [out, in, kh, kw] -> [kh, kw, in, out]
HWIO_TO_OIHW = (3, 2, 0, 1)

ModuleT = TypeVar("ModuleT", bound=eqx.Module)  # a load returns the type it was given


class KeyMismatchError(ValueError):
    """The two sides of a conversion do not have the same parameters."""


def torch_key(path) -> str:
    """A pytree path (GetAttrKey / SequenceKey / DictKey entries) -> the torch state_dict key."""
    parts = []
    for entry in path:
        if isinstance(entry, GetAttrKey):
            parts.append(entry.name)
        elif isinstance(entry, SequenceKey):
            parts.append(str(entry.idx))
        elif isinstance(entry, DictKey):
            parts.append(str(entry.key))
        else:
            raise TypeError(f"unexpected pytree path entry {entry!r} in {path!r}")
    return ".".join(parts)


def _leaves(module: eqx.Module) -> list[tuple[str, jax.Array, bool]]:
    """(torch key, array, is a conv kernel) for every array leaf of ``module``."""
    conv_kernels = set()
    for path, node in jax.tree_util.tree_flatten_with_path(
        module, is_leaf=lambda n: isinstance(n, Conv2d)
    )[0]:
        if isinstance(node, Conv2d):
            conv_kernels.add(torch_key(path) + ".weight" if path else "weight")
    return [
        (key, leaf, key in conv_kernels)
        for key, leaf in (
            (torch_key(path), leaf)
            for path, leaf in jax.tree_util.tree_flatten_with_path(module)[0]
        )
    ]


def state_dict(module: eqx.Module) -> dict[str, np.ndarray]:
    """The module's parameters as a torch-layout ``state_dict`` of numpy arrays (writable host
    copies, C-contiguous)."""
    out = {}
    for key, leaf, is_conv in _leaves(module):
        array = np.asarray(leaf)
        out[key] = np.array(array.transpose(HWIO_TO_OIHW) if is_conv else array, order="C")
    return out


def load_state_dict(module: ModuleT, state: Mapping[str, np.ndarray]) -> ModuleT:
    """A copy of ``module`` (a real module or an ``eqx.filter_eval_shape`` skeleton) with every
    parameter taken from the torch-layout ``state``; dtypes follow ``module``. Strict: unmapped
    or unused keys and shape mismatches raise :class:`KeyMismatchError`."""
    leaves = _leaves(module)
    own = {key for key, _, _ in leaves}
    missing, unused = sorted(own - set(state)), sorted(set(state) - own)
    if missing or unused:
        raise KeyMismatchError(
            f"state_dict does not match the JAX module: {len(missing)} JAX parameter(s) have no "
            f"key (e.g. {missing[:3]}), {len(unused)} key(s) are unused (e.g. {unused[:3]})"
        )
    values = []
    for key, leaf, is_conv in leaves:
        array = np.asarray(state[key])
        array = array.transpose(OIHW_TO_HWIO) if is_conv else array
        if tuple(array.shape) != tuple(leaf.shape):
            torch_shape = tuple(np.asarray(state[key]).shape)
            raise KeyMismatchError(
                f"{key}: torch shape {torch_shape} maps to {tuple(array.shape)}, the JAX module "
                f"expects {tuple(leaf.shape)}"
            )
        values.append(jnp.asarray(array, dtype=leaf.dtype))
    treedef = jax.tree_util.tree_structure(module)
    return jax.tree_util.tree_unflatten(treedef, values)


def skeleton(config: UNetConfig) -> ReImagenUNet:
    """The U-Net's structure with ``ShapeDtypeStruct`` leaves: nothing allocated or drawn."""
    return eqx.filter_eval_shape(ReImagenUNet, config, rng=None)


def unet_from_state_dict(config: UNetConfig, state: Mapping[str, np.ndarray]) -> ReImagenUNet:
    """A JAX U-Net for ``config`` holding the torch-layout weights ``state``."""
    return load_state_dict(skeleton(config), state)


# ---- live torch modules ------------------------------------------------------------------------


def from_torch(torch_module, like: eqx.Module | None = None) -> eqx.Module:
    """A torch module -> its JAX twin. ``like`` is the JAX module (or skeleton) to fill; for a
    whole ``ReImagenUNet`` it is built from ``torch_module.config`` when omitted."""
    state = {k: v.detach().cpu().float().numpy() for k, v in torch_module.state_dict().items()}
    if like is None:
        like = skeleton(torch_module.config)
    return load_state_dict(like, state)


def to_torch(module: eqx.Module, torch_module):
    """Copy the JAX ``module``'s parameters into ``torch_module`` (same tree) in place, strictly
    (torch's ``load_state_dict(strict=True)``: missing/unexpected keys raise). Returns it."""
    import torch

    state = {k: torch.from_numpy(v) for k, v in state_dict(module).items()}
    torch_module.load_state_dict(state, strict=True)
    return torch_module
