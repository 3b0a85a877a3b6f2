"""reimagen.training.step_workers: steps made ahead by forked processes, in step order, stopped
cleanly at any point (multiprocessing.Pool.terminate can deadlock there: see the module)."""

from __future__ import annotations

import multiprocessing
import time

import numpy as np
import pytest

from reimagen.training.step_workers import ordered, threaded


class Big:
    """batch(step): 2 MB (far above a pipe's buffer) that name their step."""

    def batch(self, step: int) -> np.ndarray:
        return np.full(2**19, step, np.float32)


class Failing:
    def batch(self, step: int) -> int:
        if step == 3:
            raise ValueError("no step 3")
        return step


def test_steps_come_back_in_order():
    got = [int(item[0]) for item in ordered(Big(), 5, 16, workers=3)]
    assert got == list(range(5, 16))


def test_closing_early_stops_workers_blocked_in_send():
    """Every worker is blocked sending a result nobody reads when the iterator is closed."""
    stream = ordered(Big(), 0, 1000, workers=2)
    assert int(next(stream)[0]) == 0
    time.sleep(0.5)  # the workers fill their pipes and block
    stream.close()  # returns: the blocked workers are terminated, nothing waits on a lock
    assert multiprocessing.active_children() == []


def test_a_worker_error_is_raised_naming_the_step():
    stream = ordered(Failing(), 0, 10, workers=2)
    assert [next(stream) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(RuntimeError, match="step worker failed at step 3: ValueError: no step 3"):
        next(stream)


@pytest.mark.parametrize("workers", [0, -1, 257, True, 1.5])
def test_bad_worker_counts_are_refused(workers):
    with pytest.raises(ValueError, match="workers must be an int in"):
        next(ordered(Big(), 0, 3, workers=workers))


def test_a_thread_reads_ahead_in_order_and_stops():
    got = [int(item[0]) for item in threaded(ordered(Big(), 0, 9, workers=2))]
    assert got == list(range(9))
    stream = threaded(ordered(Big(), 0, 1000, workers=2))
    assert int(next(stream)[0]) == 0
    stream.close()  # the reader thread stops and closes the workers' stream
    assert multiprocessing.active_children() == []


def test_a_thread_hands_on_a_worker_error():
    stream = threaded(ordered(Failing(), 0, 10, workers=2))
    assert [next(stream) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(RuntimeError, match="step worker failed at step 3"):
        next(stream)
