"""A matmul roofline measured in the same run, and FLOP counts that include the CPU SDPA kernel.

The machines differ from round to round (an Intel box with AMX, an AMD EPYC without) and share
their cores with other work, so no peak is hard-coded: every benchmark that quotes "% of peak"
first times ``torch.mm`` here, in the same process, at the thread count it runs with.

    gemms = gemm_shapes(forward)          # the network's GEMMs, convolutions as im2col GEMMs
    rl = roofline(top_shapes(gemms), convs=gemms.convs)  # torch.mm on 512²..2048² and those,
                                          # and those convolutions as F.conv2d
    rl.peak("cpu")["fp32"]                # best GFLOP/s over every shape and kernel, best of N
    rl.peak("cpu", "mm")["fp32"]          # torch.mm alone
    rl.shape_bound(gemms, "fp32")         # seconds those GEMMs alone take at their shapes' speed

Every time is taken twice: CPU time of the process (per thread) and wall time. On a machine
whose cores other processes hold, the CPU time is the stable one; both are kept.

A convolution counts as the GEMM it is equivalent to (im2col): M = N·Ho·Wo, K = Cin·kh·kw,
N = Cout, and is timed both ways: as torch.mm of that shape and as the convolution itself
(oneDNN's direct convolution ran 1.3-1.8x faster than MKL's sgemm on the AMD EPYC here, so a
torch.mm-only peak would put a conv-heavy network above 100%). ``count_flops`` teaches ``FlopCounterMode`` the CPU SDPA kernels, which torch 2.13
counts as 0 FLOPs (the same mapping as the peer harness, so our figures match its).
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch.utils import flop_counter
from torch.utils._python_dispatch import TorchDispatchMode

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
SQUARE = (512, 1024, 2048)
aten = torch.ops.aten


# ---- FLOP counting -----------------------------------------------------------------------------


def _cpu_sdpa_mapping() -> dict:
    """The registered flash-attention formulas reused for the CPU kernels (same leading
    q, k, v / grad_out, q, k, v arguments)."""
    extra = {}
    pairs = (
        ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention"),
        (
            "_scaled_dot_product_flash_attention_for_cpu_backward",
            "_scaled_dot_product_flash_attention_backward",
        ),
    )
    for cpu_name, ref_name in pairs:
        if not (hasattr(aten, cpu_name) and hasattr(aten, ref_name)):
            continue
        cpu_op, ref_op = getattr(aten, cpu_name), getattr(aten, ref_name)
        if cpu_op in flop_counter.flop_registry or ref_op not in flop_counter.flop_registry:
            continue
        formula = flop_counter.flop_registry[ref_op]  # already shape-wrapped

        def raw(*args, _f=formula, **kwargs):
            return _f(*args, **kwargs)

        raw._get_raw = True  # do not shape-wrap twice
        extra[cpu_op] = raw
    return extra


def count_flops(fn) -> int:
    """FLOPs of one call of ``fn()`` (matmul, conv and attention; elementwise ops are 0)."""
    with flop_counter.FlopCounterMode(display=False, custom_mapping=_cpu_sdpa_mapping()) as fc:
        fn()
    return int(fc.get_total_flops())


# ---- the GEMMs of a network --------------------------------------------------------------------


class Gemms(Counter):
    """{(M, K, N): calls}, and ``convs``: {(M, K, N): (input shape, weight shape, stride,
    padding)} of the convolutions among them, to time them as convolutions too."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.convs: dict = {}


