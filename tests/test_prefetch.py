"""Training on borrowed hardware: prefetch workers, the compact batch transport, the time limit,
starting a run from exported weights, weights stamped with their encoder, device choice.

Oracles: prefetched batches equal inline ones array for array; a compact batch gives the
network the same output as the full batch (its tokens rounded alike); a run stopped by its
time limit and resumed ends bit-identical to an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import attrs
import numpy as np
import pytest
import torch
from test_torch_trainer import (
    N_STEPS,
    TINY,
    SyntheticSource,
    assert_same_state,
    config,
    reference,  # noqa: F401  (the uninterrupted N_STEPS run)
)
from test_torch_unet import SAME_NETWORK_TOL

from reimagen.backends.torch import checkpoint as ckpt
from reimagen.backends.torch.trainer import Trainer, model_kwargs, resolve_device, train
from reimagen.backends.torch.unet import build_unet
from reimagen.core.interfaces import TextEncoding
from reimagen.diffusion.schedule import CosineSchedule
from reimagen.training import checkpoint as core_checkpoint
from reimagen.training import prefetch

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def assert_same_batch(a, b) -> None:
    for name in ("images", "neighbor_images", "t", "noise", "use_text", "use_neighbors"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    for name in ("text", "neighbor_text"):
        for part in ("tokens", "mask", "pooled"):
            left, right = getattr(getattr(a, name), part), getattr(getattr(b, name), part)
            assert left.dtype == right.dtype and np.array_equal(left, right), (name, part)


POOLED_CHECK = """
import sys
import numpy as np
from reimagen.training import prefetch
from test_torch_trainer import SyntheticSource
from test_prefetch import assert_same_batch

compact = sys.argv[1] == "compact"
source = SyntheticSource(batch_size=3, k=2, text_length=7)
inline = list(prefetch.batches(source, 3, 10, workers=0, compact=compact))
pooled = list(prefetch.batches(source, 3, 10, workers=2, compact=compact))
assert len(inline) == len(pooled) == 7
for a, b in zip(inline, pooled):
    assert_same_batch(a, b)
