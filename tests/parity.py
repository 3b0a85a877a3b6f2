"""The one torch <-> JAX parity helper (docs/design.md §10; STYLE.md "Two backends without drift").

Shared numpy inputs go to both backends, both run, and the outputs are compared by relative
error ``max|a − b| / max|b|`` (JAX against torch). With ``grads=True`` the helper also
back-propagates one shared random cotangent through both and compares the gradients with
respect to every floating-point input and every parameter (matched by the canonical torch key,
through ``reimagen.backends.jax.convert``). Used module by module, for the whole U-Net, a whole
guided sampling run and an optimiser step.

Device-agnostic: torch runs on CUDA when it is available (tests/conftest.py turns TF32 off), JAX
on its default device (conftest pins the CPU for the default run). Every test draws its random
inputs from :func:`parity_seed`: a fixed seed per test in the default tier (so a run never
passes or fails by luck), a fresh one per run in the fuzz tier (``REIMAGEN_FUZZ=1``). The seed
is printed in every failure message; ``REIMAGEN_PARITY_SEED=<n>`` replays a failure.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable, Mapping
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import torch

from reimagen.backends.jax import convert

TORCH_DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
# Tolerances, from float32's unit roundoff u = 2⁻²⁴ = 6.0e-8 (Higham, Accuracy and Stability of
# Numerical Algorithms, §3.1). The two backends sum the same products in different orders
# (oneDNN/MKL vs XLA:CPU blocking), so each reduction of length n differs by ≲ √n·u (random
# rounding; the worst case n·u is not reached by independent errors), and errors of successive
# layers add in quadrature. The tiny U-Net's longest reductions are 3×3 convolutions over 64
# channels (n = 576: √n·u = 1.4e-6) and it chains ~20 such layers: √20 · 1.4e-6 = 6.4e-6 for the
# whole network, rounded up to OUTPUT_TOL. Measured at the fixed seeds: modules 1e-7–8e-7, the
# U-Net 1.7e-6 (tests/test_jax_parity.py prints them).
OUTPUT_TOL = 1e-5
# Gradients run the chain twice (forward, then backward through the same layers) and reduce
# over the batch and every pixel for each parameter (n = B·H·W = 768: √n·u = 1.7e-6 more per
# parameter), and are compared against a floor of GRAD_FLOOR × the largest gradient below, where
# a small tensor's error is that of the largest: 10 × OUTPUT_TOL. Measured: ≤ 6.5e-6.
GRAD_TOL = 1e-4
# Gradient errors are measured against max(max|b|, GRAD_FLOOR × the largest gradient of the
# same kind in the call), so a tensor whose gradient is tiny next to the others is held to
# GRAD_FLOOR·grad_tol of the call's scale rather than to float32 noise of its own.
GRAD_FLOOR = 1e-3
# One parameter has a gradient that is zero in exact arithmetic: the key bias b of softmax
# attention without a null key (self-attention, neighbour attention) adds q·b to every logit of
# a query alike, and softmax ignores that. Both backends return rounding noise (~1e-7 of the
# largest gradient) that is not comparable between them; it is checked to BE noise instead:
# |∂L/∂b| ≤ ZERO_GRAD_TOL × the largest parameter gradient, on both sides.
ZERO_GRAD_TOL = 1e-5


def analytically_zero_grads(torch_module: torch.nn.Module) -> set[str]:
    """Keys of parameters whose gradient is zero in exact arithmetic (see ZERO_GRAD_TOL)."""
    from reimagen.backends.torch.attention import NeighborAttention, SelfAttention

    return {
        f"{name}.to_k.bias" if name else "to_k.bias"
        for name, module in torch_module.named_modules()
        if isinstance(module, (SelfAttention, NeighborAttention))
    }


def parity_seed(test_id: str) -> int:
    """The seed of one test's random weights and inputs.

    Default tier: a fixed function of the test id (crc32), the same on every run and machine.
    ``REIMAGEN_FUZZ=1``: a fresh seed per run (exploration; a failure prints its seed, and a
    seed worth keeping becomes a pinned regression case in the test module).
    ``REIMAGEN_PARITY_SEED=<n>``: that seed, to replay a failure."""
    fixed = os.environ.get("REIMAGEN_PARITY_SEED")
    if fixed:
        return int(fixed)
    if os.environ.get("REIMAGEN_FUZZ"):
        return int(np.random.SeedSequence().entropy % (2**32))
    return zlib.crc32(test_id.encode())


def rel_error(actual, expected, floor: float = 0.0) -> float:
    """max|actual − expected| / max(max|expected|, floor) (0 when both are all zeros)."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    if actual.shape != expected.shape:
        raise AssertionError(f"shapes differ: {actual.shape} vs {expected.shape}")
    diff = np.abs(actual - expected).max(initial=0.0)
    scale = max(np.abs(expected).max(initial=0.0), floor)
    return float(diff / scale) if scale > 0 else (0.0 if diff == 0 else float("inf"))


