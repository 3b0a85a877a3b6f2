"""`make bench-peers`: diffusers and imagen-pytorch timed beside reimagen in one run (issue 16).

    make bench-peers                                   # writes docs/results/peers.{md,json}
    .venv/bin/python benchmarks/peers/run_peers.py --baseline HEAD~1   # + the package at a commit
    REIMAGEN_PEERS_VENV=/elsewhere/venv make bench-peers

The peers need a venv of their own (their dependencies must never touch the project's .venv):
``$REIMAGEN_PEERS_VENV``, by default ``.cache/peers/venv`` (git-ignored). When it is missing this
prints one line saying how to make it (``bash benchmarks/peers/setup_venv.sh``) and exits 0.
Otherwise it re-runs itself in that venv with the checkout on PYTHONPATH and drives the shared
harness (``peer_bench.py``, a copy of ../shared/tools/peer_bench.py): every entry is built first
and then measured metric by metric, round-robin, so that bursts of load hit every entry alike.

Printed and written (atomically): the issue's table with ours / faster-peer ratios (forward
GFLOP per image, training at batch 64 fp32 and bf16, one guided step at batch 2), the matmul
roofline measured at the start and the end of the same run (``benchmarks/roofline.py``:
512²..2048² and reimagen's own GEMM shapes, fp32 and bf16, best of N), and the harness's full
table. Each time is taken by CPU time (process time per thread) and by wall time: on a machine
whose cores other processes hold, the CPU time is the stable one. ``--baseline REV`` adds the
reimagen package as it was at REV (a renamed copy under .cache/peers/), so before/after ratios
come from the same run.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DEFAULT_VENV = os.environ.get("REIMAGEN_PEERS_VENV", str(ROOT / ".cache" / "peers" / "venv"))
PEERS = ("diffusers", "imagen")
OURS = "reimagen"


# ---- the venv ----------------------------------------------------------------------------------


def in_venv(venv: str) -> bool:
    return Path(sys.prefix).resolve() == Path(venv).resolve()


def reexec_in_venv(venv: str, argv: list[str], threads: int) -> int:
    """exec this script with the venv's python and the checkout first on PYTHONPATH."""
    python = Path(venv) / "bin" / "python"
    if not python.exists():
        print(
            f"bench-peers: no peers venv at {venv}; make it with "
            f"`bash benchmarks/peers/setup_venv.sh {venv}` (a few minutes, from PyPI), then rerun"
        )
        return 0
    path = os.environ.get("PYTHONPATH")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), path])))
    env.setdefault("OMP_NUM_THREADS", str(threads))
    os.execve(python, [str(python), str(Path(__file__).resolve()), *argv], env)
    return 1  # not reached


# ---- an earlier commit's package, renamed ------------------------------------------------------


def baseline_package(rev: str) -> tuple[str, str]:
    """Extract reimagen/ at ``rev`` into .cache/peers/baseline/ as ``reimagen_<sha>`` (its
    imports rewritten) and put it on sys.path. Returns (package name, short sha)."""
    sha = subprocess.run(
        ["git", "rev-parse", "--short", rev], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.strip()
    name = f"reimagen_{sha}"
    base = ROOT / ".cache" / "peers" / "baseline"
    target = base / name
    if not target.exists():
        staging = base / f".{name}.{os.getpid()}"
        staging.mkdir(parents=True)
        archive = subprocess.run(
            ["git", "archive", sha, "reimagen"], cwd=ROOT, check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(staging)], input=archive, check=True)
        pattern = re.compile(r"\breimagen(?=\.\w|\s+import\b|\s*$)", re.MULTILINE)
        for path in (staging / "reimagen").rglob("*.py"):
            path.write_text(pattern.sub(name, path.read_text()))
        os.replace(staging / "reimagen", target)
        staging.rmdir()
    sys.path.insert(0, str(base))
    return name, sha


# ---- the issue's table -------------------------------------------------------------------------


def stat(r: dict, group: str, precision: str, clock: str, which: str) -> float:
    """Seconds of one measurement: ``which`` is min or median, ``clock`` cpu or wall."""
    s = r[group][precision]
    return (s["cpu"] if clock == "cpu" else s)[which]


