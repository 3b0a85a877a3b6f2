"""Neighbour recall: is the prompt's entity among the K knowledge-base rows a retriever returns?

Re-Imagen can only copy an unseen entity's look from its references if the retriever found that
entity, so this is the ceiling on faithfulness that retrieval sets. It needs no network:
``reimagen bench --recall-only --retrievers bm25,dense,hybrid`` measures it for several
retrievers and views in seconds once their indexes are built (docs/results/retrieval-recall.md).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import attrs
import numpy as np

FORMAT = "reimagen-neighbour-recall"


def entity_hits(kb, prompts: Sequence, rows: np.ndarray, source: str | None = None) -> np.ndarray:
    """bool [N, K]: hit[i, k] = prompt i's entity is among its first k+1 neighbours ``rows``
    [N, K] (KB row ids), so column k-1 is recall@k per prompt. ``source``: count only that
    artist's drawings of the entity (e.g. the target style, Twemoji)."""
    rows = np.asarray(rows, np.int64)
    if rows.ndim != 2 or len(rows) != len(prompts):
        raise ValueError(f"rows must be [{len(prompts)}, K], got shape {list(rows.shape)}")
    entities = np.array([r.entity for r in kb.records], dtype=object)  # [kb rows]
    wanted = np.array([p.entity for p in prompts], dtype=object)[:, None]  # [N, 1]
    hit = entities[rows] == wanted  # [N, K]
    if source is not None:
        hit &= np.array([r.source for r in kb.records], dtype=object)[rows] == source
    return np.logical_or.accumulate(hit, axis=1).astype(bool)


@attrs.frozen(kw_only=True)
class RecallResult:
    """Recall of one retriever over one view (setting) for one prompt set."""

    retriever: str
    setting: str
    ks: tuple[int, ...]
    hits: np.ndarray  # bool [N, max K], cumulative (entity_hits)
    target_hits: np.ndarray | None  # ditto, the target artist's drawing only (None: view has none)
    neighbor_rows: np.ndarray  # int64 [N, max K]
    seconds: float  # retrieval wall time (index and encoder already loaded)

    def recall(self, k: int) -> float:
        return float(self.hits[:, k - 1].mean()) if len(self.hits) else float("nan")

    def count(self, k: int) -> int:
        return int(self.hits[:, k - 1].sum())

    def target_recall(self, k: int) -> float:
        if self.target_hits is None or not len(self.target_hits):
            return float("nan")
        return float(self.target_hits[:, k - 1].mean())

    def to_dict(self) -> dict:
        n = len(self.hits)
        return {
            "retriever": self.retriever,
            "setting": self.setting,
            "n_prompts": n,
            "seconds": round(self.seconds, 3),
            "recall": {str(k): round(self.recall(k), 4) for k in self.ks},
            "hits": {str(k): self.count(k) for k in self.ks},
            "target_recall": {
                str(k): None if np.isnan(self.target_recall(k)) else round(self.target_recall(k), 4)
                for k in self.ks
            },
        }


def measure(
    kb,
    retriever,
    prompts: Sequence,
    ks: Sequence[int],
    *,
    name: str,
    setting: str,
    target: str | None = None,
) -> RecallResult:
    """Search every prompt once at the largest K (a retriever's top-k is a prefix of its
    top-K) and score each K; ``target``: also score that artist's drawings alone (None when
    the view has none of them)."""
    ks = tuple(sorted({int(k) for k in ks}))
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive integers, got {list(ks)}")
    if prompts:  # untimed: loads the encoder's weights on first use
        retriever.search([prompts[0].prompt], 1)
    started = time.perf_counter()
    found = retriever.search([p.prompt for p in prompts], ks[-1])
    seconds = time.perf_counter() - started
    rows = np.asarray(found.ids, np.int64)  # [N, max K]
    in_view = target is not None and any(
        kb.records[int(r)].source == target for r in retriever.rows
    )
    return RecallResult(
        retriever=name,
        setting=setting,
        ks=ks,
        hits=entity_hits(kb, prompts, rows),
        target_hits=entity_hits(kb, prompts, rows, target) if in_view else None,
        neighbor_rows=rows,
        seconds=seconds,
    )


def table(results: Sequence[RecallResult], target: str | None = None) -> str:
    """Markdown: one line per (retriever, setting), recall@K as rate and count; with
    ``target``, also the rate at which that artist's drawing of the entity is in the top K."""
    ks = results[0].ks if results else ()
    extra = [f"{target}@{k}" for k in ks] if target else []
    lines = [
        "| retriever | setting | "
        + " | ".join([*(f"recall@{k}" for k in ks), *extra])
        + " | search s |",
        "|---|---|" + "---:|" * (len(ks) + len(extra) + 1),
    ]
    for r in results:
        n = len(r.hits)
        cells = [f"{r.recall(k):.3f} ({r.count(k)}/{n})" for k in ks]
        if target:
            cells += [
                "-" if np.isnan(r.target_recall(k)) else f"{r.target_recall(k):.3f}" for k in ks
            ]
        lines.append(
            f"| {r.retriever} | {r.setting} | " + " | ".join(cells) + f" | {r.seconds:.2f} |"
        )
    return "\n".join(lines)


def misses(kb, prompts: Sequence, result: RecallResult, k: int) -> list[dict]:
    """The prompts whose entity is not in the top-k: prompt, entity and what came back."""
    out = []
    for i in np.flatnonzero(~result.hits[:, k - 1]):
        got = [kb.records[int(r)].entity for r in result.neighbor_rows[i, :k]]
        prompt = prompts[int(i)]
        out.append({"prompt": prompt.prompt, "entity": prompt.entity, "retrieved": got})
    return out


def markdown(results: Sequence[RecallResult], prompts: Sequence, source: str, target: str) -> str:
    """recall.md: the prompt set, what recall@K and ``target``@K mean, and :func:`table`."""
    return "\n".join(
        [
            f"# Neighbour recall ({len(prompts)} prompts: {source})",
            "",
            (
                "recall@K = the prompt's entity is among the K retrieved knowledge-base rows; "
                f"{target}@K = its {target} drawing (the target style) is."
            ),
            "",
            table(results, target),
            "",
        ]
    )


def to_json(
    results: Sequence[RecallResult],
    kb,
    prompts: Sequence,
    *,
    source: str,
    encoder: str,
    seconds: float,
) -> dict:
    """recall.json: the command, prompt set, encoder, wall time, and per result its rates
    with every miss at the largest K."""
    from reimagen.bench.session import command_line

    return {
        "format": FORMAT,
        "format_version": 1,
        "command": command_line(),
        "prompts": source,
        "n_prompts": len(prompts),
        "encoder": encoder,
        "wall_seconds": round(seconds, 1),
        "results": [{**r.to_dict(), "misses": misses(kb, prompts, r, r.ks[-1])} for r in results],
    }
