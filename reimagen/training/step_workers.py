"""Forked processes that make ``source.batch(step)`` for steps start … stop − 1 ahead, handed
back in step order, and that stop cleanly at any point (numpy only; no framework).

Worker w of W serves steps start + w, start + w + W, … through a pipe of its own, so no lock is
shared between processes: closing the iterator early terminates the workers (SIGTERM) even while
one is blocked sending a result. ``multiprocessing.Pool.terminate`` cannot do that safely: when
a worker is part-way through sending a result larger than the pipe buffer, terminate waits for
the result queue's write lock that worker holds, forever (seen with reimagen.training.prefetch and
200 KB step arrays; tests/test_device_composer.py). A full pipe is the back-pressure: a worker
makes at most one step ahead of the one being read from it.

:func:`threaded` reads such a stream ahead in a thread of the consumer's process: a pipe read
releases the GIL, so receiving the next step overlaps the consumer's own work (a training step
launching its kernels).
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import threading
from collections.abc import Generator
from typing import Any

_ERROR = "__step_worker_error__"


def ordered(source, start: int, stop: int, workers: int) -> Generator[Any, None, None]:
    """``source.batch(step)`` for step in [start, stop), made by ``workers`` forked processes
    (nothing of ``source`` is pickled), yielded in step order. A worker's exception is raised
    here as a RuntimeError naming the step; closing the iterator stops the workers."""
    if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= 256:
        raise ValueError(f"workers must be an int in [1, 256], got {workers!r}")
    if "fork" not in multiprocessing.get_all_start_methods():
        raise RuntimeError("step workers need the 'fork' start method (Linux, macOS)")
    context = multiprocessing.get_context("fork")
    pipes, processes = [], []
    try:
        for w in range(workers):
            receive, send = context.Pipe(duplex=False)
            steps = range(start + w, stop, workers)
            process = context.Process(target=_serve, args=(source, steps, send), daemon=True)
            process.start()
            send.close()  # the worker's end: EOF here when it dies
            pipes.append(receive)
            processes.append(process)
        for step in range(start, stop):
            item = pipes[(step - start) % workers].recv()
            if isinstance(item, tuple) and len(item) == 2 and item[0] == _ERROR:
                raise RuntimeError(f"step worker failed at step {step}: {item[1]}")
            yield item
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.join()
        for pipe in pipes:
            pipe.close()


def threaded(stream: Generator[Any, None, None], depth: int = 2) -> Generator[Any, None, None]:
    """The items of ``stream``, read ahead (at most ``depth``) by a thread; an exception of
    ``stream`` is raised here; closing stops the thread and closes ``stream`` (in that thread,
    where it runs)."""
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry) -> bool:
        while not stop.is_set():
            try:
                items.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def pump() -> None:
        try:
            for item in stream:
                if not put(("item", item)):
                    return
            put(("end", None))
        except BaseException as err:  # noqa: BLE001 -- handed to the consumer
            put(("error", err))
        finally:
            stream.close()

    thread = threading.Thread(target=pump, name="step-reader", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = items.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        thread.join()


def _serve(source, steps: range, send) -> None:
    """A worker: one BLAS/OpenMP thread (the workers fill the cores), then its steps in order."""
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = "1"
    for step in steps:
        try:
            item = source.batch(step)
        except Exception as err:  # noqa: BLE001 -- reported to the reader, one line
            send.send((_ERROR, f"{type(err).__name__}: {err}"))
            return
        send.send(item)


__all__ = ["ordered", "threaded"]
