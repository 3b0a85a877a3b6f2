"""Shipped weights: float16 export round trip, size budget, and that what ships loads."""

import hashlib

import numpy as np
import pytest
import torch

from reimagen.backends.torch import BACKEND
from reimagen.core import digests
from reimagen.core.io import load_safetensors
from reimagen.core.unet_config import PRESETS
from reimagen.generation.shipped import STAGES, available_stages, weights_path


def test_float16_export_round_trip(tmp_path):
    model = BACKEND.build_model(PRESETS["tiny"], seed=1)
    generator = torch.Generator().manual_seed(1)  # not the global generator: a fixed draw
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(generator=generator)
    path = BACKEND.save_model(model, tmp_path / "m.safetensors", dtype="float16")
    again = BACKEND.load_model(path)
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert b.dtype == torch.float32, name
        # float16 rounds to nearest: <= 2^-11 relative (half an ulp, 11 significand bits) above
        # its smallest normal 2^-14, <= 2^-25 absolute (half its subnormal spacing) below; N(0, 1)
        # weights stay far below float16's 65504 (it was rtol=1e-3, atol=1e-4).
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=2**-11, atol=2**-25, err_msg=name)
    with pytest.raises(ValueError, match="dtype must be float32 or float16"):
        BACKEND.save_model(model, tmp_path / "x.safetensors", dtype="int8")


def test_shipped_weights_fit_the_budget_and_load():
    total = sum(weights_path(s).stat().st_size for s in available_stages())
    assert total <= 50 * 2**20, f"shipped weights are {total / 2**20:.1f} MiB (budget 50)"
    for stage in available_stages():
        model = BACKEND.load_model(weights_path(stage))
        assert model.config.is_super_resolution == (stage == "sr"), stage
    assert set(available_stages()) <= set(STAGES)


# sha256 over (name, dtype, shape, bytes) of every tensor, sorted by name, of the shipped files
# as they were before they were re-stamped with their file checksum (git 3efb509): re-stamping
# rewrote the header only, and these prove no tensor value moved.
SHIPPED_TENSORS_SHA256 = {
    "base": "ebe727a34886bdf9e6d216ea79d94484dc9beafe26af080872ce49b79df65368",
    "baseline": "e18625d60b4b563da3c8b37e5ec2c2b965f00b68aec311dad88a93ef25c06446",
    "sr": "7c374b2b7bdc7748a34aed5ff0e41b999d6b4bd0887766e45489ed1d1140ffe7",
}


def tensors_sha256(tensors: dict) -> str:
    digest = hashlib.sha256()
    for key in sorted(tensors):
        value = np.ascontiguousarray(tensors[key])
        digest.update(f"{key}|{value.dtype.str}|{list(value.shape)}\n".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


@pytest.mark.parametrize("stage", STAGES)
def test_shipped_weights_carry_their_checksum_and_the_same_tensors(stage):
    path = weights_path(stage)
    assert digests.verify_safetensors(path), f"{path} has no {digests.SAFETENSORS_KEY}"
    tensors, _ = load_safetensors(path)  # check=True: the digest must match
    assert tensors_sha256(tensors) == SHIPPED_TENSORS_SHA256[stage]


def test_the_shipped_base_records_its_encoder_and_recipe():
    """Issue #15: the shipped base says how it was made: its text encoder, the TrainConfig
    fields that shape it and the examples its whole lineage saw (the learning curve's x)."""
    from reimagen.training.checkpoint import trained_encoder, training_recipe
    from reimagen.training.contract import TrainConfig

    path = weights_path("base")
    recipe = training_recipe(path)
    assert recipe is not None, f"{path} records no recipe"
    assert recipe["encoder"] == trained_encoder(path)
    assert set(recipe["train_config"]) <= set(TrainConfig().to_dict())
    assert recipe["train_config"]["neighbors"] == 2
    assert (
        recipe["examples_total"]
        >= recipe["examples"]
        == (recipe["step"] * recipe["train_config"]["batch_size"])
    )


def test_stamping_a_recipe_keeps_tensors_and_metadata(tmp_path):
    from reimagen.training.checkpoint import ENCODER_KEY, stamp_recipe, training_recipe

    model = BACKEND.build_model(PRESETS["tiny"], seed=1)
    path = BACKEND.save_model(model, tmp_path / "m.safetensors", metadata={ENCODER_KEY: "hash"})
    before, meta_before = load_safetensors(path)
    stamp_recipe(path, {"examples_total": 5})
    after, meta_after = load_safetensors(path)  # its checksum was rewritten: it verifies
    assert tensors_sha256(after) == tensors_sha256(before)
    assert training_recipe(path) == {"examples_total": 5}
    assert {k: v for k, v in meta_after.items() if k != "reimagen.recipe"} == meta_before
