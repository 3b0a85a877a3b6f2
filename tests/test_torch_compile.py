"""compile_unet (reimagen/backends/torch/compiled.py): the compiled forward gives the eager ε to
float32 rounding, and without a C++ compiler, or when compiling fails, the model runs eagerly
with a warning."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from reimagen.backends.torch import BACKEND, compiled
from reimagen.backends.torch.compiled import compile_unet
from reimagen.backends.torch.unet import NeighborInputs, TextInputs
from reimagen.core.interfaces import TextEncoding
from reimagen.core.unet_config import PRESETS

TINY = PRESETS["tiny"]
L = 5  # text length

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def randomized_tiny(seed: int = 0) -> torch.nn.Module:
    """The tiny U-Net with every parameter moved off its (partly zero) init."""
    model = BACKEND.build_model(TINY, seed=seed).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    return model


def inputs(b: int = 2, k: int = 2, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    s, c, d = TINY.image_size, TINY.in_channels, TINY.text_dim

    def text(*lead):
        mask = torch.arange(L) < torch.randint(1, L + 1, lead, generator=gen)[..., None]
        return TextInputs(
            torch.randn(*lead, L, d, generator=gen), mask, torch.randn(*lead, d, generator=gen)
        )

    x = torch.randn(b, s, s, c, generator=gen)
    t = torch.rand(b, generator=gen)
    neighbors = NeighborInputs(torch.randn(b, k, s, s, c, generator=gen), text(b, k))
    flags = {"use_text": torch.tensor([True, False]), "use_neighbors": torch.tensor([True, True])}
    return x, t, text(b), neighbors, flags


def forward(model, x, t, text, neighbors, flags):
    with torch.no_grad():
        return model(x, t, text, neighbors=neighbors, **flags)


@pytest.mark.skipif(compiled.cxx_compiler() is None, reason="no C++ compiler for Inductor")
def test_compiled_forward_gives_the_eager_eps():
    """K=2 neighbours in the same pass (training's path) and the denoiser's cached path, fp32:
    max |Δε| ≤ 1e-5 · max |ε| (fused kernels change the order of float32 sums only)."""
    model = randomized_tiny()
    args = inputs()
    expected = forward(model, *args)
    compile_unet(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no fallback to eager
        actual = forward(model, *args)
    err, scale = (actual - expected).abs().max().item(), expected.abs().max().item()
    assert err <= 1e-5 * scale, f"{err:.3g} > 1e-5 x {scale:.3g}"

    rng = np.random.default_rng(0)
    x, _, _, neighbors, _ = args
    host = TextEncoding(
        rng.standard_normal((2, L, TINY.text_dim), dtype=np.float32),
        np.ones((2, L), bool),
        rng.standard_normal((2, TINY.text_dim), np.float32),
    )
    nb_text = TextEncoding(*(a.numpy() for a in neighbors.text))
    eager = BACKEND.make_denoiser(randomized_tiny(), host, neighbors.images.numpy(), nb_text)
    fast = BACKEND.make_denoiser(model, host, neighbors.images.numpy(), nb_text)
    want, got = eager(x, 0.3, ("full", "none")), fast(x, 0.3, ("full", "none"))
    assert (got - want).abs().max().item() <= 1e-5 * want.abs().max().item()


def test_without_a_cxx_compiler_the_model_stays_eager(monkeypatch):
    monkeypatch.setattr(compiled, "cxx_compiler", lambda: None)
    model = randomized_tiny()
    args = inputs()
    expected = forward(model, *args)
    with pytest.warns(RuntimeWarning, match="needs a C\\+\\+ compiler"):
        assert compile_unet(model) is model
    assert "forward" not in vars(model)  # the class's forward, untouched
    assert torch.equal(forward(model, *args), expected)


def test_a_failed_compile_falls_back_to_eager_for_good(monkeypatch):
    calls = []

    def broken_compile(fn, **options):
        def run(*args, **kwargs):
            calls.append(1)
            raise torch._inductor.exc.InvalidCxxCompiler("g++")

        return run

    monkeypatch.setattr(compiled, "cxx_compiler", lambda: "g++")
    monkeypatch.setattr(compiled.torch, "compile", broken_compile)
    model = randomized_tiny()
    args = inputs()
    expected = forward(randomized_tiny(), *args)
    compile_unet(model)
    with pytest.warns(RuntimeWarning, match="torch.compile failed"):
        first = forward(model, *args)
    second = forward(model, *args)  # no second attempt, no second warning
    assert calls == [1]
    assert torch.equal(first, expected) and torch.equal(second, expected)
