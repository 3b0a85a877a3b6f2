# ruff: noqa
# A copy of ../shared/tools/peer_bench.py (kept close to it, so not linted); what changed here:
# interleaved() also records each call's CPU time (process time / threads) as s["cpu"], the
# honest cost on a machine whose cores other processes hold. benchmarks/peers/run_peers.py
# drives it (make bench-peers) with its own roofline (benchmarks/roofline.py).
"""peer_bench.py - side-by-side CPU benchmark of text-conditioned diffusion U-Nets.

Times peer diffusion libraries (imagen-pytorch, diffusers) and, later, our own
`reimagen`, on the same machine in the same run, for one shared workload:

  * a 32x32 RGB base text-conditioned U-Net of ~8M parameters, random init
    (no pretrained weights, nothing fetched from any hub);
  * text conditioning = random token embeddings [B, 16, 384] plus an all-true
    mask [B, 16] (passed directly: no T5 / tokenizer);
  * torch.set_num_threads(2).

Measured, each as median [min-max] over repeated runs after warm-up:
  1. training step (forward + backward + AdamW) at batch 64, fp32 and
     bf16 autocast -> s/step and images/s;
  2. one denoiser forward at batch 2 (cond + uncond as one batch = one
     classifier-free-guided sampling step), and each library's own full
     sampling call for a fixed number of steps (20);
  3. FLOPs per forward (torch.utils.flop_counter.FlopCounterMode) and
     achieved GFLOP/s, against a 2048x2048 matmul measured in the same run
     (fp32 for fp32 work, bf16 for bf16-autocast work).  The counter is
     taught the CPU SDPA kernel, which torch 2.13's FlopCounterMode counts
     as 0 FLOPs.

All selected entries are built first, then measured metric by metric,
round-robin (ABBA order), so that bursts of load from the machine's other
tenants hit every entry alike (--no-interleave: one entry after another).
The whole default run takes about 3 minutes here.

Environment (2-core CPU box, registries only; recipe used for $PEERS/venv):

    python3 -m venv venv && . venv/bin/activate
    pip install torch==2.13.0                 # the local CPU wheel, FIRST
    echo torch==2.13.0 > c.txt                # never let pip swap torch
    pip install -c c.txt diffusers==0.42.1
    pip install --no-deps imagen-pytorch==2.1.0 torchvision==0.28.0
    pip install -c c.txt accelerate beartype click datasets 'einops>=0.7.0' \
        'ema-pytorch>=0.0.3' fsspec kornia numpy packaging pillow 'pydantic>=2' \
        pytorch-warmup sentencepiece transformers tqdm

  (imagen-pytorch's plain install resolves torchvision 0.29.1 -> torch 2.14.1;
  PyPI's torchvision is a CUDA build whose C++ ops cannot load beside
  torch+cpu - see import_torchvision() for how the harness copes.)

Usage (inside that venv):

    python peer_bench.py                         # matmul + every peer
    python peer_bench.py --only imagen --json out.json
    python peer_bench.py --only diffusers,matmul --md table.md
    python peer_bench.py --plugin my_entry.py    # adds entries (e.g. reimagen)
    python peer_bench.py --list

Adding an entry (e.g. reimagen) takes a few lines, either in this file or in a
plug-in file passed with --plugin:

    import peer_bench as pb

    @pb.register("reimagen")
    def _reimagen():
        import reimagen
        return pb.Peer(
            make_model=lambda: reimagen.build_base_unet(...),        # random init
            train_step=lambda m, imgs, emb, mask: m.loss(imgs, emb, mask),
            sample_step=lambda m, x, t, emb, mask: m.denoise(x, t, emb, mask),
            samplers={"reimagen.sample 20 steps": lambda m, emb, mask, steps, g: m.sample(emb, mask, steps=steps, guidance=g)},
            version=reimagen.__version__)

or, programmatically, `pb.bench_callable("reimagen", make_model, train_step,
sample_step, samplers=...)` which runs the same measurements and returns the
result dict.  Contract of the callables (all tensors on CPU, fp32):

  make_model()                      -> nn.Module (randomly initialised)
  train_step(model, images, emb, mask) -> scalar loss; images in [0, 1],
                                       [B, 3, 32, 32]; the harness does
                                       zero_grad / autocast / backward / AdamW
  sample_step(model, x, t, emb, mask)  -> one denoiser forward; x [B,3,32,32],
                                       t [B] in [0, 1] (1 = pure noise)
  samplers[name](model, emb, mask, steps, guidance) -> images [N,3,32,32]
  denoiser(model) (optional)        -> the nn.Module whose parameters are
                                       counted and optimised (default: model)

The machine is shared and noisy: read medians, and look at min/max.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional

# Nothing may be fetched from a hub at run time: make every HF library fail
# fast (instead of retrying for ~25 s) if some code path still tries.
for _k in (
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HF_DATASETS_OFFLINE",
    "HF_HUB_DISABLE_TELEMETRY",
    "DISABLE_TELEMETRY",
):
    os.environ.setdefault(_k, "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

# --------------------------------------------------------------------------
# shared workload
# --------------------------------------------------------------------------

IMG = 32  # image side
CH = 3  # RGB
TXT_LEN = 16  # text tokens
TXT_DIM = 384  # text embedding width
TRAIN_BATCH = 64
SAMPLE_BATCH = 2  # cond + uncond
SAMPLE_STEPS = 20
GUIDANCE = 5.0  # classifier-free guidance scale used by the full samplers

REPS = dict(
    train_warmup=2,
    train=7,
    fwd_warmup=3,
    fwd=20,
    fwd_block=5,
    sample_warmup=1,
    sample=3,
    mm_warmup=3,
    mm_warmup_s=1.0,
    mm=10,
    mm_time_s=2.0,
)


# --------------------------------------------------------------------------
# plug-in point
# --------------------------------------------------------------------------


@dataclass
class Peer:
    make_model: Callable[[], torch.nn.Module]
    train_step: Callable[..., torch.Tensor]
    sample_step: Callable[..., torch.Tensor]
    samplers: Dict[str, Callable[..., torch.Tensor]] = field(default_factory=dict)
    denoiser: Optional[Callable[[torch.nn.Module], torch.nn.Module]] = None
    version: str = ""
    config: dict = field(default_factory=dict)
    notes: str = ""


REGISTRY: Dict[str, Callable[[], Peer]] = {}


def register(name: str):
    """Decorator: register a zero-argument factory returning a Peer.

    The factory is only called when the entry is selected, so its imports stay
    lazy (``--only matmul`` imports no peer)."""

    def deco(factory: Callable[[], Peer]):
        REGISTRY[name] = factory
        return factory

    return deco


def bench_callable(
    name,
    make_model,
    train_step,
    sample_step,
    samplers=None,
    denoiser=None,
    version="",
    config=None,
    notes="",
    roofline=None,
    log=print,
):
    """Run every measurement for one entry given as plain callables.

    roofline: optional {'fp32': GFLOP/s, 'bf16': GFLOP/s} (e.g. from
    matmul_reference(matmul_roofline())) to add '% of matmul' figures.
    Returns the result dict (the same shape as one entry of the JSON output)."""
    peer = Peer(
        make_model=make_model,
        train_step=train_step,
        sample_step=sample_step,
        samplers=dict(samplers or {}),
        denoiser=denoiser,
        version=version,
        config=dict(config or {}),
        notes=notes,
    )
    return run_peer(name, peer, roofline=roofline, log=log)


# --------------------------------------------------------------------------
# measurement helpers
# --------------------------------------------------------------------------


def summarize(ts):
    return dict(
        median=statistics.median(ts),
        min=min(ts),
        max=max(ts),
        n=len(ts),
        all=[round(t, 6) for t in ts],
    )


def time_fn(fn, warmup, reps, min_time_s=0.0):
    """reps timed calls after warmup; keeps going until min_time_s is spent."""
    for _ in range(warmup):
        fn()
    ts = []
    t_first = time.perf_counter()
    while len(ts) < reps or time.perf_counter() - t_first < min_time_s:
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return summarize(ts)


def _cpu_sdpa_flop_mapping():
    """FlopCounterMode (torch 2.13) has formulas for the CUDA SDPA kernels but
    not for the CPU one (aten._scaled_dot_product_flash_attention_for_cpu and
    its backward), so F.scaled_dot_product_attention counts 0 FLOPs on CPU
    while an einsum/bmm attention is counted.  Reuse the registered SDPA
    formulas (the signatures start with the same q, k, v / grad_out, q, k, v)."""
    from torch.utils import flop_counter as fcm

    aten = torch.ops.aten
    extra = {}
    pairs = (
        ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention"),
        (
            "_scaled_dot_product_flash_attention_for_cpu_backward",
            "_scaled_dot_product_flash_attention_backward",
        ),
    )
    for cpu_name, ref_name in pairs:
        if hasattr(aten, cpu_name) and hasattr(aten, ref_name):
            cpu_op, ref_op = getattr(aten, cpu_name), getattr(aten, ref_name)
            if cpu_op not in fcm.flop_registry and ref_op in fcm.flop_registry:
                formula = fcm.flop_registry[ref_op]  # already shape-wrapped

                def raw(*args, _f=formula, **kwargs):
                    return _f(*args, **kwargs)

                raw._get_raw = True  # do not shape-wrap twice
                extra[cpu_op] = raw
    return extra


def count_flops(fn):
    with FlopCounterMode(display=False, custom_mapping=_cpu_sdpa_flop_mapping()) as fc:
        fn()
    return int(fc.get_total_flops())


def autocast_ctx(precision):
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def make_text(batch, gen):
    emb = torch.randn(batch, TXT_LEN, TXT_DIM, generator=gen)
    mask = torch.ones(batch, TXT_LEN, dtype=torch.bool)
    return emb, mask


def matmul_roofline(n=2048, log=print):
    out = {}
    for prec, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(n, n).to(dtype)
        b = torch.randn(n, n).to(dtype)
        # warm up by time as well as count: after idling, the first ~0.5 s of
        # bf16 (AMX) matmuls ran at half speed here
        t_end = time.perf_counter() + REPS["mm_warmup_s"]
        k = 0
        while k < REPS["mm_warmup"] or time.perf_counter() < t_end:
            torch.mm(a, b)
            k += 1
        s = time_fn(lambda: torch.mm(a, b), 0, REPS["mm"], REPS["mm_time_s"])
        flops = 2 * n**3
        s["gflops"] = flops / 1e9
        s["gflop_s_median"] = flops / s["median"] / 1e9
        s["gflop_s_best"] = flops / s["min"] / 1e9
        s["gflop_s_worst"] = flops / s["max"] / 1e9
        out[prec] = s
        log(
            f"  matmul {n}x{n} {prec}: {s['gflop_s_median']:.0f} GFLOP/s median "
            f"[{s['gflop_s_worst']:.0f}-{s['gflop_s_best']:.0f}]"
        )
    return out


def matmul_reference(*runs):
    """Best median GFLOP/s per precision over roofline runs (start, end)."""
    return {p: max(r[p]["gflop_s_median"] for r in runs if r) for p in ("fp32", "bf16")}


class _Entry:
    """One entry's model, inputs, optimizer and results, ready to be timed."""

    def __init__(self, name, peer: Peer, log=print):
        self.name, self.peer, self.log = name, peer, log
        self.res = res = dict(
            name=name,
            version=peer.version,
            config=peer.config,
            notes=peer.notes,
            errors={},
            train={},
            fwd_b2={},
            samplers={},
        )
        gen = torch.Generator().manual_seed(0)
        torch.manual_seed(0)
        self.model = model = peer.make_model()
        den = peer.denoiser(model) if peer.denoiser else model
        res["params"] = sum(p.numel() for p in den.parameters())
        res["trainable_params"] = sum(p.numel() for p in den.parameters() if p.requires_grad)
        log(f"  {name}: params {res['params']:,}")

        # inputs (the same seeds for every entry)
        self.x1 = torch.randn(1, CH, IMG, IMG, generator=gen)
        self.e1, self.m1 = make_text(1, gen)
        self.t1 = torch.rand(1, generator=gen)
        self.x2 = torch.randn(SAMPLE_BATCH, CH, IMG, IMG, generator=gen)
        self.e2, self.m2 = make_text(SAMPLE_BATCH, gen)
        self.t2 = torch.rand(SAMPLE_BATCH, generator=gen)
        self.imgs = torch.rand(TRAIN_BATCH, CH, IMG, IMG, generator=gen)
        self.eb, self.mb = make_text(TRAIN_BATCH, gen)
        self.es, self.ms = make_text(1, gen)

        # FLOPs (fp32 graph; autocast does not change the count)
        model.eval()
        with torch.no_grad():
            res["fwd_flops_per_image"] = count_flops(
                lambda: peer.sample_step(model, self.x1, self.t1, self.e1, self.m1)
            )
            res["fwd_flops_batch2"] = count_flops(
                lambda: peer.sample_step(model, self.x2, self.t2, self.e2, self.m2)
            )
        model.train()
        self.opt = torch.optim.AdamW([p for p in den.parameters() if p.requires_grad], lr=1e-4)
        res["train_flops_per_step"] = count_flops(self.train_fn("fp32"))
        log(
            f"  {name}: forward {res['fwd_flops_per_image'] / 1e9:.3f} GFLOP/image, "
            f"train step {res['train_flops_per_step'] / 1e9:.1f} GFLOP"
        )

    def train_fn(self, precision):
        peer, model, opt = self.peer, self.model, self.opt

        def step():
            opt.zero_grad(set_to_none=True)
            with autocast_ctx(precision):
                loss = peer.train_step(model, self.imgs, self.eb, self.mb)
            loss.backward()
            opt.step()
            self.last_loss = loss.detach()
            return loss

        return step

    def fwd_fn(self, precision):
        def fwd():
            with torch.no_grad(), autocast_ctx(precision):
                return self.peer.sample_step(self.model, self.x2, self.t2, self.e2, self.m2)

        return fwd

    def sampler_fn(self, sname):
        sfn = self.peer.samplers[sname]

        def run():
            with torch.no_grad():
                self.last_sample = sfn(self.model, self.es, self.ms, SAMPLE_STEPS, GUIDANCE)

        return run


