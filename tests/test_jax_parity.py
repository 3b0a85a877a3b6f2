"""Torch <-> JAX numerical parity, on every test run (docs/design.md §10).

Same weights, same numpy inputs, float32 (conftest pins the matmul precision and TF32 off):
  * each building block, the DStack, the UStack and the whole U-Net: outputs ≤1e-5 relative,
    gradients w.r.t. inputs and parameters ≤1e-4;
  * a whole sampling trajectory for every sampler × guidance strategy, same host noise: final
    images ≤1e-4 and the same interleave choices;
  * one optimiser step (AdamW, clipping, EMA) from the same weights and batch: loss, updated
    weights, EMA and Adam moments ≤1e-5;
  * the key mapping covers every parameter on both sides; torch -> JAX -> torch is exact.

Weights and inputs are random, from a fixed seed per test (a fresh one per run with
REIMAGEN_FUZZ=1); the seed is printed in every failure (replay: REIMAGEN_PARITY_SEED=<seed>). Relative error = max|jax − torch| / max|torch|.
"""

from __future__ import annotations

import inspect

import attrs
import equinox as eqx
import jax
import numpy as np
import pytest
import torch
from parity import (
    GRAD_FLOOR,
    GRAD_TOL,
    OUTPUT_TOL,
    ZERO_GRAD_TOL,
    analytically_zero_grads,
    check_parity,
    parity_seed,
    rel_error,
    shared_weights,
)

from reimagen.backends.jax import attention as ja
from reimagen.backends.jax import convert
from reimagen.backends.jax import layers as jl
from reimagen.backends.jax import unet as ju
from reimagen.backends.jax.checkpoint import optimizer_to_numpy as jax_optimizer_state
from reimagen.backends.jax.denoiser import JaxDenoiser
from reimagen.backends.jax.trainer import Trainer as JaxTrainer
from reimagen.backends.torch import attention as ta
from reimagen.backends.torch import layers as tl
from reimagen.backends.torch import unet as tu
from reimagen.backends.torch.checkpoint import optimizer_to_numpy as torch_optimizer_state
from reimagen.backends.torch.denoiser import TorchDenoiser
from reimagen.backends.torch.trainer import Trainer as TorchTrainer
from reimagen.core.interfaces import SamplerNoise, TextEncoding
from reimagen.core.unet_config import PRESETS
from reimagen.diffusion.guidance import STRATEGIES
from reimagen.diffusion.samplers import SAMPLERS
from reimagen.diffusion.schedule import CosineSchedule
from reimagen.diffusion.thresholding import Thresholding
from reimagen.training.contract import Batch, TrainConfig, draw_diffusion_inputs
from reimagen.training.loop import training_levels

TINY = PRESETS["tiny"]
# Layer norm, neighbour attention at two resolutions (one inside the UStack), an SR stage.
TINY_SR = TINY.replace(
    norm="layer", neighbor_attn_resolutions=(16, 8), cond_image_channels=3, lowres_size=8
)
L = 5  # text length
MEASURED: dict[str, dict[str, float]] = {}  # label -> worst errors, printed at the end


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture(scope="module", autouse=True)
def quick_compiles():
    """Every program here runs once or a few times, so XLA's LLVM optimisation time is pure
    cost (about half of each compile). This turns it off for this module; the arithmetic is
    the same (XLA:CPU does not use fast-math either way)."""
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    lines = [
        f"  {label:<28} " + ", ".join(f"{k} {v:.1e}" for k, v in errs.items())
        for label, errs in MEASURED.items()
    ]
    print("\nmax relative error torch vs JAX:\n" + "\n".join(lines))


@pytest.fixture
def seed(request) -> int:
    return parity_seed(request.node.nodeid)


def record(label: str, errors: dict[str, float]) -> None:
    MEASURED[label] = errors


# ---- inputs ------------------------------------------------------------------------------------


def normal(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def text_arrays(rng, lead: tuple[int, ...], dim: int, prefix: str = "") -> dict[str, np.ndarray]:
    """tokens [..., L, D], mask [..., L] (random lengths ≥1), pooled [..., D]."""
    lengths = rng.integers(1, L + 1, size=lead)
    return {
        f"{prefix}tokens": normal(rng, *lead, L, dim),
        f"{prefix}mask": np.arange(L) < lengths[..., None],
        f"{prefix}pooled": normal(rng, *lead, dim),
    }


def nchw(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2)


def nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1)


