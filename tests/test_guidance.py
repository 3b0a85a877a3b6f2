"""Guidance strategies (docs/design.md §5; paper Eq. 5, Eq. 6, Appendix E).

The formulas are checked against the paper's equations written out by hand here (not through the
library's helpers), on random ε predictions per variant, for numpy, torch and jax arrays.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reimagen.core import registry
from reimagen.core.config import ConfigError
from reimagen.core.interfaces import SamplerNoise
from reimagen.diffusion.guidance import (
    GuidanceConfig,
    InterleavedGuidance,
    JointGuidance,
    NoGuidance,
    WeightedGuidance,
    get_guidance,
)

NAMES = ("none", "joint", "weighted", "interleaved")
weights = st.floats(1.0, 50.0, allow_nan=False)
ratios = st.floats(0.0, 1.0, allow_nan=False)
draws = st.floats(0.0, 1.0, exclude_max=True, allow_nan=False)


def random_eps(seed=0, shape=(2, 4, 4, 3)):
    """variant -> an independent random ε [B, H, W, C], float64."""
    rng = np.random.default_rng(seed)
    return {v: rng.standard_normal(shape) for v in ("full", "text", "neighbors", "none")}


def expected(name, eps, cfg: GuidanceConfig, draw):
    """The paper's formulas, spelled out."""
    full, text, nbrs, none = eps["full"], eps["text"], eps["neighbors"], eps["none"]
    eps_p = cfg.w_text * full - (cfg.w_text - 1) * nbrs  # Eq. 6, text-enhanced
    eps_n = cfg.w_neighbors * full - (cfg.w_neighbors - 1) * text  # Eq. 6, neighbour-enhanced
    return {
        "none": full,
        "joint": cfg.w * full - (cfg.w - 1) * none,  # Eq. 5
        "weighted": cfg.eta * eps_p + (1 - cfg.eta) * eps_n,  # App. E
        "interleaved": eps_p if draw < cfg.eta else eps_n,  # §3.2
    }[name]


def formula_tol(weight, eps, u=2.0**-53):
    """An absolute bound on the rounding of w·a − (w−1)·b, or of an η-mixture of two such, in
    any order of evaluation: <= 3 products and 3 sums/differences, 8 roundings (u: float64 by
    default) of at most the largest partial result, 2·w·max|ε|. (3.1e-13 at w = 50, |ε| <= 3.5.)"""
    return 8 * u * 2 * weight * max(np.abs(e).max() for e in eps.values())


def asked(strategy, eps, draw):
    """Only the variants the strategy asked for (so a formula that reads another one fails)."""
    return {v: eps[v] for v in strategy.variants(draw)}


def test_builtins_are_registered_under_the_design_names():
    assert set(NAMES) <= set(registry.names("guidance"))
    classes = [NoGuidance, JointGuidance, WeightedGuidance, InterleavedGuidance]
    for name, cls in zip(NAMES, classes):
        assert registry.get("guidance", name) is cls
        assert type(get_guidance(name, w=2.0)) is cls and cls.name == name
        assert registry.default_registry().origin("guidance", name) == "reimagen.diffusion.guidance"


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=40, deadline=None)
@given(w=weights, w_text=weights, w_neighbors=weights, eta=ratios, draw=draws)
def test_each_strategy_is_exactly_its_formula(name, w, w_text, w_neighbors, eta, draw):
    cfg = GuidanceConfig(w=w, w_text=w_text, w_neighbors=w_neighbors, eta=eta)
    strategy = get_guidance(name, **cfg.to_dict())
    eps = random_eps()
    got = strategy.combine(asked(strategy, eps, draw), draw)
    # The library's own order gives bit-identical results (measured 0 over every example); the
    # bound admits any other order of the same formula (it was rtol=1e-12, atol=1e-12).
    atol = formula_tol(max(w, w_text, w_neighbors), eps)
    np.testing.assert_allclose(got, expected(name, eps, cfg, draw), rtol=0, atol=atol)


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=25, deadline=None)
@given(eta=ratios, draw=draws)
def test_unit_weights_give_the_conditional_prediction(name, eta, draw):
    strategy = get_guidance(name, w=1.0, w_text=1.0, w_neighbors=1.0, eta=eta)
    eps = random_eps(seed=3)
    got = strategy.combine(asked(strategy, eps, draw), draw)
    # w = 1 makes 1·ε − 0·ε' exact; weighted leaves η·ε + (1−η)·ε: the rounding of 1 − η, the
    # two products and the sum, each <= u = 2^-53 of |ε| (the parts share ε's sign): 4u
    # relative (measured 2.2e-16; it was rtol=1e-14, atol=1e-14).
    np.testing.assert_allclose(got, eps["full"], rtol=4 * 2**-53, atol=0)