def interleaved(tasks, warmup, reps, block=1, min_time_s=0.0, errors=None, log=print):
    """Time several tasks round-robin so that bursts of load from other tenants
    of the machine hit every task alike.  tasks: [(key, fn)].  Each round runs
    `block` consecutive calls per task, alternating the task order (ABBA).
    Returns {key: summary}; a task that raises is dropped and its traceback
    stored in errors[key]."""
    live = []
    for key, fn in tasks:
        try:
            for _ in range(warmup):
                fn()
            live.append((key, fn))
        except Exception:
            tb = traceback.format_exc()
            if errors is not None:
                errors[key] = tb
            log(f"  {key} FAILED:\n{tb}")
    times = {key: [] for key, _ in live}
    cpu_times = {key: [] for key, _ in live}
    t_first = time.perf_counter()
    rnd = 0
    while live and (
        min(len(v) for v in times.values()) < reps or time.perf_counter() - t_first < min_time_s
    ):
        order = live if rnd % 2 == 0 else live[::-1]
        for key, fn in list(order):
            try:
                for _ in range(block):
                    c0, t0 = time.process_time(), time.perf_counter()
                    fn()
                    times[key].append(time.perf_counter() - t0)
                    cpu_times[key].append((time.process_time() - c0) / torch.get_num_threads())
            except Exception:
                tb = traceback.format_exc()
                if errors is not None:
                    errors[key] = tb
                log(f"  {key} FAILED:\n{tb}")
                live.remove((key, fn))
                times.pop(key)
                cpu_times.pop(key)
        rnd += 1
    return {
        key: dict(summarize(ts), cpu=summarize(cpu_times[key])) for key, ts in times.items() if ts
    }


