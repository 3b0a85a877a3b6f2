"""Checksums for the files reimagen writes and later reads back (issue #14).

A flipped bit or a truncated copy must be an error naming the file, never data used silently.
Format checks alone do not catch that: safetensors and faiss notice a truncation but not a flipped
bit in a tensor, ``.npy`` notices neither. So every artifact carries sha256 digests recorded when
it was written and checked when it is read, in one of two forms:

* ``SHA256SUMS`` beside the data (a folder: knowledge base, retriever index, checkpoint step,
  encoding table) or ``<file>.sha256`` (a single file, e.g. ``.npz`` triples). The format is
  ``sha256sum``'s (``<hex>  <relative path>``, sorted), so ``sha256sum -c SHA256SUMS`` checks a
  folder by hand. It is written atomically *after* the data, so a crash leaves a folder without
  it (incomplete, never trusted) rather than one with a wrong list. The reader insists on the
  exact bytes a writer produces: a flip that leaves a line parseable (a space into a tab, a hex
  digit's case) is still an error, so a damaged SHA256SUMS is never half-trusted.
* ``reimagen.sha256`` in a safetensors header's metadata: sha256 of the *whole file* as written
  with that value set to 64 zeros. One self-contained file (shipped and exported weights,
  triples) keeps its checksum wherever it is copied, and the digest covers the header too (the
  UNetConfig, shapes, offsets), not only the tensor bytes.

numpy-free, framework-free: hashlib and the atomic writers of :mod:`reimagen.core.io`.
``python -m reimagen.core.digests stamp FILE.safetensors`` adds the digest to a weights file
written before reimagen recorded one (only for a file you trust: it blesses what is there).
"""

from __future__ import annotations

import hashlib
import re
import sys
from collections.abc import Iterable
from pathlib import Path

SUMS = "SHA256SUMS"
SIDECAR_SUFFIX = ".sha256"
SAFETENSORS_KEY = "reimagen.sha256"
PLACEHOLDER = b"0" * 64
CHUNK = 1 << 22  # 4 MiB reads: sha256 runs at ~1 GB/s here, the syscalls are noise
MAX_HEADER = 100 << 20  # safetensors' own limit on the JSON header (100 MB)
_LINE = re.compile(r"^([0-9a-f]{64})  ([^\n\\]+)$")
_KEY = b'"' + SAFETENSORS_KEY.encode() + b'":"'


class IntegrityError(ValueError):
    """A file whose bytes differ from the digest recorded when it was written (bit rot, a
    truncated copy, an edit), or that carries no digest where one is required. One line,
    naming the file."""


class UnsafeFileError(IntegrityError):
    """A file that is not in the format its reader expects: a weights file that is not valid
    safetensors, a ``.npy`` holding Python objects, a ``.json`` that is not JSON (e.g. a pickle
    under any of those names). Refused, never unpickled."""


class MissingChecksumError(IntegrityError):
    """No digest at all: written before reimagen recorded them, by another tool, or a write
    that never finished. Callers decide whether such a file is legacy (warn) or refused."""


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


# ---- SHA256SUMS (folders) and <file>.sha256 (single files) ------------------------------------


def format_sums(digests: dict[str, str]) -> str:
    """``sha256sum`` lines, sorted by path: the one byte form a reader accepts."""
    return "".join(f"{digests[name]}  {name}\n" for name in sorted(digests))


