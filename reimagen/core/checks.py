"""The one validator of ``k``, the neighbours (or hits) asked for per query.

Shared by the retrievers (``k`` at most the indexed documents), the generation front door and
pipeline, the knowledge-base triples and the command line (``k`` at most the shipped networks'
``MAX_NEIGHBORS``), so every caller applies the same rules and reports them the same way: one
line naming the argument, the allowed values and the value given. Framework-free: no numpy,
torch or jax (numpy integers are accepted through :class:`numbers.Integral`).
"""

from __future__ import annotations

import numbers
from typing import Any


def check_k(
    k: Any,
    name: str = "k",
    low: int = 0,
    high: int | None = None,
    *,
    why: str = "",
    docs: int | None = None,
) -> int:
    """``k`` as a Python int, or ValueError.

    ``k``: an integer (Python or numpy; not a bool, not a float, even a whole one) in
    ``[low, high]`` (``high`` None: no upper bound). ``name``: the argument as the caller knows
    it (``"k"``, ``"--k"``, ``"--k-ref"``). ``why``: the reason for ``high``, shown in brackets.
    ``docs``: the documents an index holds, a bound set by the data rather than the contract.

    >>> check_k(9, high=8, why="the base was trained with K=2")
    Traceback (most recent call last):
    ValueError: k must be an integer in [0, 8] (the base was trained with K=2), got 9
    >>> check_k(7, docs=6)
    Traceback (most recent call last):
    ValueError: k=7 is larger than the 6 indexed documents
    """
    is_int = isinstance(k, numbers.Integral) and not isinstance(k, bool)
    if not is_int or k < low or (high is not None and k > high):
        allowed = f">= {low}" if high is None else f"in [{low}, {high}]"
        reason = f" ({why})" if why else ""
        shown = int(k) if is_int else repr(k)  # 9, not np.int64(9)
        raise ValueError(f"{name} must be an integer {allowed}{reason}, got {shown}")
    if docs is not None and k > docs:
        raise ValueError(f"{name}={int(k)} is larger than the {docs} indexed documents")
    return int(k)