def to_numpy(tree) -> Any:
    """Torch tensors / JAX arrays anywhere in a (tuple, list, dict, NamedTuple) tree -> numpy."""
    if isinstance(tree, torch.Tensor):
        return tree.detach().float().cpu().numpy()
    if isinstance(tree, (jax.Array, np.ndarray, np.generic, float, int)):
        return np.asarray(tree)
    if isinstance(tree, Mapping):
        return {k: to_numpy(v) for k, v in tree.items()}
    if isinstance(tree, (tuple, list)):
        return [to_numpy(v) for v in tree]
    raise TypeError(f"cannot compare an output of type {type(tree).__name__}")


def flat_outputs(tree, prefix: str = "out") -> dict[str, np.ndarray]:
    """A numpy tree -> {"out[0][level 8]": array, ...} for per-output error reports."""
    if isinstance(tree, dict):
        items = sorted(tree.items(), key=lambda kv: str(kv[0]))
        return {
            k: v for key, sub in items for k, v in flat_outputs(sub, f"{prefix}[{key}]").items()
        }
    if isinstance(tree, list):
        return {
            k: v
            for i, sub in enumerate(tree)
            for k, v in flat_outputs(sub, f"{prefix}[{i}]").items()
        }
    return {prefix: np.asarray(tree)}


def shared_weights(
    torch_module: torch.nn.Module, jax_like, rng: np.random.Generator, scale: float = 0.1
):
    """Give ``torch_module`` random weights (its init + N(0, scale²) noise, so no branch is a
    zero-initialised no-op) and return the JAX twin holding the same numbers."""
    state = {
        key: (value.detach().cpu().numpy() + scale * rng.standard_normal(value.shape)).astype(
            np.float32
        )
        for key, value in torch_module.state_dict().items()
    }
    torch_module.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    torch_module.to(TORCH_DEVICE)
    return convert.load_state_dict(jax_like, state)


def _torch_inputs(inputs: Mapping[str, np.ndarray], grads: bool) -> dict[str, torch.Tensor]:
    out = {}
    for name, value in inputs.items():
        tensor = torch.as_tensor(np.asarray(value)).to(TORCH_DEVICE)
        if grads and tensor.is_floating_point():
            tensor.requires_grad_(True)
        out[name] = tensor
    return out


@eqx.filter_jit
def _jax_outputs_and_grads(jax_fn, module, float_inputs, other_inputs, cotangent_leaves):
    """Outputs and the vector-Jacobian product (w.r.t. module and float inputs), one compile.
    The cotangents come as leaves in jax.tree_util order and take the outputs' structure."""

    def forward(module, float_inputs):
        return jax_fn(module, **float_inputs, **other_inputs)

    outputs, vjp = jax.vjp(forward, module, float_inputs)
    structure = jax.tree_util.tree_structure(outputs)
    return outputs, vjp(jax.tree_util.tree_unflatten(structure, cotangent_leaves))


