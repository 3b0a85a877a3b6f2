"""Distributed generation (issue #9): shards, per-sample seeding, and 2 processes == 1 process.

The 2-process test launches ``python -m torch.distributed.run`` itself (loopback, a free port,
a timeout) running ``reimagen generate --distributed`` on a tiny random-weights cascade
(base 16×16 with K=2 retrieved neighbours → SR 32×32), and compares its PNGs byte for byte with
a one-process run of the same command.
"""

import io
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from toys import toy_kb, toy_pipeline

from reimagen.cli.main import main
from reimagen.core import registry
from reimagen.core.interfaces import SamplerNoise
from reimagen.core.unet_config import PRESETS
from reimagen.diffusion.sampling_config import SamplingConfig
from reimagen.generation.cascade import Cascade, Stage
from reimagen.generation.distributed import (
    _check_complete,
    generate_distributed,
    micro_batches,
    shard_indices,
)

PROMPTS = ["a red apple", "a robot", "a rocket in the top left", "a green cactus", "an anchor"]
SR_CONFIG = PRESETS["tiny"].replace(
    image_size=32,
    cond_image_channels=3,
    lowres_size=16,
    self_attn_resolutions=(16,),
    cross_attn_resolutions=(16,),
    neighbor_attn_resolutions=(16,),
)
FAST = SamplingConfig(sampler="ddpm", steps=4, guidance="interleaved", eta=0.5)
LAUNCH_TIMEOUT_S = 120


# ---- shards ----------------------------------------------------------------------------------


@given(n=st.integers(0, 500), world=st.integers(1, 64))
def test_shards_cover_every_index_exactly_once_in_order(n, world):
    parts = [shard_indices(n, rank, world) for rank in range(world)]
    assert [i for part in parts for i in part] == list(range(n))  # contiguous, in rank order
    sizes = [len(part) for part in parts]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
    if n:
        assert sizes[0] >= 1  # rank 0 always has work


@given(n=st.integers(0, 300), batch=st.integers(1, 40), world=st.integers(1, 16))
def test_micro_batches_of_every_rank_partition_the_prompts(n, batch, world):
    chunks = micro_batches(n, batch, world)
    assert chunks == micro_batches(n, batch, 1)  # the cut does not depend on the world size
    assert all(c.start % batch == 0 and 1 <= len(c) <= batch for c in chunks)
    owned = [
        i
        for rank in range(world)
        for c in shard_indices(len(chunks), rank, world)
        for i in chunks[c]
    ]
    assert owned == list(range(n))


def test_shard_arguments_are_checked():
    with pytest.raises(ValueError, match="0 <= rank < world"):
        shard_indices(5, 2, 2)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1 or None"):
        micro_batches(5, 0)


def test_gathered_indices_must_be_exactly_range_n():
    np.testing.assert_array_equal(_check_complete(np.array([3, 4, 0, 1, 2]), 5), [2, 3, 4, 0, 1])
    with pytest.raises(RuntimeError, match=r"missing \[2\], duplicated \[1\]"):
        _check_complete(np.array([0, 1, 1, 3, 4]), 5)
    with pytest.raises(RuntimeError, match=r"out of range \[5\]"):
        _check_complete(np.array([0, 1, 2, 3, 4, 5]), 5)


# ---- per-sample seeding ----------------------------------------------------------------------


def test_sample_noise_depends_on_seed_and_global_index_only():
    whole = SamplerNoise.draw_per_sample(7, range(5), (4, 4, 3), steps=6)
    head = SamplerNoise.draw_per_sample(7, [0, 1, 2], (4, 4, 3), steps=6)
    tail = SamplerNoise.draw_per_sample(7, [4, 3], (4, 4, 3), steps=6)  # reversed on purpose
    np.testing.assert_array_equal(np.concatenate([head.x_T, tail.x_T[::-1]]), whole.x_T)
    np.testing.assert_array_equal(
        np.concatenate([head.step_noise, tail.step_noise[:, ::-1]], axis=1), whole.step_noise
    )
    np.testing.assert_array_equal(head.guidance_draws, whole.guidance_draws)
    other = SamplerNoise.draw_per_sample(8, range(5), (4, 4, 3), steps=6)
    assert not np.array_equal(other.x_T, whole.x_T)
    assert len({row.tobytes() for row in whole.x_T}) == 5  # distinct streams per index
    with pytest.raises(ValueError, match="indices must be integers >= 0"):
        SamplerNoise.draw_per_sample(7, [-1], (4, 4, 3), steps=6)


