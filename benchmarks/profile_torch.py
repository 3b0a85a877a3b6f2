"""Where the torch training step and sampling step spend their time (issue 16, item 1).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/profile_torch.py --out docs/results/profile.md

For the ``small`` and ``cpu-base`` presets at K=0 and K=2: one training step (batch 64, AdamW,
EMA, fp32 and bf16 autocast) and one guided sampling step (batch 2 × 2 variants, cached
neighbours), each under ``torch.profiler`` (self CPU time per op) and ``FlopCounterMode``
(FLOPs per op). Ops are put in buckets: convolutions, linear layers (mm/addmm/bmm), fused
attention (the CPU SDPA kernel), norms, dtype casts (``_to_copy``: autocast's fp32↔bf16),
layout copies (contiguous/clone/cat), elementwise, optimizer + EMA + clipping, autograd and
dispatcher bookkeeping, and the rest of the step's wall time that no op accounts for (Python).
Convolution, linear and attention time is also turned into GFLOP/s and compared with the
peak measured in the same run (``benchmarks/roofline.py``: torch.mm and the convolutions alone).

Runs at 1 thread by default (``--threads``); a loaded machine inflates every bucket alike, so
read the shares, not the milliseconds.
"""

from __future__ import annotations

import argparse
import collections
import functools
import os
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_torch as bt  # benchmarks/bench_torch.py: random batches, trainers, denoisers
import roofline

from reimagen.core.unet_config import PRESETS

BUCKETS = {
    "conv": (
        "aten::mkldnn_convolution",
        "aten::convolution_backward",
        "aten::_convolution",
        "aten::convolution",
        "aten::conv2d",
        "aten::_slow_conv2d_forward",
    ),
    "linear": (
        "aten::mm",
        "aten::addmm",
        "aten::bmm",
        "aten::baddbmm",
        "aten::matmul",
        "aten::linear",
    ),
    "attention": (
        "aten::_scaled_dot_product_flash_attention_for_cpu",
        "aten::_scaled_dot_product_flash_attention_for_cpu_backward",
        "aten::scaled_dot_product_attention",
        "aten::_softmax",
        "aten::_softmax_backward_data",
    ),
    "norm": (
        "aten::native_layer_norm",
        "aten::native_layer_norm_backward",
        "aten::native_group_norm",
        "aten::native_group_norm_backward",
        "aten::layer_norm",
        "aten::group_norm",
    ),
    "cast": ("aten::_to_copy", "aten::to"),
    "layout": (
        "aten::contiguous",
        "aten::clone",
        "aten::cat",
        "aten::as_strided_",
        "aten::_unsafe_view",
        "aten::repeat",
    ),
    "elementwise": (
        "aten::silu",
        "aten::silu_backward",
        "aten::add",
        "aten::add_",
        "aten::mul",
        "aten::mul_",
        "aten::sub",
        "aten::div",
        "aten::where",
        "aten::sum",
        "aten::fill_",
        "aten::zero_",
        "aten::mean",
        "aten::pow",
        "aten::sin",
        "aten::cos",
        "aten::floor",
        "aten::mse_loss",
        "aten::upsample_nearest2d",
        "aten::upsample_nearest2d_backward",
        "aten::addcmul",
        "aten::masked_fill",
    ),
    "optimizer": (
        "aten::_fused_adamw_",
        "aten::lerp_",
        "aten::_foreach_lerp_",
        "aten::linalg_vector_norm",
        "aten::_foreach_norm",
        "aten::_foreach_mul_",
        "aten::stack",
        "aten::clamp",
        "aten::item",
        "aten::_local_scalar_dense",
    ),
}
GEMM_BUCKETS = ("conv", "linear", "attention")
ORDER = (*BUCKETS, "autograd+dispatch", "python (no op)")
FLOP_BUCKET = {  # FlopCounterMode op name -> bucket
    "convolution": "conv",
    "convolution_backward": "conv",
    "mm": "linear",
    "addmm": "linear",
    "bmm": "linear",
    "baddbmm": "linear",
    "_scaled_dot_product_flash_attention_for_cpu": "attention",
    "_scaled_dot_product_flash_attention_for_cpu_backward": "attention",
}


