"""Position tables in the neighbour attention (UNetConfig.neighbor_pos_emb, issue #15).

Oracles: without tables the attention is content-addressed, so permuting the K·F·F reference
tokens leaves its output unchanged (a sum reordered: fp32 rounding only); with non-zero tables
it is not. Zero tables compute exactly the network without them, which is what lets
``--init-from`` grow a trained network (``cpu-base`` -> ``cpu-base-pos``) without changing
its function. Torch <-> JAX parity of the tables: tests/test_jax_parity.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_torch_trainer import TINY, SyntheticSource, config

from reimagen.backends.torch import checkpoint as ckpt
from reimagen.backends.torch.attention import NeighborAttention
from reimagen.backends.torch.trainer import Trainer
from reimagen.backends.torch.unet import NeighborInputs, TextInputs, build_unet
from reimagen.core.config import ConfigError
from reimagen.core.unet_config import PRESETS, UNetConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

TINY_POS = TINY.replace(neighbor_pos_emb=True)


def test_preset_and_default():
    assert PRESETS["cpu-base-pos"] == PRESETS["cpu-base"].replace(neighbor_pos_emb=True)
    old = json.loads(PRESETS["cpu-base"].to_json())
    del old["neighbor_pos_emb"]  # a weights file written before the field existed
    assert UNetConfig.from_dict(old) == PRESETS["cpu-base"]
    with pytest.raises(ConfigError, match="neighbor_pos_emb"):
        TINY.replace(neighbor_pos_emb="yes")


def _attention_outputs(pos_emb: bool, permute: bool) -> torch.Tensor:
    """NeighborAttention at F=8 with random weights (and tables), on references whose K·F·F
    tokens are optionally permuted."""
    gen = torch.Generator().manual_seed(0)
    layer = NeighborAttention(32, TINY.replace(neighbor_pos_emb=pos_emb), 8)
    with torch.no_grad():
        for param in layer.parameters():
            param.copy_(0.3 * torch.randn(param.shape, generator=gen))
    x = torch.randn(2, 32, 8, 8, generator=gen)
    features = torch.randn(2, 2 * 64, 32, generator=gen)  # [N, K·F·F, C]
    if permute:
        features = features[:, torch.randperm(128, generator=gen)]
    with torch.no_grad():
        return layer(x, layer.project(features), torch.tensor([True, True]))


def test_without_tables_attention_ignores_where_a_reference_token_is():
    same = _attention_outputs(pos_emb=False, permute=False)
    moved = _attention_outputs(pos_emb=False, permute=True)
    # a softmax-weighted sum over 128 tokens in another order: ~128 fp32 roundings of values
    # of size ~|v|·(|W_out|·C) ≈ 10, i.e. ≲ 128 · 1.2e-7 · 10 ≈ 1.5e-4 in the worst case
    assert (same - moved).abs().max() < 1.5e-4
    with_tables = _attention_outputs(pos_emb=True, permute=False)
    moved_with_tables = _attention_outputs(pos_emb=True, permute=True)
    assert (with_tables - moved_with_tables).abs().max() > 1e-2  # positions now matter


def _inputs(config: UNetConfig, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    b, k, s, length = 2, 2, config.image_size, 5

    def text(*lead):
        return TextInputs(
            torch.randn(*lead, length, config.text_dim, generator=gen),
            torch.ones(*lead, length, dtype=torch.bool),
            torch.randn(*lead, config.text_dim, generator=gen),
        )

    neighbors = NeighborInputs(torch.randn(b, k, s, s, 3, generator=gen), text(b, k))
    return torch.randn(b, s, s, 3, generator=gen), torch.rand(b, generator=gen), text(b), neighbors


def _eps(model, config):
    x, t, text, neighbors = _inputs(config)
    on = torch.ones(x.shape[0], dtype=torch.bool)
    with torch.no_grad():
        return model(x, t, text, neighbors=neighbors, use_text=on, use_neighbors=on)


def _trained_like_donor(tmp_path):
    """A TINY network with no zero branch (the neighbour attention really contributes), saved."""
    donor = build_unet(TINY, seed=7)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in donor.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=gen))
    return donor, ckpt.save_model(donor, tmp_path / "donor.safetensors")


def test_init_from_grows_tables_and_keeps_the_function(tmp_path):
    donor, path = _trained_like_donor(tmp_path)
    trainer = Trainer(TINY_POS, config(2), SyntheticSource(), tmp_path / "run", init_weights=path)
    grown = trainer.model.eval()
    tables = {k: v for k, v in grown.state_dict().items() if k.endswith((".pos_q", ".pos_k"))}
    assert len(tables) == 2 * len(TINY.neighbor_attn_resolutions)
    assert all(not v.any() for v in tables.values())
    for key, value in donor.state_dict().items():
        assert torch.equal(grown.state_dict()[key], value), key
    # zero tables add exact zeros: the same ε, bit for bit
    assert torch.equal(_eps(grown, TINY_POS), _eps(donor.eval(), TINY))


def test_init_from_refuses_other_changes_with_tables(tmp_path):
    other = build_unet(TINY.replace(base_channels=2 * TINY.base_channels), seed=0)
    path = ckpt.save_model(other, tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="different UNetConfig"):
        Trainer(TINY_POS, config(2), SyntheticSource(), tmp_path / "run", init_weights=path)
    # and a network with tables does not shrink into one without
    with_tables = ckpt.save_model(build_unet(TINY_POS), tmp_path / "pos.safetensors")
    with pytest.raises(ValueError, match="different UNetConfig"):
        Trainer(TINY, config(2), SyntheticSource(), tmp_path / "run2", init_weights=with_tables)


def test_tables_learn(tmp_path):
    """Grown from a trained network, one optimiser step moves the zero tables: their gradient
    is not zero at zero (it flows through the trained to_out and the other side's projection).
    (From scratch it is zero at the first step, as for every weight behind a zero-init to_out.)"""
    _, path = _trained_like_donor(tmp_path)
    trainer = Trainer(TINY_POS, config(1), SyntheticSource(), tmp_path / "run", init_weights=path)
    trainer.run()
    tables = [v for k, v in trainer.model.state_dict().items() if k.endswith((".pos_q", ".pos_k"))]
    assert all(np.abs(v.numpy()).max() > 0 for v in tables)
