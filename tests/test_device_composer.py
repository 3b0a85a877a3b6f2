"""The device-side scene composer (reimagen.backends.torch.scene_composer, issue #16 item 3) on
CPU tensors gives the host composer's batches bit for bit: targets, neighbour images (the
augmented same-style ones included), noise, text and caption encodings, t and the text and
neighbour drops; the prefetch's compaction alike; and a run may switch composers on resume.

A small knowledge base (Twemoji + OpenMoji drawings of 12 seen and 4 unseen entities, as in
tests/test_training_data.py) and the model-free ``hash`` encoder keep this fast."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_training_data import encoder, kb, split  # noqa: F401  (the same 16-entity KB fixtures)

from reimagen.backends.torch.scene_composer import DeviceBatchSource
from reimagen.backends.torch.trainer import Trainer, model_kwargs
from reimagen.cli.main import main
from reimagen.core.unet_config import PRESETS
from reimagen.diffusion.schedule import CosineSchedule
from reimagen.encoders.table import EncodingTable
from reimagen.training import data as td
from reimagen.training.checkpoint import latest_checkpoint, read_checkpoint
from reimagen.training.contract import TrainConfig
from reimagen.training.emoji_batches import EmojiBatchSource
from reimagen.training.prefetch import compact_batch

STEPS = range(4)
# (seed, batch, K, DataConfig): the default recipe; every example with an augmented true
# neighbour (most slots augmented, flips and colour jitter both ways); no neighbours (baseline)
CASES = {
    "default": (7, 16, 2, td.DataConfig(pool_size=2000)),
    "augmented": (
        11,
        12,
        3,
        td.DataConfig(pool_size=2000, p_true_neighbor=1.0, p_same_style=1.0, aug_flip=0.5),
    ),
    "baseline": (3, 8, 0, td.DataConfig(pool_size=2000)),
}


@pytest.fixture(scope="module")
def triples(tmp_path_factory):
    return tmp_path_factory.mktemp("triples")


def make_source(kb, split, encoder, triples, case: str, image_size: int = 32, steps: int = 100):  # noqa: F811
    seed, batch, k, data = CASES[case]
    config = TrainConfig(batch_size=batch, neighbors=k, seed=seed, steps=steps)
    return EmojiBatchSource(
        kb, split, encoder, config, data, image_size=image_size, cache_dir=triples
    )


@pytest.fixture(scope="module", params=list(CASES))
def pair(request, kb, split, encoder, triples):  # noqa: F811
    """(host source, device composer on CPU tensors over the same source) per case."""
    source = make_source(kb, split, encoder, triples, request.param)
    return source, DeviceBatchSource(source, "cpu")


def differences(host, device) -> list[str]:
    """Fields of a device batch that are not bit-identical (values and dtype) to the host's."""
    bad = []
    tensors = {
        "images": (host.images, device.images),
        "neighbor_images": (host.neighbor_images, device.neighbor_images),
        "noise": (host.noise, device.noise),
    }
    for name in ("text", "neighbor_text"):
        for field in ("tokens", "mask", "pooled"):
            tensors[f"{name}.{field}"] = (
                getattr(getattr(host, name), field),
                getattr(getattr(device, name), field),
            )
    for name, (want, got) in tensors.items():
        want = torch.from_numpy(np.asarray(want))
        if got.device.type != "cpu" or want.dtype != got.dtype or not torch.equal(want, got):
            bad.append(name)
    for name in ("t", "use_text", "use_neighbors"):
        want, got = getattr(host, name), getattr(device, name)
        if want.dtype != got.dtype or not np.array_equal(want, got):
            bad.append(name)
    return bad


def test_device_batches_are_the_host_batches(pair):
    source, device = pair
    for step in STEPS:
        assert differences(source.batch(step), device.batch(step)) == [], f"step {step}"


def test_the_cases_exercise_augmentation_flips_and_both_dropouts(pair):
    """The equality above covers what matters: augmented slots, flipped and not, named and
    unnamed prompts, dropped and kept text."""
    source, _ = pair
    infos = [source.batch_with_info(step)[1] for step in STEPS]
    plans = [source.plan(step) for step in STEPS]
    named = np.concatenate([source.pool.named[i.pool_index] for i in infos])
    use_text = np.concatenate([p.use_text for p in plans])
    assert named.any() and not named.all()
    assert use_text.any() and not use_text.all()
    if source.config.neighbors:
        augmented = np.concatenate([p.augmented.ravel() for p in plans])
        flips = np.concatenate([p.augmentation["flip"][p.augmented.ravel()] for p in plans])
        assert augmented.sum() >= 8 and flips.any() and not flips.all()


