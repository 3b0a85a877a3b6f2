"""bf16 training attends in float32 on the CPU (attention.attend): the CPU SDPA kernel's bf16
backward ran 4-10x slower than its fp32 one (docs/results/profile.md). Autocast casts the inputs
of scaled_dot_product_attention to bf16 again unless it is switched off around the call, so the
test looks at the dtype the kernel itself receives, below autocast."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from reimagen.backends.torch import BACKEND
from reimagen.backends.torch.unet import NeighborInputs, TextInputs
from reimagen.core.unet_config import PRESETS

TINY = PRESETS["tiny"]
L = 5  # text length

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


class AttentionDtypes(TorchDispatchMode):
    """The dtype of q at every attention kernel call (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.seen: list[tuple[str, torch.dtype]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__
        if "scaled_dot_product" in name:
            q = args[1] if "backward" in name else args[0]  # backward: (grad_out, q, k, v, ...)
            self.seen.append((name, q.dtype))
        return func(*args, **(kwargs or {}))


def tiny_inputs(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    b, k, s, c, d = 2, 2, TINY.image_size, TINY.in_channels, TINY.text_dim

    def text(*lead):
        mask = torch.arange(L) < torch.randint(1, L + 1, lead, generator=gen)[..., None]
        return TextInputs(
            torch.randn(*lead, L, d, generator=gen), mask, torch.randn(*lead, d, generator=gen)
        )

    return {
        "x": torch.randn(b, s, s, c, generator=gen),
        "t": torch.rand(b, generator=gen),
        "text": text(b),
        "neighbors": NeighborInputs(torch.randn(b, k, s, s, c, generator=gen), text(b, k)),
        "use_text": torch.tensor([True, False]),
        "use_neighbors": torch.tensor([True, True]),
    }


def test_bf16_training_attends_in_fp32_and_sampling_in_bf16():
    model = BACKEND.build_model(TINY, seed=0).train()
    kwargs = tiny_inputs()
    with AttentionDtypes() as training:
        with torch.autocast("cpu", torch.bfloat16):
            eps = model(**kwargs)
        eps.float().square().mean().backward()
    kernels = {name for name, _ in training.seen}
    assert any("backward" in name for name in kernels), kernels
    assert {dtype for _, dtype in training.seen} == {torch.float32}, training.seen

    with AttentionDtypes() as sampling, torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        model.eval()(**kwargs)
    assert sampling.seen and {dtype for _, dtype in sampling.seen} == {torch.bfloat16}


def test_bf16_training_eps_stays_close_to_fp32():
    """Same weights, same inputs, the training path (neighbours in the same pass): bf16
    autocast ε within bf16 rounding of float32 ε. Autocast rounds each matmul/conv's inputs
    and weights to bf16 (u = 2^-9) over ~20 layers, in quadrature: √60·u = 1.5e-2 of ε's
    norm, held to 2.5× that, the bound of test_torch_unet.py's bf16 denoiser check. 0 < rel:
    bf16 really ran."""
    model = BACKEND.build_model(TINY, seed=0).train()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    kwargs = tiny_inputs()
    fp32 = model(**kwargs)
    with torch.autocast("cpu", torch.bfloat16):
        bf16 = model(**kwargs).float()
    rel = ((bf16 - fp32).norm() / fp32.norm()).item()
    assert 0 < rel < 2.5 * 60**0.5 * 2.0**-9, rel
