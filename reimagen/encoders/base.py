"""What every built-in text encoder shares: input checks and an LRU cache of encodings.

A knowledge base repeats captions (one entity drawn by several artists) and training asks for
the same neighbour captions over and over, so encodings are cached per text: each distinct text
goes through the model once. The cache is keyed by the exact string and bounded (an LRU of
``cache_size`` texts; at L=32, D=384 one entry is 49 KB, so the default 4096 holds ~200 MB at
most). Subclasses implement :meth:`CachingEncoder._encode_new` for the texts not cached yet.
"""

from __future__ import annotations

import abc
import collections
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from reimagen.core.interfaces import Encoder, TextEncoding


class CacheInfo(NamedTuple):
    """Like ``functools.lru_cache``'s ``cache_info()``."""

    hits: int
    misses: int
    size: int
    capacity: int


def check_texts(texts: Sequence[str]) -> list[str]:
    """A list of B strings; a bare ``str`` is refused (it would encode one text per character)."""
    if isinstance(texts, (str, bytes)):
        raise TypeError("texts must be a sequence of strings, not a single string; wrap it: [text]")
    texts = list(texts)
    bad = [i for i, text in enumerate(texts) if not isinstance(text, str)]
    if bad:
        raise TypeError(f"texts must all be str; item {bad[0]} is {type(texts[bad[0]]).__name__}")
    return texts


def check_positive(name: str, value: int, lo: int = 1, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < lo or (hi is not None and value > hi):
        span = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ValueError(f"{name} must be {span}, got {value}")
    return int(value)


class CachingEncoder(Encoder):
    """An :class:`Encoder` whose ``encode`` serves repeated texts from an LRU cache.

    Subclasses set ``name``, ``dim``, ``max_length`` and implement ``_encode_new``; ``options``
    returns the keyword arguments that rebuild an identical encoder (saved indexes record them).
    """

    libraries: tuple[str, ...] = ()  # distributions whose version can change the encodings

    def __init__(self, cache_size: int = 4096):
        self.cache_size = check_positive("cache_size", cache_size, lo=0)
        # text -> (tokens [L, D], mask [L], pooled [D]), read-only arrays
        self._cache: collections.OrderedDict[str, tuple[np.ndarray, ...]] = (
            collections.OrderedDict()
        )
        self._hits = 0
        self._misses = 0

    @property
    @abc.abstractmethod
    def options(self) -> dict[str, Any]:
        """Keyword arguments that rebuild this encoder through the registry."""

    @abc.abstractmethod
    def _encode_new(self, texts: list[str]) -> TextEncoding:
        """Encode distinct, uncached texts (no cache involved)."""

    def encode(self, texts: Sequence[str]) -> TextEncoding:
        texts = check_texts(texts)
        found = {text: self._lookup(text) for text in dict.fromkeys(texts)}
        missing = [text for text, hit in found.items() if hit is None]
        if missing:
            fresh = self._encode_new(missing)
            for i, text in enumerate(missing):
                entry = tuple(_frozen(a[i]) for a in (fresh.tokens, fresh.mask, fresh.pooled))
                found[text] = entry
                self._store(text, entry)
        self._hits += len(texts) - len(missing)
        self._misses += len(missing)
        return self._assemble([found[text] for text in texts])

    def cache_info(self) -> CacheInfo:
        return CacheInfo(self._hits, self._misses, len(self._cache), self.cache_size)

    def cache_clear(self) -> None:
        self._cache.clear()
        self._hits = self._misses = 0

    def _lookup(self, text: str):
        entry = self._cache.get(text)
        if entry is not None:
            self._cache.move_to_end(text)
        return entry

    def _store(self, text: str, entry: tuple[np.ndarray, ...]) -> None:
        if self.cache_size == 0:
            return
        self._cache[text] = entry
        self._cache.move_to_end(text)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def _assemble(self, entries: list[tuple[np.ndarray, ...]]) -> TextEncoding:
        length, dim = self.max_length, self.dim
        if not entries:
            return TextEncoding(
                tokens=np.zeros((0, length, dim), np.float32),
                mask=np.zeros((0, length), bool),
                pooled=np.zeros((0, dim), np.float32),
            )
        tokens, mask, pooled = (np.stack(parts) for parts in zip(*entries))  # fresh copies
        return TextEncoding(tokens=tokens, mask=mask, pooled=pooled)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"{type(self).__name__}({args})"


def _frozen(array: np.ndarray) -> np.ndarray:
    array = np.array(array, copy=True)
    array.setflags(write=False)
    return array


def encode_in_chunks(
    texts: list[str],
    encode_chunk: Callable[[list[str]], tuple[np.ndarray, np.ndarray]],
    *,
    batch_size: int,
    max_length: int,
    dim: int,
) -> TextEncoding:
    """A transformer encoder's batched pass over ``texts``, ``batch_size`` at a time.

    ``encode_chunk(chunk)`` returns the model's hidden states ``[b, L, D]`` and the attention
    mask ``[b, L]`` (True = real token) for up to ``batch_size`` texts. Padding positions are
    zeroed (not the model's pad states) and ``pooled`` is the masked mean of the tokens.
    """
    tokens = np.zeros((len(texts), max_length, dim), np.float32)  # [B, L, D]
    mask = np.zeros((len(texts), max_length), bool)  # [B, L]
    for start in range(0, len(texts), batch_size):
        hidden, chunk_mask = encode_chunk(texts[start : start + batch_size])
        stop = start + len(hidden)
        tokens[start:stop] = hidden
        mask[start:stop] = chunk_mask
    tokens *= mask[..., None]
    return TextEncoding(tokens=tokens, mask=mask, pooled=mean_pool(tokens, mask))


def mean_pool(tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean over real tokens, L2-normalised: tokens [B, L, D], mask [B, L] -> [B, D] float32.

    A row with no real token pools to zeros (not NaN)."""
    weights = mask.astype(np.float32)[..., None]  # [B, L, 1]
    summed = (tokens * weights).sum(axis=1)  # [B, D]
    count = np.maximum(weights.sum(axis=1), 1.0)  # [B, 1]
    return l2_normalize(summed / count)


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norm, eps)).astype(np.float32)