def skeleton(cls, *args):
    """The JAX twin's structure only (filled by the converter)."""
    takes_rng = "rng" in inspect.signature(cls.__init__).parameters
    return eqx.filter_eval_shape(cls, *args, **({"rng": None} if takes_rng else {}))


# ---- building blocks ---------------------------------------------------------------------------


def _layer_case(name: str, rng):
    """(torch module, JAX skeleton, torch fn, jax fn, inputs) for one building block."""
    c = TINY
    x = normal(rng, 3, 8, 8, 32)  # [N, H, W, C]
    # Norm inputs span small variances too (down to 1e-4): there ε = 1e-5 matters, so a norm
    # using another epsilon (flax's 1e-6 default, say) fails instead of hiding below 1e-5.
    small = x * 10.0 ** rng.uniform(-2, 0, (3, 1, 1, 1)).astype(np.float32)
    if name in ("norm-group", "norm-layer"):
        cfg = c.replace(norm=name.split("-")[1])
        return (
            tl.Norm(32, cfg),
            skeleton(jl.Norm, 32, cfg),
            lambda m: lambda x: nhwc(m(nchw(x))),
            lambda j, x: j(x),
            {"x": small},
        )
    if name == "layernorm-ctx":
        return (
            torch.nn.LayerNorm(32, eps=c.norm_eps),
            skeleton(jl.LayerNorm, 32, c.norm_eps),
            lambda m: lambda x: m(x),
            lambda j, x: j(x),
            {
                "x": (normal(rng, 3, 20, 32) * 10.0 ** rng.uniform(-2, 0, (3, 20, 1))).astype(
                    np.float32
                )
            },
        )
    if name == "time-mlp":
        return (
            tl.TimeMLP(16, 64),
            skeleton(jl.TimeMLP, 16, 64),
            lambda m: lambda t: m(t),
            lambda j, t: j(t),
            {"t": rng.random(4).astype(np.float32)},
        )
    if name == "resblock":
        inputs = {"x": x, "emb": normal(rng, 3, c.time_dim)}
        return (
            tl.ResBlock(32, 16, c),
            skeleton(jl.ResBlock, 32, 16, c),
            lambda m: lambda x, emb: nhwc(m(nchw(x), emb)),
            lambda j, x, emb: j(x, emb),
            inputs,
        )
    if name in ("downsample", "upsample"):
        t_cls, j_cls = (
            (tl.Downsample, jl.Downsample) if name == "downsample" else (tl.Upsample, jl.Upsample)
        )
        return (
            t_cls(32),
            skeleton(j_cls, 32),
            lambda m: lambda x: nhwc(m(nchw(x))),
            lambda j, x: j(x),
            {"x": x},
        )
    if name == "self-attention":
        return (
            ta.SelfAttention(32, c),
            skeleton(ja.SelfAttention, 32, c),
            lambda m: lambda x: nhwc(m(nchw(x))),
            lambda j, x: j(x),
            {"x": x},
        )
    if name == "cross-attention":
        text = text_arrays(rng, (3,), c.text_dim)
        text["mask"][1] = False  # a dropped text: attends to the null token only
        inputs = {"x": x, "tokens": text["tokens"], "mask": text["mask"]}
        return (
            ta.CrossAttention(32, c),
            skeleton(ja.CrossAttention, 32, c),
            lambda m: lambda x, tokens, mask: nhwc(m(nchw(x), tokens, mask)),
            lambda j, x, tokens, mask: j(x, tokens, mask),
            inputs,
        )
    if name in ("neighbor-attention", "neighbor-attention-pos"):
        k = 2
        cfg = c.replace(neighbor_pos_emb=name.endswith("-pos"))  # position tables [8·8, 32]
        inputs = {
            "x": x,
            "features": normal(rng, 3, k * 8 * 8, 32),  # [N, K·F·F, C]
            "use_neighbors": np.array([True, False, True]),
        }

        def torch_fn(m):
            return lambda x, features, use_neighbors: nhwc(
                m(nchw(x), m.project(features), use_neighbors)
            )

        def jax_fn(j, x, features, use_neighbors):
            return j(x, j.project(features), use_neighbors)

        return (
            ta.NeighborAttention(32, cfg, 8),
            skeleton(ja.NeighborAttention, 32, cfg, 8),
            torch_fn,
            jax_fn,
            inputs,
        )
    raise KeyError(name)


LAYERS = (
    "norm-group",
    "norm-layer",
    "layernorm-ctx",
    "time-mlp",
    "resblock",
    "downsample",
    "upsample",
    "self-attention",
    "cross-attention",
    "neighbor-attention",
    "neighbor-attention-pos",
)


