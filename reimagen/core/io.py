"""Crash-safe file writes and safe loading (docs/design.md §9).

Writes go to a temp file in the same folder, are fsynced, then ``os.replace``d over the target,
so a reader sees the old file or the new one, never half of one. Nothing is loaded with pickle:
arrays are safetensors or ``.npy`` with ``allow_pickle=False``. Whole folders (a knowledge base,
a retriever index) are swapped in by :mod:`reimagen.core.folder_swap`, which also holds every
fsync; this module writes single files.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from reimagen.core import digests
from reimagen.core.digests import IntegrityError, UnsafeFileError  # noqa: F401 (re-exported)
from reimagen.core.folder_swap import abandoned, fsync_dir, fsync_file

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def name_the_file(err: OSError, path: str | Path) -> None:
    """A full disk (ENOSPC, EDQUOT) met by ``write`` names no file: give it ``path``, so the
    one line the CLI prints says where it was writing."""
    if err.errno in DISK_FULL and not err.filename:
        err.filename = str(path)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success fsync it and rename it over ``path``.
    On any error (a full disk too) the temp file goes and ``path`` is untouched. The temp file
    (``.<name>.<pid>-<random>.tmp``) is flock-held until then, so the next write of ``path``
    deletes the ones a kill -9 left (no cleanup runs then) and no live writer's."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_temps(path)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp", dir=path.parent
    )
    fcntl.flock(fd, fcntl.LOCK_EX)  # released by the close below, or by the kernel at a kill
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        fsync_file(tmp_path)
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give what open() would
        os.replace(tmp_path, path)
        fsync_dir(path.parent)
    except OSError as err:
        name_the_file(err, path)
        raise
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
        os.close(fd)


def _remove_abandoned_temps(path: Path) -> None:
    prefix = f".{path.name}."
    for entry in path.parent.glob(f"{glob.escape(prefix)}*.tmp"):
        if entry.is_file() and abandoned(entry, prefix):
            with contextlib.suppress(FileNotFoundError):  # another writer got there first
                entry.unlink()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_npy(path: str | Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, np.ascontiguousarray(array), allow_pickle=False)


def load_npy(path: str | Path, mmap: bool = False) -> np.ndarray:
    """A plain ``.npy`` array. One holding Python objects (a pickle: numpy would have to
    unpickle it) or with no ``.npy`` header is UnsafeFileError naming the file."""
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except ValueError as err:
        raise UnsafeFileError(
            f"{path}: not a plain .npy array ({first_line(err)}); refusing to load it"
        ) from None


def check_npy(path: str | Path) -> None:
    """Refuse a ``.npy`` file whose header declares Python objects, reading the header only:
    for libraries that call ``np.load`` themselves (bm25s), so the refusal names the file."""
    from numpy.lib import format as npy

    readers = {(1, 0): npy.read_array_header_1_0, (2, 0): npy.read_array_header_2_0}
    with open(path, "rb") as handle:
        try:
            version = npy.read_magic(handle)
            _, _, dtype = readers[version](handle)
        except (ValueError, KeyError) as err:
            raise UnsafeFileError(
                f"{path}: not a plain .npy array ({first_line(err)}); refusing to load it"
            ) from None
    if dtype.hasobject:
        raise UnsafeFileError(  # numpy's own words, as load_npy reports it
            f"{path}: not a plain .npy array (Object arrays cannot be loaded when "
            "allow_pickle=False); refusing to load it"
        )


def load_json(path: str | Path) -> Any:
    """A UTF-8 JSON file; anything else (e.g. a pickle under a ``.json`` name) is
    UnsafeFileError naming the file. Used where the file's checksum already passed, so this
    is a file some other writer put there, not bit rot."""
    try:
        return json.loads(Path(path).read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UnsafeFileError(
            f"{path}: not a JSON file ({first_line(err)}); refusing to load it"
        ) from None


def first_line(err: BaseException) -> str:
    return (str(err).splitlines() or [type(err).__name__])[0]


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_save_safetensors(
    path: str | Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None
) -> None:
    """Write numpy arrays as safetensors, atomically, with the sha256 of the file in its header
    (``reimagen.sha256``, see :mod:`reimagen.core.digests`)."""
    from safetensors.numpy import save

    metadata = {**(metadata or {}), digests.SAFETENSORS_KEY: digests.PLACEHOLDER.decode()}
    blob = save({k: np.ascontiguousarray(v) for k, v in tensors.items()}, metadata=metadata)
    atomic_write_bytes(path, digests.stamp_safetensors(blob))


@contextlib.contextmanager
def _safetensors_handle(path: str | Path) -> Iterator:
    """safe_open on ``path``; a missing file is FileNotFoundError, anything that is not
    safetensors is UnsafeFileError (refused, never unpickled)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        with safe_open(str(path), framework="numpy") as handle:
            yield handle
    except Exception as err:  # noqa: BLE001 (safetensors raises its own types for a bad header)
        raise UnsafeFileError(
            f"{path} is not a valid safetensors file ({err}); refusing to load it"
        )


def load_safetensors_metadata(path: str | Path) -> dict[str, str]:
    """A safetensors file's metadata, reading the header only and *not* checking the file's
    digest (that needs every byte): for deciding how to load a file that
    :func:`load_safetensors` then reads and checks."""
    with _safetensors_handle(path) as handle:
        return _metadata(handle)


def load_safetensors(
    path: str | Path, check: bool = True
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Load arrays and metadata. Anything that is not safetensors is refused, never unpickled.
    ``check``: the file must carry its sha256 (written by :func:`atomic_save_safetensors`) and
    match it, else IntegrityError; False only where the caller verified the bytes already (a
    checkpoint's SHA256SUMS, the evaluator's recorded hash)."""
    if check:
        check_safetensors(path)
    with _safetensors_handle(path) as handle:
        metadata = _metadata(handle)
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (safe_open is not a dict)
    return tensors, metadata


def check_safetensors(path: str | Path) -> None:
    """IntegrityError unless ``path`` matches the sha256 in its header (one read of the file)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if not digests.verify_safetensors(path):
        raise digests.MissingChecksumError(
            f"{path}: no {digests.SAFETENSORS_KEY} checksum in its header (written before "
            "reimagen recorded one, by another tool, or damaged); if you trust the file: "
            f"python -m reimagen.core.digests stamp {path}"
        )


def _metadata(handle) -> dict[str, str]:
    metadata = dict(handle.metadata() or {})
    metadata.pop(digests.SAFETENSORS_KEY, None)  # the file's own checksum, not a fact about it
    return metadata


def is_temp_name(name: str) -> bool:
    """A temp file of :func:`atomic_path` (``.<name>.<random>.tmp``), which a kill -9 leaves."""
    return name.startswith(".") and name.endswith(".tmp")
