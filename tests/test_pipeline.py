"""The generation pipeline and the cascade, end to end on the tiny torch network."""

import numpy as np
import pytest
from toys import toy_kb, toy_pipeline

from reimagen.core import registry
from reimagen.core.unet_config import PRESETS
from reimagen.diffusion.sampling_config import SamplingConfig
from reimagen.generation.cascade import Cascade, CascadeError, Stage

SR_TINY = PRESETS["tiny"].replace(cond_image_channels=3, lowres_size=8)


@pytest.fixture(scope="module")
def kb(tmp_path_factory):
    return toy_kb(tmp_path_factory.mktemp("kb") / "kb")


_pipeline = toy_pipeline


FAST = SamplingConfig(sampler="ddim", steps=3, guidance="interleaved", eta=0.5)


def test_generate_shapes_counts_and_determinism(kb):
    pipe = _pipeline(kb, PRESETS["tiny"])
    rows = np.array([[0, 1], [2, 3]])
    out = pipe.generate(["an apple", "a robot"], sampling=FAST, seed=3, neighbor_rows=rows)
    assert out.images.shape == (2, 16, 16, 3) and out.images.dtype == np.uint8
    assert out.nfe == 2 * FAST.steps  # interleaved: 2 variants per step
    again = pipe.generate(["an apple", "a robot"], sampling=FAST, seed=3, neighbor_rows=rows)
    np.testing.assert_array_equal(out.images, again.images)
    other = pipe.generate(["an apple", "a robot"], sampling=FAST, seed=4, neighbor_rows=rows)
    assert not np.array_equal(out.images, other.images)


def test_generate_with_a_registered_retriever(kb):
    retriever = registry.get("retriever", "bm25")().fit(kb)
    pipe = _pipeline(kb, PRESETS["tiny"], retriever=retriever)
    out = pipe.generate(["a rocket"], k=2, sampling=FAST)
    assert out.neighbor_rows.shape == (1, 2)
    assert kb.records[int(out.neighbor_rows[0, 0])].text == "a drawing of a rocket"


def test_k0_baseline_runs_without_a_retriever(kb):
    pipe = _pipeline(kb, PRESETS["tiny"])
    out = pipe.generate(["a rocket"], k=0, sampling=FAST.replace(guidance="joint"))
    assert out.neighbor_rows.shape == (1, 0) and out.images.shape == (1, 16, 16, 3)


def test_bad_sampler_fails_before_compute(kb):
    pipe = _pipeline(kb, PRESETS["tiny"])
    with pytest.raises(registry.RegistryError, match="unknown sampler 'euler'"):
        pipe.generate(["x"], k=0, sampling=FAST.replace(sampler="euler"))


def test_cascade_base_then_sr(kb):
    tiny_base = PRESETS["tiny"].replace(
        image_size=8,
        channel_mults=(1,),
        self_attn_resolutions=(8,),
        cross_attn_resolutions=(8,),
        neighbor_attn_resolutions=(8,),
    )
    cascade = Cascade(
        [
            Stage("base", _pipeline(kb, tiny_base), FAST, k=2),
            Stage("sr", _pipeline(kb, SR_TINY), FAST.replace(aug_level=0.1), k=1),
        ]
    )
    low, high = cascade.generate(["an anchor"], seed=1, neighbor_rows=np.array([[5, 4]]))
    assert low.images.shape == (1, 8, 8, 3) and high.images.shape == (1, 16, 16, 3)
    np.testing.assert_array_equal(high.neighbor_rows, [[5]])  # SR reuses the base's rows


def test_cascade_resolution_mismatch_names_both_stages(kb):
    with pytest.raises(
        CascadeError, match="stage 'sr' expects 8x8 input but stage 'base' outputs 16x16"
    ):
        Cascade(
            [Stage("base", _pipeline(kb, PRESETS["tiny"])), Stage("sr", _pipeline(kb, SR_TINY))]
        )
    with pytest.raises(CascadeError, match="cannot come first"):
        Cascade([Stage("sr", _pipeline(kb, SR_TINY))])