@pytest.mark.parametrize("name", LAYERS)
def test_building_block(name, seed):
    rng = np.random.default_rng(seed)
    torch_module, jax_like, torch_fn, jax_fn, inputs = _layer_case(name, rng)
    jax_module = shared_weights(torch_module, jax_like, rng)
    errors = check_parity(
        torch_fn(torch_module),
        jax_fn,
        inputs,
        seed=seed,
        label=name,
        torch_module=torch_module,
        jax_module=jax_module,
    )
    record(name, errors)


# Both backends compute the phase 2π·frac(t·r_i) bit for bit (reimagen.diffusion.time_features), so
# only sin/cos of an argument in [0, 2π) may differ: each library is faithful to ≤ 2 ulp there,
# |Δ| ≤ 4 ulp(1) = 4 · 2⁻²³ = 4.8e-7 of the features' scale (1). Measured here: 6.0e-8.
SINUSOID_TOL = 4 * 2.0**-23


def test_sinusoidal_embedding(seed):
    """The time features (t·1000 spans many periods) on a grid that includes t = 1, where the
    fastest feature's argument is largest, and random t."""
    rng = np.random.default_rng(seed)
    grid = np.linspace(0.0, 1.0, 1001)
    t = np.concatenate([grid, rng.random(1000)]).astype(np.float32)
    errors = check_parity(
        lambda t: tl.sinusoidal_embedding(t, 64),
        lambda _, t: jl.sinusoidal_embedding(t, 64),
        {"t": t},
        seed=seed,
        label="sinusoidal",
        grads=False,
        tol=SINUSOID_TOL,
    )
    record("sinusoidal embedding", errors)


# ---- the U-Net ---------------------------------------------------------------------------------


def unet_pair(config, rng):
    """A torch U-Net with random weights and its JAX twin (same numbers)."""
    torch_model = tu.build_unet(config, seed=0)
    jax_model = shared_weights(torch_model, convert.skeleton(config), rng)
    return torch_model, jax_model


def unet_inputs(config, rng, b: int = 3, k: int = 2) -> dict[str, np.ndarray]:
    s, c = config.image_size, config.in_channels
    inputs = {
        "x": normal(rng, b, s, s, c),
        "t": rng.random(b).astype(np.float32),
        **text_arrays(rng, (b,), config.text_dim),
        "use_text": np.array([True, False, True][:b]),
        "use_neighbors": np.array([True, True, False][:b]),
        "nb_images": normal(rng, b, k, s, s, c),
        **text_arrays(rng, (b, k), config.text_dim, prefix="nb_"),
    }
    if config.is_super_resolution:
        inputs["lowres"] = normal(rng, b, s, s, c)
        inputs["aug_level"] = rng.random(b).astype(np.float32)
    return inputs


def torch_unet_fn(model, cached: bool = False):
    def run(
        x,
        t,
        tokens,
        mask,
        pooled,
        use_text,
        use_neighbors,
        nb_images,
        nb_tokens,
        nb_mask,
        nb_pooled,
        lowres=None,
        aug_level=None,
    ):
        text = tu.TextInputs(tokens, mask, pooled)
        nb_text = tu.TextInputs(nb_tokens, nb_mask, nb_pooled)
        extra = {"lowres": lowres, "aug_level": aug_level}
        if cached:
            extra["cache"] = model.encode_neighbors(nb_images, *nb_text)
        else:
            extra["neighbors"] = tu.NeighborInputs(nb_images, nb_text)
        return model(x, t, text, use_text=use_text, use_neighbors=use_neighbors, **extra)

    return run


def jax_unet_fn(cached: bool = False):
    def run(
        model,
        x,
        t,
        tokens,
        mask,
        pooled,
        use_text,
        use_neighbors,
        nb_images,
        nb_tokens,
        nb_mask,
        nb_pooled,
        lowres=None,
        aug_level=None,
    ):
        text = ju.TextInputs(tokens, mask, pooled)
        nb_text = ju.TextInputs(nb_tokens, nb_mask, nb_pooled)
        extra = {"lowres": lowres, "aug_level": aug_level}
        if cached:
            extra["cache"] = model.encode_neighbors(nb_images, *nb_text)
        else:
            extra["neighbors"] = ju.NeighborInputs(nb_images, nb_text)
        return model(x, t, text, use_text=use_text, use_neighbors=use_neighbors, **extra)

    return run