class _GemmRecorder(TorchDispatchMode):
    """Records (M, K, N) of every linear / mm / addmm / convolution (as its im2col GEMM).
    Under inference mode linear and conv2d reach the mode undecomposed; otherwise as
    mm/addmm and convolution."""

    def __init__(self):
        super().__init__()
        self.shapes = Gemms()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        packet = func._overloadpacket
        if packet is aten.mm:
            self._add(args[0].shape[0], args[0].shape[1], args[1].shape[1])
        elif packet is aten.addmm:
            self._add(args[1].shape[0], args[1].shape[1], args[2].shape[1])
        elif packet is aten.linear:  # input [..., K], weight [N, K]
            self._add(args[0].numel() // args[0].shape[-1], args[1].shape[1], args[1].shape[0])
        elif packet in (aten.conv2d, aten.convolution):
            self._conv(packet, args, out)
        return out

    def _conv(self, packet, args, out) -> None:
        # conv2d(input, weight, bias, stride, padding, dilation, groups);
        # convolution(input, weight, bias, stride, padding, dilation, transposed, out_pad, groups)
        groups = args[8] if packet is aten.convolution else (args[6] if len(args) > 6 else 1)
        stride = tuple(args[3]) if len(args) > 3 else (1, 1)
        padding = tuple(args[4]) if len(args) > 4 else (0, 0)
        weight = args[1]  # [Cout, Cin, kh, kw]
        if groups != 1 or out.dim() != 4 or isinstance(padding[0], str):
            return
        m = out.shape[0] * out.shape[2] * out.shape[3]  # N·Ho·Wo
        k = weight.shape[1] * weight.shape[2] * weight.shape[3]  # Cin·kh·kw
        key = self._add(m, k, weight.shape[0])
        self.shapes.convs[key] = (tuple(args[0].shape), tuple(weight.shape), stride, padding)

    def _add(self, m: int, k: int, n: int) -> tuple[int, int, int]:
        key = (int(m), int(k), int(n))
        self.shapes[key] += 1
        return key


def gemm_shapes(fn) -> Gemms:
    """The GEMMs (linear layers, convolutions) one call of ``fn()`` runs."""
    with torch.no_grad(), _GemmRecorder() as rec:
        fn()
    return rec.shapes


def gemm_flops(shapes: Counter) -> int:
    return sum(2 * m * k * n * calls for (m, k, n), calls in shapes.items())


def top_shapes(shapes: Counter, share: float = 0.9, limit: int = 8) -> list[tuple[int, int, int]]:
    """The fewest shapes (at most ``limit``) that hold ``share`` of the GEMM FLOPs."""
    total = gemm_flops(shapes)
    ranked = sorted(shapes, key=lambda s: -2 * s[0] * s[1] * s[2] * shapes[s])
    chosen, done = [], 0
    for shape in ranked[:limit]:
        chosen.append(shape)
        done += 2 * shape[0] * shape[1] * shape[2] * shapes[shape]
        if done >= share * total:
            break
    return chosen


# ---- timing torch.mm ---------------------------------------------------------------------------

CLOCKS = ("cpu", "wall")


def clocks() -> tuple[float, float]:
    """(CPU seconds of this process / its torch threads, wall seconds). On a shared machine
    the CPU time is the honest cost: wall time also counts the time other processes held the
    cores (at 1 thread here, wall time ran 2-10x the CPU time while two trainings ran)."""
    return time.process_time() / torch.get_num_threads(), time.perf_counter()


def timed(fn) -> dict[str, float]:
    """{"cpu": s, "wall": s} of one call of fn()."""
    cpu, wall = clocks()
    fn()
    cpu2, wall2 = clocks()
    return {"cpu": cpu2 - cpu, "wall": wall2 - wall}


def time_mm(m: int, k: int, n: int, dtype: torch.dtype, reps: int = 5, min_s: float = 0.3):
    """{clock: (best, median) seconds} of torch.mm([m, k] @ [k, n]) over ≥ reps calls and
    ≥ min_s of CPU time, after a warm-up (first calls after idling run slow)."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=gen).to(dtype)
    b = torch.randn(k, n, generator=gen).to(dtype)
    for _ in range(2):
        torch.mm(a, b)
    times: list[dict[str, float]] = []
    while len(times) < reps or sum(t["cpu"] for t in times) < min_s:
        times.append(timed(lambda: torch.mm(a, b)))
    return {c: (min(t[c] for t in times), statistics.median(t[c] for t in times)) for c in CLOCKS}


def time_conv(spec, dtype: torch.dtype, reps: int = 5, min_s: float = 0.3):
    """{clock: (best, median) seconds} of F.conv2d on ``spec`` (input shape, weight shape,
    stride, padding), channels_last, forward only."""
    in_shape, w_shape, stride, padding = spec
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(in_shape, generator=gen).to(dtype).to(memory_format=torch.channels_last)
    w = torch.randn(w_shape, generator=gen).to(dtype).to(memory_format=torch.channels_last)

    def conv():
        with torch.no_grad():
            torch.nn.functional.conv2d(x, w, None, stride, padding)

    for _ in range(2):
        conv()
    times: list[dict[str, float]] = []
    while len(times) < reps or sum(t["cpu"] for t in times) < min_s:
        times.append(timed(conv))
    return {c: (min(t[c] for t in times), statistics.median(t[c] for t in times)) for c in CLOCKS}


@dataclass
class Roofline:
    """GFLOP/s of torch.mm per (precision, threads, shape), by CPU time and by wall time; best
    of N and median. The run's thread count is the one its other measurements use."""

    threads: tuple[int, ...]  # every thread count measured
    run_threads: int
    rows: list[dict] = field(default_factory=list)  # precision, threads, m, k, n, <clock>_<stat>

    def rate(self, precision: str, shape, clock: str = "cpu", stat: str = "best") -> float:
        """GFLOP/s of one GEMM shape at the run's thread count: the best row's (torch.mm or the
        convolution it comes from; start or end of the run)."""
        key = (precision, self.run_threads, tuple(shape))
        rates = [
            row[f"{clock}_{stat}"]
            for row in self.rows
            if (row["precision"], row["threads"], (row["m"], row["k"], row["n"])) == key
        ]
        if not rates:
            raise KeyError(key)
        return max(rates)

    def peak(self, clock: str = "cpu", kernel: str | None = None) -> dict[str, float]:
        """{precision: best GFLOP/s over every shape} at the run's thread count, over both
        kernels or only ``kernel`` ("mm" or "conv")."""
        out: dict[str, float] = {}
        for row in self.rows:
            if row["threads"] == self.run_threads and kernel in (None, row["kernel"]):
                p = row["precision"]
                out[p] = max(out.get(p, 0.0), row[f"{clock}_best"])
        return out

    def shape_bound(self, shapes: Counter, precision: str, clock: str = "cpu"):
        """(seconds, share of GEMM FLOPs covered): the time the GEMMs ``shapes`` take with the
        measured ones at their own best rate and the rest at the peak."""
        seconds, covered, total = 0.0, 0, gemm_flops(shapes)
        measured = {(r["m"], r["k"], r["n"]) for r in self.rows if r["precision"] == precision}
        for shape, calls in shapes.items():
            flops = 2 * shape[0] * shape[1] * shape[2] * calls
            if shape in measured:
                seconds += flops / (self.rate(precision, shape, clock) * 1e9)
                covered += flops
            else:
                seconds += flops / (self.peak(clock)[precision] * 1e9)
        return seconds, covered / max(total, 1)

    def merged(self, other: Roofline) -> Roofline:
        """Both runs' rows (e.g. the start and the end of a run): the best of each."""
        return Roofline(self.threads, self.run_threads, self.rows + other.rows)

    def table(self) -> str:
        lines = [
            "| GEMM M×K×N | kernel | precision | threads | GFLOP/s by CPU time: best, median | "
            + "by wall time: best, median |",
            "|---|---|---|---|---|---|",
        ]
        for r in self.rows:
            lines.append(
                f"| {r['m']}×{r['k']}×{r['n']} | {r['kernel']} | {r['precision']} | "
                f"{r['threads']} | "
                f"{r['cpu_best']:.0f}, {r['cpu_median']:.0f} | "
                f"{r['wall_best']:.0f}, {r['wall_median']:.0f} |"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "threads": list(self.threads),
            "run_threads": self.run_threads,
            "peak_gflop_s": {clock: self.peak(clock) for clock in CLOCKS},
            "mm_peak_gflop_s": {clock: self.peak(clock, "mm") for clock in CLOCKS},
            "conv_peak_gflop_s": {clock: self.peak(clock, "conv") for clock in CLOCKS},
            "rows": self.rows,
        }


def roofline(
    extra_shapes=(),
    precisions=("fp32", "bf16"),
    threads: tuple[int, ...] | None = None,
    reps: int = 5,
    min_s: float = 0.3,
    convs: dict | None = None,
    log=None,
) -> Roofline:
    """torch.mm timed on the square shapes 512²..2048² and ``extra_shapes`` (M, K, N), and the
    convolutions among them (``convs``, from ``gemm_shapes(...).convs``) as F.conv2d, per
    precision and thread count (default: the current one, which is the run's)."""
    current = torch.get_num_threads()
    threads = (current,) if threads is None else tuple(threads)
    shapes = [(s, s, s) for s in SQUARE] + [tuple(s) for s in extra_shapes]
    convs = convs or {}
    result = Roofline(threads, current)
    try:
        for nthreads in threads:
            torch.set_num_threads(nthreads)
            for precision in precisions:
                dtype = DTYPES[precision]
                for m, k, n in dict.fromkeys(shapes):  # in order, once each
                    runs = [("mm", time_mm(m, k, n, dtype, reps, min_s))]
                    if (m, k, n) in convs:
                        runs.append(("conv", time_conv(convs[m, k, n], dtype, reps, min_s)))
                    for kernel, times in runs:
                        row = _row(kernel, precision, nthreads, (m, k, n), times)
                        result.rows.append(row)
                        if log:
                            log(
                                f"  {kernel} {m}x{k}x{n} {precision} {nthreads}t GFLOP/s: CPU "
                                f"time {row['cpu_best']:.0f} best {row['cpu_median']:.0f} "
                                f"median, wall {row['wall_best']:.0f} best "
                                f"{row['wall_median']:.0f} median"
                            )
    finally:
        torch.set_num_threads(current)
    return result


def _row(kernel: str, precision: str, threads: int, shape, times: dict) -> dict:
    m, k, n = shape
    gflop = 2 * m * k * n / 1e9
    row = {"kernel": kernel, "precision": precision, "threads": threads, "m": m, "k": k, "n": n}
    for clock, (best, median) in times.items():
        row[f"{clock}_best"] = gflop / best
        row[f"{clock}_median"] = gflop / median
    return row
