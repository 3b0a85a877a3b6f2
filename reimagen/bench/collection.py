"""Evaluating a base stage trained on your own collection (``reimagen bench --kb COLLECTION``).

A collection has no entity classifier to judge identity, so this measures what needs none, on
the held-out records (reimagen.training.folder_data: never trained on, never a neighbour):

1. **Neighbour signal** (as reimagen.bench.neighbor_signal does for the emoji KB): the
   ε-prediction error of paper Eq. 2 on each held-out record's own image, with its RIGHT
   neighbours (the top-K training records the retriever finds for its caption), with SHUFFLED
   ones (another held-out record's neighbours: example i gets those of i+1) and with NONE (the
   neighbour condition dropped). Same x0, noise, t and prompt in all three; averaged over
   t ∈ T_VALUES. A network that reads its neighbours predicts ε better with the right ones.
2. **Generated images**, one per held-out record and row: copy-the-top-1-reference (no network:
   what pure copying scores), no retrieval (K=0), and Re-Imagen with each K; each row scored by
   every selected evaluator (component kind ``evaluator``, reimagen.bench.evaluators: the built-in
   ``pixel`` gives PSNR / MSE / centred cosine to the target and PSNR to the nearest reference;
   a plugin adds its own columns).

Every row sees the same references (the top-K_max, for the nearest-reference column), the same
prompts and the same sampler noise per record (seed, record index). numpy + the backend's
Denoiser (any backend).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import attrs
import numpy as np

from reimagen.bench.evaluators import HeldOutExample, check_metrics
from reimagen.bench.neighbor_signal import T_VALUES
from reimagen.core.images import to_uint8

FORMAT = "reimagen-collection-bench"
COPY_LABEL = "copy top-1 reference (no network)"


@attrs.frozen
class CollectionRow:
    label: str
    k: int | None  # None: the copy row (no network)
    images: np.ndarray = attrs.field(repr=False)  # [N, S, S, 3] uint8
    metrics: dict  # metric name -> float (every evaluator's columns)
    seconds: float = 0.0  # generation time
    nfe: int = 0  # network evaluations per image

    def to_dict(self) -> dict:
        return {
            "label": self.label,
            "k": self.k,
            "nfe": self.nfe,
            "seconds": round(self.seconds, 3),
            **self.metrics,
        }


def held_out_examples(
    kb, rows: np.ndarray, neighbor_rows: np.ndarray, size: int
) -> list[HeldOutExample]:
    """The evaluators' view of the held-out ``rows`` [N] and their neighbours [N, K], at
    ``size`` (targets and references on white, area-resized, as training shows them)."""
    n, k = neighbor_rows.shape
    targets = to_uint8(kb.rgb(rows, size=size))  # [N, S, S, 3]
    refs = (
        to_uint8(kb.rgb(neighbor_rows.reshape(-1), size=size))
        if k
        else np.zeros((0, size, size, 3), np.uint8)
    )
    refs = refs.reshape(n, k, size, size, 3)
    return [
        HeldOutExample(
            key=kb.records[int(r)].key,
            text=kb.records[int(r)].text,
            target=targets[i],
            references=refs[i],
            reference_keys=tuple(kb.records[int(x)].key for x in neighbor_rows[i]),
        )
        for i, r in enumerate(rows)
    ]


def chunks(n: int, size: int) -> list[slice]:
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]


# ---- 1. the neighbour signal ---------------------------------------------------------------------


def epsilon_signal(
    pipeline,
    kb,
    rows: np.ndarray,
    neighbor_rows: np.ndarray,
    *,
    seed: int = 0,
    batch_size: int = 32,
) -> dict[str, float]:
    """{right, shuffled, none: mean ε-MSE over the held-out ``rows`` and T_VALUES, gain:
    (shuffled − right) / shuffled}. ``neighbor_rows`` [N, K] with N >= 2."""
    from reimagen.diffusion.schedule import CosineSchedule
    from reimagen.generation.pipeline import encode_neighbors_text

    n, k = neighbor_rows.shape
    size = pipeline.image_size
    shuffled = np.roll(neighbor_rows, -1, axis=0)  # example i gets example i+1's neighbours
    targets = kb.rgb(rows, size=size)  # x0 [N, S, S, 3] in [-1, 1]
    rng = np.random.default_rng((seed, 1))
    noises = [rng.standard_normal(targets.shape, dtype=np.float32) for _ in T_VALUES]
    schedule = CosineSchedule()
    totals = {"right": 0.0, "shuffled": 0.0, "none": 0.0}
    for part in chunks(n, batch_size):
        text = pipeline.encoder.encode([kb.records[int(r)].text for r in rows[part]])
        bound = {}
        for name, nb in (("right", neighbor_rows[part]), ("shuffled", shuffled[part])):
            images = kb.rgb(nb.reshape(-1), size=size).reshape(*nb.shape, size, size, 3)
            bound[name] = pipeline.backend.make_denoiser(
                pipeline.model, text, images, encode_neighbors_text(pipeline.encoder, kb, nb)
            )
        for t, noise in zip(T_VALUES, noises):
            alpha, sigma = schedule.alpha_sigma(np.float64(t))
            x_t = (alpha * targets[part] + sigma * noise[part]).astype(np.float32)  # Eq. 1
            right = bound["right"]
            eps = right.to_numpy(right(right.asarray(x_t), t, ["full", "text"]))  # [2, b, ...]
            wrong = bound["shuffled"]
            eps_wrong = wrong.to_numpy(wrong(wrong.asarray(x_t), t, ["full"]))[0]
            for name, value in (("right", eps[0]), ("none", eps[1]), ("shuffled", eps_wrong)):
                error = np.mean((value - noise[part]) ** 2, axis=(1, 2, 3)).sum()
                totals[name] += float(error) / (n * len(T_VALUES))
    wrong = totals["shuffled"]
    gain = (wrong - totals["right"]) / wrong if wrong else 0.0
    return {"k": k, **totals, "gain": gain}


# ---- 2. generated images ------------------------------------------------------------------------


def generate_row(
    pipeline,
    prompts: Sequence[str],
    neighbor_rows: np.ndarray,
    k: int,
    sampling,
    *,
    seed: int,
    batch_size: int,
    progress: Callable | None = None,
):
    """(images uint8 [N, S, S, 3], seconds, nfe): one image per prompt with its first ``k``
    neighbours; sample i's noise depends on (seed, i) only, so rows are comparable."""
    images, seconds, nfe = [], 0.0, 0
    for part in chunks(len(prompts), batch_size):
        found = pipeline.generate(
            list(prompts[part]),
            k=k,
            sampling=sampling,
            seed=seed,
            neighbor_rows=neighbor_rows[part, :k] if k else None,
            indices=list(range(part.start, part.stop)),
        )
        images.append(found.images)
        seconds, nfe = seconds + found.seconds, found.nfe
        if progress is not None:
            progress(part.stop, len(prompts))
    return np.concatenate(images), seconds, nfe


