"""Guidance strategies (DESIGN §5; paper Eq. 5, Eq. 6, Appendix E).

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
from reimagen.guidance import (
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


def asked(strategy, eps, draw):
    """Only the variants the strategy asked for (so a formula that reads another one fails)."""
    return {v: eps[v] for v in strategy.variants(draw)}


def test_builtins_are_registered_under_the_design_names():
    assert set(NAMES) <= set(registry.names("guidance"))
    classes = [NoGuidance, JointGuidance, WeightedGuidance, InterleavedGuidance]
    for name, cls in zip(NAMES, classes):
        assert registry.get("guidance", name) is cls
        assert type(get_guidance(name, w=2.0)) is cls and cls.name == name
        assert registry.default_registry().origin("guidance", name) == "reimagen.guidance"


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=40, deadline=None)
@given(w=weights, w_text=weights, w_neighbors=weights, eta=ratios, draw=draws)
def test_each_strategy_is_exactly_its_formula(name, w, w_text, w_neighbors, eta, draw):
    cfg = GuidanceConfig(w=w, w_text=w_text, w_neighbors=w_neighbors, eta=eta)
    strategy = get_guidance(name, **cfg.to_dict())
    eps = random_eps()
    got = strategy.combine(asked(strategy, eps, draw), draw)
    np.testing.assert_allclose(got, expected(name, eps, cfg, draw), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=25, deadline=None)
@given(eta=ratios, draw=draws)
def test_unit_weights_give_the_conditional_prediction(name, eta, draw):
    strategy = get_guidance(name, w=1.0, w_text=1.0, w_neighbors=1.0, eta=eta)
    eps = random_eps(seed=3)
    got = strategy.combine(asked(strategy, eps, draw), draw)
    np.testing.assert_allclose(got, eps["full"], rtol=1e-14, atol=1e-14)


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
        np.testing.assert_allclose(gap, (w - 1.0) * direction, rtol=1e-12, atol=1e-12)


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
        np.testing.assert_allclose(strategy.combine(asked(strategy, eps, r), r), want, rtol=1e-12)


def test_interleaved_eta_extremes_and_half():
    """η = 1: always text-enhanced; η = 0: always neighbour-enhanced; η = 0.5: about half."""
    steps = 4000
    draws_ = SamplerNoise.draw(np.random.default_rng(11), (1, 1, 1, 1), steps).guidance_draws

    def text_share(eta):
        strategy = InterleavedGuidance(eta=eta)
        return sum(strategy.variants(r) == ("full", "neighbors") for r in draws_) / steps

    assert text_share(1.0) == 1.0
    assert text_share(0.0) == 0.0
    # Binomial(4000, 0.5): standard deviation 0.0079; 5σ bound.
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
    """reimagen.pipeline.make_guidance passes all four weights to whichever strategy is named."""
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
        np.testing.assert_allclose(got_torch.numpy(), want, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(np.asarray(got_jax), want, rtol=1e-6, atol=1e-6)
