"""The few array operations that numpy, torch and jax spell differently (backend-neutral core).

Everything else in the samplers, guidance and thresholding is written with the operators all
three array types share (``+ - * /``, ``abs``, ``.reshape``, ``.clip(min=, max=)``, integer
indexing), so one implementation runs on every backend and the trajectories match.

Only sorting needs a dispatch: numpy ≥ 2 and jax arrays expose their array-API namespace through
``__array_namespace__`` (whose ``sort(x, axis=)`` is the standard one), torch tensors do not (yet),
and ``ndarray.sort`` sorts in place while ``Tensor.sort`` returns a (values, indices) pair. The
dispatch goes by the array's own namespace, so this module imports no framework: the framework
is already loaded whenever one of its arrays exists. ``array_api_compat`` would cover this one
call too, but is not a dependency of the project; a dozen lines are cheaper than adding it.
"""

from __future__ import annotations

import math
from typing import Any


def sort_last_axis(x: Any) -> Any:
    """Ascending sort along the last axis of a numpy, jax or torch array (a new array)."""
    get_namespace = getattr(x, "__array_namespace__", None)
    if get_namespace is not None:  # numpy >= 2, jax: array-API standard sort
        return get_namespace().sort(x, axis=-1)
    if type(x).__module__.split(".")[0] == "torch":  # torch.Tensor has no __array_namespace__
        return x.sort(dim=-1).values
    raise TypeError(
        f"sort_last_axis: unsupported array type {type(x).__module__}.{type(x).__name__}; "
        "expected a numpy, jax or torch array"
    )


def quantile_last_axis(x: Any, q: float) -> Any:
    """The q-quantile along the last axis (q ∈ [0, 1]), numpy's default "linear" method.

    Sort, then interpolate between the two order statistics around position q·(n−1):
    value = v[lo] + frac·(v[lo+1] − v[lo]). Positions are Python numbers computed on the host,
    so every backend performs exactly the same arithmetic.
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile q must be in [0, 1], got {q!r}")
    n = int(x.shape[-1])
    if n == 0:
        raise ValueError("quantile_last_axis: the last axis is empty")
    position = q * (n - 1)
    lo = min(math.floor(position), n - 1)
    hi = min(lo + 1, n - 1)
    frac = position - lo
    ordered = sort_last_axis(x)
    low, high = ordered[..., lo], ordered[..., hi]
    return low + frac * (high - low)


def per_sample_quantile(x: Any, q: float) -> Any:
    """q-quantile over all but the leading axis: [B, ...] -> [B]."""
    return quantile_last_axis(x.reshape(int(x.shape[0]), -1), q)


def per_sample(values: Any, ndim: int) -> Any:
    """[B] -> [B, 1, ..., 1] with ``ndim`` axes, to broadcast against [B, H, W, C]."""
    return values.reshape((int(values.shape[0]),) + (1,) * (ndim - 1))