def test_variants_each_strategy_needs():
    assert NoGuidance().variants(0.3) == ("full",)
    assert JointGuidance().variants(0.3) == ("full", "none")
    assert WeightedGuidance().variants(0.3) == ("full", "text", "neighbors")
    interleaved = InterleavedGuidance(eta=0.5)
    assert interleaved.variants(0.49) == ("full", "neighbors")  # R < η: text-enhanced ε̂_p
    assert interleaved.variants(0.5) == ("full", "text")  # R ≥ η: neighbour-enhanced ε̂_n


def test_guidance_strengthens_the_difference_between_conditions():
    """ε̂ − ε(full) = (w−1)(ε(full) − ε(none)): linear in w, zero at w = 1 (Eq. 5)."""
    eps = random_eps(seed=5)
    gaps = [JointGuidance(w=w).combine(eps, 0.0) - eps["full"] for w in (1.0, 2.0, 5.0)]
    direction = eps["full"] - eps["none"]
    for gap, w in zip(gaps, (1.0, 2.0, 5.0)):
        # Two orders of one formula, each within formula_tol of the exact value: 4.9e-14 at w = 5
        # (measured 1.8e-15; it was rtol=1e-12, atol=1e-12).
        atol = 2 * formula_tol(w, eps)
        np.testing.assert_allclose(gap, (w - 1.0) * direction, rtol=0, atol=atol)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), eta=ratios)
def test_interleaved_branch_is_exactly_R_below_eta(seed, eta):
    """Per step, R < η -> ε̂_p (needs ε(neighbors)), else ε̂_n (needs ε(text))."""
    noise = SamplerNoise.draw(np.random.default_rng(seed), (1, 1, 1, 1), steps=64)
    strategy = InterleavedGuidance(eta=eta, w_text=4.0, w_neighbors=2.0)
    eps = random_eps(seed=seed % 7, shape=(1, 2, 2, 1))
    for r in noise.guidance_draws:
        text_step = strategy.variants(r) == ("full", "neighbors")
        assert text_step == (r < eta)
        want = (
            (4.0 * eps["full"] - 3.0 * eps["neighbors"])
            if text_step
            else (2.0 * eps["full"] - 1.0 * eps["text"])
        )
        # The library's order (measured 0: bit-identical) or any other within formula_tol (it
        # was rtol=1e-12 alone, which an output near 0 after cancellation would not meet).
        got = strategy.combine(asked(strategy, eps, r), r)
        np.testing.assert_allclose(got, want, rtol=0, atol=formula_tol(4.0, eps))


def test_interleaved_eta_extremes_and_half():
    """η = 1: always text-enhanced; η = 0: always neighbour-enhanced; η = 0.5: about half."""
    steps = 4000
    draws_ = SamplerNoise.draw(np.random.default_rng(11), (1, 1, 1, 1), steps).guidance_draws

    def text_share(eta):
        strategy = InterleavedGuidance(eta=eta)
        return sum(strategy.variants(r) == ("full", "neighbors") for r in draws_) / steps

    assert text_share(1.0) == 1.0
    assert text_share(0.0) == 0.0
    # A statistical bound: the share of 4000 uniform draws below η is Binomial(4000, η)/4000,
    # standard deviation √(η(1−η)/4000) (0.0079 at η = 0.5, 0.0063 at 0.2); 5σ is a two-sided
    # 5.7e-7 chance (normal approximation) for a fresh seed. Measured at seed 11: +0.0005,
    # −0.0055.
    assert abs(text_share(0.5) - 0.5) < 5 * np.sqrt(0.25 / steps)
    assert abs(text_share(0.2) - 0.2) < 5 * np.sqrt(0.16 / steps)