def metrics(batch: int) -> tuple:
    """(key, label, value(result, clock), higher is better, format) of the issue's rows."""

    def train(precision, which):
        return lambda r, c: stat(r, "train", precision, c, which)

    def images_per_s(precision):
        return lambda r, c: batch / stat(r, "train", precision, c, "median")

    def step_ms(precision):
        return lambda r, c: 1e3 * stat(r, "fwd_b2", precision, c, "median")

    return (
        (
            "gflop",
            "forward GFLOP per image",
            lambda r, c: r["fwd_flops_per_image"] / 1e9,
            False,
            "{:.2f}",
        ),
        (
            "train_fp32_min",
            f"train b{batch} fp32 s/step, min of N",
            train("fp32", "min"),
            False,
            "{:.2f}",
        ),
        (
            "train_fp32_ips",
            f"train b{batch} fp32 img/s, median",
            images_per_s("fp32"),
            True,
            "{:.1f}",
        ),
        (
            "train_bf16_min",
            f"train b{batch} bf16 s/step, min of N",
            train("bf16", "min"),
            False,
            "{:.2f}",
        ),
        (
            "train_bf16_ips",
            f"train b{batch} bf16 img/s, median",
            images_per_s("bf16"),
            True,
            "{:.1f}",
        ),
        ("step_fp32", "one guided step (b2) fp32 ms, median", step_ms("fp32"), False, "{:.1f}"),
        ("step_bf16", "one guided step (b2) bf16 ms, median", step_ms("bf16"), False, "{:.1f}"),
    )


def pct_metrics(peak: dict) -> tuple:
    """% of the matmul peak (best of N) of the fastest call (min of N), per clock."""

    def pct(group, precision, flops_key):
        def value(r, clock):
            rate = r[flops_key] / stat(r, group, precision, clock, "min") / 1e9
            return 100 * rate / peak[clock][precision]

        return value

    return tuple(
        (f"pct_{group}_{p}", f"{label} {p}: % of {p} peak", pct(group, p, flops), True, "{:.0f}%")
        for group, label, flops in (
            ("train", "train", "train_flops_per_step"),
            ("fwd_b2", "forward b2", "fwd_flops_batch2"),
        )
        for p in ("fp32", "bf16")
    )


def ratio_to_best(values: dict, ours: str, higher: bool) -> float:
    """ours / the better peer's value (for times: < 1 is faster than the faster peer)."""
    peers = [values[p] for p in PEERS if p in values]
    best = max(peers) if higher else min(peers)
    return values[ours] / best


def issue_table(results: dict, rl, baseline: str | None, batch: int) -> tuple[str, dict]:
    """The markdown table (cells 'CPU time (wall time)') and its numbers, by metric key."""
    names = [n for n in (*PEERS, OURS, baseline) if n and n in results]
    peak = {clock: rl.peak(clock) for clock in ("cpu", "wall")}
    head = ["metric: CPU time (wall time)", *names, "ours / faster peer"]
    if baseline:
        head.append(f"ours / {baseline}")
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    numbers = {}
    for key, label, fn, higher, fmt in (*metrics(batch), *pct_metrics(peak)):
        row, entry = [label], {"label": label}
        for clock in ("cpu", "wall"):
            entry[clock] = {n: fn(results[n], clock) for n in names}
        for n in names:
            cpu, wall = entry["cpu"][n], entry["wall"][n]
            row.append(
                fmt.format(cpu) if cpu == wall else f"{fmt.format(cpu)} ({fmt.format(wall)})"
            )
        ratios = {c: ratio_to_best(entry[c], OURS, higher) for c in ("cpu", "wall")}
        entry["ours_over_faster_peer"] = ratios
        row.append(_ratio_cell(ratios))
        if baseline:
            entry["ours_over_baseline"] = {c: entry[c][OURS] / entry[c][baseline] for c in ratios}
            row.append(_ratio_cell(entry["ours_over_baseline"]))
        numbers[key] = entry
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines), numbers


def _ratio_cell(ratios: dict) -> str:
    if abs(ratios["cpu"] - ratios["wall"]) < 5e-3:
        return f"{ratios['cpu']:.2f}×"
    return f"{ratios['cpu']:.2f}× ({ratios['wall']:.2f}×)"


def goals(numbers: dict, name: str = OURS) -> str:
    """Issue 16's goals for entry ``name``, from the CPU-time numbers of this run."""

    def faster_peer(key, higher):
        values = numbers[key]["cpu"]
        return ratio_to_best({**values, OURS: values[name]}, OURS, higher)

    fp32_min = 1 / faster_peer("train_fp32_min", False)  # speed: the faster peer's time / ours
    fp32_med = faster_peer("train_fp32_ips", True)
    bf16_min = 1 / faster_peer("train_bf16_min", False)
    bf16_med = faster_peer("train_bf16_ips", True)
    g32, g16 = faster_peer("step_fp32", False), faster_peer("step_bf16", False)
    train_pct = numbers["pct_train_fp32"]["cpu"][name]

    def mark(ok):
        return "met" if ok else "not met"

    train_ok = min(fp32_min, fp32_med, bf16_min, bf16_med) >= 1.3
    return "\n".join(
        [
            f"Goals for `{name}` (CPU-time ratios of this run):",
            f"- training img/s at K=0 ≥ 1.3× the faster peer: fp32 {fp32_min:.2f}× (min of N), "
            + f"{fp32_med:.2f}× (median); bf16 {bf16_min:.2f}× (min), {bf16_med:.2f}× (median) "
            + f"— {mark(train_ok)}",
            f"- one guided step (b2) ≤ 0.75× the faster peer's time: fp32 {g32:.2f}×, "
            + f"bf16 {g16:.2f}× — {mark(max(g32, g16) <= 0.75)}",
            f"- the training step runs at {train_pct:.0f}% of the fp32 peak (the forward at batch "
            + "32: benchmarks/bench_torch.py)",
        ]
    )