def no_retrieval_sampling(sampling):
    """K=0 has no neighbour condition: guidance on the text alone (joint at w_text), as the
    EntityBench no-retrieval row samples the base network."""
    if sampling.guidance == "none":
        return sampling
    return sampling.replace(guidance="joint", w=sampling.w_text)


def evaluate(images: np.ndarray, examples, evaluators: dict[str, Callable]) -> dict[str, float]:
    """Every evaluator's metrics on one row's images (names must not collide)."""
    metrics: dict[str, float] = {}
    for name, evaluate_one in evaluators.items():
        for key, value in check_metrics(name, evaluate_one(images, examples)).items():
            if key in metrics:
                raise ValueError(
                    f"evaluator {name!r}: metric {key!r} is already another "
                    "evaluator's column; rename it"
                )
            metrics[key] = value
    return metrics


def run_bench(
    kb,
    pipeline,
    rows: np.ndarray,
    neighbor_rows: np.ndarray,
    *,
    ks: Sequence[int],
    sampling,
    evaluators: dict[str, Callable],
    seed: int = 0,
    batch_size: int = 32,
    progress: Callable[[str], Callable] | None = None,
) -> dict:
    """Measure the held-out ``rows`` [N] with their neighbours [N, max(ks)]: the signal per K
    and the generated rows. ``progress(label)`` returns a (done, total) callback."""
    started = time.perf_counter()
    size = pipeline.image_size
    examples = held_out_examples(kb, rows, neighbor_rows, size)
    prompts = [e.text for e in examples]
    signal = [
        epsilon_signal(pipeline, kb, rows, neighbor_rows[:, :k], seed=seed, batch_size=batch_size)
        for k in ks
    ]
    copy = np.stack([e.references[0] for e in examples])
    results = [CollectionRow(COPY_LABEL, None, copy, evaluate(copy, examples, evaluators))]
    for k in (0, *ks):
        label = "no retrieval (K=0)" if k == 0 else f"Re-Imagen K={k}"
        chosen = no_retrieval_sampling(sampling) if k == 0 else sampling
        report = progress(label) if progress else None
        images, seconds, nfe = generate_row(
            pipeline,
            prompts,
            neighbor_rows,
            k,
            chosen,
            seed=seed,
            batch_size=batch_size,
            progress=report,
        )
        results.append(
            CollectionRow(label, k, images, evaluate(images, examples, evaluators), seconds, nfe)
        )
    return {
        "examples": examples,
        "neighbor_rows": neighbor_rows,  # [N, K_max]
        "signal": signal,
        "rows": results,
        "seconds": time.perf_counter() - started,
    }


