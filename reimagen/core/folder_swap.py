"""Folders replaced crash-safely, and the fsyncs that make a write or a rename durable (docs/design.md §9).

A writer of a whole folder (a knowledge base, a retriever index, a benchmark's outputs) fills a
hidden staging folder beside its target, ``.<name>.<what>-<pid>-<random>``, and
:func:`swap_into_place` puts it at the target in one step. While it writes it holds an flock on
the staging folder (:func:`make_locked_folder`): the kernel drops that lock however the process
dies, so a leftover that another process can lock belongs to no running writer
(:func:`abandoned`), and the next writer deletes it (:func:`remove_abandoned`), first salvaging
what it holds when it is an old folder a killed swap left aside (:func:`remove_abandoned_swaps`).

Every fsync of the project is here: :func:`fsync_file` and :func:`fsync_tree` before a rename,
:func:`fsync_dir` after one. :mod:`reimagen.core.io` writes single files with them.
"""

from __future__ import annotations

import errno
import functools
import glob
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

_AT_FDCWD, _RENAME_EXCHANGE = -100, 2
YOUNG_SECONDS = 3600  # a leftover whose PID is alive counts as abandoned once this old

CarryOver = Callable[[Path, Path], None]  # (old folder, new folder): move the old one's extras


# ---- fsync ---------------------------------------------------------------------------------------


def fsync_file(path: str | Path) -> None:
    """Flush a written file's bytes to the disk (before it is renamed into place)."""
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def fsync_tree(folder: Path) -> None:
    """:func:`fsync_file` every file under ``folder`` (before the folder is renamed into place)."""
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            fsync_file(path)


def fsync_dir(folder: str | Path, *, strict: bool = False) -> None:
    """Make a rename inside ``folder`` durable (POSIX: fsync the directory). ``strict``: an
    error is raised (a checkpoint commit must be durable); else best effort (some file systems
    cannot open or fsync a directory)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        if strict:
            raise


# ---- who holds a folder --------------------------------------------------------------------------


def lock_dir(path: str | Path) -> int:
    """An exclusive flock on a directory, held while the returned descriptor stays open. The
    kernel drops it when the process dies, however it dies: a folder that another process can
    lock belongs to no running writer (a PID alone can be reused)."""
    import fcntl

    fd = os.open(path, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def abandoned(entry: Path, prefix: str) -> bool:
    """No running writer holds ``entry`` (named ``<prefix><pid>-...``). A folder is made a
    moment before it is locked, so one whose process is alive counts as abandoned only once it
    is an hour old (PID reuse)."""
    import fcntl

    try:
        fd = os.open(entry, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # releases the probe's own lock
    pid = entry.name[len(prefix) :].split("-", 1)[0]
    young = time.time() - entry.stat().st_mtime < YOUNG_SECONDS
    return not (pid.isdigit() and process_alive(int(pid)) and young)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def make_locked_folder(parent: Path, prefix: str, suffix: str = "") -> tuple[Path, int]:
    """A new folder ``<parent>/<prefix><pid>-<random><suffix>`` and the descriptor of the lock
    held on it (close it when done): while it is held, :func:`abandoned` says no."""
    folder = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", suffix=suffix, dir=parent))
    return folder, lock_dir(folder)


def remove_abandoned(
    parent: Path, prefix: str, salvage: Callable[[Path], None] | None = None
) -> None:
    """Delete the folders ``<parent>/<prefix>*`` that killed writers left (kill -9 runs no
    cleanup), after ``salvage(folder)`` took what it holds; a live writer's are left alone."""
    for entry in sorted(parent.glob(glob.escape(prefix) + "*")):
        if entry.is_dir() and abandoned(entry, prefix):
            if salvage is not None:
                salvage(entry)
            shutil.rmtree(entry, ignore_errors=True)


# ---- one folder replaced by another --------------------------------------------------------------


def exchange(a: str | Path, b: str | Path) -> bool:
    """Swap two existing paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``), so a reader
    finds one complete folder or the other at each name at every moment, even if the process is
    killed: two renames leave a moment with nothing at ``b``. False where the C library or the
    file system cannot (the caller then renames twice)."""
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # not glibc >= 2.28 (or not Linux)
        return False
    done = renameat2(
        _AT_FDCWD, os.fsencode(str(a)), _AT_FDCWD, os.fsencode(str(b)), _RENAME_EXCHANGE
    )
    if done == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):  # kernel or file system
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))