@pytest.fixture(scope="module")
def kb(tmp_path_factory):
    return toy_kb(tmp_path_factory.mktemp("kb") / "kb")


_pipeline = toy_pipeline


def test_cascade_split_into_micro_batches_matches_one_batch_here(kb):
    """Per-sample seeding end to end (base ddpm + SR augmentation): the tiny torch network is
    row-stable across batch sizes on this CPU at one thread (measured), so micro-batches of 2
    give the one-batch images byte for byte. (The shipped base stage is not row-stable; see
    reimagen.generation.distributed.)"""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        retriever = registry.get("retriever", "bm25")().fit(kb)
        cascade = Cascade(
            [
                Stage("base", _pipeline(kb, PRESETS["tiny"], retriever=retriever), FAST, k=2),
                Stage("sr", _pipeline(kb, SR_CONFIG), FAST.replace(aug_level=0.1), k=1),
            ]
        )
        whole = cascade.generate(PROMPTS, seed=3)
        split = generate_distributed(cascade, PROMPTS, 3, batch_size=2)
    finally:
        torch.set_num_threads(threads)
    for one, parts in zip(whole, split):
        np.testing.assert_array_equal(parts.images, one.images)
        np.testing.assert_array_equal(parts.neighbor_rows, one.neighbor_rows)
        assert parts.prompts == tuple(PROMPTS)
    assert len({image.tobytes() for image in whole[-1].images}) == len(PROMPTS)


# ---- two processes ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped(tmp_path_factory, kb):
    """REIMAGEN_WEIGHTS folder with random-weight tiny base + SR stages."""
    root = tmp_path_factory.mktemp("weights")
    backend = registry.get("backend", "torch")()
    backend.save_model(backend.build_model(PRESETS["tiny"], seed=1), root / "base.safetensors")
    backend.save_model(backend.build_model(SR_CONFIG, seed=2), root / "sr.safetensors")
    return root


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _argv(kb, out: Path) -> list[str]:
    return [
        "generate",
        *PROMPTS,
        "--stages",
        "base,sr",
        "--k",
        "2",
        "--kb",
        str(kb.folder),
        "--encoder",
        "hash",
        "--sampler",
        "ddpm",
        "--steps",
        "4",
        "--seed",
        "11",
        "--batch-size",
        "2",
        "--threads",
        "1",
        "--out",
        str(out),
    ]


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(path.read_bytes())))


def test_two_processes_write_the_bytes_of_one(kb, shipped, tmp_path, monkeypatch):
    env = {
        **os.environ,
        "REIMAGEN_WEIGHTS": str(shipped),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "GLOO_SOCKET_IFNAME": "lo",
    }
    two = tmp_path / "two" / "x.png"
    launch = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(_free_port()),
        "-m",
        "reimagen.cli.main",
        *_argv(kb, two),
        "--distributed",
    ]
    done = subprocess.run(
        launch, check=False, env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("wrote ") == 1 and "2 processes" in done.stdout  # rank 0 only

    one = tmp_path / "one" / "x.png"
    monkeypatch.setenv("REIMAGEN_WEIGHTS", str(shipped))
    threads = torch.get_num_threads()
    try:
        assert main(_argv(kb, one)) == 0
    finally:
        torch.set_num_threads(threads)

    for suffix in (".base.png", ".sr.png", ".png", ".sheet.png"):
        a, b = one.with_suffix(suffix), two.with_suffix(suffix)
        assert a.read_bytes() == b.read_bytes(), suffix
    final = _pixels(one)  # 5 images side by side: none missing, none duplicated
    assert final.shape == (32, 32 * len(PROMPTS), 3)
    tiles = {final[:, 32 * i : 32 * (i + 1)].tobytes() for i in range(len(PROMPTS))}
    assert len(tiles) == len(PROMPTS)


def test_distributed_flag_outside_torchrun_is_a_one_line_error(kb, tmp_path, capsys, monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    assert main([*_argv(kb, tmp_path / "x.png"), "--distributed"]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith(
            "reimagen: error: --distributed: distributed generation needs "
            "torchrun's environment; RANK, WORLD_SIZE"
        )
        and "\n" not in err
    )
    assert not (tmp_path / "x.png").exists()