def files_under(folder: Path, skip: Iterable[str] = ()) -> list[str]:
    """Every file below ``folder`` as a sorted POSIX path relative to it, except ``skip``."""
    skip = set(skip)
    names = (p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    return sorted(n for n in names if n not in skip)


def write_sums(folder: str | Path, names: Iterable[str] | None = None, sums: str = SUMS) -> Path:
    """Hash ``names`` (paths relative to ``folder``; default: every file below it) and write
    ``folder/sums`` atomically. Call it after the data files are complete."""
    from reimagen.core.io import atomic_write_text

    folder = Path(folder)
    names = files_under(folder, skip=(sums,)) if names is None else sorted(names)
    for name in names:
        if not _LINE.match(f"{'0' * 64}  {name}") or name.startswith("/"):
            raise ValueError(f"cannot record {name!r} in {sums}: a relative path on one line")
    digests = {name: sha256_file(folder / name) for name in names}
    atomic_write_text(folder / sums, format_sums(digests))
    return folder / sums


def read_sums(path: str | Path) -> dict[str, str]:
    """Parse a SHA256SUMS file written by :func:`write_sums`; anything else (a damaged byte, a
    truncation, another tool's layout) is an IntegrityError naming it."""
    path = Path(path)
    if not path.is_file():
        raise MissingChecksumError(f"{path}: missing (no checksums recorded)")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise IntegrityError(f"{path}: damaged (not UTF-8 text)") from None
    digests: dict[str, str] = {}
    for number, line in enumerate(text.split("\n")[:-1], start=1):
        match = _LINE.match(line)
        if not match or match[2] in digests:
            raise IntegrityError(f"{path}: damaged (line {number} is not '<sha256>  <path>')")
        digests[match[2]] = match[1]
    if not digests or format_sums(digests) != text:
        raise IntegrityError(f"{path}: damaged (not the form it was written in)")
    return digests


def verify_sums(
    folder: str | Path,
    *,
    required: Iterable[str] = (),
    complete: bool = False,
    sums: str = SUMS,
) -> dict[str, str]:
    """Check every file ``folder/sums`` lists against its digest. ``required``: names that
    must be listed; ``complete``: no other file may exist below ``folder`` (an index or a
    checkpoint step holds nothing else). Raises IntegrityError (MissingChecksumError when there
    is no ``sums`` file) naming the first bad file; returns the digests."""
    folder = Path(folder)
    listing = folder / sums
    digests = read_sums(listing)
    for name in required:
        if name not in digests:
            raise IntegrityError(f"{listing}: does not list {name} (damaged or not this format)")
    if complete:
        extra = sorted(set(files_under(folder, skip=(sums,))) - set(digests))
        if extra:
            raise IntegrityError(f"{folder / extra[0]}: not listed in {listing} (added later)")
    for name, recorded in digests.items():
        path = folder / name
        if not path.is_file():
            raise IntegrityError(f"{path}: missing (listed in {listing})")
        actual = sha256_file(path)
        if actual != recorded:
            raise IntegrityError(
                f"{path}: sha256 {actual[:12]}… does not match {sums} ({recorded[:12]}…): "
                "damaged or changed after it was written"
            )
    return digests


def sidecar(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def write_sidecar(path: str | Path) -> Path:
    """``<file>.sha256`` for one file (``sha256sum`` format), written after the file."""
    path = Path(path)
    return write_sums(path.parent, [path.name], sums=sidecar(path).name)


def verify_sidecar(path: str | Path) -> None:
    path = Path(path)
    digests = verify_sums(path.parent, required=[path.name], sums=sidecar(path).name)
    if len(digests) != 1:
        raise IntegrityError(f"{sidecar(path)}: damaged (lists {len(digests)} files, not 1)")


# ---- reimagen.sha256 inside a safetensors header -----------------------------------------------


def stamp_safetensors(blob: bytes) -> bytes:
    """``blob``: a safetensors file serialized with metadata ``reimagen.sha256 = "0" * 64``.
    Returns it with that value replaced by the sha256 of ``blob`` (same length, so no offset
    moves)."""
    header_end = 8 + int.from_bytes(blob[:8], "little")
    at = _digest_offset(blob[8:header_end])
    if at is None or blob[8 + at : 8 + at + 64] != PLACEHOLDER:
        raise ValueError(f"the safetensors header holds no {SAFETENSORS_KEY} placeholder")
    digest = hashlib.sha256(blob).hexdigest().encode()
    return blob[: 8 + at] + digest + blob[8 + at + 64 :]


def verify_safetensors(path: str | Path) -> bool:
    """Check a safetensors file against the digest in its header, reading it once in chunks.
    True: verified. False: its header has no digest (the caller decides). Raises
    IntegrityError for a mismatch, or a header that cannot be a safetensors header."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        length = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
        if not 0 < length <= min(size - 8, MAX_HEADER):
            raise UnsafeFileError(
                f"{path} is not a valid safetensors file (truncated or damaged: {size} bytes, "
                f"header length {length}); refusing to load it"
            )
        header = handle.read(length)
        at = _digest_offset(header)
        if at is None:
            return False
        recorded = header[at : at + 64].decode("ascii", errors="replace")
        digest = hashlib.sha256(prefix + header[:at] + PLACEHOLDER + header[at + 64 :])
        while block := handle.read(CHUNK):
            digest.update(block)
    if digest.hexdigest() != recorded:
        raise IntegrityError(
            f"{path}: sha256 does not match the {SAFETENSORS_KEY} in its header "
            f"({recorded[:12]}…): damaged or changed after it was written"
        )
    return True


def _digest_offset(header: bytes) -> int | None:
    """Where the 64 digest characters start in the JSON header; None unless the key occurs
    exactly once followed by 64 characters and a quote."""
    first = header.find(_KEY)
    if first < 0 or header.find(_KEY, first + 1) >= 0:
        return None
    at = first + len(_KEY)
    return at if header[at + 64 : at + 65] == b'"' else None


def stamp_file(path: str | Path) -> None:
    """Add (or renew) the header digest of an existing safetensors file, tensors and other
    metadata unchanged. For files written before reimagen recorded one."""
    from reimagen.core.io import atomic_save_safetensors, load_safetensors

    tensors, metadata = load_safetensors(path, check=False)
    metadata.pop(SAFETENSORS_KEY, None)
    atomic_save_safetensors(path, tensors, metadata=metadata)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 2 or argv[0] not in ("stamp", "verify"):
        print(
            "usage: python -m reimagen.core.digests stamp|verify FILE.safetensors ...",
            file=sys.stderr,
        )
        return 2
    status = 0
    for name in argv[1:]:
        try:
            if argv[0] == "stamp":
                stamp_file(name)
                print(f"{name}: stamped")
            elif verify_safetensors(name):
                print(f"{name}: OK")
            else:
                print(f"{name}: no {SAFETENSORS_KEY} in its header")
                status = 1
        except (IntegrityError, OSError) as err:
            print(f"error: {str(err).splitlines()[0]}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