def aside_prefix(folder: Path) -> str:
    """Where :func:`swap_into_place` sets an old folder aside when it cannot exchange."""
    return f".{folder.name}.old-"


def swap_into_place(staging: Path, folder: Path, carry_over: CarryOver | None = None) -> None:
    """Put the finished ``staging`` folder at ``folder`` and delete the old one there. They are
    exchanged in one step where the OS can (``folder`` is then a whole old or new folder at
    every moment), else the old one is renamed aside first and put back if the second rename
    fails. ``carry_over(old, folder)`` then moves what the old one holds that the new one
    should keep (a KB's retriever indexes); the old one is deleted only after that."""
    if not folder.exists():
        os.replace(staging, folder)
        fsync_dir(folder.parent)
        return
    old_lock = lock_dir(folder)  # follows the old folder to the staging name: no writer takes it
    try:
        if exchange(staging, folder):
            # the old folder now lies at the staging name; killed before it is gone, the next
            # writer salvages it from there (remove_abandoned_swaps)
            fsync_dir(folder.parent)
            if carry_over is not None:
                carry_over(staging, folder)
            shutil.rmtree(staging)
            return
    finally:
        os.close(old_lock)
    _swap_by_two_renames(staging, folder, carry_over)


def _swap_by_two_renames(staging: Path, folder: Path, carry_over: CarryOver | None) -> None:
    """The old folder to ``.<name>.old-<pid>-*/<name>`` (locked), then ``staging`` to
    ``folder``; a failure of the second rename puts the old folder back."""
    aside, lock = make_locked_folder(folder.parent, aside_prefix(folder))
    try:
        old = aside / folder.name
        os.replace(folder, old)
        try:
            os.replace(staging, folder)
        except BaseException:
            os.replace(old, folder)  # put the old folder back
            aside.rmdir()
            raise
        fsync_dir(folder.parent)
        if carry_over is not None:
            carry_over(old, folder)
        shutil.rmtree(aside)
    finally:
        os.close(lock)


def remove_abandoned_swaps(
    folder: Path,
    staging_prefix: str,
    marker: str | None = None,
    carry_over: CarryOver | None = None,
) -> None:
    """Delete what writers of ``folder`` killed with -9 left beside it: staging folders
    (``staging_prefix``) and old folders set aside by :func:`swap_into_place`. With ``marker``
    (a file every whole folder holds, ``kb.json``) what they hold is salvaged first: an old
    folder set aside is put back if no folder took its place (killed between the two renames),
    else ``carry_over(old, folder)`` moves its extras into the new folder, as it does for a
    staging folder that holds the old folder (killed after the exchange)."""
    for prefix in (staging_prefix, aside_prefix(folder)):
        salvage = (
            None
            if marker is None
            else functools.partial(
                _salvage,
                folder=folder,
                set_aside=prefix == aside_prefix(folder),
                marker=marker,
                carry_over=carry_over,
            )
        )
        remove_abandoned(folder.parent, prefix, salvage)


def _salvage(
    entry: Path, folder: Path, set_aside: bool, marker: str, carry_over: CarryOver | None
) -> None:
    old = entry / folder.name
    if set_aside and old.is_dir():
        if not folder.exists() and (old / marker).is_file():
            os.replace(old, folder)
        elif folder.is_dir() and carry_over is not None:
            carry_over(old, folder)
    elif (entry / marker).is_file() and folder.is_dir() and carry_over is not None:
        carry_over(entry, folder)  # the old folder, exchanged to the staging name


def publish_entries(staging: Path, out: Path) -> set[str]:
    """Move every entry of ``staging`` into ``out``, each in one rename (a reader sees each old
    file or its new one), and return their names; other files in ``out`` are not touched."""
    names = {path.name for path in staging.iterdir()}
    for name in sorted(names):
        os.replace(staging / name, out / name)
    fsync_dir(out)
    return names
