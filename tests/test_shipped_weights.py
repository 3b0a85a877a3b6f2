"""Shipped weights: float16 export round trip, size budget, and that what ships loads."""

import numpy as np
import pytest
import torch

from reimagen.backends.torch import BACKEND
from reimagen.core.unet_config import PRESETS
from reimagen.weights import STAGES, available_stages, weights_path


def test_float16_export_round_trip(tmp_path):
    model = BACKEND.build_model(PRESETS["tiny"], seed=1)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    path = BACKEND.save_model(model, tmp_path / "m.safetensors", dtype="float16")
    again = BACKEND.load_model(path)
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert b.dtype == torch.float32, name
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-3, atol=1e-4, err_msg=name)
    with pytest.raises(ValueError, match="dtype must be float32 or float16"):
        BACKEND.save_model(model, tmp_path / "x.safetensors", dtype="int8")


def test_shipped_weights_fit_the_budget_and_load():
    total = sum(weights_path(s).stat().st_size for s in available_stages())
    assert total <= 50 * 2**20, f"shipped weights are {total / 2**20:.1f} MiB (budget 50)"
    for stage in available_stages():
        model = BACKEND.load_model(weights_path(stage))
        assert model.config.is_super_resolution == (stage == "sr"), stage
    assert set(available_stages()) <= set(STAGES)