def test_a_different_step_is_detected(pair):
    """The comparison can fail: the next step's batch differs from this one's."""
    source, device = pair
    assert "images" in differences(source.batch(0), device.batch(1))
    assert "noise" in differences(source.batch(0), device.batch(1))


def test_compact_text_is_the_prefetch_compaction(pair):
    """With prefetch workers the host path cuts the text and rounds it to float16
    (prefetch.compact_batch); the device composer does the same when compact."""
    source, _ = pair
    device = DeviceBatchSource(source, "cpu", compact=True)
    for step in STEPS:
        want = compact_batch(source.batch(step))
        assert differences(want, device.batch(step)) == [], f"step {step}"
        if source.config.neighbors:
            assert want.text.tokens.dtype == np.float16


def test_an_encoding_table_is_gathered_on_the_device(tmp_path, kb, split, encoder, triples):  # noqa: F811
    """What `reimagen train` builds: the pool prompts' float16 EncodingTable as the encoder."""
    source = make_source(kb, split, encoder, triples, "default")
    source.encoder = EncodingTable.build_or_load(encoder, source.pool.prompts, tmp_path / "t")
    device = DeviceBatchSource(source, "cpu")
    for step in STEPS:
        assert differences(source.batch(step), device.batch(step)) == [], f"step {step}"


def test_prefetch_workers_give_the_inline_batches(pair):
    """workers > 0: the random choices are drawn in forked processes, in step order; a step
    asked out of order restarts the stream."""
    source, _ = pair
    ahead = DeviceBatchSource(source, "cpu", workers=2, compact=False)
    try:
        for step in [0, 1, 2, 5, 6]:
            assert differences(source.batch(step), ahead.batch(step)) == [], f"step {step}"
    finally:
        ahead.close()


def leaves(value) -> list[torch.Tensor]:
    """The tensors of a (nested) NamedTuple of network inputs."""
    if isinstance(value, torch.Tensor):
        return [value]
    return [leaf for item in value for leaf in leaves(item)]


def test_model_inputs_are_bit_identical(pair):
    """x_t (float64 on the device, as train_loop.noisy_inputs) and every other network input."""
    source, device = pair
    schedule = CosineSchedule()
    want = model_kwargs(source.batch(2), schedule)
    got = model_kwargs(device.batch(2), schedule)
    for name in ("x", "t", "use_text", "use_neighbors"):
        assert torch.equal(want[name], got[name]), name
    for name in ("text", "neighbors"):
        if want[name] is None:
            assert got[name] is None
            continue
        for a, b in zip(leaves(want[name]), leaves(got[name]), strict=True):
            assert torch.equal(a, b), name


def test_a_run_may_switch_composer_on_resume(tmp_path, kb, split, encoder, triples):  # noqa: F811
    """Two steps on the host == one step on the device, then a resume on the host: the same
    weights bit for bit (CPU, deterministic algorithms); the composer of each checkpoint is
    recorded and the switch logged."""
    torch.set_num_threads(1)
    model = PRESETS["tiny"].replace(text_dim=32)
    host = make_source(kb, split, encoder, triples, "default", image_size=16, steps=2)
    device = DeviceBatchSource(host, "cpu")
    config = host.config
    one = TrainConfig(**{**config.to_dict(), "steps": 1})
    straight = Trainer.train(model, config, host, tmp_path / "a", progress=False)
    Trainer.train(model, one, device, tmp_path / "b", progress=False)
    assert read_checkpoint(latest_checkpoint(tmp_path / "b")).state["composer"] == "device"
    switched = Trainer.train(model, config, host, tmp_path / "b", progress=False)
    assert read_checkpoint(latest_checkpoint(tmp_path / "b")).state["composer"] == "host"
    for (name, a), (_, b) in zip(
        straight.model.state_dict().items(), switched.model.state_dict().items()
    ):
        assert torch.equal(a, b), name
    log = [json.loads(line) for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    changes = [r["changes"] for r in log if r.get("event") == "config-change"]
    assert {"composer": ["device", "host"]} in [
        {k: v for k, v in c.items() if k == "composer"} for c in changes
    ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--composer", "gpu"], ["argument --composer: invalid choice: 'gpu'", "host", "device"]),
        (
            ["--composer", "device", "--stage", "sr"],
            ["--composer device: only --stage base or baseline (sr composes on the host)"],
        ),
        (
            ["--composer", "device", "--backend", "jax"],
            ["--composer device: only the torch backend, got --backend jax"],
        ),
    ],
)
def test_bad_composer_is_refused_in_one_line(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("REIMAGEN_HOME", str(tmp_path / "home"))  # no KB: checked before it
    assert main(["train", *argv, "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and all(part in err for part in message), err
    assert not (tmp_path / "run").exists()
