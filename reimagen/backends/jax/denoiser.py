"""The JAX denoiser: the U-Net bound to one batch's prompts and cached neighbours.

The twin of the torch backend's ``denoiser.py`` with the same contract
(:class:`reimagen.core.interfaces.Denoiser`): a sampler asks for ε under V condition variants
per step; :class:`JaxDenoiser` runs ONE jit-compiled network call of V·B rows with per-row
``use_text`` / ``use_neighbors`` masks. The K neighbours go through the DStack once, at
construction (t = 0, paper §3.2), and every step and variant reuses their keys/values.

Compilation: the jitted step function is module level and specialises only on shapes and on
whether any row uses the neighbours, so interleaved guidance (("full", "neighbors") and
("full", "text") alternating, both V=2) compiles once, and t is a traced scalar (no recompile
per step). When no row of a call uses neighbours the cache is left out, which gives exactly
the K=0 network, as torch's run-time skip does.
"""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from reimagen.backends.jax.unet import NeighborCache, ReImagenUNet, TextInputs
from reimagen.core.conditions import check_conditions
from reimagen.core.interfaces import Denoiser, TextEncoding, variant_masks

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def resolve_dtype(dtype) -> jnp.dtype:
    """'float32' | 'bfloat16' (or those numpy/jax dtypes) -> the jnp dtype; else an error."""
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    try:
        if jnp.dtype(dtype) in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)):
            return jnp.dtype(dtype).type
    except TypeError:
        pass
    raise ValueError(f"dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")


def cast_floats(tree, dtype):
    """Every floating-point array of ``tree`` (a model, inputs) cast to ``dtype``."""

    def cast(a):
        return a.astype(dtype) if eqx.is_inexact_array(a) and a.dtype != dtype else a

    return jax.tree_util.tree_map(cast, tree)


def text_inputs(text: TextEncoding) -> TextInputs:
    """Host TextEncoding (numpy) -> device arrays."""
    return TextInputs(
        jnp.asarray(np.asarray(text.tokens, dtype=np.float32)),
        jnp.asarray(np.asarray(text.mask, dtype=bool)),
        jnp.asarray(np.asarray(text.pooled, dtype=np.float32)),
    )


@eqx.filter_jit
def encode_neighbors(model: ReImagenUNet, images, text: TextInputs) -> NeighborCache:
    """``model.encode_neighbors`` compiled: [B, K, H, W, C] images + [B, K, ...] text -> cache."""
    return model.encode_neighbors(images, *text)


@eqx.filter_jit
def eps_rows(model, x, t, text: TextInputs, use_text, use_neighbors, cache, lowres, aug_level):
    """One network call for V variants of B samples: x [B, H, W, C], t scalar, use_* [V·B]
    -> ε [V, B, H, W, C] float32. Rows are variant-major (row v·B + b = sample b)."""
    b = x.shape[0]
    v = use_text.shape[0] // b
    tile = lambda a: jnp.tile(a, (v,) + (1,) * (a.ndim - 1))
    eps = model(
        tile(x.astype(model.text_pool.weight.dtype)),  # [V·B, H, W, C]
        jnp.broadcast_to(t, (v * b,)),
        TextInputs(*(tile(a) for a in text)),
        use_text=use_text,
        use_neighbors=use_neighbors,
        cache=None if cache is None else cache.tile(v),
        lowres=None if lowres is None else tile(lowres),
        aug_level=None if aug_level is None else jnp.broadcast_to(aug_level, (v * b,)),
    )
    return eps.astype(jnp.float32).reshape(v, b, *eps.shape[1:])


class JaxDenoiser(Denoiser):
    """ε(x_t, t | variant) for B fixed samples; one batched, jitted call of V·B rows per step."""

    def __init__(
        self,
        model: ReImagenUNet,
        text: TextEncoding,
        neighbor_images: np.ndarray,
        neighbor_text: TextEncoding,
        *,
        dtype="float32",
        lowres: np.ndarray | None = None,
        aug_level: float = 0.0,
    ):
        check_conditions(model.config, text, neighbor_images, neighbor_text, lowres)
        self.dtype = resolve_dtype(dtype)
        self.model = cast_floats(model, self.dtype)
        self.batch_size = len(text)
        self.calls = 0
        self.rows = 0
        self._text = cast_floats(text_inputs(text), self.dtype)
        self._lowres = None if lowres is None else self.asarray(np.asarray(lowres, np.float32))
        self._aug_level = None if lowres is None else jnp.float32(aug_level)
        images = jnp.asarray(np.asarray(neighbor_images, dtype=np.float32), self.dtype)
        if images.shape[1] == 0:
            self.cache = NeighborCache(0, {})
        else:
            nb_text = cast_floats(text_inputs(neighbor_text), self.dtype)
            self.cache = encode_neighbors(self.model, images, nb_text)

    def __call__(self, x: jax.Array, t: float, variants: Sequence[str]) -> jax.Array:
        """x [B, H, W, C], t scalar -> ε [V, B, H, W, C] float32, in ``variants`` order."""
        use_text, use_neighbors = variant_masks(variants)  # [V] each; unknown names raise
        v, b = len(variants), self.batch_size
        if x.shape[0] != b:
            raise ValueError(f"x has batch {x.shape[0]}, the denoiser was built for B={b}")
        cache = self.cache if (use_neighbors.any() and self.cache.k) else None
        eps = eps_rows(
            self.model,
            jnp.asarray(x),
            jnp.float32(t),
            self._text,
            jnp.asarray(np.repeat(use_text, b)),  # [V·B]
            jnp.asarray(np.repeat(use_neighbors, b)),
            cache,
            self._lowres,
            self._aug_level,
        )
        self.calls += 1
        self.rows += v * b
        return eps

    def asarray(self, array: np.ndarray) -> jax.Array:
        return jnp.asarray(np.asarray(array))

    def to_numpy(self, array: jax.Array) -> np.ndarray:
        host = np.asarray(array)
        return host.astype(np.float32) if host.dtype != np.float32 else host
