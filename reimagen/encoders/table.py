"""A precomputed table of encodings for a fixed set of texts (the training pool's prompts).

Training draws its prompts from a fixed pool (reimagen.training.entity_pool), so every prompt can
be encoded once, stored on disk, and gathered by index afterwards: a training step then spends
no time in the text encoder (MiniLM on 64 prompts costs ~1–2 s on 2 cores, as much as the
U-Net step itself). Token states are stored as float16 ([U, L, D]: 50k prompts at L=32, D=384
are 1.2 GB) — a rounding of ~1e-3 relative, far below what the U-Net resolves; pooled vectors
stay float32. Texts not in the table fall through to the wrapped encoder.

The folder holds tokens.npy, mask.npy, pooled.npy, table.json (what was encoded) and SHA256SUMS
over all four, written last (issue #14). :meth:`EncodingTable.load` checks every byte first (a
flipped bit in float16 token states would otherwise train on silently; ~0.6 s for a 550 MB
table, once per training start); :meth:`EncodingTable.build_or_load` answers a damaged or
unchecked table (one written before checksums) by encoding again, with a warning naming the
file: the table is a cache of what the encoder computes.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from reimagen.core import digests
from reimagen.core.interfaces import Encoder, TextEncoding
from reimagen.core.io import atomic_save_npy, atomic_write_text, load_json, load_npy
from reimagen.encoders.base import check_texts

META = "table.json"
ARRAYS = ("tokens", "mask", "pooled")
LOG = logging.getLogger(__name__)


def texts_digest(texts: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8") + b"\0")
    return digest.hexdigest()


class EncodingTable(Encoder):
    """``encode`` for texts known in advance: a dict lookup and a gather from memory-mapped
    arrays. Built with :meth:`build_or_load`."""

    def __init__(self, encoder: Encoder, texts: Sequence[str], tokens, mask, pooled):
        self.encoder = encoder
        self.name = f"{encoder.name}-table"
        self.dim, self.max_length = encoder.dim, encoder.max_length
        self.index = {text: i for i, text in enumerate(texts)}
        self.tokens, self.mask, self.pooled = tokens, mask, pooled  # [U, L, D] f16, [U, L], [U, D]

    @classmethod
    def build_or_load(
        cls,
        encoder: Encoder,
        texts: Sequence[str],
        folder: str | Path,
        batch: int = 256,
        progress=None,
    ) -> EncodingTable:
        """Load the table in ``folder`` if it was built from the same encoder and texts,
        else encode the distinct texts in batches and write it (atomically, file by file,
        the meta file last so a half-written table is never taken for a whole one)."""
        unique = list(dict.fromkeys(check_texts(texts)))
        folder = Path(folder)
        if (folder / META).is_file():
            try:
                table = cls.load(encoder, unique, folder)
            except digests.IntegrityError as err:
                LOG.warning("encoding the prompts again: %s", str(err).splitlines()[0])
                table = None
            if table is not None:
                return table
        (folder / digests.SUMS).unlink(missing_ok=True)  # the old one must not bless new files
        n, length, dim = len(unique), encoder.max_length, encoder.dim
        tokens = np.zeros((n, length, dim), np.float16)
        mask = np.zeros((n, length), bool)
        pooled = np.zeros((n, dim), np.float32)
        for start in range(0, n, batch):
            chunk = encoder.encode(unique[start : start + batch])
            tokens[start : start + batch] = chunk.tokens
            mask[start : start + batch] = chunk.mask
            pooled[start : start + batch] = chunk.pooled
            if progress:
                progress(min(start + batch, n), n)
        arrays: tuple[np.ndarray, ...] = (tokens, mask, pooled)  # else mypy joins them to object
        for name, array in zip(ARRAYS, arrays):
            atomic_save_npy(folder / f"{name}.npy", array)
        meta = json.dumps(_expected(encoder, unique), indent=1, sort_keys=True) + "\n"
        atomic_write_text(folder / META, meta)
        digests.write_sums(folder, [META, *(f"{name}.npy" for name in ARRAYS)])  # last
        return cls(encoder, unique, tokens, mask, pooled)

    @classmethod
    def load(cls, encoder: Encoder, texts: Sequence[str], folder: str | Path):
        """The table in ``folder`` if it holds exactly ``texts`` (distinct, in order) encoded
        by ``encoder``, else None. Its files are checked against SHA256SUMS first:
        IntegrityError naming the file (MissingChecksumError for a table without one)."""
        folder, unique = Path(folder), list(dict.fromkeys(check_texts(texts)))
        names = [META, *(f"{name}.npy" for name in ARRAYS)]
        digests.verify_sums(folder, required=names)
        if load_json(folder / META) != _expected(encoder, unique):
            return None  # another encoder or pool: not this table
        return cls(encoder, unique, *(load_npy(folder / f"{n}.npy", mmap=True) for n in ARRAYS))

    def __len__(self) -> int:
        return len(self.index)

    def encode(self, texts: Sequence[str]) -> TextEncoding:
        texts = check_texts(texts)
        rows = [self.index.get(text, -1) for text in texts]
        if min(rows, default=0) < 0:  # some text not in the table: encode those directly
            missing = [t for t, r in zip(texts, rows) if r < 0]
            direct = self.encoder.encode(missing)
            known = (
                self.encode([t for t, r in zip(texts, rows) if r >= 0])
                if len(missing) < len(texts)
                else None
            )
            return _merge(rows, known, direct)
        index = np.asarray(rows)
        return TextEncoding(
            tokens=np.asarray(self.tokens[index], np.float32),
            mask=np.asarray(self.mask[index]),
            pooled=np.asarray(self.pooled[index]),
        )


def _expected(encoder: Encoder, unique: Sequence[str]) -> dict:
    """table.json of a table of ``unique`` texts encoded by ``encoder``."""
    return {
        "encoder": encoder.name,
        "options": getattr(encoder, "options", {}),
        "dim": encoder.dim,
        "max_length": encoder.max_length,
        "texts": texts_digest(unique),
        "count": len(unique),
    }


def _merge(rows: list[int], known: TextEncoding | None, direct: TextEncoding) -> TextEncoding:
    """Interleave table hits and directly encoded misses back into the callers' order."""
    hits = iter([] if known is None else [known.take(i) for i in range(len(known))])
    misses = iter([direct.take(i) for i in range(len(direct))])
    parts = [next(hits) if r >= 0 else next(misses) for r in rows]
    return TextEncoding(
        tokens=np.stack([p.tokens for p in parts]),
        mask=np.stack([p.mask for p in parts]),
        pooled=np.stack([p.pooled for p in parts]),
    )