# ---- one guided step with reimagen compiled ----------------------------------------------------


def compiled_steps(pb, entries: list, torch) -> tuple[str, dict]:
    """One guided step (b2) of every entry again, round-robin beside reimagen's forward
    compiled by ``compile_unet`` (on a copy: the entries' own models stay eager). The compile
    happens in the warm-up calls. Returns the markdown table and {precision: {name: s}}."""
    import copy

    from reimagen.backends.torch.compiled import compile_unet

    ours = next(e for e in entries if e.name == OURS)
    model = compile_unet(copy.deepcopy(ours.model).eval())
    name = f"{OURS}+compile"
    numbers, lines = {}, []
    for precision in ("fp32", "bf16"):

        def step(precision=precision):
            with torch.no_grad(), pb.autocast_ctx(precision):
                return ours.peer.sample_step(model, ours.x2, ours.t2, ours.e2, ours.m2)

        tasks = [((e.name, precision), e.fwd_fn(precision)) for e in entries]
        tasks.append(((name, precision), step))
        print(f"-- guided step b{pb.SAMPLE_BATCH} {precision}, with {name}")
        out = pb.interleaved(tasks, pb.REPS["fwd_warmup"], pb.REPS["fwd"], pb.REPS["fwd_block"])
        numbers[precision] = {k: s["cpu"]["median"] for (k, _), s in out.items()}
    names = [e.name for e in entries] + [name]
    lines.append(
        "| one guided step (b2), ms median by CPU time | "
        + " | ".join(names)
        + f" | {name} / faster peer | {name} / {OURS} |"
    )
    lines.append("|---" * (len(names) + 3) + "|")
    for precision, times in numbers.items():
        best_peer = min(times[p] for p in PEERS if p in times)
        cells = [f"{1e3 * times[n]:.1f}" for n in names]
        lines.append(
            f"| {precision} | "
            + " | ".join(cells)
            + f" | {times[name] / best_peer:.2f}× | {times[name] / times[OURS]:.2f}× |"
        )
    return "\n".join(lines), numbers


# ---- the run -----------------------------------------------------------------------------------


def gemm_shapes_of_ours(pb, roofline, torch) -> tuple[list, dict]:
    """The main GEMM shapes of reimagen's forward at batch 64 (training) and 2 (guided step),
    and the convolutions among them."""
    peer = pb.REGISTRY[OURS]()
    model = peer.make_model().eval()
    shapes, convs = [], {}
    for b in (pb.TRAIN_BATCH, pb.SAMPLE_BATCH):
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(b, pb.CH, pb.IMG, pb.IMG, generator=gen)  # [B, 3, 32, 32]
        emb, mask = pb.make_text(b, gen)
        t = torch.rand(b, generator=gen)
        found = roofline.gemm_shapes(functools.partial(peer.sample_step, model, x, t, emb, mask))
        shapes += roofline.top_shapes(found, limit=6)
        convs.update(found.convs)
    return shapes, convs


