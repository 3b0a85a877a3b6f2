"""Per-stage training (docs/design.md §7): each stage trains and resumes in its own run folder; training
one stage never touches another's checkpoint, and the trained stages compose into a cascade."""

import hashlib
from pathlib import Path

import attrs
import numpy as np
from test_torch_trainer import SyntheticSource, config

from reimagen.backends.torch import BACKEND
from reimagen.core import registry
from reimagen.core.unet_config import PRESETS
from reimagen.diffusion.augment import noise_augment, resize_bilinear
from reimagen.diffusion.sampling_config import SamplingConfig
from reimagen.generation.cascade import Cascade, Stage
from reimagen.generation.pipeline import Pipeline

BASE = PRESETS["tiny"].replace(
    image_size=8,
    channel_mults=(1,),
    self_attn_resolutions=(8,),
    cross_attn_resolutions=(8,),
    neighbor_attn_resolutions=(8,),
)
SR = PRESETS["tiny"].replace(cond_image_channels=3, lowres_size=8)


@attrs.frozen
class SRSource:
    """SyntheticSource plus the SR inputs: the target downsampled, upsampled and noise-augmented
    at a random level (the aug level the network is told)."""

    inner: SyntheticSource

    def batch(self, step: int):
        batch = self.inner.batch(step)
        rng = np.random.default_rng([7, step])
        low = batch.images.reshape(batch.size, 8, 2, 8, 2, 3).mean(axis=(2, 4))
        level = rng.uniform(0, 0.5, batch.size).astype(np.float32)
        up = resize_bilinear(low, 16)
        lowres = noise_augment(up, level, rng.standard_normal(up.shape, dtype=np.float32))
        return attrs.evolve(batch, lowres=lowres, aug_level=level)


def tree_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + path.read_bytes())
    return digest.hexdigest()


def test_stage_only_training_and_resume_leave_other_stages_untouched(tmp_path):
    base_dir, sr_dir = tmp_path / "base", tmp_path / "sr"
    base_source = SyntheticSource(config=BASE, k=1)
    sr_source = SRSource(SyntheticSource(config=SR, k=1))
    BACKEND.train(BASE, config(2), base_source, base_dir, progress=False)
    base_hash = tree_hash(base_dir)

    BACKEND.train(SR, config(2), sr_source, sr_dir, progress=False)  # SR only, base frozen
    assert tree_hash(base_dir) == base_hash
    sr_hash = tree_hash(sr_dir)

    result = BACKEND.train(BASE, config(4), base_source, base_dir, progress=False)  # and back
    assert result.step == 4
    assert tree_hash(sr_dir) == sr_hash
    assert tree_hash(base_dir) != base_hash

    # The two trained stages compose into a cascade.
    encoder = registry.get("encoder", "hash")()

    def pipe(run_dir):
        model = BACKEND.load_model(run_dir)
        c = model.config
        return Pipeline(
            model=model,
            backend=BACKEND,
            encoder=encoder,
            image_size=c.image_size,
            lowres_size=c.lowres_size,
        )

    fast = SamplingConfig(sampler="ddim", steps=2, guidance="none")
    low, high = Cascade(
        [
            Stage("base", pipe(base_dir), fast, k=0),
            Stage("sr", pipe(sr_dir), fast.replace(aug_level=0.1), k=0),
        ]
    ).generate(["a red apple"], seed=0)
    assert low.images.shape == (1, 8, 8, 3) and high.images.shape == (1, 16, 16, 3)
