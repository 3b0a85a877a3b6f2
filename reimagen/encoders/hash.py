"""``hash``: a model-free, deterministic text encoder for tests and ablations (docs/design.md §2).

Same contract as ``minilm`` (per-token states [B, L, D], mask [B, L], pooled [B, D]) with no
weights to load. A text is lower-cased and split into word tokens (``\\w+``); position 0 holds a
``[CLS]`` token so that even an empty text has one real token (attention over an all-masked
sequence would be NaN). Token p's state is

    h_p = v(word_p) + position_weight · e_p

where v(word) is a unit vector drawn from a Generator seeded by ``blake2b(seed, word)`` (so the
same word gets the same vector in every process and on every machine) and e_p is the sinusoidal
position code of Vaswani et al. (2017), scaled to unit norm. The pooled vector is the mean over
real tokens, L2-normalised, as for MiniLM. Word order shows in the token states; the pooled
vector is a bag of words (the position codes of n tokens sum to the same vector in any order),
so shared words make pooled vectors similar and dense retrieval with this encoder behaves like
a smoothed bag-of-words match.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import numpy as np

from reimagen.core.interfaces import TextEncoding
from reimagen.encoders.base import CachingEncoder, check_positive, l2_normalize, mean_pool

WORD = re.compile(r"\w+")
CLS = "[CLS]"  # cannot collide with a \w+ word


def words(text: str) -> list[str]:
    """Lower-cased word tokens of ``text``."""
    return WORD.findall(text.lower())


def sinusoidal_positions(length: int, dim: int) -> np.ndarray:
    """[L, D] position codes (sin on even, cos on odd channels), each row of unit norm."""
    position = np.arange(length, dtype=np.float64)[:, None]  # [L, 1]
    rate = 1.0 / (10_000.0 ** (np.arange(0, dim, 2, dtype=np.float64) / dim))  # [ceil(D/2)]
    angles = position * rate  # [L, ceil(D/2)]
    codes = np.zeros((length, dim), np.float64)
    codes[:, 0::2] = np.sin(angles)
    codes[:, 1::2] = np.cos(angles[:, : dim // 2])
    return l2_normalize(codes)


class HashEncoder(CachingEncoder):
    """Hash each lower-case word to a seeded random unit vector, plus a position code."""

    name = "hash"

    def __init__(
        self,
        dim: int = 384,
        max_length: int = 32,
        seed: int = 0,
        position_weight: float = 0.25,
        cache_size: int = 4096,
    ):
        super().__init__(cache_size=cache_size)
        self.dim = check_positive("dim", dim, lo=2, hi=65_536)
        self.max_length = check_positive("max_length", max_length, lo=1, hi=4096)
        self.seed = check_positive("seed", seed, lo=0)
        if not 0.0 <= float(position_weight) <= 10.0:
            raise ValueError(f"position_weight must be in [0, 10], got {position_weight}")
        self.position_weight = float(position_weight)
        self._positions = self.position_weight * sinusoidal_positions(self.max_length, self.dim)
        self._word_vectors: dict[str, np.ndarray] = {}

    @property
    def options(self) -> dict[str, Any]:
        return {
            "dim": self.dim,
            "max_length": self.max_length,
            "seed": self.seed,
            "position_weight": self.position_weight,
        }

    def word_vector(self, word: str) -> np.ndarray:
        """The unit vector [D] of one token, the same in every process."""
        vector = self._word_vectors.get(word)
        if vector is None:
            digest = hashlib.blake2b(f"{self.seed}\x00{word}".encode(), digest_size=8).digest()
            rng = np.random.default_rng(int.from_bytes(digest, "little"))
            vector = l2_normalize(rng.standard_normal(self.dim))
            if len(self._word_vectors) < 1 << 18:  # bound the vocabulary memo
                self._word_vectors[word] = vector
        return vector

    def _encode_new(self, texts: list[str]) -> TextEncoding:
        batch, length, dim = len(texts), self.max_length, self.dim
        tokens = np.zeros((batch, length, dim), np.float32)  # [B, L, D]
        mask = np.zeros((batch, length), bool)  # [B, L]
        for b, text in enumerate(texts):
            sequence = [CLS, *words(text)][:length]  # truncate to L tokens, [CLS] first
            tokens[b, : len(sequence)] = np.stack([self.word_vector(w) for w in sequence])
            tokens[b, : len(sequence)] += self._positions[: len(sequence)]
            mask[b, : len(sequence)] = True
        return TextEncoding(tokens=tokens, mask=mask, pooled=mean_pool(tokens, mask))