@pytest.mark.parametrize(
    "weights_, field",
    [
        ({"w": 0.5}, r"GuidanceConfig.w must be in \[1.0, inf\], got 0.5"),
        ({"w_text": 0.99}, r"GuidanceConfig.w_text must be in \[1.0, inf\]"),
        ({"w_neighbors": -3.0}, r"GuidanceConfig.w_neighbors must be in \[1.0, inf\]"),
        ({"eta": 1.5}, r"GuidanceConfig.eta must be in \[0.0, 1.0\]"),
        ({"eta": -0.1}, r"GuidanceConfig.eta must be in \[0.0, 1.0\]"),
        ({"w": float("nan")}, "GuidanceConfig.w must be a finite number"),
        ({"w_text": float("inf")}, "GuidanceConfig.w_text must be a finite number"),
        ({"w": "3"}, "GuidanceConfig.w must be a finite number"),
        ({"weight": 3.0}, "unknown key.*weight; allowed: w, w_text, w_neighbors, eta"),
    ],
)
@pytest.mark.parametrize("name", NAMES)
def test_bad_weights_are_a_config_error_naming_the_field(name, weights_, field):
    with pytest.raises(ConfigError, match=field):
        registry.get("guidance", name)(**weights_)


def test_config_or_keywords_not_both():
    cfg = GuidanceConfig(w=4.0)
    assert JointGuidance(cfg) == JointGuidance(w=4.0)
    assert JointGuidance(cfg) != WeightedGuidance(cfg)
    with pytest.raises(ConfigError, match="not both"):
        JointGuidance(cfg, w=2.0)
    with pytest.raises(ConfigError, match="expected a GuidanceConfig"):
        JointGuidance({"w": 2.0})


def test_config_json_round_trip():
    cfg = GuidanceConfig(w=7.5, w_text=30.0, w_neighbors=2.0, eta=0.25)
    assert GuidanceConfig.from_json(cfg.to_json()) == cfg


def test_strategies_accept_the_pipelines_keyword_set():
    """reimagen.generation.pipeline.make_guidance passes all four weights to whichever strategy is named."""
    for name in NAMES:
        strategy = registry.get("guidance", name)(w=2.0, w_text=3.0, w_neighbors=4.0, eta=0.3)
        assert strategy.config == GuidanceConfig(w=2.0, w_text=3.0, w_neighbors=4.0, eta=0.3)


@pytest.mark.parametrize("name", NAMES)
def test_same_arithmetic_on_torch_and_jax_arrays(name):
    torch = pytest.importorskip("torch")
    jnp = pytest.importorskip("jax.numpy")
    strategy = get_guidance(name, w=5.0, w_text=3.0, w_neighbors=2.5, eta=0.4)
    eps = {v: a.astype(np.float32) for v, a in random_eps(seed=9).items()}
    for draw in (0.1, 0.9):
        want = strategy.combine(asked(strategy, eps, draw), draw)
        as_torch = {v: torch.from_numpy(a) for v, a in asked(strategy, eps, draw).items()}
        as_jax = {v: jnp.asarray(a) for v, a in asked(strategy, eps, draw).items()}
        got_torch = strategy.combine(as_torch, draw)
        got_jax = strategy.combine(as_jax, draw)
        assert isinstance(got_torch, torch.Tensor) and got_torch.dtype == torch.float32
        assert got_jax.dtype == jnp.float32
        # Exact: numpy, eager torch and eager JAX all do the same correctly rounded float32
        # products and differences in the same order, the Python weights cast to float32 alike;
        # each op is its own kernel, so nothing fuses into an FMA (measured 0; it was rtol=1e-6,
        # atol=1e-6).
        np.testing.assert_array_equal(got_torch.numpy(), want)
        np.testing.assert_array_equal(np.asarray(got_jax), want)