def bucket_of(event) -> str:
    """The bucket of one profiler event by its name; a copy_ by its parent's (a cast under
    _to_copy, a layout change under clone/contiguous/cat)."""
    name = event.name
    if name == "aten::copy_" and event.cpu_parent is not None:
        name = event.cpu_parent.name
    for bucket, names in BUCKETS.items():
        if name in names:
            return bucket
    parent = event.cpu_parent
    while parent is not None:  # ops inside the optimizer step
        if parent.name.startswith("Optimizer.step"):
            return "optimizer"
        parent = parent.cpu_parent
    return "autograd+dispatch"  # views, allocation, autograd nodes, AccumulateGrad


def flops_by_bucket(fn) -> dict[str, int]:
    with torch.utils.flop_counter.FlopCounterMode(
        display=False, custom_mapping=roofline._cpu_sdpa_mapping()
    ) as counter:
        fn()
    out = collections.Counter()
    for op, flops in counter.get_flop_counts()["Global"].items():
        out[FLOP_BUCKET.get(str(op).split(".")[-1], "other")] += flops
    return dict(out)


def profile_case(fn, calls: int, untraced_calls: int) -> dict:
    """FLOPs of one call of fn, the best CPU time of ``untraced_calls`` untraced calls (the
    first one after a warm-up), and the profile of ``calls`` calls."""
    untraced = [roofline.timed(fn) for _ in range(untraced_calls)]
    flops = flops_by_bucket(fn)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        traced = time.perf_counter() - start
    seconds = collections.Counter()
    for event in prof.events():
        seconds[bucket_of(event)] += event.self_cpu_time_total / 1e6
    seconds["python (no op)"] = max(traced - sum(seconds.values()), 0.0)
    ops = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    top = [(e.key, e.self_cpu_time_total / 1e6 / calls, e.count // calls) for e in ops[:12]]
    return {
        "step_s": min(t["cpu"] for t in untraced),  # CPU time, untraced, best of N
        "traced_s": traced / calls,
        "seconds": {k: v / calls for k, v in seconds.items()},
        "flops": flops,
        "top": top,
    }


def cases(presets, ks, modes):
    """(label, make) pairs; make() builds the setup and returns (fn, traced calls, untraced
    calls)."""
    for preset in presets:
        config = PRESETS[preset]
        for k in ks:
            for mode in modes:
                kind, precision = mode.split("-")
                label = f"{preset} K={k} {kind} {precision}"
                if kind == "train":
                    yield label, functools.partial(_train, k, precision, config)
                else:
                    yield label, functools.partial(_sample, k, precision, config)


def _train(k, precision, config):
    trainer, batch = bt.make_trainer(k, precision == "bf16", 64, config)  # + 1 warm-up step
    return functools.partial(trainer.train_step, batch), 1, 2


def _sample(k, precision, config):
    dtype = "bfloat16" if precision == "bf16" else "float32"
    _, denoiser, x, _ = bt.sampling_setup(k, 2, dtype, config)
    step = functools.partial(bt.step_cached, denoiser, x)
    step()  # warm-up
    return step, 10, 5


def intro(started: str, threads: int, load, peak: dict) -> str:
    return (
        "# Profile of the torch training and sampling steps\n\n"
        "`OMP_NUM_THREADS=1 .venv/bin/python benchmarks/profile_torch.py "
        f"--out docs/results/profile.md` ({started}, torch {torch.__version__}, {threads} "
        f"thread(s), load average {load[0]:.1f} at the start: other processes held the 2 cores, "
        "so wall times are inflated; read the shares and the CPU times).\n\n"
        "Train: batch 64, AdamW + EMA + clipping. Sample: one guided step, batch 2 × 2 variants, "
        "neighbours cached. 'step CPU ms' is the untraced step's CPU time (best of 2); the shares "
        "split the traced step's time by bucket (self time per op; 'python (no op)' is time no op "
        "accounts for, tracing overhead included). GEMM GFLOP/s = FLOPs of the bucket / (its "
        "share × step CPU time), against the peak measured by CPU time in the same run: the best "
        "of N of torch.mm on 512²..2048² and on the small forward's GEMM shapes, and of those "
        "convolutions run alone (F.conv2d): "
        f"fp32 {peak['fp32']:.0f}, bf16 {peak['bf16']:.0f} GFLOP/s."
    )


def bucket_cpu_s(r: dict, bucket: str) -> float:
    """CPU seconds of a bucket: its share of the traced step × the untraced step CPU time."""
    return r["seconds"].get(bucket, 0.0) / sum(r["seconds"].values()) * r["step_s"]


def summary_table(results: dict, peak: dict) -> str:
    head = "| case | step CPU ms | GFLOP | " + " | ".join(ORDER) + " | GEMM GFLOP/s (% of peak) |"
    lines = [head, "|---" * (4 + len(ORDER)) + "|"]
    for label, r in results.items():
        total = sum(r["seconds"].values())
        shares = [f"{100 * r['seconds'].get(b, 0.0) / total:.0f}%" for b in ORDER]
        precision = label.split()[-1]
        gemm_s = sum(bucket_cpu_s(r, b) for b in GEMM_BUCKETS)
        gemm_flops = sum(r["flops"].get(b, 0) for b in GEMM_BUCKETS)
        rate = gemm_flops / max(gemm_s, 1e-9) / 1e9
        lines.append(
            f"| {label} | {1e3 * r['step_s']:.0f} | {sum(r['flops'].values()) / 1e9:.1f} | "
            + " | ".join(shares)
            + f" | {rate:.0f} ({100 * rate / peak[precision]:.0f}%) |"
        )
    return "\n".join(lines)


def gemm_table(results: dict, peak: dict) -> str:
    lines = [
        "| case | " + " | ".join(f"{b} GFLOP/s (% of peak)" for b in GEMM_BUCKETS) + " |",
        "|---" * (1 + len(GEMM_BUCKETS)) + "|",
    ]
    for label, r in results.items():
        precision = label.split()[-1]
        cells = []
        for b in GEMM_BUCKETS:
            s, f = bucket_cpu_s(r, b), r["flops"].get(b, 0)
            cells.append(
                f"{f / s / 1e9:.0f} ({100 * f / s / 1e9 / peak[precision]:.0f}%)" if s else "-"
            )
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def top_ops(results: dict) -> str:
    out = []
    for label, r in results.items():
        total = r["traced_s"]
        out.append(f"**{label}** (traced {1e3 * total:.0f} ms per call)\n")
        out.append("| op (self CPU) | ms per call | share | calls |")
        out.append("|---|---|---|---|")
        for name, seconds, count in r["top"]:
            out.append(
                f"| `{name}` | {1e3 * seconds:.1f} | {100 * seconds / total:.1f}% | {count} |"
            )
        out.append("")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", default="small,cpu-base")
    ap.add_argument("--ks", default="0,2")
    ap.add_argument("--modes", default="train-fp32,train-bf16,sample-fp32,sample-bf16")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="markdown file to write (atomically)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.strftime("%Y-%m-%d %H:%M")
    load = os.getloadavg()
    print("matmul roofline:")
    gemms = bt.forward_gemms()  # the small forward's, batch 32
    rl = roofline.roofline(roofline.top_shapes(gemms), convs=gemms.convs, log=print)
    results = {}
    for label, make in cases(
        args.presets.split(","), [int(k) for k in args.ks.split(",")], args.modes.split(",")
    ):
        results[label] = r = profile_case(*make())
        print(
            f"{label}: {1e3 * r['step_s']:.0f} ms untraced, "
            + ", ".join(f"{b} {1e3 * r['seconds'].get(b, 0):.0f}" for b in ORDER),
            flush=True,
        )
    peak = rl.peak("cpu")
    text = "\n\n".join(
        [
            intro(started, args.threads, load, peak),
            summary_table(results, peak),
            "## GEMM-like work: achieved GFLOP/s in its own kernels\n\n"
            + gemm_table(results, peak),
            "## Top ops by self time (traced)\n\n" + top_ops(results),
        ]
    )
    print(text)
    if args.out:
        out = Path(args.out)
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        tmp.write_text(text + "\n")
        os.replace(tmp, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