def run_entries(entries, roofline=None, log=print):
    """Measure every _Entry, interleaved metric by metric.  Returns {name: result}."""
    errs = {}
    by_name = {e.name: e for e in entries}

    # ---- 1. training step, batch 64 --------------------------------------
    for precision in ("fp32", "bf16"):
        log(f"-- train b{TRAIN_BATCH} {precision}")
        tasks = []
        for e in entries:
            fn = e.train_fn(precision)
            tasks.append(((e.name, "train", precision), fn))
        out = interleaved(tasks, REPS["train_warmup"], REPS["train"], errors=errs, log=log)
        for (name, _, prec), s in out.items():
            e = by_name[name]
            s["images_per_s"] = TRAIN_BATCH / s["median"]
            s["gflop_s"] = e.res["train_flops_per_step"] / s["median"] / 1e9
            s["last_loss"] = float(e.last_loss)
            s["loss_finite"] = bool(torch.isfinite(e.last_loss))
            e.res["train"][prec] = s
            log(
                f"  {name}: {s['median']:.3f} s/step [{s['min']:.3f}-{s['max']:.3f}] = "
                f"{s['images_per_s']:.1f} img/s, {s['gflop_s']:.0f} GFLOP/s"
            )
    for e in entries:
        e.opt.state.clear()
        e.model.zero_grad(set_to_none=True)
        e.model.eval()

    # ---- 2a. one denoiser forward at batch 2 (= one CFG sampling step) ----
    for precision in ("fp32", "bf16"):
        log(f"-- forward b{SAMPLE_BATCH} {precision}")
        tasks = [((e.name, "fwd_b2", precision), e.fwd_fn(precision)) for e in entries]
        out = interleaved(
            tasks, REPS["fwd_warmup"], REPS["fwd"], block=REPS["fwd_block"], errors=errs, log=log
        )
        for (name, _, prec), s in out.items():
            e = by_name[name]
            s["gflop_s"] = e.res["fwd_flops_batch2"] / s["median"] / 1e9
            e.res["fwd_b2"][prec] = s
            log(
                f"  {name}: {s['median'] * 1e3:.1f} ms [{s['min'] * 1e3:.1f}-{s['max'] * 1e3:.1f}], "
                f"{s['gflop_s']:.0f} GFLOP/s"
            )

    # ---- 2b. each library's own full sampling call ------------------------
    log(f"-- full samplers, {SAMPLE_STEPS} steps")
    tasks = [
        ((e.name, "sampler", sname), e.sampler_fn(sname))
        for e in entries
        for sname in e.peer.samplers
    ]
    out = interleaved(tasks, REPS["sample_warmup"], REPS["sample"], errors=errs, log=log)
    for (name, _, sname), s in out.items():
        e = by_name[name]
        try:
            fn = e.sampler_fn(sname)
            with torch.no_grad():  # one more call, counted: what the loop really computes
                s["flops"] = count_flops(fn)
            out_t = e.last_sample
            s["steps"] = SAMPLE_STEPS
            s["s_per_step"] = s["median"] / SAMPLE_STEPS
            s["output_shape"] = list(out_t.shape)
            s["output_finite"] = bool(torch.isfinite(out_t).all())
            s["image_forwards"] = s["flops"] / e.res["fwd_flops_per_image"]
            s["gflop_s"] = s["flops"] / s["median"] / 1e9
            s["precision"] = "fp32"
            e.res["samplers"][sname] = s
            log(
                f"  {name} '{sname}': {s['median']:.3f} s [{s['min']:.3f}-{s['max']:.3f}] = "
                f"{s['s_per_step'] * 1e3:.1f} ms/step, {s['image_forwards']:.1f} image-forwards, "
                f"{s['gflop_s']:.0f} GFLOP/s, out {tuple(out_t.shape)}"
            )
        except Exception:
            errs[(name, "sampler", sname)] = traceback.format_exc()
            log(f"  {name} sampler {sname} FAILED:\n{errs[(name, 'sampler', sname)]}")

    for (name, kind, what), tb in errs.items():
        by_name[name].res["errors"][f"{kind} {what}"] = tb
    results = {}
    for e in entries:
        if roofline:
            apply_roofline(e.res, roofline)
        results[e.name] = e.res
    return results


