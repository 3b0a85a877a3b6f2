"""Benchmarks: collection of ``bench_*.py`` and a summary table per suite at the end of the run.

``make bench`` runs ``pytest benchmarks --benchmark-only``; pytest's default patterns only
collect ``test_*.py``, so files named ``bench_*.py`` are collected here (a file named on the
command line is collected by pytest itself and not twice).

A suite that wants a table of ratios after pytest-benchmark's own table asks for the
``bench_summary`` fixture and registers ``bench_summary[title] = render``, a function returning
the table's text; every registered table is printed once, at the end, from the numbers of this
one run.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

_SUMMARIES = pytest.StashKey[dict]()


def pytest_collect_file(file_path, parent):
    if (
        file_path.suffix == ".py"
        and file_path.name.startswith("bench_")
        and not parent.session.isinitpath(file_path)
    ):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def pytest_configure(config):
    config.stash[_SUMMARIES] = {}


@pytest.fixture(scope="session")
def bench_summary(pytestconfig) -> dict[str, Callable[[], str]]:
    """title -> render(): tables printed at the end of the run."""
    return pytestconfig.stash[_SUMMARIES]


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    for title, render in config.stash.get(_SUMMARIES, {}).items():
        terminalreporter.section(title)
        try:
            terminalreporter.write_line(render())
        except Exception as err:  # noqa: BLE001 - a half-run suite: say so, do not fail the run
            terminalreporter.write_line(f"(no summary: {err!r})")