def test_dstack(seed):
    rng = np.random.default_rng(seed)
    torch_model, jax_model = unet_pair(TINY, rng)
    inputs = {
        k: v
        for k, v in unet_inputs(TINY, rng).items()
        if k in ("x", "t", "tokens", "mask", "pooled", "use_text")
    }

    def torch_fn(x, t, tokens, mask, pooled, use_text):
        cond = torch_model._conditioning(t, tu.TextInputs(tokens, mask, pooled), use_text, None)
        h, skips, levels = torch_model.dstack(nchw(x), cond)
        return nhwc(h), [nhwc(s) for s in skips], {r: nhwc(f) for r, f in levels.items()}

    def jax_fn(model, x, t, tokens, mask, pooled, use_text):
        cond = model._conditioning(t, ju.TextInputs(tokens, mask, pooled), use_text, None)
        return model.dstack(x, cond)

    errors = check_parity(
        torch_fn,
        jax_fn,
        inputs,
        seed=seed,
        label="DStack",
        torch_module=torch_model,
        jax_module=jax_model,
    )
    record("DStack", errors)


def test_ustack(seed):
    """The decoder from f, the skips and a neighbour cache (neighbour attention at 16 and 8);
    the cache is an input here (torch keeps it [B, h, K·r·r, hd], JAX [B, K·r·r, h, hd])."""
    rng = np.random.default_rng(seed)
    config = TINY.replace(neighbor_attn_resolutions=(16, 8))
    torch_model, jax_model = unet_pair(config, rng)
    b, k = 3, 2
    inputs = {
        key: v
        for key, v in unet_inputs(config, rng, b, k).items()
        if key in ("t", "tokens", "mask", "pooled", "use_text", "use_neighbors")
    }
    # f and the skips of the tiny DStack: stem 16@16, block 16@16, downsample 16@8, block 32@8.
    skip_shapes = [(16, 16), (16, 16), (8, 16), (8, 32)]
    skips = {f"skip{i}": normal(rng, b, r, r, ch) for i, (r, ch) in enumerate(skip_shapes)}
    heads = {r: config.widths[config.resolutions.index(r)] // config.head_dim for r in (16, 8)}
    kv = {
        f"{name}{r}": normal(rng, b, k * r * r, heads[r], config.head_dim)
        for r in (16, 8)
        for name in ("k", "v")
    }  # [B, K·r·r, heads, hd]
    inputs = {**inputs, "h": normal(rng, b, 8, 8, 32), **skips, **kv}

    def torch_fn(h, t, tokens, mask, pooled, use_text, use_neighbors, **arrays):
        cond = torch_model._conditioning(t, tu.TextInputs(tokens, mask, pooled), use_text, None)
        cache = tu.NeighborCache(
            k,
            {
                r: (arrays[f"k{r}"].transpose(1, 2), arrays[f"v{r}"].transpose(1, 2))
                for r in (16, 8)
            },
        )
        skip_list = [nchw(arrays[f"skip{i}"]) for i in range(len(skip_shapes))]
        return nhwc(torch_model.ustack(nchw(h), skip_list, cond, cache, use_neighbors))

    def jax_fn(model, h, t, tokens, mask, pooled, use_text, use_neighbors, **arrays):
        cond = model._conditioning(t, ju.TextInputs(tokens, mask, pooled), use_text, None)
        cache = ju.NeighborCache(k, {r: (arrays[f"k{r}"], arrays[f"v{r}"]) for r in (16, 8)})
        skip_list = [arrays[f"skip{i}"] for i in range(len(skip_shapes))]
        return model.ustack(h, skip_list, cond, cache, use_neighbors)

    errors = check_parity(
        torch_fn,
        jax_fn,
        inputs,
        seed=seed,
        label="UStack",
        torch_module=torch_model,
        jax_module=jax_model,
    )
    record("UStack", errors)


@pytest.mark.parametrize("pos_emb", [False, True], ids=["", "pos-emb"])
def test_unet_training_path(seed, pos_emb):
    """The whole U-Net as training runs it: noisy rows and raw neighbours share the DStack;
    one row without text, one without neighbours; gradients w.r.t. everything. The config is
    the SR variant of tiny (low-res input, augmentation level, layer norm, neighbour attention
    at 16 and 8), so every optional part of the network is on the path; ``pos_emb`` adds the
    neighbour attention's position tables (UNetConfig.neighbor_pos_emb)."""
    rng = np.random.default_rng(seed)
    config = TINY_SR.replace(neighbor_pos_emb=pos_emb)
    torch_model, jax_model = unet_pair(config, rng)
    inputs = unet_inputs(config, rng)
    errors = check_parity(
        torch_unet_fn(torch_model),
        jax_unet_fn(),
        inputs,
        seed=seed,
        label="U-Net",
        torch_module=torch_model,
        jax_module=jax_model,
    )
    record(f"U-Net (tiny SR{', pos emb' if pos_emb else ''}, training path)", errors)


# ---- sampling ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sampling_setup():
    """Tiny U-Net pair with random weights, B=2 prompts, K=2 neighbours; drawn once per module."""
    seed = parity_seed("test_jax_parity.py::sampling_setup")
    rng = np.random.default_rng(seed)
    torch_model, jax_model = unet_pair(TINY, rng)
    b, k = 2, 2
    text = TextEncoding(**_renamed(text_arrays(rng, (b,), TINY.text_dim)))
    nb_text = TextEncoding(**_renamed(text_arrays(rng, (b, k), TINY.text_dim)))
    nb_images = rng.uniform(-1, 1, (b, k, 16, 16, 3)).astype(np.float32)
    # TorchDenoiser binds host (CPU) tensors, so its model stays on the CPU.
    torch_den = TorchDenoiser(torch_model.cpu().eval(), text, nb_images, nb_text)
    jax_den = JaxDenoiser(jax_model, text, nb_images, nb_text)
    return seed, rng, torch_den, jax_den


def _renamed(arrays: dict) -> dict:
    return {"tokens": arrays["tokens"], "mask": arrays["mask"], "pooled": arrays["pooled"]}


def test_denoiser_call(sampling_setup):
    """Sampling's network path (neighbours encoded once into a cache, V·B rows per call): one
    call with three variants, ε ≤1e-5 (the weighted-guidance call, so its compile is shared)."""
    seed, rng, torch_den, jax_den = sampling_setup
    variants = ("full", "text", "neighbors")

    def torch_fn(x):
        return torch_den(x.cpu(), 0.37, variants)  # the denoiser's tensors live on the CPU

    errors = check_parity(
        torch_fn,
        lambda _, x: jax_den(x, 0.37, variants),
        {"x": normal(rng, 2, 16, 16, 3)},
        seed=seed,
        label="denoiser call (cached)",
        grads=False,
    )
    record("U-Net (tiny, cached, 3 variants)", errors)


# Guidance combines ε's as (1 + w)·ε_a − w·ε_b, so a per-call ε difference δ (≤ OUTPUT_TOL of ε's
# scale) becomes ≤ (1 + 2w)·δ in the guided ε; with w ≤ 5 below that is 11 · OUTPUT_TOL. The
# samplers' updates are convex combinations of x_t and x̂0 (clipped by thresholding), which
# do not amplify it further over 3 steps. Measured at the fixed seeds: ≤ 5.8e-6.
TRAJECTORY_TOL = (1 + 2 * 5.0) * OUTPUT_TOL


@pytest.mark.parametrize("guidance", sorted(STRATEGIES))
@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_sampling_trajectory(sampler, guidance, sampling_setup):
    """A whole guided run (3 steps, dynamic thresholding), the same host noise."""
    seed, rng, torch_den, jax_den = sampling_setup
    steps = 3
    noise = SamplerNoise.draw(rng, (2, 16, 16, 3), steps)
    # Make the interleaved run take both branches: R < η (text step) and R ≥ η.
    noise = attrs.evolve(noise, guidance_draws=np.array([0.2, 0.8, rng.random()]))
    strategy = STRATEGIES[guidance](w=4.0, w_text=3.0, w_neighbors=5.0, eta=0.5)
    run = SAMPLERS[sampler]
    choices = {}

    def sample(denoiser, name):
        result = run(denoiser, strategy, noise, steps=steps, thresholding=Thresholding())
        choices[name] = (result.variants_per_step, result.nfe)
        return denoiser.to_numpy(result.x0)

    errors = check_parity(
        lambda **_: sample(torch_den, "torch"),
        lambda *_, **__: sample(jax_den, "jax"),
        {"x_T": noise.x_T},
        seed=seed,
        label=f"{sampler}/{guidance}",
        grads=False,
        tol=TRAJECTORY_TOL,
    )
    assert choices["torch"] == choices["jax"], (choices, seed)
    if guidance == "interleaved":
        assert {v for v in choices["jax"][0]} == {("full", "neighbors"), ("full", "text")}
    record(f"sample {sampler}/{guidance}", errors)


# ---- bf16 and JAX's default matmul precision ------------------------------------------------
# bf16 keeps 8 significand bits: unit roundoff u = 2⁻⁹ = 2.0e-3. Torch autocast rounds the inputs
# of every matmul/conv to bf16 (norms, softmax and residual sums stay float32); the JAX backend
# casts weights and activations to bf16 (JaxDenoiser(dtype="bfloat16"), what a TPU runs). Each
# side rounds ~3 tensors per layer (input, weight, output) over the tiny U-Net's ~20 layers,
# independently: √60 · u = 1.5e-2 against float32, and the two sides differ by √2 × that =
# 2.1e-2 of ε's scale (a one-off scan of seeds 0–3, not kept: 2.1e-2–2.8e-2 per call; 3.1e-2 at this test's seed). The bound is 2.5× the
# estimate (maxdiffusion's bf16 parity uses atol 2e-2 on unit-scale outputs). A trajectory
# (10 dpmpp2m steps, interleaved guidance, w ≤ 5) adds the guidance mix and the steps' mixing of
# x̂0 (the same scan: 3.3e-2–5.6e-2 over 25 steps; 4.7e-2 here over 10): 2× the per-call bound. Either bound still fails on
# a missing layer, a wrong weight or a dropped condition (O(1) errors).
BF16_EPS_TOL = 2.5 * (2**0.5 * 60**0.5 * 2.0**-9)
BF16_TRAJECTORY_TOL = 2 * BF16_EPS_TOL
BF16_ENGAGED = 1e-3  # bf16 really ran: each side differs from float32 by more than this


@pytest.fixture(scope="module")
def bf16_setup(sampling_setup):
    """The sampling pair's networks rebound in bf16 (torch autocast, JAX bf16 compute)."""
    _, _, torch_den, jax_den = sampling_setup
    seed = parity_seed("test_jax_parity.py::bf16_setup")
    rng = np.random.default_rng(seed)
    b, k = 2, 2
    text = TextEncoding(**_renamed(text_arrays(rng, (b,), TINY.text_dim)))
    nb_text = TextEncoding(**_renamed(text_arrays(rng, (b, k), TINY.text_dim)))
    nb_images = rng.uniform(-1, 1, (b, k, 16, 16, 3)).astype(np.float32)
    dens = {
        (side, dtype): cls(model, text, nb_images, nb_text, dtype=dtype)
        for side, cls, model in (
            ("torch", TorchDenoiser, torch_den.model),
            ("jax", JaxDenoiser, jax_den.model),
        )
        for dtype in ("float32", "bfloat16")
    }
    return seed, rng, dens


def _run(den, fn):
    return np.asarray(den.to_numpy(fn(den)), np.float32)


def test_bf16_denoiser_call(bf16_setup):
    """One guided call (3 variants) in bf16 on both sides, against each other and float32."""
    seed, rng, dens = bf16_setup
    x = normal(rng, 2, 16, 16, 3)
    out = {
        key: _run(d, lambda d: d(d.asarray(x), 0.37, ("full", "text", "neighbors")))
        for key, d in dens.items()
    }
    reference = out[("torch", "float32")]
    pair = rel_error(out[("jax", "bfloat16")], out[("torch", "bfloat16")])
    engaged = [rel_error(out[(side, "bfloat16")], reference) for side in ("torch", "jax")]
    record("bf16 denoiser call", {"torch vs jax": pair, "vs float32": max(engaged)})
    assert pair <= BF16_EPS_TOL, (pair, seed)
    assert min(engaged) > BF16_ENGAGED, (engaged, seed)


def test_bf16_sampling_trajectory(bf16_setup):
    """A whole guided run (dpmpp2m, interleaved, 10 steps) in bf16 on both sides."""
    seed, rng, dens = bf16_setup
    steps = 10
    noise = SamplerNoise.draw(rng, (2, 16, 16, 3), steps)
    strategy = STRATEGIES["interleaved"](w=4.0, w_text=3.0, w_neighbors=5.0, eta=0.5)

    def sample(den):
        return SAMPLERS["dpmpp2m"](
            den, strategy, noise, steps=steps, thresholding=Thresholding()
        ).x0

    torch_x0 = _run(dens[("torch", "bfloat16")], sample)
    jax_x0 = _run(dens[("jax", "bfloat16")], sample)
    error = rel_error(jax_x0, torch_x0)
    record("bf16 trajectory dpmpp2m/interleaved", {"output": error})
    assert error <= BF16_TRAJECTORY_TOL, (error, seed)


def test_jax_default_matmul_precision(sampling_setup):
    """JAX at its default matmul precision (the suite pins "highest"): on the CPU and GPU
    without TF32 that is float32, held to OUTPUT_TOL; a TPU's default (one bf16 pass) would be
    held to BF16_EPS_TOL."""
    seed, rng, torch_den, jax_den = sampling_setup
    x = normal(rng, 2, 16, 16, 3)
    variants = ("full", "text", "neighbors")
    expected = torch_den.to_numpy(torch_den(torch_den.asarray(x), 0.37, variants))
    with jax.default_matmul_precision("default"):
        actual = np.asarray(jax_den(x, 0.37, variants))
    tol = OUTPUT_TOL if jax.default_backend() == "cpu" else BF16_EPS_TOL
    error = rel_error(actual, expected)
    record("JAX default precision", {"output": error})
    assert error <= tol, (error, seed)


# ---- one optimiser step ------------------------------------------------------------------------


def training_batch(config, rng, b: int = 3, k: int = 2) -> Batch:
    s, c = config.image_size, config.in_channels
    t, noise, use_text, use_neighbors = draw_diffusion_inputs(rng, (b, s, s, c), 0.3, 0.3)
    use_text[0], use_neighbors[0] = True, True  # at least one fully conditioned row
    return Batch(
        images=rng.uniform(-1, 1, (b, s, s, c)).astype(np.float32),
        text=TextEncoding(**_renamed(text_arrays(rng, (b,), config.text_dim))),
        neighbor_images=rng.uniform(-1, 1, (b, k, s, s, c)).astype(np.float32),
        neighbor_text=TextEncoding(**_renamed(text_arrays(rng, (b, k), config.text_dim))),
        t=t,
        noise=noise,
        use_text=use_text,
        use_neighbors=use_neighbors,
    )


class _OneBatch:
    def __init__(self, batch):
        self._batch = batch

    def batch(self, step):
        return self._batch


# The paper's recipe, and the identity recipe of issue #15 (Min-SNR-γ row weights and a t shift):
# with t = 0.1 / 0.5 / 0.9 and s = 2, γ = 2 the rows weigh 0.21 / 1 / 1, so a backend that
# dropped or misplaced the weights would differ by far more than the tolerances.
RECIPES = {
    "paper": {},
    "min-snr": {"loss_weighting": "min-snr", "snr_gamma": 2.0, "t_shift": 2.0},
}


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_optimizer_step(seed, tmp_path, recipe):
    """AdamW (weight decay, clipping active) + EMA from the same weights and batch.

    Adam's first step moves every weight by about lr whatever the size of its gradient, and for
    the few entries whose gradient is within rounding of Adam's ε = 1e-8 the step itself is
    rounding-sensitive (~0.1·lr apart between any two implementations; 4e-6 of the weights was
    seen at lr = 2e-5). lr = 1e-5 keeps that well below 1e-5 of the weights. Whether the update
    is right is checked on the update itself: its mean error (float32 rounding of w + Δ,
    ~2e-4·lr) must stay below 1e-3·lr, which a missing weight decay (wd = 0.1: ~1e-2·lr), a
    wrong lr, bias correction or sign (≥0.1·lr) would exceed.
    """
    rng = np.random.default_rng(seed)
    batch = training_batch(TINY, rng)
    config = TrainConfig(
        batch_size=3,
        neighbors=2,
        lr=1e-5,
        warmup_steps=0,
        weight_decay=0.1,
        grad_clip=0.5,
        ema_decay=0.999,
        **RECIPES[recipe],
    )
    if recipe != "paper":
        batch = attrs.evolve(batch, t=np.array([0.1, 0.5, 0.9], np.float32))
        weights = training_levels(batch, config, CosineSchedule())[1]
        assert weights.min() < 0.5 and weights.max() == 1.0  # the weighting is exercised
    torch_trainer = TorchTrainer(TINY, config, _OneBatch(batch), tmp_path / "torch", progress=False)
    jax_model = shared_weights(torch_trainer.model, convert.skeleton(TINY), rng)
    torch_trainer.ema.load_state_dict(torch_trainer.model.state_dict())
    before = convert.state_dict(jax_model)
    jax_trainer = JaxTrainer(
        TINY, config, _OneBatch(batch), tmp_path / "jax", progress=False, model=jax_model
    )
    t_loss, t_norm = torch_trainer.train_step(batch)
    j_loss, j_norm = jax_trainer.train_step(batch)
    assert t_norm > config.grad_clip  # the clipping branch is exercised
    errors = {"loss": rel_error(j_loss, t_loss), "grad norm": rel_error(j_norm, t_norm)}
    t_weights = {k: v.numpy() for k, v in torch_trainer.model.state_dict().items()}
    j_weights = convert.state_dict(jax_trainer.model)
    for label, t_state, j_state in (
        ("weights", t_weights, j_weights),
        (
            "ema",
            {k: v.numpy() for k, v in torch_trainer.ema.state_dict().items()},
            convert.state_dict(jax_trainer.ema),
        ),
    ):
        errors[label] = max(rel_error(j_state[k], v) for k, v in t_state.items())
    t_adam = torch_optimizer_state(torch_trainer.optimizer, torch_trainer.model)
    j_adam = jax_optimizer_state(jax_trainer.opt_state)
    assert set(t_adam) == set(j_adam)
    # Adam's moments are (1−β1)·g and (1−β2)·g² after one step: gradient quantities, held to
    # the gradient tolerance with the gradients' floor; for the parameters whose gradient is
    # zero in exact arithmetic (parity.ZERO_GRAD_TOL) both sides must be noise.
    zero = analytically_zero_grads(torch_trainer.model)
    for slot in ("exp_avg", "exp_avg_sq", "step"):
        keys = [k for k in t_adam if k.endswith("." + slot)]
        largest = max(np.abs(t_adam[k]).max() for k in keys)
        compared = [k for k in keys if k[: -len(slot) - 1] not in zero or slot == "step"]
        errors[f"adam {slot}"] = max(
            rel_error(j_adam[k], t_adam[k], GRAD_FLOOR * largest) for k in compared
        )
        noise = [
            max(np.abs(j_adam[k]).max(), np.abs(t_adam[k]).max()) for k in keys if k not in compared
        ]
        if noise:
            errors[f"adam {slot} zero (scale)"] = float(max(noise) / largest)
    step_error = np.concatenate(
        [np.abs((j_weights[k] - before[k]) - (t_weights[k] - before[k])).ravel() for k in before]
    )
    errors["update (mean, in lr)"] = float(step_error.mean() / config.lr)
    record("optimizer step", errors)
    limits = {
        "update (mean, in lr)": 1e-3,
        **{f"adam {slot}": GRAD_TOL for slot in ("exp_avg", "exp_avg_sq")},
        **{f"adam {slot} zero (scale)": ZERO_GRAD_TOL for slot in ("exp_avg", "exp_avg_sq")},
    }
    bad = {k: e for k, e in errors.items() if not e <= limits.get(k, 1e-5)}
    assert not bad, f"optimizer step parity failed (REIMAGEN_PARITY_SEED={seed}): {bad}"


# ---- the key mapping ---------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["tiny", "small", "sr-small", "cpu-base-pos"])
def test_key_mapping_covers_every_parameter(preset):
    """Every torch parameter has exactly one JAX leaf (same shape after the layout change)
    and vice versa, for whole presets (shapes only, nothing allocated on the JAX side)."""
    config = PRESETS[preset]
    with torch.device("meta"):
        torch_shapes = {k: tuple(v.shape) for k, v in tu.ReImagenUNet(config).state_dict().items()}
    jax_leaves = convert._leaves(convert.skeleton(config))
    jax_shapes = {  # in torch layout: HWIO kernels read as OIHW
        key: tuple(leaf.shape[i] for i in convert.HWIO_TO_OIHW) if is_conv else tuple(leaf.shape)
        for key, leaf, is_conv in jax_leaves
    }
    assert len(jax_shapes) == len(jax_leaves)  # no two leaves share a key
    assert set(jax_shapes) == set(torch_shapes)
    assert jax_shapes == torch_shapes


def test_round_trip_is_exact(seed):
    """torch -> JAX -> torch returns bit-identical tensors; a missing or extra key is refused."""
    rng = np.random.default_rng(seed)
    torch_model, jax_model = unet_pair(TINY_SR, rng)
    back = convert.to_torch(jax_model, tu.build_unet(TINY_SR, seed=1))
    original = torch_model.state_dict()
    for key, value in back.state_dict().items():
        assert torch.equal(value.cpu(), original[key].cpu()), key
    state = convert.state_dict(jax_model)
    extra = {**state, "mid.res2.extra.weight": np.zeros(3, np.float32)}
    with pytest.raises(convert.KeyMismatchError, match="unused"):
        convert.load_state_dict(jax_model, extra)
    missing = {k: v for k, v in state.items() if k != "conv_in.bias"}
    with pytest.raises(convert.KeyMismatchError, match="conv_in.bias"):
        convert.load_state_dict(jax_model, missing)
    wrong = {**state, "conv_out.weight": state["conv_out.weight"][:, :2]}
    with pytest.raises(convert.KeyMismatchError, match="conv_out.weight"):
        convert.load_state_dict(jax_model, wrong)