print("same")
"""


@pytest.mark.parametrize("compact", ["full", "compact"])
def test_workers_give_the_inline_batches_in_step_order(compact):
    """In a fresh interpreter: this pytest process has JAX's threads running, and forking a
    multithreaded process can deadlock (the trainer forks before any JAX work)."""
    done = subprocess.run(
        [sys.executable, "-c", POOLED_CHECK, compact],
        cwd=Path(__file__).parent,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0 and done.stdout.strip() == "same", done.stderr[-2000:]


def test_compact_batch_cuts_to_the_longest_real_sequence():
    source = SyntheticSource(batch_size=4, k=2, text_length=9)
    batch = source.batch(5)
    small = prefetch.compact_batch(batch)
    longest = max(
        prefetch.real_length(batch.text.mask), prefetch.real_length(batch.neighbor_text.mask)
    )
    assert small.text.tokens.shape[-2] == small.neighbor_text.tokens.shape[-2] == longest
    assert small.text.tokens.dtype == small.neighbor_text.tokens.dtype == np.float16
    # every cut position was padding in every row
    assert not batch.text.mask[..., longest:].any()
    assert not batch.neighbor_text.mask[..., longest:].any()


def rounded(text: TextEncoding) -> TextEncoding:
    """The full-length encoding with tokens rounded to float16, as the transport rounds them."""
    tokens = text.tokens.astype(np.float16).astype(np.float32)
    return TextEncoding(tokens, text.mask, text.pooled)


def test_compact_batch_gives_the_network_the_same_output():
    source = SyntheticSource(batch_size=3, k=2, text_length=9)
    batch = source.batch(2)
    full = attrs.evolve(batch, text=rounded(batch.text), neighbor_text=rounded(batch.neighbor_text))
    small = prefetch.compact_batch(batch)
    model = build_unet(TINY, seed=1).eval()
    schedule = CosineSchedule()
    with torch.no_grad():
        want = model(**model_kwargs(full, schedule)).numpy()
        got = model(**model_kwargs(small, schedule)).numpy()
    # The same tokens (rounded alike) and the same weights; only the text length differs, so the
    # cross-attention's padded keys (exact zeros after the mask) drop out and its sums may run
    # in another order or kernel: float32 rounding alone, the same-network budget of
    # tests/test_torch_unet.py (√20 layers · √576·u = 6.4e-6 of max|ε|, rounded up to 1e-5;
    # measured 0; it was 2e-5).
    np.testing.assert_allclose(got, want, rtol=0, atol=SAME_NETWORK_TOL * np.abs(want).max())


def test_bad_workers_are_refused():
    with pytest.raises(ValueError, match="workers must be an int in \\[0, 256\\]"):
        list(prefetch.batches(SyntheticSource(), 0, 2, workers=-1))


def test_time_limit_stops_early_and_the_resumed_run_is_bit_identical(tmp_path, reference):  # noqa: F811
    run_dir = tmp_path / "run"
    first = train(
        TINY, config(N_STEPS), SyntheticSource(), run_dir, progress=False, time_limit=1e-9
    )
    assert first.step == 1  # the limit is checked after each step
    events = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert {"event": "time-limit", "step": 1}.items() <= events[-1].items()
    assert ckpt.read_checkpoint(ckpt.latest_checkpoint(run_dir)).step == 1
    train(TINY, config(N_STEPS), SyntheticSource(), run_dir, progress=False)
    assert_same_state(run_dir, reference)


def test_time_limit_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="time_limit must be > 0"):
        Trainer(TINY, config(2), SyntheticSource(), tmp_path, time_limit=0)


def test_init_weights_start_a_new_run_from_exported_weights(tmp_path):
    donor = build_unet(TINY, seed=7)
    path = ckpt.save_model(donor, tmp_path / "donor.safetensors")
    trainer = Trainer(TINY, config(2), SyntheticSource(), tmp_path / "run", init_weights=path)
    assert trainer.step == 0
    for own in (trainer.model, trainer.ema):
        for key, value in donor.state_dict().items():
            assert torch.equal(own.state_dict()[key], value), key
    assert not trainer.optimizer.state  # a fresh AdamW


def test_init_weights_of_another_network_are_refused(tmp_path):
    other = build_unet(TINY.replace(base_channels=2 * TINY.base_channels), seed=0)
    path = ckpt.save_model(other, tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="different UNetConfig"):
        Trainer(TINY, config(2), SyntheticSource(), tmp_path / "run", init_weights=path)


def test_weights_say_which_encoder_they_were_trained_with(tmp_path):
    model = build_unet(TINY)
    path = ckpt.save_model(model, tmp_path / "w.safetensors")
    assert core_checkpoint.trained_encoder(path) == "minilm"  # unstamped: the old default
    path = ckpt.save_model(model, path, metadata={core_checkpoint.ENCODER_KEY: "hash"})
    assert core_checkpoint.trained_encoder(path) == "hash"
    assert ckpt.load_model(path).config == TINY  # tensors and config survive the stamp


def test_exports_record_their_recipe_and_lineage(tmp_path):
    """An export says how it was made (issue #15): encoder, TrainConfig, DataConfig, steps and
    the examples seen, added to those its --init-from weights record."""
    from reimagen.core import registry
    from reimagen.training.data import DataConfig
    from reimagen.training.export import export_stage as _export

    donor = ckpt.save_model(
        build_unet(TINY, seed=7),
        tmp_path / "donor.safetensors",
        metadata={core_checkpoint.RECIPE_KEY: json.dumps({"examples_total": 1000})},
    )
    assert core_checkpoint.training_recipe(donor) == {"examples_total": 1000}
    train_config = config(2).replace(loss_weighting="min-snr")
    Trainer(
        TINY, train_config, SyntheticSource(), tmp_path / "run", progress=False, init_weights=donor
    ).run()
    out = tmp_path / "out.safetensors"
    _export(
        registry.get("backend", "torch")(),
        tmp_path / "run",
        out,
        "hash",
        "base",
        DataConfig(p_same_style=0.75),
    )
    recipe = core_checkpoint.training_recipe(out)
    examples = 2 * train_config.batch_size
    assert recipe["encoder"] == core_checkpoint.trained_encoder(out) == "hash"
    assert recipe["train_config"] == train_config.to_dict()
    assert recipe["data"] == DataConfig(p_same_style=0.75).to_dict()
    assert (recipe["step"], recipe["examples"]) == (2, examples)
    assert recipe["init_from"] == {"path": str(donor), "examples_total": 1000}
    assert recipe["examples_total"] == 1000 + examples
    # a resume (which takes no init_weights) keeps the lineage of the run's first start
    Trainer(
        TINY, train_config.replace(steps=3), SyntheticSource(), tmp_path / "run", progress=False
    ).run()
    _export(registry.get("backend", "torch")(), tmp_path / "run", out, "hash", "base")
    resumed = core_checkpoint.training_recipe(out)
    assert resumed["init_from"]["path"] == str(donor)
    assert resumed["examples_total"] == 1000 + 3 * train_config.batch_size
    # initial weights that do not record their examples: the lineage's total is unknown
    plain = ckpt.save_model(build_unet(TINY, seed=7), tmp_path / "plain.safetensors")
    assert core_checkpoint.training_recipe(plain) is None
    Trainer(
        TINY, config(2), SyntheticSource(), tmp_path / "run2", progress=False, init_weights=plain
    ).run()
    _export(registry.get("backend", "torch")(), tmp_path / "run2", out, "hash", "base")
    assert core_checkpoint.training_recipe(out)["examples_total"] is None


@pytest.mark.parametrize("device", ["tpu", "gpu", ""])
def test_unknown_devices_are_refused(device):
    with pytest.raises(ValueError, match="device must be 'auto', 'cpu' or 'cuda"):
        resolve_device(device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_refused():
    with pytest.raises(ValueError, match="sees no CUDA device"):
        resolve_device("cuda")
    assert resolve_device("auto") == "cpu"


def test_a_run_keeps_the_text_encoder_and_recipe_it_started_with(tmp_path):
    from reimagen.training.data import DataConfig
    from reimagen.training.run_record import RUN_FILE, parse_data_overrides, run_facts
    from reimagen.training.run_setup import RunSetupError

    run_dir = tmp_path / "run"
    # export-only writes nothing
    assert run_facts(run_dir, None, None, record=False) == ("hash", DataConfig())
    assert not (run_dir / RUN_FILE).exists()
    recipe = parse_data_overrides("p_same_style=0.75, p_drop_name=1,retriever=bm25")
    assert recipe == {"p_same_style": 0.75, "p_drop_name": 1.0, "retriever": "bm25"}
    assert type(recipe["p_drop_name"]) is float
    started = run_facts(run_dir, "minilm", recipe)  # recorded at the first start
    assert started == ("minilm", DataConfig(p_same_style=0.75, p_drop_name=1.0))
    assert run_facts(run_dir, None, None) == started  # a resume without the flags keeps both
    assert run_facts(run_dir, None, {"p_drop_name": 1.0, "p_same_style": 0.75}) == started
    with pytest.raises(
        RunSetupError, match="--encoder hash: the run in .* was trained with --encoder minilm"
    ):
        run_facts(run_dir, "hash", None)
    with pytest.raises(
        RunSetupError,
        match=r"--data: the run in .* was trained with another "
        r"recipe \(p_drop_name=1.0, p_same_style=0.75\)",
    ):
        run_facts(run_dir, None, {})
    # a run.json from before the recipe was recorded (and before run.json.sha256) ran the defaults
    (run_dir / RUN_FILE).write_text('{"encoder": "hash"}\n')
    (run_dir / f"{RUN_FILE}.sha256").unlink()
    assert run_facts(run_dir, None, None) == ("hash", DataConfig())


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "p_same_style",
            "--data: expected KEY=VALUE items separated by commas, got 'p_same_style'",
        ),
        ("p_same=0.5", "--data: DataConfig: unknown key(s) p_same; allowed: pool_size"),
        ("p_same_style=1.5", "--data: DataConfig.p_same_style must be in [0.0, 1.0], got 1.5"),
    ],
)
def test_bad_data_overrides_are_named_in_one_line(text, message):
    from reimagen.training.run_record import parse_data_overrides
    from reimagen.training.run_setup import RunSetupError

    with pytest.raises(RunSetupError) as err:
        parse_data_overrides(text)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_train_cli_refuses_bad_or_changed_recipes_before_any_work(tmp_path, capsys):
    from reimagen.cli.main import main
    from reimagen.training.run_record import RUN_FILE

    run_dir = tmp_path / "run"
    args = ["train", "--preset", "tiny", "--steps", "1", "--run-dir", str(run_dir)]
    assert main([*args, "--data", "p_same=0.5"]) == 2
    assert "--data: DataConfig: unknown key(s) p_same" in capsys.readouterr().err
    assert not run_dir.exists()
    run_dir.mkdir()
    recorded = '{"encoder": "hash", "data": {"p_same_style": 1.0}}\n'
    (run_dir / RUN_FILE).write_text(recorded)
    assert main([*args, "--data", "p_same_style=0.5"]) == 2
    assert "was trained with another recipe (p_same_style=1.0)" in capsys.readouterr().err
    assert (run_dir / RUN_FILE).read_text() == recorded and len(list(run_dir.iterdir())) == 1