# ---- report ------------------------------------------------------------------------------------


def markdown(result: dict, title: str) -> str:
    rows, signal = result["rows"], result["signal"]
    columns = list(dict.fromkeys(key for row in rows for key in row.metrics))
    lines = [f"# {title}", ""]
    lines += [
        "## Neighbour signal (ε-MSE, paper Eq. 2, lower is better)",
        "",
        "| K | right | shuffled | none | right vs shuffled |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {s['k']} | {s['right']:.4f} | {s['shuffled']:.4f} | {s['none']:.4f} | "
        f"{100 * s['gain']:+.1f}% |"
        for s in signal
    ]
    lines += [
        "",
        "## Generated vs held-out target",
        "",
        "| row | " + " | ".join(columns) + " | NFE / image | generation s |",
        "|---" * (len(columns) + 3) + "|",
    ]
    for row in rows:
        cells = [_cell(row.metrics.get(c)) for c in columns]
        lines.append(f"| {row.label} | {' | '.join(cells)} | {row.nfe} | {row.seconds:.1f} |")
    lines += [
        "",
        (
            "Images: targets.png (the held-out records), then grid_XX.png per row, in "
            "the table's order (row 0: the top-1 references)."
        ),
    ]
    return "\n".join(lines) + "\n"


def _cell(value) -> str:
    return "–" if value is None else f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"


def run_header(
    kb,
    *,
    train: np.ndarray,
    held: np.ndarray,
    weights: Path,
    seed: int,
    retriever: str,
    sampling,
    evaluators: Sequence[str],
) -> dict:
    """What ran: the command, the collection (path, fingerprint, split sizes), the weights
    file, seed, retriever, sampling and evaluator names (results.json's head)."""
    from reimagen.bench.session import command_line

    return {
        "command": command_line(),
        "kb": {
            "path": str(Path(kb.folder).resolve()),
            "fingerprint": kb.fingerprint,
            "records": len(kb),
            "training": len(train),
            "held_out": len(held),
        },
        "weights": str(weights),
        "seed": seed,
        "retriever": retriever,
        "sampling": sampling.to_dict(),
        "evaluators": list(evaluators),
    }


def to_json(result: dict, header: dict) -> dict:
    return {
        "format": FORMAT,
        "format_version": 1,
        **header,
        "examples": [
            {"key": e.key, "text": e.text, "references": list(e.reference_keys)}
            for e in result["examples"]
        ],
        "signal": result["signal"],
        "rows": [row.to_dict() for row in result["rows"]],
        "wall_seconds": round(result["seconds"], 1),
    }


def report_page(kb, result: dict, text: str) -> str:
    """report.html (reimagen.bench.report): the tables ``text``, then per row each held-out
    record's image beside the references it was conditioned on (the copy row: the top-1 it
    copies; K=0: none) and the held-out target."""
    from reimagen.bench.report import CardRow, render

    neighbor_rows = result["neighbor_rows"]  # [N, K_max]
    rows = [
        CardRow(row.label, row.images, neighbor_rows[:, : 1 if row.k is None else row.k])
        for row in result["rows"]
    ]
    examples = result["examples"]
    return render(
        text,
        [("Images: each row's outputs beside their references and the held-out target", rows)],
        [e.text for e in examples],
        kb=kb,
        targets=np.stack([e.target for e in examples]),
    )


def write_outputs(
    out: Path, blob: dict, text: str, result: dict, report: str | None = None
) -> None:
    """results.json, results.md, targets.png, grid_XX.png and ``report`` as report.html,
    written as one set (:func:`reimagen.bench.result_files.write_file_set`: a crash leaves the
    previous set); an earlier run's extra grids, and its report.html when this run writes
    none, are removed."""
    from reimagen.bench.result_files import (
        grid_writers,
        json_text,
        save_grid,
        text_file,
        write_file_set,
    )

    targets = np.stack([e.target for e in result["examples"]])
    writers = {
        "targets.png": lambda path: save_grid(path, targets),
        **grid_writers([row.images for row in result["rows"]]),
        "results.json": text_file(json_text(blob)),
        "results.md": text_file(text),
    }
    if report is not None:
        writers["report.html"] = text_file(report)
    write_file_set(out, writers, replaces=("grid_*.png", "report.html"))
