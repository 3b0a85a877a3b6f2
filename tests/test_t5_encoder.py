"""The ``t5`` encoder (issue #17, item 5): the paper's frozen T5, from a folder the user names.

Nothing is downloaded: a tiny randomly initialised T5 (d_model=32, 2 layers) and a word-level
tokenizer that appends ``</s>`` as T5's does are built here and saved to a temporary folder
(safetensors + tokenizer.json). Oracles: the token states are transformers' own T5 encoder
forward on ids written out by hand; pooled = the L2-normalised masked mean, recomputed; a
network trained through ``reimagen train --encoder t5`` records text_dim = d_model = 32.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
from test_encoders import assert_contract

from reimagen.core import registry
from reimagen.core.config import ConfigError
from reimagen.core.io import UnsafeFileError
from reimagen.encoders.t5 import ENV, T5Encoder, T5FolderError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WORDS = (
    "a",
    "of",
    "in",
    "on",
    "red",
    "blue",
    "apple",
    "robot",
    "rocket",
    "cat",
    "drawing",
    "style",
    "emoji",
)
VOCAB = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
D = 32
L = 8
TEXTS = ["a red robot", "", "a drawing of a blue robot in cat style emoji", "Rocket UNKNOWN"]


def save_tiny_t5(folder: Path, seed: int = 0) -> Path:
    """A random 2-layer T5 encoder (d_model=32) and its tokenizer, saved the way
    ``save_pretrained`` does: config.json, model.safetensors, tokenizer.json + config."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

    tokenizer = Tokenizer(models.WordLevel(VOCAB, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(  # T5 ends every text with </s>
        single="$A </s>", special_tokens=[("</s>", VOCAB["</s>"])]
    )
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    ).save_pretrained(folder)
    config = T5Config(
        vocab_size=len(VOCAB),
        d_model=D,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    torch.manual_seed(seed)
    T5EncoderModel(config).save_pretrained(folder, safe_serialization=True)
    return Path(folder)


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory) -> Path:
    return save_tiny_t5(tmp_path_factory.mktemp("t5") / "tiny-t5")


def hand_ids(text: str, length: int) -> list[int]:
    """What a T5 tokenizer gives for ``text``: its words (lower-cased), </s>, truncated to L."""
    words = [VOCAB.get(w, VOCAB["<unk>"]) for w in text.lower().split()]
    return words[: length - 1] + [VOCAB["</s>"]]


# ---- the encodings ------------------------------------------------------------------------


def test_states_are_t5s_own_and_pooled_is_the_masked_mean(t5_dir):
    import torch
    from transformers import T5EncoderModel

    encoder = registry.get("encoder", "t5")(path=t5_dir, max_length=L)
    assert isinstance(encoder, T5Encoder) and (encoder.dim, encoder.max_length) == (D, L)
    encoding = encoder.encode(TEXTS)
    assert_contract(encoder, TEXTS, encoding)  # shapes, dtypes, prefix mask, zero padding
    ids = [hand_ids(text, L) for text in TEXTS]
    assert encoding.mask.sum(axis=1).tolist() == [4, 1, 8, 3]  # words + </s>, cut at L = 8

    model = T5EncoderModel.from_pretrained(t5_dir, local_files_only=True, use_safetensors=True)
    for b, row in enumerate(ids):
        with torch.no_grad():
            states = model(input_ids=torch.tensor([row])).last_hidden_state[0].numpy()  # [n, D]
        np.testing.assert_allclose(encoding.tokens[b, : len(row)], states, atol=1e-5)
        assert not encoding.tokens[b, len(row) :].any()
        mean = states.mean(axis=0)  # pooled: the mean over real tokens, L2-normalised
        np.testing.assert_allclose(encoding.pooled[b], mean / np.linalg.norm(mean), atol=1e-5)


def test_deterministic_cached_and_tied_to_its_folder(t5_dir, tmp_path):
    first = T5Encoder(path=t5_dir, max_length=L)
    again = T5Encoder(path=t5_dir, max_length=L)
    a, b = first.encode(TEXTS), again.encode(TEXTS)
    for part in ("tokens", "mask", "pooled"):
        assert np.array_equal(getattr(a, part), getattr(b, part)), part
    calls = first.model_calls
    assert np.array_equal(first.encode(TEXTS[::-1]).tokens, a.tokens[::-1])
    assert first.model_calls == calls  # served from the cache

    other = T5Encoder(path=save_tiny_t5(tmp_path / "other", seed=1), max_length=L)
    assert not np.allclose(other.encode(TEXTS).pooled, a.pooled)
    assert other.options["fingerprint"] != first.options["fingerprint"]  # a table keyed by it
    with pytest.raises(T5FolderError, match="holds another T5"):  # a saved index's encoder
        T5Encoder(path=tmp_path / "other", fingerprint=first.options["fingerprint"])


def test_the_folder_comes_from_the_environment_and_nothing_from_a_hub(t5_dir, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the t5 encoder opened a network connection")

    monkeypatch.setenv(ENV, str(t5_dir))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    encoder = registry.get("encoder", "t5")(max_length=L)  # as train / generate build it
    assert encoder.path == t5_dir and encoder.options == T5Encoder(t5_dir, L).options
    assert encoder.encode(["a red robot"]).tokens.shape == (1, L, D)
    assert "HF_HUB_OFFLINE" not in os.environ  # set while loading only


# ---- bad folders: one line naming the option, before any model is loaded ------------------


def _break(kind: str, good: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "bad"
    if kind == "missing":
        return folder
    if kind == "a file":
        folder.write_text("not a folder")
        return folder
    shutil.copytree(good, folder)
    if kind == "no config":
        (folder / "config.json").unlink()
    elif kind == "not t5":
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
    elif kind == "no weights":
        (folder / "model.safetensors").unlink()
    elif kind == "no tokenizer":
        (folder / "tokenizer.json").unlink()
    return folder


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("missing", "REIMAGEN_T5_PATH: no T5 model folder at {folder}"),
        ("a file", "REIMAGEN_T5_PATH: no T5 model folder at {folder}"),
        ("no config", "REIMAGEN_T5_PATH: {folder} has no config.json"),
        ("not t5", "REIMAGEN_T5_PATH: {folder}/config.json describes a 'bert' model, not t5"),
        ("no weights", "REIMAGEN_T5_PATH: {folder} holds no .safetensors weights"),
        ("no tokenizer", "REIMAGEN_T5_PATH: {folder} has no tokenizer (tokenizer.json or"),
    ],
)
def test_a_bad_folder_is_one_line_naming_the_option(kind, message, t5_dir, tmp_path, monkeypatch):
    folder = _break(kind, t5_dir, tmp_path)
    monkeypatch.setenv(ENV, str(folder))
    with pytest.raises(T5FolderError) as err:
        registry.get("encoder", "t5")()
    assert str(err.value).startswith(message.format(folder=folder)) and "\n" not in str(err.value)
    assert isinstance(err.value, ConfigError)  # a user error: the CLI prints one line, exit 2
    with pytest.raises(T5FolderError, match=f"^path: no T5 model folder at {tmp_path / 'nope'}"):
        T5Encoder(path=tmp_path / "nope")  # in Python the option is path=


def test_no_folder_named(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    with pytest.raises(
        T5FolderError,
        match=f"^the t5 encoder needs a local model folder: set {ENV}=DIR or pass path=DIR",
    ):
        registry.get("encoder", "t5")()


def test_a_missing_weight_is_refused_not_drawn_at_random(t5_dir, tmp_path):
    from safetensors.numpy import load_file, save_file

    folder = tmp_path / "partial"
    shutil.copytree(t5_dir, folder)
    state = load_file(folder / "model.safetensors")
    del state["encoder.block.1.layer.1.DenseReluDense.wo.weight"]
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(
        T5FolderError,
        match=r"lacks 1 weight\(s\) of the T5 encoder, e\.g\. "
        r"encoder\.block\.1\.layer\.1\.DenseReluDense",
    ):
        T5Encoder(path=folder).encode(["a robot"])


class Exploit:
    """Unpickling this runs ``touch marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.safetensors"])
def test_pickled_weights_are_refused_unread(name, t5_dir, tmp_path, monkeypatch):
    """Only a pickle .bin beside the config, or a pickle under the safetensors name."""
    folder, marker = tmp_path / "pickled", tmp_path / "pwned"
    shutil.copytree(t5_dir, folder)
    (folder / "model.safetensors").unlink()
    (folder / name).write_bytes(pickle.dumps(Exploit(marker)))
    monkeypatch.setenv(ENV, str(folder))
    with pytest.raises(UnsafeFileError) as err:
        T5Encoder().encode(["a robot"])
    message = str(err.value)
    if name == "pytorch_model.bin":
        assert message.startswith(
            f"{ENV}: {folder} holds pytorch_model.bin (a pickle) and no "
            ".safetensors weights; refusing it"
        ), message
    else:
        assert message.startswith(f"{folder / name} is not a valid safetensors file"), message
    assert "\n" not in message and not marker.exists()


# ---- a training run and a generation with it ----------------------------------------------


@pytest.fixture(scope="module")
def emoji_kb(tmp_path_factory) -> Path:
    """A 16 px emoji knowledge base of six seen entities (what `reimagen train` trains on)."""
    from reimagen.kb.builder import build_from_source
    from reimagen.kb.splits import load_split

    names = list(load_split().seen[:6])
    source = registry.get("source", "emoji")(names=names, processes=1, size=32)
    folder = tmp_path_factory.mktemp("emoji") / "kb"
    return build_from_source(
        source, folder, resolution=16, progress=False, info=source.info()
    ).folder


def test_train_then_generate_with_t5(t5_dir, emoji_kb, tmp_path, monkeypatch, capsys):
    from PIL import Image

    from reimagen.cli.main import main
    from reimagen.generation.shipped import read_config

    monkeypatch.setenv(ENV, str(t5_dir))
    weights, run = tmp_path / "weights", tmp_path / "run"
    train = [
        "train",
        "--preset",
        "tiny",
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--k",
        "1",
        "--warmup",
        "1",
        "--no-bf16",
        "--threads",
        "1",
        "--encoder",
        "t5",
        "--kb",
        str(emoji_kb),
        "--run-dir",
        str(run),
        "--export",
        str(weights / "base.safetensors"),
    ]
    assert main(train) == 0, capsys.readouterr().err
    config, metadata = read_config(weights / "base.safetensors")
    assert config.text_dim == D  # UNetConfig.text_dim followed the encoder (the preset: 384)
    assert metadata["reimagen.encoder"] == "t5"
    assert json.loads((run / "run.json").read_text())["encoder"] == "t5"

    monkeypatch.setenv("REIMAGEN_WEIGHTS", str(weights))
    out = tmp_path / "out" / "x.png"
    generate = [
        "generate",
        "a red robot",
        "--stages",
        "base",
        "--kb",
        str(emoji_kb),
        "--k",
        "1",
        "--steps",
        "2",
        "--threads",
        "1",
        "--out",
        str(out),
    ]
    assert main(generate) == 0, capsys.readouterr().err  # the weights name their encoder: t5
    assert Image.open(out).size == (16, 16)

    capsys.readouterr()
    assert main([*generate, "--encoder", "hash"]) == 2  # 384-dim states into a 32-dim network
    err = capsys.readouterr().err.strip()
    assert (
        err.count("\n") == 0
        and "trained on 32-dim text states; encoder 'hash' gives 384-dim ones" in err
    ), err


def test_cli_names_the_option_before_any_work(tmp_path, monkeypatch, capsys):
    from reimagen.cli.main import main

    monkeypatch.setenv(ENV, str(tmp_path / "no-such-t5"))
    run = tmp_path / "run"
    argv = [
        "train",
        "--preset",
        "tiny",
        "--steps",
        "1",
        "--encoder",
        "t5",
        "--run-dir",
        str(run),
        "--kb",
        str(tmp_path / "no-kb"),
    ]  # the KB is never opened: the encoder fails first
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"reimagen: error: {ENV}: no T5 model folder at {tmp_path / 'no-such-t5'}"
    assert not run.exists()