def run_peer(name, peer: Peer, roofline=None, log=print):
    """All measurements for one entry on its own (no interleaving partner)."""
    return run_entries([_Entry(name, peer, log=log)], roofline=roofline, log=log)[name]


def apply_roofline(res, ref):
    """ref: {'fp32': GFLOP/s, 'bf16': GFLOP/s} of the matmul; adds % of it."""
    for group in ("train", "fwd_b2"):
        for prec, s in (res.get(group) or {}).items():
            s["pct_of_matmul"] = 100 * s["gflop_s"] / ref[prec]
    for s in (res.get("samplers") or {}).values():
        if "gflop_s" in s:
            s["pct_of_matmul"] = 100 * s["gflop_s"] / ref[s["precision"]]


# --------------------------------------------------------------------------
# peer: imagen-pytorch (lucidrains)
# --------------------------------------------------------------------------


def import_torchvision():
    """Import torchvision; survive the PyPI (CUDA-built) wheel beside CPU torch.

    PyPI's x86_64 torchvision 0.28.0 wheel links its _C.so against
    libtorch_cuda.so / libc10_cuda.so, which torch 2.13.0+cpu lacks, so _C
    fails to load; torchvision then still calls
    torch.library.register_fake("torchvision::nms") unconditionally and raises
    'operator torchvision::nms does not exist'.  Declaring the two op schemas
    lets the pure-Python parts (transforms, used by imagen-pytorch only for
    ToPILImage) import; the C++ ops stay unavailable (nobody here uses them).
    transformers (imported by imagen-pytorch and diffusers) imports
    torchvision when it is installed, so this runs before either peer."""
    try:
        import torchvision

        return torchvision, "native"
    except RuntimeError as e:
        if "torchvision::nms" not in str(e):
            raise
    for k in [k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")]:
        del sys.modules[k]
    lib = torch.library.Library("torchvision", "FRAGMENT")
    for op in ("nms", "qnms"):
        lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    import_torchvision._lib = lib  # keep the fragment alive
    import torchvision

    return torchvision, "ops-schema shim (C++ ops unavailable)"


@contextlib.contextmanager
def _t5_config_offline(d_model=768):
    """imagen-pytorch evaluates get_encoded_dim('google/t5-v1_1-base') as a
    default argument at class-definition time (Unet, Unet3D, configs), i.e. on
    import, which calls T5Config.from_pretrained -> a hub download.  While the
    package imports, answer that one name locally (t5-v1_1-base has
    d_model=768) and refuse every other name.  Models built here always pass
    text_embed_dim explicitly, so the value is never used."""
    from transformers import T5Config

    had = T5Config.__dict__.get("from_pretrained")

    def offline_from_pretrained(cls, name, *a, **k):
        if name == "google/t5-v1_1-base":
            return cls(d_model=d_model)
        raise OSError(f"peer_bench: refusing to fetch T5 config {name!r} (offline)")

    T5Config.from_pretrained = classmethod(offline_from_pretrained)
    try:
        yield
    finally:
        if had is None:
            del T5Config.from_pretrained
        else:
            T5Config.from_pretrained = had


@register("imagen")
def _imagen_peer():
    tv, tv_mode = import_torchvision()
    with _t5_config_offline():
        import imagen_pytorch as ip
    from imagen_pytorch.version import __version__ as ip_version

    unet_cfg = dict(
        dim=48,
        dim_mults=(1, 2, 4),
        num_resnet_blocks=2,
        layer_attns=(False, True, True),
        layer_cross_attns=(False, True, True),
        attn_heads=4,
        attn_dim_head=32,
        text_embed_dim=TXT_DIM,
        max_text_len=TXT_LEN,
    )
    imagen_cfg = dict(
        image_sizes=IMG, text_embed_dim=TXT_DIM, timesteps=SAMPLE_STEPS, cond_drop_prob=0.1
    )

    def make_model():
        unet = ip.Unet(**unet_cfg)
        # text_embed_dim given -> Imagen never calls get_encoded_dim / T5
        return ip.Imagen(unets=unet, **imagen_cfg)

    def denoiser(imagen):
        return imagen.unets[0]  # .unets turns from ModuleList into a list after get_unet()

    def train_step(imagen, images, emb, mask):
        # Imagen.forward = the library's own training loss (continuous-time
        # cosine schedule, min-SNR weighting, 10% text dropout); text_embeds
        # given -> no T5 call.
        return imagen(images, text_embeds=emb, text_masks=mask, unet_number=1)

    def sample_step(imagen, x, t, emb, mask):
        unet = imagen.unets[0]
        ns = imagen.noise_schedulers[0]
        return unet(x, ns.get_condition(t), text_embeds=emb, text_mask=mask, cond_drop_prob=0.0)

    def imagen_sample(imagen, emb, mask, steps, guidance):
        assert steps == imagen.noise_schedulers[0].num_timesteps
        return imagen.sample(text_embeds=emb, text_masks=mask, cond_scale=guidance, use_tqdm=False)

    return Peer(
        make_model=make_model,
        train_step=train_step,
        sample_step=sample_step,
        samplers={"Imagen.sample": imagen_sample},
        denoiser=denoiser,
        version=ip_version,
        config=dict(unet=unet_cfg, imagen=imagen_cfg, torchvision=f"{tv.__version__} [{tv_mode}]"),
        notes="Imagen.forward is the library's training loss; Imagen.sample runs CFG as two "
        "batch-1 forwards per step (cond, then cond_drop_prob=1), plus dynamic "
        "thresholding; timesteps=20 only sets the sampling discretisation (training "
        "draws continuous times).",
    )


# --------------------------------------------------------------------------
# peer: diffusers (HuggingFace)
# --------------------------------------------------------------------------


@register("diffusers")
def _diffusers_peer():
    tv, tv_mode = import_torchvision()  # transformers (pulled in by diffusers) imports it
    import diffusers
    from diffusers import (
        DDIMScheduler,
        DDPMScheduler,
        DPMSolverMultistepScheduler,
        UNet2DConditionModel,
    )

    unet_cfg = dict(
        sample_size=IMG,
        in_channels=CH,
        out_channels=CH,
        block_out_channels=(36, 72, 144),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TXT_DIM,
        attention_head_dim=(1, 2, 4),  # diffusers' legacy name: number of heads per block
        norm_num_groups=4,
    )
    train_sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")

    def make_model():
        return UNet2DConditionModel(**unet_cfg)

    def train_step(unet, images, emb, mask):
        x0 = images * 2 - 1
        noise = torch.randn_like(x0)
        t = torch.randint(0, train_sched.config.num_train_timesteps, (x0.shape[0],))
        xt = train_sched.add_noise(x0, noise, t)
        pred = unet(xt, t, encoder_hidden_states=emb, encoder_attention_mask=mask).sample
        return F.mse_loss(pred.float(), noise)

    def sample_step(unet, x, t, emb, mask):
        ts = (t * (train_sched.config.num_train_timesteps - 1)).long()
        return unet(x, ts, encoder_hidden_states=emb, encoder_attention_mask=mask).sample

    def cfg_loop(sched_cls, **sched_kw):
        def run(unet, emb, mask, steps, guidance):
            sched = sched_cls.from_config(train_sched.config, **sched_kw)  # local config, no hub
            sched.set_timesteps(steps)
            n = emb.shape[0]
            x = torch.randn(n, CH, IMG, IMG) * sched.init_noise_sigma
            emb2 = torch.cat([torch.zeros_like(emb), emb])  # uncond = null text
            mask2 = torch.cat([mask, mask])
            for t in sched.timesteps:
                inp = sched.scale_model_input(torch.cat([x, x]), t)
                eps = unet(inp, t, encoder_hidden_states=emb2, encoder_attention_mask=mask2).sample
                e_u, e_c = eps.chunk(2)
                x = sched.step(e_u + guidance * (e_c - e_u), t, x).prev_sample
            return (x / 2 + 0.5).clamp(0, 1)

        return run

    return Peer(
        make_model=make_model,
        train_step=train_step,
        sample_step=sample_step,
        samplers={
            "DDIMScheduler loop": cfg_loop(DDIMScheduler),
            "DPMSolverMultistepScheduler loop": cfg_loop(DPMSolverMultistepScheduler),
        },
        version=diffusers.__version__,
        config=dict(
            unet=unet_cfg,
            train_scheduler="DDPMScheduler(1000, squaredcos_cap_v2)",
            torchvision=f"{tv.__version__} [{tv_mode}]",
        ),
        notes="UNet2DConditionModel; the eps-prediction training loss and the CFG sampling "
        "loops around diffusers' schedulers are written in the harness (its pixel-space "
        "text-to-image pipeline, IFPipeline, assumes a learned-variance UNet with 2x "
        "output channels; StableDiffusionPipeline needs a VAE). CFG is batched: one "
        "batch-2 forward per step; the null text is a zero embedding.",
    )


# --------------------------------------------------------------------------
# --- reimagen: add the entry here (or in a --plugin file) -----------------
# @register("reimagen")
# def _reimagen_peer():
#     import reimagen
#     return Peer(make_model=..., train_step=..., sample_step=..., samplers={...},
#                 version=reimagen.__version__)
# --------------------------------------------------------------------------


# --------------------------------------------------------------------------
# reporting
# --------------------------------------------------------------------------


def _fmt_range(s, scale=1.0, unit="", digits=3):
    if not s:
        return "-"
    f = f"{{:.{digits}f}}"
    return (
        f"{f.format(s['median'] * scale)}{unit} "
        f"[{f.format(s['min'] * scale)}-{f.format(s['max'] * scale)}]"
    )


def markdown_table(results):
    peers = results["peers"]
    names = [n for n in peers]
    roof = results.get("roofline") or {}
    lines = []
    if roof:
        lines.append(
            "| roofline: 2048x2048 torch.mm | when | median GFLOP/s | min-max GFLOP/s | median s |"
        )
        lines.append("|---|---|---|---|---|")
        for when in ("start", "end"):
            for prec, s in (roof.get(when) or {}).items():
                lines.append(
                    f"| {prec} | {when} of run | {s['gflop_s_median']:.0f} | "
                    f"{s['gflop_s_worst']:.0f}-{s['gflop_s_best']:.0f} | {s['median']:.4f} |"
                )
        ref = roof.get("reference_gflop_s")
        if ref and names:
            lines.append("")
            lines.append(
                "% of matmul below = achieved GFLOP/s / best median matmul GFLOP/s of the "
                f"same precision in this run (fp32 {ref['fp32']:.0f}, bf16 {ref['bf16']:.0f})."
            )
        lines.append("")
    if not names:
        return "\n".join(lines)

    def cell(n, fn):
        r = peers[n]
        if "fatal" in r:
            return "FAILED"
        try:
            return fn(r)
        except (KeyError, TypeError, ZeroDivisionError):
            return "-"

    rows = [
        ("version", lambda r: r["version"]),
        ("params (denoiser)", lambda r: f"{r['params']:,}"),
        ("forward GFLOP / image", lambda r: f"{r['fwd_flops_per_image'] / 1e9:.3f}"),
        (
            f"train step GFLOP (b{TRAIN_BATCH}, fwd+bwd)",
            lambda r: f"{r['train_flops_per_step'] / 1e9:.1f}",
        ),
    ]
    for prec in ("fp32", "bf16"):
        rows += [
            (
                f"train {prec} s/step (b{TRAIN_BATCH}) median [min-max]",
                lambda r, p=prec: _fmt_range(r["train"][p]),
            ),
            (
                f"train {prec} images/s (median)",
                lambda r, p=prec: f"{r['train'][p]['images_per_s']:.1f}",
            ),
            (
                f"train {prec} GFLOP/s (% of {prec} matmul)",
                lambda r, p=prec: (
                    f"{r['train'][p]['gflop_s']:.0f} ({r['train'][p].get('pct_of_matmul', float('nan')):.0f}%)"
                ),
            ),
        ]
    for prec in ("fp32", "bf16"):
        rows += [
            (
                f"1 forward b{SAMPLE_BATCH} {prec} (= 1 CFG step) ms",
                lambda r, p=prec: _fmt_range(r["fwd_b2"][p], 1e3, "", 1),
            ),
            (
                f"forward b{SAMPLE_BATCH} {prec} GFLOP/s (% of {prec} matmul)",
                lambda r, p=prec: (
                    f"{r['fwd_b2'][p]['gflop_s']:.0f} ({r['fwd_b2'][p].get('pct_of_matmul', float('nan')):.0f}%)"
                ),
            ),
        ]
    sampler_rows = []
    for n in names:
        for sname in peers[n].get("samplers") or {}:
            sampler_rows.append((n, sname))
    for n, sname in sampler_rows:
        rows.append(
            (
                f"{sname} ({SAMPLE_STEPS} steps, CFG {GUIDANCE:g}, 1 image): s median [min-max] / ms per step",
                lambda r, s0=sname: (
                    f"{_fmt_range(r['samplers'][s0])} / {r['samplers'][s0]['s_per_step'] * 1e3:.1f}"
                    if s0 in r.get("samplers", {})
                    else "-"
                ),
            )
        )
        rows.append(
            (
                f"{sname}: image-forwards done, fp32 GFLOP/s (% of fp32 matmul)",
                lambda r, s0=sname: (
                    f"{r['samplers'][s0]['image_forwards']:.1f}, {r['samplers'][s0]['gflop_s']:.0f} "
                    f"({r['samplers'][s0].get('pct_of_matmul', float('nan')):.0f}%)"
                    if s0 in r.get("samplers", {})
                    else "-"
                ),
            )
        )
    lines.append("| metric | " + " | ".join(names) + " |")
    lines.append("|---|" + "---|" * len(names))
    for label, fn in rows:
        lines.append(f"| {label} | " + " | ".join(cell(n, fn) for n in names) + " |")
    errs = [(n, k) for n in names for k in (peers[n].get("errors") or {})]
    if errs or any("fatal" in peers[n] for n in names):
        lines.append("")
        lines.append(
            "Failures: "
            + ", ".join(
                [f"{n}: {k}" for n, k in errs]
                + [f"{n}: fatal" for n in names if "fatal" in peers[n]]
            )
        )
    return "\n".join(lines)


def environment():
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    env = dict(
        python=sys.version.split()[0],
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        cpu=cpu,
        nproc=os.cpu_count(),
        mkldnn=torch.backends.mkldnn.is_available(),
        loadavg_start=os.getloadavg(),
        time=time.strftime("%Y-%m-%d %H:%M:%S"),
    )
    return env


def load_plugin(path):
    # make `import peer_bench` inside a plugin resolve to *this* module
    sys.modules.setdefault("peer_bench", sys.modules[__name__])
    spec = importlib.util.spec_from_file_location(f"peer_bench_plugin_{len(REGISTRY)}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--only",
        default=None,
        help="comma-separated entries: matmul and/or registered names "
        f"(built in: {', '.join(REGISTRY)}); default: all",
    )
    ap.add_argument("--json", default=None, help="write all results here")
    ap.add_argument("--md", default=None, help="write the markdown table here")
    ap.add_argument(
        "--plugin",
        action="append",
        default=[],
        help="python file that calls peer_bench.register(...); repeatable",
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--quick", action="store_true", help="fewer repetitions (smoke test; not for reporting)"
    )
    ap.add_argument("--list", action="store_true", help="list entries and exit")
    ap.add_argument(
        "--no-interleave",
        action="store_true",
        help="measure entries one after another instead of round-robin",
    )
    args = ap.parse_args(argv)

    for p in args.plugin:
        load_plugin(p)
    if args.list:
        print("\n".join(["matmul", *REGISTRY]))
        return 0
    if args.quick:
        REPS.update(
            train_warmup=1,
            train=2,
            fwd_warmup=1,
            fwd=3,
            fwd_block=1,
            sample_warmup=0,
            sample=1,
            mm_warmup=1,
            mm_warmup_s=0.5,
            mm=3,
            mm_time_s=0.5,
        )

    torch.set_num_threads(args.threads)
    selected = [s.strip() for s in args.only.split(",")] if args.only else ["matmul", *REGISTRY]
    unknown = [s for s in selected if s != "matmul" and s not in REGISTRY]
    if unknown:
        ap.error(f"unknown entries {unknown}; known: matmul, {', '.join(REGISTRY)}")
    peers_sel = [s for s in selected if s != "matmul"]

    t_start = time.perf_counter()
    results = dict(
        environment=environment(),
        workload=dict(
            image=[CH, IMG, IMG],
            text=[TXT_LEN, TXT_DIM],
            train_batch=TRAIN_BATCH,
            sample_batch=SAMPLE_BATCH,
            sample_steps=SAMPLE_STEPS,
            guidance=GUIDANCE,
            reps=dict(REPS),
            interleaved=not args.no_interleave,
            optimizer="AdamW(lr=1e-4)",
            bf16="torch.autocast('cpu', bfloat16), fp32 master weights",
        ),
        roofline=None,
        peers={},
    )
    print(
        f"# peer_bench: torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{results['environment']['cpu']}, load {results['environment']['loadavg_start']}"
    )

    # the roofline runs whenever anything runs (% of matmul needs it in the
    # same run), at the start and, if any peer ran, again at the end
    print("== matmul roofline (start)")
    results["roofline"] = dict(start=matmul_roofline())
    ref = matmul_reference(results["roofline"]["start"])

    entries = []
    for name in peers_sel:
        print(f"== set up {name}")
        try:
            entries.append(_Entry(name, REGISTRY[name]()))
        except Exception:
            tb = traceback.format_exc()
            print(f"  {name} FAILED:\n{tb}")
            results["peers"][name] = dict(name=name, fatal=tb, errors={})
    if entries:
        t0 = time.perf_counter()
        if args.no_interleave:
            for e in entries:
                print(f"== measure {e.name}")
                results["peers"].update(run_entries([e], roofline=ref))
        else:
            print(f"== measure {', '.join(e.name for e in entries)} (interleaved)")
            results["peers"].update(run_entries(entries, roofline=ref))
        print(f"  ({time.perf_counter() - t0:.0f} s)")
    results["peers"] = {n: results["peers"][n] for n in peers_sel if n in results["peers"]}

    if peers_sel:
        print("== matmul roofline (end)")
        results["roofline"]["end"] = matmul_roofline()
        ref = matmul_reference(results["roofline"]["start"], results["roofline"]["end"])
        for r in results["peers"].values():
            if "fatal" not in r:
                apply_roofline(r, ref)
    results["roofline"]["reference_gflop_s"] = ref
    results["environment"]["loadavg_end"] = os.getloadavg()
    results["wall_s"] = time.perf_counter() - t_start
    table = markdown_table(results)
    print()
    print(table)
    print(
        f"\n(total {results['wall_s']:.0f} s; load average start "
        f"{results['environment']['loadavg_start']} end {results['environment']['loadavg_end']})"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=str)
    if args.md:
        with open(args.md, "w") as f:
            f.write(table + "\n")
    failed = [n for n, r in results["peers"].items() if "fatal" in r or r.get("errors")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
