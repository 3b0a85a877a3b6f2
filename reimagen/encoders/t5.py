"""``t5``: the paper's frozen T5 text encoder, from a folder the user names (docs/design.md §2).

Imagen and Re-Imagen (§3.2) encode prompts with a frozen T5-XXL: the per-token states of its
encoder feed the U-Net's cross-attention, and a pooled vector joins the time embedding. This
encoder runs any T5 checkpoint (transformers' ``T5EncoderModel`` and its tokenizer) from a local
folder; nothing is ever downloaded:

    REIMAGEN_T5_PATH=/models/t5-v1_1-xxl reimagen train --encoder t5 ...
    reimagen.get("encoder", "t5")(path="/models/t5-v1_1-xxl")

    texts ─tokenizer (</s> appended, pad/truncate to L)─▶ ids [B, L] ─T5 encoder─▶ tokens [B, L, D]
                                                                   pooled = mean over mask, L2

D is the model's ``d_model`` (4096 for T5-XXL, the paper presets' text width); a training run
sets ``UNetConfig.text_dim`` from it (reimagen/training/run_setup.py). The folder holds ``config.json``
(model_type "t5"), the weights as safetensors (``model.safetensors``, or shards beside
``model.safetensors.index.json``; a pickled ``pytorch_model.bin`` is refused) and the tokenizer
(``tokenizer.json``; a folder with only ``spiece.model`` needs the sentencepiece package).

The folder is checked when the encoder is built, before any heavy work: a missing or invalid
folder is one line naming REIMAGEN_T5_PATH (or ``path=``), every JSON file is parsed as JSON and
every safetensors header is read (a pickle under either name is refused, naming the file).
The model loads at the first encode, with ``local_files_only=True`` under HF_HUB_OFFLINE, and
must supply every weight of the T5 encoder (a checkpoint missing some would otherwise run with
random ones). ``options`` carry a fingerprint of the folder's files, so an encoding table cached
for one T5 (reimagen.encoders.table) is never read back for another.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from reimagen.core.config import ConfigError
from reimagen.core.interfaces import TextEncoding
from reimagen.core.io import UnsafeFileError, first_line, load_json, load_safetensors_metadata
from reimagen.encoders.base import CachingEncoder, check_positive, encode_in_chunks

ENV = "REIMAGEN_T5_PATH"
TOKENIZER_FILES = ("tokenizer.json", "spiece.model")  # either is enough
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
# T5's activations overflow float16 (its feed-forward outputs exceed 65504): float32 or bfloat16
DTYPES = ("float32", "bfloat16")
SAMPLES, SAMPLE_BYTES = 16, 1 << 16  # the fingerprint reads 16 × 64 KiB of each weights file


class T5FolderError(ConfigError):
    """The T5 folder the user named is missing or is not a T5 model; one line naming the option."""


class T5Encoder(CachingEncoder):
    """Per-token states of a frozen T5 encoder, padded/truncated to ``max_length`` tokens (the
    tokenizer's ``</s>`` included, as T5 was trained). ``path``: the model folder (default: the
    environment variable REIMAGEN_T5_PATH); ``fingerprint``: refuse a folder whose files differ
    from the ones it was taken from (``options`` records it)."""

    name = "t5"
    libraries = ("torch", "transformers", "tokenizers")

    def __init__(
        self,
        path: str | Path | None = None,
        max_length: int = 32,
        dtype: str = "float32",
        batch_size: int = 64,
        cache_size: int = 4096,
        device: str = "cpu",
        fingerprint: str | None = None,
    ):
        super().__init__(cache_size=cache_size)
        self.option = "path" if path else ENV  # what an error message names
        self.path, config = check_folder(path or os.environ.get(ENV), self.option)
        self.dim = config["d_model"]  # D: UNetConfig.text_dim of a network trained on it
        self.max_length = check_positive("max_length", max_length, lo=2, hi=4096)
        if dtype not in DTYPES:
            raise ConfigError(
                f"dtype must be one of {', '.join(DTYPES)} (T5 overflows in float16), got {dtype!r}"
            )
        self.dtype = dtype
        self.batch_size = check_positive("batch_size", batch_size)
        self.device = str(device)
        self.fingerprint = folder_fingerprint(self.path)
        if fingerprint is not None and fingerprint != self.fingerprint:
            raise T5FolderError(
                f"{self.option}: {self.path} holds another T5 (fingerprint "
                f"{self.fingerprint}) than the one asked for ({fingerprint})"
            )
        self.model_calls = 0  # batched forward passes so far
        self._tokenizer = None
        self._model = None

    @property
    def options(self) -> dict[str, Any]:
        # path, batch_size and device do not change the encodings (beyond float rounding)
        return {"max_length": self.max_length, "dtype": self.dtype, "fingerprint": self.fingerprint}

    def _load(self):
        if self._model is None:
            self._tokenizer = load_tokenizer(self.path, self.option)
            self._model = load_model(self.path, self.option, self.dtype, self.device)
        return self._tokenizer, self._model

    def _encode_new(self, texts: list[str]) -> TextEncoding:
        return encode_in_chunks(
            texts,
            self._encode_chunk,
            batch_size=self.batch_size,
            max_length=self.max_length,
            dim=self.dim,
        )

    def _encode_chunk(self, chunk: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Hidden states [b, L, D] float32 (after T5's final layer norm), mask [b, L] bool."""
        import torch

        tokenizer, model = self._load()
        encoded = tokenizer(
            chunk,
            padding="max_length",
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        with torch.inference_mode():
            hidden = model(
                input_ids=encoded["input_ids"].to(self.device),
                attention_mask=encoded["attention_mask"].to(self.device),
            ).last_hidden_state  # [b, L, D]
        self.model_calls += 1
        mask = encoded["attention_mask"].numpy().astype(bool)
        mask[:, 0] = True  # an empty text keeps one token (T5 appends </s>; else its pad state)
        return hidden.float().cpu().numpy(), mask


# ---- the folder: checked on construction (cheap), loaded on the first encode ------------------


def check_folder(folder: str | Path | None, option: str) -> tuple[Path, dict]:
    """(the model folder, its config.json) after cheap checks (no tensor read); a bad folder
    is one line naming ``option``."""
    if not folder:
        raise T5FolderError(
            f"the t5 encoder needs a local model folder: set {ENV}=DIR or pass "
            "path=DIR (config.json, model.safetensors, tokenizer.json); nothing "
            "is downloaded"
        )
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise T5FolderError(f"{option}: no T5 model folder at {folder}")
    if not (folder / "config.json").is_file():
        raise T5FolderError(
            f"{option}: {folder} has no config.json (a T5 folder holds "
            "config.json, model.safetensors and tokenizer.json)"
        )
    for path in sorted(folder.glob("*.json")):  # a pickle under a .json name: refused, named
        load_json(path)
    config = load_json(folder / "config.json")
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type != "t5":
        raise T5FolderError(
            f"{option}: {folder}/config.json describes a {model_type!r} model, not t5"
        )
    d_model = config.get("d_model")
    if isinstance(d_model, bool) or not isinstance(d_model, int) or not 1 <= d_model <= 16384:
        raise T5FolderError(
            f"{option}: {folder}/config.json: d_model must be an int in [1, 16384], got {d_model!r}"
        )
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise UnsafeFileError(
                f"{option}: {folder} holds {pickles[0]} (a pickle) and no "
                ".safetensors weights; refusing it (convert the weights to "
                "safetensors)"
            )
        raise T5FolderError(f"{option}: {folder} holds no .safetensors weights")
    for path in weights:
        load_safetensors_metadata(path)  # the header only: UnsafeFileError names a non-file
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise T5FolderError(f"{option}: {folder} has no tokenizer ({' or '.join(TOKENIZER_FILES)})")
    return folder, config


def folder_fingerprint(folder: Path) -> str:
    """16 hex digits over the folder's JSON and tokenizer files and, of each weights file, its
    size and 16 evenly spaced 64 KiB samples: cheap for T5-XXL's ~9 GB, and two trainings of one
    architecture differ in every sample."""
    digest = hashlib.sha256()
    for path in sorted([*folder.glob("*.json"), *folder.glob("*.model")]):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    for path in sorted(folder.glob("*.safetensors")):
        size = path.stat().st_size
        digest.update(f"{path.name}\0{size}\0".encode())
        with open(path, "rb") as handle:
            for i in range(SAMPLES):
                handle.seek(max(size - SAMPLE_BYTES, 0) * i // (SAMPLES - 1))
                digest.update(handle.read(SAMPLE_BYTES))
    return digest.hexdigest()[:16]


@contextlib.contextmanager
def offline():
    """HF_HUB_OFFLINE while loading (huggingface_hub reads it when imported, so its constant is
    set too): with local_files_only, no request can reach a hub."""
    saved = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    from huggingface_hub import constants

    was = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = was
        if saved is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved


def load_tokenizer(folder: Path, option: str):
    with offline():
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(
                str(folder), local_files_only=True, trust_remote_code=False
            )
        except Exception as err:  # noqa: BLE001 (transformers raises many types for a bad folder)
            raise T5FolderError(
                f"{option}: cannot load the tokenizer in {folder} "
                f"({type(err).__name__}: {first_line(err)})"
            ) from None


def load_model(folder: Path, option: str, dtype: str, device: str):
    """The T5 encoder, frozen; every one of its weights must come from the folder's
    safetensors (``use_safetensors=True``: a pickle is never read)."""
    import torch

    with offline():
        from transformers import T5EncoderModel

        try:
            # Any: with output_loading_info=True it returns (model, info); its annotation says model
            loaded: Any = T5EncoderModel.from_pretrained(
                str(folder),
                local_files_only=True,
                use_safetensors=True,
                dtype=getattr(torch, dtype),
                output_loading_info=True,
            )
        except Exception as err:  # noqa: BLE001 (transformers raises many types for a bad folder)
            raise T5FolderError(
                f"{option}: cannot load the T5 encoder in {folder} "
                f"({type(err).__name__}: {first_line(err)})"
            ) from None
    model, info = loaded
    missing = [*info.get("missing_keys", ()), *info.get("mismatched_keys", ())]
    if missing:
        raise T5FolderError(
            f"{option}: {folder} lacks {len(missing)} weight(s) of the T5 "
            f"encoder, e.g. {missing[0]}; refusing to run them at random"
        )
    model.requires_grad_(False)
    return model.eval().to(device)