def intro(env: dict, threads: int, reps: dict, wall: float, torch_version: str, batch: int) -> str:
    return (
        f"`{env['command']}` ({env['time']}; torch {torch_version}, {threads} thread(s), "
        f"{env['cpu']}, {env['nproc']} cores; load average {env['loadavg_start'][0]:.1f} at the "
        f"start, {env['loadavg_end'][0]:.1f} at the end; {wall / 60:.0f} min). Every entry was "
        "built first, then measured metric by metric, round-robin. Each cell is by CPU time "
        "(process time per thread), then by wall time in parentheses; with other processes "
        f"holding the cores, read the CPU times and the ratios. Train: batch {batch}, AdamW, "
        f"{reps['train']} timed steps after {reps['train_warmup']} warm-up per entry and "
        "precision. One guided step: one forward of batch 2 (cond + uncond), "
        f"{reps['fwd']}×{reps['fwd_block']} calls. % of peak: FLOPs / the fastest call, over "
        "the best rate of this run, torch.mm or our convolutions alone."
    )


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def run(args) -> int:
    sys.path[:0] = [str(HERE), str(HERE.parent)]
    import peer_bench as pb
    import peer_reimagen  # registers "reimagen"
    import roofline
    import torch

    torch.set_num_threads(args.threads)
    pb.REPS.update(train_warmup=1, train=args.train_reps, fwd=10, fwd_block=3)
    if args.quick:  # a smoke test of the plumbing: small training batches, few repetitions
        pb.TRAIN_BATCH = 8
        pb.REPS.update(
            train_warmup=1, train=2, fwd_warmup=1, fwd=3, fwd_block=1, sample_warmup=0, sample=1
        )
    baseline = None
    if args.baseline:
        package, sha = baseline_package(args.baseline)
        baseline = f"reimagen@{sha}"
        pb.register(baseline)(lambda: peer_reimagen.entry(package, label=sha))
    names = [*PEERS, OURS, *([baseline] if baseline else [])]
    env = pb.environment()
    argv = " ".join(sys.argv[1:])
    env["command"] = f"python3 benchmarks/peers/run_peers.py {argv}" if argv else "make bench-peers"
    started = time.perf_counter()
    print(
        f"# bench-peers: torch {torch.__version__}, {args.threads} thread(s), {env['cpu']}, "
        f"load {env['loadavg_start']}"
    )
    shapes, convs = gemm_shapes_of_ours(pb, roofline, torch)
    print("== matmul roofline (start)")
    rl = roofline.roofline(shapes, convs=convs, log=print)
    entries, results = [], {}
    for name in names:
        print(f"== set up {name}")
        peer = pb.REGISTRY[name]()
        if not args.samplers:
            peer.samplers = {}  # each library's own sampling loop: not in the issue's table
        entries.append(pb._Entry(name, peer))
    print(f"== measure {', '.join(names)} (interleaved)")
    results = pb.run_entries(entries)
    for r in results.values():
        r["train_batch"] = pb.TRAIN_BATCH
    compiled = ("", {})
    if args.compile:
        print("== one guided step with reimagen compiled (the compile runs in the warm-up)")
        try:
            compiled = compiled_steps(pb, entries, torch)
        except Exception as err:  # noqa: BLE001 - keep the run's other numbers
            compiled = (f"(failed: {type(err).__name__}: {err})", {})
    print("== matmul roofline (end)")
    rl = rl.merged(roofline.roofline(shapes, convs=convs, log=print))
    for r in results.values():
        pb.apply_roofline(r, rl.peak("wall"))  # the harness's own '% of matmul' cells
    table, numbers = issue_table(results, rl, baseline, pb.TRAIN_BATCH)
    env["loadavg_end"] = os.getloadavg()
    wall = time.perf_counter() - started
    text = "\n\n".join(
        [
            "# reimagen beside its peers (make bench-peers)",
            intro(env, args.threads, pb.REPS, wall, torch.__version__, pb.TRAIN_BATCH)
            + (" **--quick: a smoke test, not for reporting.**" if args.quick else ""),
            table,
            *(goals(numbers, n) for n in names if n.startswith(OURS) and n != baseline),
            *(
                ["## With compile_unet (the option; measured again, same run)\n\n" + compiled[0]]
                if args.compile
                else []
            ),
            "## Matmul roofline of this run (start and end)\n\n" + rl.table(),
            "## The harness's full table (wall time; % of the best wall-time matmul)\n\n"
            + pb.markdown_table({"peers": results}),
        ]
    )
    print("\n" + text)
    out = Path(args.out)
    payload = {
        "environment": env,
        "reps": dict(pb.REPS),
        "wall_s": wall,
        "roofline": rl.to_dict(),
        "peers": results,
        "table": numbers,
        "compiled_guided_step_s": compiled[1],
    }
    write_atomic(out.with_suffix(".json"), json.dumps(payload, indent=1, default=str) + "\n")
    write_atomic(out.with_suffix(".md"), text + "\n")
    print(f"\nwrote {out.with_suffix('.md')} and {out.with_suffix('.json')}")
    failed = [n for n, r in results.items() if r.get("errors")]
    return 1 if failed else 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--venv", default=DEFAULT_VENV, help="the peers' venv (setup_venv.sh)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--train-reps", type=int, default=5, help="timed training steps per entry")
    ap.add_argument("--baseline", default=None, help="also time reimagen at this git revision")
    ap.add_argument(
        "--out", default=str(ROOT / "docs" / "results" / "peers"), help="writes OUT.md and OUT.json"
    )
    ap.add_argument(
        "--compile",
        action="store_true",
        help="also time one guided step with reimagen's forward under compile_unet",
    )
    ap.add_argument("--samplers", action="store_true", help="also time each library's sampler")
    ap.add_argument("--quick", action="store_true", help="batch 8, few repetitions (smoke test)")
    args = ap.parse_args(argv)
    if not in_venv(args.venv):
        return reexec_in_venv(args.venv, argv, args.threads)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
