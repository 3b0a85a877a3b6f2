"""Crash-safe writes (docs/design.md §9): all or nothing, usual permissions, no pickle on load."""

import os
import pickle

import numpy as np
import pytest

from reimagen.core.io import (
    UnsafeFileError,
    atomic_path,
    atomic_save_safetensors,
    atomic_write_text,
    load_npy,
    load_safetensors,
)


def test_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "f.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_written_files_get_umask_permissions(tmp_path):
    atomic_write_text(tmp_path / "f.txt", "x")
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o666 & ~mask


def test_pickles_are_refused(tmp_path):
    class Boom:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    bad = tmp_path / "w.safetensors"
    bad.write_bytes(pickle.dumps(Boom()))
    with pytest.raises(UnsafeFileError, match="not a valid safetensors file"):
        load_safetensors(bad)
    npy = tmp_path / "a.npy"
    np.save(npy, np.array([Boom()], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError):
        load_npy(npy)
    assert not (tmp_path / "pwned").exists()


def test_safetensors_round_trip_with_metadata(tmp_path):
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(4, np.int64)}
    atomic_save_safetensors(tmp_path / "x.safetensors", arrays, metadata={"k": "v"})
    loaded, meta = load_safetensors(tmp_path / "x.safetensors")
    assert meta == {"k": "v"}
    for key, value in arrays.items():
        np.testing.assert_array_equal(loaded[key], value)


def test_the_next_write_deletes_the_temp_files_a_kill_left(tmp_path):
    """kill -9 runs no cleanup: its temp file stays until the next write of that file, which
    deletes it; a temp file a live writer holds (flock) is left alone."""
    import fcntl

    left = tmp_path / ".f.txt.999999999-abc.tmp"  # no such process
    left.write_text("half")
    live = tmp_path / f".f.txt.{os.getpid()}-live.tmp"
    live.write_text("being written")
    fd = os.open(live, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        atomic_write_text(tmp_path / "f.txt", "whole")
    finally:
        os.close(fd)
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, "f.txt"]
    atomic_write_text(tmp_path / "f.txt", "again")  # unlocked now, but its process is alive
    assert live.exists()  # (young and alive: PID reuse guard)