def check_parity(
    torch_fn: Callable[..., Any],
    jax_fn: Callable[..., Any],
    inputs: Mapping[str, np.ndarray],
    *,
    seed: int,
    label: str,
    torch_module: torch.nn.Module | None = None,
    jax_module: Any = None,
    grads: bool = True,
    tol: float = OUTPUT_TOL,
    grad_tol: float = GRAD_TOL,
) -> dict[str, float]:
    """Run ``torch_fn(**inputs)`` and ``jax_fn(jax_module, **inputs)`` on the same numpy
    inputs and assert their outputs agree to ``tol`` (and, with ``grads``, their gradients
    w.r.t. the float inputs and the parameters to ``grad_tol``). Both functions return the same
    tree of arrays in the same layout. Returns {"output": e, "input grads": e, "param grads": e}
    (the worst relative error of each kind; :func:`summarize`)."""
    rng = np.random.default_rng(seed + 1)
    t_in = _torch_inputs(inputs, grads)
    t_out = torch_fn(**t_in)
    expected = flat_outputs(to_numpy(t_out))
    float_names = [k for k, v in inputs.items() if np.issubdtype(np.asarray(v).dtype, np.floating)]
    j_float = {k: jnp.asarray(inputs[k]) for k in float_names}
    j_other = {k: jnp.asarray(v) for k, v in inputs.items() if k not in float_names}
    errors: dict[str, float] = {}
    if grads:
        # One shared cotangent per output: both backends compute the same VJP.
        t_leaves = jax.tree_util.tree_leaves(t_out)  # torch tensors are leaves to jax
        cotangents = [rng.standard_normal(tuple(o.shape)).astype(np.float32) for o in t_leaves]
        loss = sum(
            (o.float() * torch.as_tensor(c, device=TORCH_DEVICE)).sum()
            for o, c in zip(t_leaves, cotangents)
        )
        loss.backward()
        j_out, (j_module_grads, j_input_grads) = _jax_outputs_and_grads(
            jax_fn, jax_module, j_float, j_other, [jnp.asarray(c) for c in cotangents]
        )
        errors.update(_compare_input_grads(t_in, j_input_grads, float_names))
        if torch_module is not None:
            errors.update(_compare_param_grads(torch_module, j_module_grads))
    else:
        j_out = jax_fn(jax_module, **j_float, **j_other)
    actual = flat_outputs(to_numpy(j_out))
    if set(actual) != set(expected):
        raise AssertionError(
            f"{label}: output structure differs: {sorted(actual)} vs "
            f"{sorted(expected)} (seed={seed})"
        )
    errors.update({k: rel_error(actual[k], expected[k]) for k in expected})
    _assert_within(errors, label, seed, tol, grad_tol)
    return summarize(errors)


def _grad_errors(prefix: str, actual: dict, expected: dict) -> dict[str, float]:
    """Per-tensor gradient errors with the GRAD_FLOOR of this group (see above)."""
    largest = max((np.abs(v).max(initial=0.0) for v in expected.values()), default=0.0)
    return {
        f"{prefix}[{key}]": rel_error(actual[key], value, floor=GRAD_FLOOR * largest)
        for key, value in expected.items()
    }


def _torch_grad(tensor: torch.Tensor) -> np.ndarray:
    return np.zeros(tensor.shape, np.float32) if tensor.grad is None else to_numpy(tensor.grad)


def _compare_input_grads(t_in, j_grads, names) -> dict[str, float]:
    expected = {name: _torch_grad(t_in[name]) for name in names}
    actual = {name: np.asarray(j_grads[name]) for name in names}
    return _grad_errors("input", actual, expected)


def _compare_param_grads(torch_module: torch.nn.Module, j_grads) -> dict[str, float]:
    actual = convert.state_dict(j_grads)  # canonical torch keys and layouts
    expected = {key: _torch_grad(param) for key, param in torch_module.named_parameters()}
    missing = sorted(set(actual) - set(expected))
    if missing:
        raise AssertionError(f"JAX parameters without a torch twin: {missing[:5]}")
    zero = analytically_zero_grads(torch_module)
    largest = max(np.abs(v).max(initial=0.0) for v in expected.values())
    out = _grad_errors("param", actual, {k: v for k, v in expected.items() if k not in zero})
    for key in zero:  # both sides must be noise: a scale, not a difference
        noise = max(np.abs(actual[key]).max(), np.abs(expected[key]).max())
        out[f"zero[{key}]"] = float(noise / largest) if largest > 0 else 0.0
    return out


def _assert_within(errors: dict[str, float], label: str, seed: int, tol: float, grad_tol: float):
    def limit(key: str) -> float:
        if key.startswith("zero["):
            return ZERO_GRAD_TOL
        return grad_tol if key.startswith(("input[", "param[")) else tol

    bad = {k: e for k, e in errors.items() if not e <= limit(k)}
    if bad:
        worst = sorted(bad.items(), key=lambda kv: -kv[1])[:8]
        listing = ", ".join(f"{k}: {e:.2e}" for k, e in worst)
        raise AssertionError(
            f"{label}: torch/JAX parity failed (tol {tol:g}, grad tol {grad_tol:g}; "
            f"replay with REIMAGEN_PARITY_SEED={seed}): {listing}"
        )


def summarize(errors: dict[str, float]) -> dict[str, float]:
    """Worst error per kind: outputs, input gradients, parameter gradients."""
    kinds = {
        "output": "out",
        "input grads": "input[",
        "param grads": "param[",
        "zero grads (scale)": "zero[",
    }
    worst = {}
    for kind, prefix in kinds.items():
        errs = [e for k, e in errors.items() if k.startswith(prefix)]
        if errs:
            worst[kind] = max(errs)
    return worst
