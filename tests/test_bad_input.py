"""Bad input matrix (issue 14, item 5): every CLI command and option, and the public Python
entry points, given unknown names, out-of-range and non-numeric values, negative or zero counts,
empty and huge prompts, malformed / missing / non-UTF-8 files, folders where files are expected
and files where folders are, K larger than allowed. Each case is rejected with ONE line naming
the argument (exit status 2 on the command line; one exception in Python), before any network
forward and before any file is written. The first block is the reliability probe's cases on
main (its 19 tracebacks and silent accepts) and neighbours of each.

Run in-process (``reimagen.cli.main.main``) with an empty ``REIMAGEN_HOME``, as on a fresh CI
machine with no knowledge base built: a check that only happened after the KB opened would
show up here as a "no knowledge base" error instead of the argument's own message.
"""

from __future__ import annotations

import types

import numpy as np
import pytest
from toys import TINY_BASE, TINY_SR, export_stage, toy_kb, toy_pipeline

import reimagen
from reimagen import KnowledgeBase, Pipeline, SamplingConfig
from reimagen.backends.torch.unet import ReImagenUNet
from reimagen.cli.main import main
from reimagen.core.config import ConfigError
from reimagen.core.io import UnsafeFileError
from reimagen.core.registry import RegistryError
from reimagen.kb.records import KnowledgeBaseError
from reimagen.kb.splits import SplitError

SHIPPED_SR = "reimagen/assets/weights/sr.safetensors"


def _files(tmp):
    (tmp / "afile").write_text("a file, not a folder")
    (tmp / "notweights.safetensors").write_bytes(b"not weights")
    (tmp / "bad.jsonl").write_bytes(b'{"prompt": "\xff\xfe bad"}\n')  # not UTF-8
    (tmp / "malformed.jsonl").write_text('{"prompt": \n')  # not JSON
    (tmp / "empty.jsonl").write_text("")
    (tmp / "nofields.jsonl").write_text('{"x": 1}\n')
    (tmp / "emptydir").mkdir()
    (tmp / "dir.png").mkdir()  # a folder where a .png file is expected
    (tmp / "badcap").mkdir()  # a folder source whose captions.jsonl is not UTF-8
    (tmp / "badcap" / "captions.jsonl").write_bytes(b"\xff\xfe\n")
    (tmp / "malcap").mkdir()  # ... and one whose captions.jsonl is not JSON
    (tmp / "malcap" / "captions.jsonl").write_text("not json\n")
    (tmp / "badkb").mkdir()  # a KB folder with a damaged kb.json and no SHA256SUMS
    (tmp / "badkb" / "kb.json").write_bytes(b'{"x": \xff}')


def _tree(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# (argv, a substring of the one-line error). {t}: the test's temporary folder; {kb}: a toy
# knowledge base (six 16-px records, tests/toys.py), shared by the module and never written to.
CASES = [
    (["generate", ""], "PROMPT 1 is empty"),
    (["generate", "x" * 5000], "PROMPT 1 has 5,000 characters"),
    (["generate", "x", "--k", "100000"], "--k must be an integer in [0, 8]"),
    (["generate", "x", "--k", "65"], "--k must be an integer in [0, 8]"),
    (["generate", "x", "--k", "-1"], "--k must be an integer in [0, 8]"),
    (["generate", "x", "--seed", "-1"], "--seed must be in [0, 2**63 - 1]"),
    (["generate", "x", "--seed", "abc"], "argument --seed: invalid int value"),
    (["generate", "x", "--stages", "sr"], "--stages: sr is not a cascade"),
    (["generate", "x", "--stages", "base,base"], "--stages: base,base is not a cascade"),
    (["generate", "x", "--stages", "base,baseline"], "--stages: base,baseline is not a cascade"),
    (["generate", "x", "--out", "{t}/afile/x.png"], "--out: {t}/afile is a file"),
    (["generate", "x", "--retriever", "none", "--k", "2"], "--retriever none retrieves no"),
    (["generate", "x", "--retriever", "nope"], "unknown retriever 'nope'"),
    (["generate", "x", "--steps", "0"], "SamplingConfig.steps must be in [1,"),
    (["train", "--threads", "-1"], "--threads must be in [0, 256]"),
    (
        ["train", "--init-from", "{t}/notweights.safetensors", "--run-dir", "{t}/run"],
        "--init-from: {t}/notweights.safetensors is not a valid safetensors file",
    ),
    (
        ["train", "--init-from", SHIPPED_SR, "--run-dir", "{t}/run"],
        "--init-from: reimagen/assets/weights/sr.safetensors holds preset 'sr-small'",
    ),
    (["train", "--steps", "-5", "--run-dir", "{t}/run"], "TrainConfig.steps must be in [1,"),
    (["train", "--batch-size", "0", "--run-dir", "{t}/run"], "TrainConfig.batch_size must be in"),
    (["train", "--lr", "nan", "--run-dir", "{t}/run"], "TrainConfig.lr must be in (0.0, 1.0]"),
    (["retrieve", ""], "PROMPT 1 is empty"),
    (["retrieve", "x", "--retriever", "nope"], "unknown retriever 'nope'"),
    (["kb", "build", "--processes", "100000"], "--processes must be in [1, 64]"),
    (["bench", "--n", "100000000"], "--n must be in [1, 10000]"),
    (["ablate", "--n", "-3"], "--n must be in [1, 10000]"),
    (["bench", "--out", "{t}/afile"], "--out: {t}/afile is a file"),
    (["ablate", "--out", "{t}/afile"], "--out: {t}/afile is a file"),
    (["bench", "--prompts", "{t}/bad.jsonl"], "{t}/bad.jsonl:1: not UTF-8"),
    (["bench", "--prompts", "{t}/missing.jsonl"], "--prompts: no such file"),
    (["bench", "--tiers", "nope"], "--tiers: unknown value(s) ['nope']"),
    (["demo", "--threads", "-2"], "--threads must be in [0, 256]"),
    # ---- the matrix over every command and option (issue 14 item 5)
    # ---- generate
    (["generate", "   "], "PROMPT 1 is empty; allowed: a non-blank text"),
    (["generate", "x", ""], "PROMPT 2 is empty; allowed: a non-blank text"),
    (["generate"], "the following arguments are required: PROMPT"),
    (["generate", "x", "--k", "abc"], "argument --k: invalid int value: 'abc'"),
    (["generate", "x", "--k", "1.5"], "argument --k: invalid int value: '1.5'"),
    (
        ["generate", "x", "--seed", "18446744073709551616"],
        "--seed must be in [0, 2**63 - 1], got 18446744073709551616",
    ),
    (
        ["generate", "x", "--stages", ""],
        "--stages: unknown stage(s) []; allowed: base, baseline, sr",
    ),
    (
        ["generate", "x", "--stages", "sr,base"],
        "--stages: sr,base is not a cascade; allowed: base | baseline |",
    ),
    (["generate", "x", "--out", "{t}/x.jpg"], "--out must be a .png path, got {t}/x.jpg"),
    (["generate", "x", "--out", "{t}/emptydir"], "--out must be a .png path, got {t}/emptydir"),
    (
        ["generate", "x", "--out", "{t}/dir.png"],
        "--out: {t}/dir.png is a folder; allowed: a file path",
    ),
    (["generate", "x", "--steps", "-1"], "SamplingConfig.steps must be in [1, 100000], got -1"),
    (["generate", "x", "--steps", "abc"], "argument --steps: invalid int value: 'abc'"),
    (
        ["generate", "x", "--steps", "100000000"],
        "SamplingConfig.steps must be in [1, 100000], got 100000000",
    ),
    (
        ["generate", "x", "--backend", "tpu"],
        "unknown backend 'tpu'; known backend names: jax, torch",
    ),
    (["generate", "x", "--backend", ""], "unknown backend ''; known backend names: jax, torch"),
    (["generate", "x", "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["generate", "x", "--batch-size", "-1"], "--batch-size must be >= 1, got -1"),
    (["generate", "x", "--batch-size", "abc"], "argument --batch-size: invalid int value: 'abc'"),
    (
        ["generate", "x", "--kb", "{t}/missing"],
        "--kb: no knowledge base at {t}/missing; build it with `reimagen kb",
    ),
    (
        ["generate", "x", "--kb", "{t}/afile"],
        "--kb: no knowledge base at {t}/afile; build it with `reimagen kb",
    ),
    (
        ["generate", "x", "--kb", "{t}/emptydir"],
        "--kb: no knowledge base at {t}/emptydir; build it with `reimagen kb",
    ),
    (
        ["generate", "x", "--kb", "{t}/badkb"],
        "{t}/badkb/SHA256SUMS: missing (a KB built before reimagen recorded",
    ),
    (
        ["generate", "x", "--encoder", "nope"],
        "unknown encoder 'nope'; known encoder names: hash, minilm",
    ),
    (["generate", "x", "--setting", "nope"], "argument --setting: invalid choice: 'nope'"),
    (["generate", "x", "--threads", "-1"], "--threads must be in [0, 256] (0: all cores), got -1"),
    (
        ["generate", "x", "--threads", "100000"],
        "--threads must be in [0, 256] (0: all cores), got 100000",
    ),
    (["generate", "x", "--threads", "abc"], "argument --threads: invalid int value: 'abc'"),
    (
        ["generate", "x", "--sampler", "euler"],
        "unknown sampler 'euler'; known sampler names: ddim, ddpm, dpmpp2m",
    ),
    (
        ["generate", "x", "--guidance", "nope"],
        "unknown guidance 'nope'; known guidance names: interleaved, joint,",
    ),
    (["generate", "x", "--w", "nan"], "SamplingConfig.w must be in [1.0, inf], got nan"),
    (["generate", "x", "--w", "-1"], "SamplingConfig.w must be in [1.0, inf], got -1.0"),
    (
        ["generate", "x", "--w", "inf"],
        "SamplingConfig.w must be a finite number in [1.0, inf], got inf",
    ),
    (["generate", "x", "--w", "abc"], "argument --w: invalid float value: 'abc'"),
    (["generate", "x", "--w-text", "0.5"], "SamplingConfig.w_text must be in [1.0, inf], got 0.5"),
    (
        ["generate", "x", "--w-neighbors", "-1"],
        "SamplingConfig.w_neighbors must be in [1.0, inf], got -1.0",
    ),
    (
        ["generate", "x", "--w-neighbors", "nan"],
        "SamplingConfig.w_neighbors must be in [1.0, inf], got nan",
    ),
    (["generate", "x", "--eta", "2"], "SamplingConfig.eta must be in [0.0, 1.0], got 2.0"),
    (["generate", "x", "--eta", "-0.1"], "SamplingConfig.eta must be in [0.0, 1.0], got -0.1"),
    (["generate", "x", "--eta", "nan"], "SamplingConfig.eta must be in [0.0, 1.0], got nan"),
    (["generate", "x", "--threshold", "nope"], "argument --threshold: invalid choice: 'nope'"),
    (["generate", "x", "--nope"], "unrecognized arguments: --nope"),
    (
        ["generate", "x", "--kb", "{kb}", "--k", "7"],
        "--kb: {kb} stores 16px images; the network needs neighbours at 32px",
    ),
    (
        ["generate", "x", "--kb", "{kb}"],
        "--kb: {kb} stores 16px images; the network needs neighbours at 32px",
    ),
    # ---- demo
    (
        ["demo", "--out", "{t}/afile/x.png"],
        "--out: {t}/afile is a file, not a folder; allowed: a path whose",
    ),
    (["demo", "--out", "{t}/x.jpg"], "--out must be a .png path, got {t}/x.jpg"),
    (["demo", "--out", "{t}/emptydir"], "--out must be a .png path, got {t}/emptydir"),
    (
        ["demo", "--entities", "unicorn horse"],
        "--entities: unknown entity name(s) ['unicorn horse'] (CLDR names,",
    ),
    (
        ["demo", "--entities", ""],
        "--entities: unknown entity name(s) [''] (CLDR names, e.g. beaver,",
    ),
    (
        ["demo", "--entities", ","],
        "--entities: unknown entity name(s) ['', ''] (CLDR names, e.g. beaver,",
    ),
    (
        ["demo", "--k", "-1"],
        "--k must be an integer in [0, 8] (the base was trained with K=2), got -1",
    ),
    (
        ["demo", "--k", "100"],
        "--k must be an integer in [0, 8] (the base was trained with K=2), got 100",
    ),
    (["demo", "--k", "abc"], "argument --k: invalid int value: 'abc'"),
    (["demo", "--setting", "nope"], "argument --setting: invalid choice: 'nope'"),
    (["demo", "--seed", "-1"], "--seed must be in [0, 2**63 - 1], got -1"),
    (["demo", "--steps", "0"], "SamplingConfig.steps must be in [1, 100000], got 0"),
    (["demo", "--steps", "-3"], "SamplingConfig.steps must be in [1, 100000], got -3"),
    (["demo", "--threads", "abc"], "argument --threads: invalid int value: 'abc'"),
    (["demo", "--threads", "100000"], "--threads must be in [0, 256] (0: all cores), got 100000"),
    # ---- components
    (["components", "--nope"], "unrecognized arguments: --nope"),
    (["components", "extra"], "unrecognized arguments: extra"),
    # ---- presets
    (["presets", "--backend", "nope"], "unknown backend 'nope'; known backend names: jax, torch"),
    (["presets", "--backend", ""], "unknown backend ''; known backend names: jax, torch"),
    (["presets", "extra"], "unrecognized arguments: extra"),
    # ---- kb
    (["kb"], "the following arguments are required: ACTION"),
    (["kb", "nope"], "argument ACTION: invalid choice: 'nope'"),
    (
        ["kb", "build", "--source", "nope"],
        "unknown source 'nope'; known source names: emoji, folder",
    ),
    (["kb", "build", "--source", "folder"], "--folder is required with --source folder"),
    (
        ["kb", "build", "--source", "folder", "--folder", "{t}/missing"],
        "folder= {t}/missing: not found or not a folder",
    ),
    (
        ["kb", "build", "--source", "folder", "--folder", "{t}/afile"],
        "folder= {t}/afile: not found or not a folder",
    ),
    (
        ["kb", "build", "--source", "folder", "--folder", "{t}/emptydir"],
        "{t}/emptydir/captions.jsonl: missing; a folder source needs",
    ),
    (
        ["kb", "build", "--source", "folder", "--folder", "{t}/badcap", "--out", "{t}/o"],
        "{t}/badcap/captions.jsonl: line 1 is not UTF-8 (byte 0xff); save the",
    ),
    (
        ["kb", "build", "--source", "folder", "--folder", "{t}/malcap", "--out", "{t}/o"],
        "{t}/malcap/captions.jsonl: line 1: not JSON (Expecting value)",
    ),
    (
        ["kb", "build", "--source", "folder", "--folder", "{t}/emptydir", "--limit", "3"],
        "--limit only apply to --source emoji",
    ),
    (["kb", "build", "--folder", "{t}/emptydir"], "--folder only applies to --source folder"),
    (
        ["kb", "build", "--out", "{t}/afile"],
        "--out: {t}/afile is a file; allowed: a folder (existing or new)",
    ),
    (
        ["kb", "build", "--out", "{t}/afile/sub"],
        "--out: {t}/afile is a file, not a folder; allowed: a path whose",
    ),
    (["kb", "build", "--resolution", "0"], "--resolution must be in [4, 1024], got 0"),
    (["kb", "build", "--resolution", "-1"], "--resolution must be in [4, 1024], got -1"),
    (["kb", "build", "--resolution", "3"], "--resolution must be in [4, 1024], got 3"),
    (["kb", "build", "--resolution", "100000"], "--resolution must be in [4, 1024], got 100000"),
    (["kb", "build", "--resolution", "abc"], "argument --resolution: invalid int value: 'abc'"),
    (
        ["kb", "build", "--artists", "nope"],
        "artists= must be distinct names from twemoji, openmoji, noto, fluent;",
    ),
    (
        ["kb", "build", "--artists", ""],
        "artists= must be distinct names from twemoji, openmoji, noto, fluent;",
    ),
    (
        ["kb", "build", "--artists", ","],
        "artists= must be distinct names from twemoji, openmoji, noto, fluent;",
    ),
    (["kb", "build", "--limit", "0"], "limit must be a positive integer, got 0"),
    (["kb", "build", "--limit", "-1"], "limit must be a positive integer, got -1"),
    (["kb", "build", "--limit", "abc"], "argument --limit: invalid int value: 'abc'"),
    (["kb", "build", "--processes", "0"], "--processes must be in [1, 64], got 0"),
    (["kb", "build", "--processes", "-1"], "--processes must be in [1, 64], got -1"),
    (["kb", "build", "--processes", "abc"], "argument --processes: invalid int value: 'abc'"),
    (["kb", "info", "{t}/missing"], "knowledge base folder not found: {t}/missing"),
    (["kb", "info", "{t}/afile"], "knowledge base folder not found: {t}/afile"),
    (
        ["kb", "info", "{t}/emptydir"],
        "{t}/emptydir/kb.json: missing (not a complete knowledge base)",
    ),
    (
        ["kb", "info", "{t}/badkb"],
        "{t}/badkb/SHA256SUMS: missing (a KB built before reimagen recorded",
    ),
    (["kb", "info"], "knowledge base folder not found: {t}/home/kb/emoji"),
    (["kb", "info", "--nope"], "unrecognized arguments: --nope"),
    # ---- retrieve
    (["retrieve", "   "], "PROMPT 1 is empty; allowed: a non-blank text"),
    (["retrieve", "x" * 5000], "PROMPT 1 has 5,000 characters; allowed: at most 1,000"),
    (["retrieve", "x", ""], "PROMPT 2 is empty; allowed: a non-blank text"),
    (["retrieve"], "the following arguments are required: PROMPT"),
    (
        ["retrieve", "x", "--k", "0"],
        "--k must be >= 1 (at most the records indexed; 0 only with --retriever none), got 0",
    ),
    (["retrieve", "x", "--k", "-1"], "--k must be >= 1 (at most the records indexed; 0 only"),
    (["retrieve", "x", "--k", "abc"], "argument --k: invalid int value: 'abc'"),
    (
        ["retrieve", "x", "--encoder", "nope"],
        "unknown encoder 'nope'; known encoder names: hash, minilm",
    ),
    (
        ["retrieve", "x", "--kb", "{t}/missing"],
        "no knowledge base at {t}/missing; build one with `reimagen kb build`",
    ),
    (
        ["retrieve", "x", "--kb", "{t}/afile"],
        "no knowledge base at {t}/afile; build one with `reimagen kb build`",
    ),
    (
        ["retrieve", "x", "--kb", "{t}/emptydir"],
        "{t}/emptydir/kb.json: missing (not a complete knowledge base)",
    ),
    (
        ["retrieve", "x", "--kb", "{t}/badkb"],
        "{t}/badkb/SHA256SUMS: missing (a KB built before reimagen recorded",
    ),
    (
        ["retrieve", "x", "--kb", "{kb}", "--k", "7"],
        "--k: k=7 is larger than the 6 indexed documents; allowed: at most 6",
    ),
    (
        ["retrieve", "x", "--kb", "{kb}", "--view", "nope"],
        "--view: unknown source(s) ['nope']",
    ),
    (
        ["retrieve", "x", "--kb", "{kb}", "--view", ""],
        "--view needs at least one source name, e.g. --view openmoji,noto",
    ),
    (
        ["retrieve", "x", "--kb", "{kb}", "--retriever", "nope"],
        "unknown retriever 'nope'; known retriever names: bm25, bm25-sharded,",
    ),
    (
        ["retrieve", "x", "--kb", "{kb}", "--encoder", "nope"],
        "unknown encoder 'nope'; known encoder names: hash, minilm",
    ),
    (["retrieve", "x", "--kb", "{kb}", "--ivf"], "--ivf only applies to --retriever dense"),
    (
        ["retrieve", "x", "--kb", "{kb}", "--retriever", "bm25", "--encoder", "hash"],
        "--encoder only applies to --retriever dense or hybrid",
    ),
    (
        ["retrieve", "x", "--kb", "{kb}", "--k", "0"],
        "--k must be >= 1 (at most the records indexed; 0 only with",
    ),
    # ---- train
    (["train", "--stage", "nope"], "argument --stage: invalid choice: 'nope'"),
    (
        ["train", "--preset", "nope", "--run-dir", "{t}/run"],
        "unknown preset 'nope'; known preset names: cpu-base, cpu-base-pos, paper-64,",
    ),
    (
        ["train", "--steps", "0", "--run-dir", "{t}/run"],
        "TrainConfig.steps must be in [1, 1000000000], got 0",
    ),
    (["train", "--steps", "abc"], "argument --steps: invalid int value: 'abc'"),
    (
        ["train", "--batch-size", "-1", "--run-dir", "{t}/run"],
        "TrainConfig.batch_size must be in [1, 65536], got -1",
    ),
    (
        ["train", "--batch-size", "100000000", "--run-dir", "{t}/run"],
        "TrainConfig.batch_size must be in [1, 65536], got 100000000",
    ),
    (
        ["train", "--k", "-1", "--run-dir", "{t}/run"],
        "TrainConfig.neighbors must be in [0, 64], got -1",
    ),
    (
        ["train", "--k", "100", "--run-dir", "{t}/run"],
        "TrainConfig.neighbors must be in [0, 64], got 100",
    ),
    (["train", "--k", "abc"], "argument --k: invalid int value: 'abc'"),
    (
        ["train", "--lr", "0", "--run-dir", "{t}/run"],
        "TrainConfig.lr must be in (0.0, 1.0], got 0.0",
    ),
    (
        ["train", "--lr", "-1", "--run-dir", "{t}/run"],
        "TrainConfig.lr must be in (0.0, 1.0], got -1.0",
    ),
    (
        ["train", "--lr", "2", "--run-dir", "{t}/run"],
        "TrainConfig.lr must be in (0.0, 1.0], got 2.0",
    ),
    (
        ["train", "--lr", "inf", "--run-dir", "{t}/run"],
        "TrainConfig.lr must be a finite number in (0.0, 1.0], got inf",
    ),
    (["train", "--lr", "abc"], "argument --lr: invalid float value: 'abc'"),
    (
        ["train", "--warmup", "-1", "--run-dir", "{t}/run"],
        "TrainConfig.warmup_steps must be in [0, 1000000000], got -1",
    ),
    (
        ["train", "--seed", "-1", "--run-dir", "{t}/run"],
        "TrainConfig.seed must be in [0, 9223372036854775807], got -1",
    ),
    (
        ["train", "--checkpoint-every", "0", "--run-dir", "{t}/run"],
        "TrainConfig.checkpoint_every must be in [1, 1000000000], got 0",
    ),
    (
        ["train", "--checkpoint-every", "-1", "--run-dir", "{t}/run"],
        "TrainConfig.checkpoint_every must be in [1, 1000000000], got -1",
    ),
    (["train", "--loss-weighting", "nope"], "argument --loss-weighting: invalid choice: 'nope'"),
    (
        ["train", "--snr-gamma", "0", "--loss-weighting", "min-snr", "--run-dir", "{t}/run"],
        "TrainConfig.snr_gamma must be in (0.0, inf], got 0.0",
    ),
    (
        ["train", "--snr-gamma", "-1", "--loss-weighting", "min-snr", "--run-dir", "{t}/run"],
        "TrainConfig.snr_gamma must be in (0.0, inf], got -1.0",
    ),
    (
        ["train", "--snr-gamma", "nan", "--loss-weighting", "min-snr", "--run-dir", "{t}/run"],
        "TrainConfig.snr_gamma must be in (0.0, inf], got nan",
    ),
    (
        ["train", "--t-shift", "0", "--run-dir", "{t}/run"],
        "TrainConfig.t_shift must be in (0.0, 100.0], got 0.0",
    ),
    (
        ["train", "--t-shift", "-1", "--run-dir", "{t}/run"],
        "TrainConfig.t_shift must be in (0.0, 100.0], got -1.0",
    ),
    (
        ["train", "--t-shift", "nan", "--run-dir", "{t}/run"],
        "TrainConfig.t_shift must be in (0.0, 100.0], got nan",
    ),
    (
        ["train", "--run-dir", "{t}/afile"],
        "--run-dir: {t}/afile is a file; allowed: a folder (existing or new)",
    ),
    (
        ["train", "--run-dir", "{t}/afile/sub"],
        "--run-dir: {t}/afile is a file, not a folder; allowed: a path whose",
    ),
    (
        ["train", "--kb", "{t}/missing", "--run-dir", "{t}/run"],
        "--kb: no knowledge base at {t}/missing; build it with `reimagen kb",
    ),
    (
        ["train", "--kb", "{t}/afile", "--run-dir", "{t}/run"],
        "--kb: no knowledge base at {t}/afile; build it with `reimagen kb",
    ),
    (
        ["train", "--kb", "{t}/emptydir", "--run-dir", "{t}/run"],
        "--kb: no knowledge base at {t}/emptydir; build it with `reimagen kb",
    ),
    (
        ["train", "--kb", "{t}/badkb", "--run-dir", "{t}/run"],
        "{t}/badkb/SHA256SUMS: missing (a KB built before reimagen recorded",
    ),
    (
        ["train", "--encoder", "nope", "--run-dir", "{t}/run"],
        "unknown encoder 'nope'; known encoder names: hash, minilm",
    ),
    (
        ["train", "--data", "nope=1", "--run-dir", "{t}/run"],
        "--data: DataConfig: unknown key(s) nope; allowed: pool_size,",
    ),
    (
        ["train", "--data", "garbage", "--run-dir", "{t}/run"],
        "--data: expected KEY=VALUE items separated by commas, got 'garbage'",
    ),
    (
        ["train", "--data", "", "--run-dir", "{t}/run"],
        "--data: no KEY=VALUE item in ''; allowed: fields of DataConfig",
    ),
    (
        ["train", "--data", "max_aug_level=abc", "--run-dir", "{t}/run"],
        "--data: max_aug_level='abc': DataConfig: must be real number, not str",
    ),
    (
        ["train", "--data", "max_aug_level=5", "--run-dir", "{t}/run"],
        "--data: DataConfig.max_aug_level must be in [0.0, 1.0], got 5.0",
    ),
    (
        ["train", "--backend", "nope", "--run-dir", "{t}/run"],
        "unknown backend 'nope'; known backend names: jax, torch",
    ),
    (
        ["train", "--device", "nope", "--run-dir", "{t}/run"],
        "--device: device must be 'auto', 'cpu' or 'cuda[:N]', got 'nope'",
    ),
    (
        ["train", "--device", "cuda:99", "--run-dir", "{t}/run"],
        "--device: device 'cuda:99'",
    ),
    (["train", "--workers", "-1", "--run-dir", "{t}/run"], "--workers must be in [0, 256], got -1"),
    (
        ["train", "--workers", "100000", "--run-dir", "{t}/run"],
        "--workers must be in [0, 256], got 100000",
    ),
    (
        ["train", "--time-limit", "-1", "--run-dir", "{t}/run"],
        "--time-limit must be > 0 minutes, got -1.0",
    ),
    (
        ["train", "--time-limit", "0", "--run-dir", "{t}/run"],
        "--time-limit must be > 0 minutes, got 0.0",
    ),
    (
        ["train", "--time-limit", "nan", "--run-dir", "{t}/run"],
        "--time-limit must be > 0 minutes, got nan",
    ),
    (
        ["train", "--init-from", "{t}/missing.safetensors", "--run-dir", "{t}/run"],
        "--init-from: no weights file at {t}/missing.safetensors",
    ),
    (
        ["train", "--init-from", "{t}/emptydir", "--run-dir", "{t}/run"],
        "--init-from: no weights file at {t}/emptydir",
    ),
    (
        ["train", "--init-from", "{t}/afile", "--run-dir", "{t}/run"],
        "--init-from: {t}/afile is not a valid safetensors file (Error while",
    ),
    (
        ["train", "--threads", "100000", "--run-dir", "{t}/run"],
        "--threads must be in [0, 256] (0: all cores), got 100000",
    ),
    (["train", "--threads", "abc"], "argument --threads: invalid int value: 'abc'"),
    (
        ["train", "--resume-from", "-1", "--run-dir", "{t}/run"],
        "--resume-from -1: not a committed step of {t}/run (its steps: none)",
    ),
    (["train", "--resume-from", "abc"], "argument --resume-from: invalid int value: 'abc'"),
    (
        ["train", "--resume-from", "5", "--run-dir", "{t}/run"],
        "--resume-from 5: not a committed step of {t}/run (its steps: none)",
    ),
    (
        ["train", "--keep", "0", "--run-dir", "{t}/run"],
        "--keep must be in [1, 1000000] checkpoints, got 0",
    ),
    (
        ["train", "--keep", "-1", "--run-dir", "{t}/run"],
        "--keep must be in [1, 1000000] checkpoints, got -1",
    ),
    (
        ["train", "--export", "{t}/afile/x.safetensors", "--run-dir", "{t}/run"],
        "--export: {t}/afile is a file, not a folder; allowed: a path whose",
    ),
    (
        ["train", "--export", "{t}/emptydir", "--run-dir", "{t}/run"],
        "--export: {t}/emptydir must end in .safetensors",
    ),
    (["train", "--export-only", "--run-dir", "{t}/run"], "weights not found: {t}/run"),
    (
        ["train", "--export-only", "--run-dir", "{t}/emptydir"],
        "no model.safetensors or checkpoints/latest in {t}/emptydir",
    ),
    (
        ["train", "--distributed", "--run-dir", "{t}/run"],
        "--distributed: RANK and WORLD_SIZE are not set; launch with torchrun",
    ),
    (["train", "--nope"], "unrecognized arguments: --nope"),
    # ---- train on a collection ({kb}: six 16 px records, two of them held out)
    (
        ["train", "--kb", "{kb}", "--run-dir", "{t}/run"],
        "--kb: {kb} stores 16px images; the 32px network needs >= 32px",
    ),
    (
        ["train", "--kb", "{kb}", "--preset", "tiny", "--k", "4", "--run-dir", "{t}/run"],
        "--k 4: the training split of {kb} has 4 records; allowed: at most 3",
    ),
    (
        ["train", "--kb", "{kb}", "--stage", "sr", "--run-dir", "{t}/run"],
        "--kb: {kb} stores 16px images; the 64px network needs >= 64px",
    ),
    # ---- bench
    (["bench", "--n", "0"], "--n must be in [1, 10000] (prompts per tier), got 0"),
    (["bench", "--n", "-1"], "--n must be in [1, 10000] (prompts per tier), got -1"),
    (["bench", "--n", "abc"], "argument --n: invalid int value: 'abc'"),
    (["bench", "--prompts", "{t}/emptydir"], "--prompts: no such file: {t}/emptydir"),
    (
        ["bench", "--prompts", "{t}/malformed.jsonl"],
        "{t}/malformed.jsonl:1: not valid JSON (Expecting value)",
    ),
    (
        ["bench", "--prompts", "{t}/empty.jsonl"],
        "{t}/empty.jsonl: no prompts (one JSON object per line: prompt,",
    ),
    (
        ["bench", "--prompts", "{t}/nofields.jsonl"],
        "{t}/nofields.jsonl:1: missing field(s) prompt, entity, background,",
    ),
    (["bench", "--seed", "-1"], "--seed must be in [0, 2**63 - 1], got -1"),
    (["bench", "--seed", "abc"], "argument --seed: invalid int value: 'abc'"),
    (["bench", "--tiers", ""], "--tiers: empty list"),
    (["bench", "--tiers", ","], "--tiers: empty list"),
    (
        ["bench", "--out", "{t}/afile/sub"],
        "--out: {t}/afile is a file, not a folder; allowed: a path whose",
    ),
    (["bench", "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["bench", "--batch-size", "-1"], "--batch-size must be >= 1, got -1"),
    (
        ["bench", "--kb", "{t}/missing"],
        "--kb: no knowledge base at {t}/missing; build it with `reimagen kb",
    ),
    (
        ["bench", "--kb", "{t}/afile"],
        "--kb: no knowledge base at {t}/afile; build it with `reimagen kb",
    ),
    (
        ["bench", "--kb", "{t}/badkb"],
        "{t}/badkb/SHA256SUMS: missing (a KB built before reimagen recorded",
    ),
    (
        ["bench", "--retriever", "nope"],
        "unknown retriever 'nope'; known retriever names: bm25, bm25-sharded,",
    ),
    (["bench", "--encoder", "nope"], "unknown encoder 'nope'; known encoder names: hash, minilm"),
    (["bench", "--backend", "nope"], "unknown backend 'nope'; known backend names: jax, torch"),
    (["bench", "--weights", "{t}/missing"], "--weights: {t}/missing is not a folder (it must hold"),
    (
        ["bench", "--weights", "{t}/afile"],
        "--weights: {t}/afile is not a folder (it must hold base.safetensors,",
    ),
    (
        ["bench", "--weights", "{t}/emptydir"],
        "no base network at {t}/emptydir/base.safetensors; train it with",
    ),
    (
        ["bench", "--evaluator", "nope"],
        "no evaluator at nope (train one: python -m reimagen.bench.evaluator",
    ),
    (["bench", "--evaluator", "{t}/afile"], "no evaluator at {t}/afile (train one: python -m"),
    (["bench", "--threads", "-1"], "--threads must be in [0, 256] (0: all cores), got -1"),
    (["bench", "--k", "a"], "--k: expected comma-separated numbers, got 'a'"),
    (
        ["bench", "--k", "-1"],
        "--k values must be >= 1 (the no-retrieval row is always run), got [-1]",
    ),
    (
        ["bench", "--k", "100"],
        "--k values must be an integer in [1, 8] (the base was trained with K=2), got 100",
    ),
    (["bench", "--k", ""], "--k: empty list"),
    (
        ["bench", "--settings", "nope"],
        "--settings: unknown value(s) ['nope']; allowed: same-style,",
    ),
    (["bench", "--settings", ""], "--settings: empty list"),
    (
        ["bench", "--recall-only", "--retrievers", "nope"],
        "--retrievers: unknown or empty retriever(s) ['nope']; allowed: bm25,",
    ),
    (
        ["bench", "--recall-only", "--retrievers", ""],
        "--retrievers: empty list",
    ),
    (
        ["bench", "--retrievers", "bm25"],
        "--retrievers only applies with --recall-only; bench uses --retriever",
    ),
    (
        ["bench", "--sampler", "nope"],
        "unknown sampler 'nope'; known sampler names: ddim, ddpm, dpmpp2m",
    ),
    (["bench", "--steps", "0"], "SamplingConfig.steps must be in [1, 100000], got 0"),
    (["bench", "--eta", "2"], "SamplingConfig.eta must be in [0.0, 1.0], got 2.0"),
    (
        ["bench", "--guidance", "nope"],
        "unknown guidance 'nope'; known guidance names: interleaved, joint,",
    ),
    (["bench", "--w", "nan"], "SamplingConfig.w must be in [1.0, inf], got nan"),
    (["bench", "--recall-only", "--k", "0"], "--k values must be >= 1, got [0]"),
    (
        ["bench", "--recall-only", "--settings", "nope"],
        "--settings: unknown value(s) ['nope']; allowed: same-style,",
    ),
    # ---- bench on a collection
    (
        ["bench", "--kb", "{kb}"],
        "--kb: {kb} stores 16px images; the 32px network needs >= 32px",
    ),
    (
        ["bench", "--kb", "{kb}", "--prompts", "{t}/empty.jsonl"],
        "--prompts does not apply to a collection --kb: its held-out records are the prompts",
    ),
    (
        ["bench", "--kb", "{kb}", "--recall-only"],
        "--recall-only measures entity recall on the emoji knowledge base; {kb} is a",
    ),
    (
        ["bench", "--kb", "{kb}", "--evaluators", "nope"],
        "--evaluators: unknown value(s) ['nope']; allowed: pixel",
    ),
    (["bench", "--kb", "{kb}", "--evaluators", ""], "--evaluators: empty list"),
    (["bench", "--kb", "{kb}", "--n", "0"], "--n must be in [1, 10000] (held-out records), got 0"),
    (
        ["bench", "--kb", "{kb}", "--k", "100"],
        "--k values must be an integer in [1, 8] (the base was trained with K=2), got 100",
    ),
    (
        ["bench", "--evaluators", "pixel"],
        "--evaluators only applies with a collection --kb (a KB of plain image-caption",
    ),
    # ---- ablate
    (["ablate", "--n", "0"], "--n must be in [1, 10000] (prompts per tier), got 0"),
    (["ablate", "--n", "100000000"], "--n must be in [1, 10000] (prompts per tier), got 100000000"),
    (["ablate", "--n", "abc"], "argument --n: invalid int value: 'abc'"),
    (["ablate", "--prompts", "{t}/missing.jsonl"], "--prompts: no such file: {t}/missing.jsonl"),
    (
        ["ablate", "--prompts", "{t}/bad.jsonl"],
        "{t}/bad.jsonl:1: not UTF-8 (byte 0xff); save the file as UTF-8",
    ),
    (["ablate", "--prompts", "{t}/emptydir"], "--prompts: no such file: {t}/emptydir"),
    (
        ["ablate", "--prompts", "{t}/malformed.jsonl"],
        "{t}/malformed.jsonl:1: not valid JSON (Expecting value)",
    ),
    (
        ["ablate", "--prompts", "{t}/empty.jsonl"],
        "{t}/empty.jsonl: no prompts (one JSON object per line: prompt,",
    ),
    (
        ["ablate", "--tiers", "nope"],
        "--tiers: unknown value(s) ['nope']; allowed: frequent, rare, unseen",
    ),
    (["ablate", "--seed", "-1"], "--seed must be in [0, 2**63 - 1], got -1"),
    (["ablate", "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["ablate", "--threads", "-1"], "--threads must be in [0, 256] (0: all cores), got -1"),
    (
        ["ablate", "--evaluator", "nope"],
        "no evaluator at nope (train one: python -m reimagen.bench.evaluator",
    ),
    (
        ["ablate", "--weights", "{t}/missing"],
        "--weights: {t}/missing is not a folder (it must hold",
    ),
    (
        ["ablate", "--kb", "{t}/missing"],
        "--kb: no knowledge base at {t}/missing; build it with `reimagen kb",
    ),
    (
        ["ablate", "--retriever", "nope"],
        "unknown retriever 'nope'; known retriever names: bm25, bm25-sharded,",
    ),
    (["ablate", "--backend", "nope"], "unknown backend 'nope'; known backend names: jax, torch"),
    (["ablate", "--setting", "nope"], "argument --setting: invalid choice: 'nope'"),
    (["ablate", "--ks", "-1"], "--ks must be >= 0 and --k-ref >= 1, got (-1,) and 2"),
    (["ablate", "--ks", "a"], "--ks: expected comma-separated numbers, got 'a'"),
    (
        ["ablate", "--ks", "100"],
        "--ks values must be an integer in [0, 8] (the base was trained with K=2), got 100",
    ),
    (["ablate", "--ks", ""], "--ks: empty list"),
    (["ablate", "--etas", "2"], "--etas must lie in [0, 1], got (2.0,)"),
    (["ablate", "--etas", "abc"], "--etas: expected comma-separated numbers, got 'abc'"),
    (["ablate", "--etas", "nan"], "--etas must lie in [0, 1], got (nan,)"),
    (
        ["ablate", "--guidances", "nope"],
        "unknown guidance 'nope'; known guidance names: interleaved, joint,",
    ),
    (["ablate", "--guidances", ""], "--guidances: empty list"),
    (
        ["ablate", "--w-neighbors-sweep", "abc"],
        "--w-neighbors-sweep: expected comma-separated numbers, got 'abc'",
    ),
    (
        ["ablate", "--w-neighbors-sweep", "0.5"],
        "--w-neighbors-sweep values must be >= 1, got (0.5,)",
    ),
    (
        ["ablate", "--samplers", "nope@4"],
        "unknown sampler 'nope'; known sampler names: ddim, ddpm, dpmpp2m",
    ),
    (
        ["ablate", "--samplers", "ddpm@0"],
        "--samplers: sampler 'ddpm@0' must be NAME@STEPS with STEPS >= 1, e.g.",
    ),
    (
        ["ablate", "--samplers", "ddpm@abc"],
        "--samplers: sampler 'ddpm@abc' must be NAME@STEPS with STEPS >= 1,",
    ),
    (
        ["ablate", "--samplers", "ddpm"],
        "--samplers: sampler 'ddpm' must be NAME@STEPS with STEPS >= 1, e.g.",
    ),
    (["ablate", "--samplers", ""], "--samplers: no sampler given (e.g. ddpm@256,dpmpp2m@25)"),
    (["ablate", "--k-ref", "-1"], "--ks must be >= 0 and --k-ref >= 1, got (0, 1, 2, 3, 4) and -1"),
    (
        ["ablate", "--k-ref", "100"],
        "--k-ref must be an integer in [1, 8] (the base was trained with K=2), got 100",
    ),
    (
        ["ablate", "--sampler", "nope"],
        "unknown sampler 'nope'; known sampler names: ddim, ddpm, dpmpp2m",
    ),
    (["ablate", "--steps", "0"], "SamplingConfig.steps must be in [1, 100000], got 0"),
    (["ablate", "--eta", "2"], "SamplingConfig.eta must be in [0.0, 1.0], got 2.0"),
    (
        ["ablate", "--out", "{t}/afile/sub"],
        "--out: {t}/afile is a file, not a folder; allowed: a path whose",
    ),
    (
        ["ablate", "--samplers", "ddpm@100000000"],
        "SamplingConfig.steps must be in [1, 100000], got 100000000",
    ),
]


@pytest.fixture
def no_forward(monkeypatch):
    """A spy: any U-Net forward during a rejected command fails the test."""

    def forbidden(*args, **kwargs):
        raise AssertionError("a network forward ran before the bad input was rejected")

    monkeypatch.setattr(ReImagenUNet, "forward", forbidden)


@pytest.fixture(scope="module")
def kb_folder(tmp_path_factory):
    return toy_kb(tmp_path_factory.mktemp("toykb") / "kb").folder


def _ids(cases):
    ids, seen = [], {}
    for argv in (c[0] for c in cases):
        name = " ".join(a if len(a) < 40 else a[:12] + "..." for a in argv)[:70]
        seen[name] = seen.get(name, 0) + 1
        ids.append(name if seen[name] == 1 else f"{name} #{seen[name]}")
    return ids


@pytest.mark.parametrize("argv, message", CASES, ids=_ids(CASES))
def test_rejected_in_one_line_before_any_work(
    argv, message, tmp_path, monkeypatch, capsys, no_forward, kb_folder
):
    home = tmp_path / "home"
    monkeypatch.setenv("REIMAGEN_HOME", str(home))  # a fresh machine: no KB, no run folders
    _files(tmp_path)
    before, kb_before = _tree(tmp_path), _tree(kb_folder)

    def fill(text):
        return text.replace("{t}", str(tmp_path)).replace("{kb}", str(kb_folder))

    assert main([fill(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "error" in err and fill(message) in err, err
    assert _tree(tmp_path) == before  # nothing written (no run dir, no output folder)
    assert _tree(kb_folder) == kb_before  # no index built beside the KB
    assert not home.exists() or not any(home.rglob("*"))


def test_the_matrix_covers_every_command():
    commands = {c[0][0] if c[0][0] != "kb" or len(c[0]) < 2 else f"kb {c[0][1]}" for c in CASES}
    assert commands >= {
        "generate",
        "demo",
        "components",
        "presets",
        "kb build",
        "kb info",
        "retrieve",
        "train",
        "bench",
        "ablate",
    }
    assert len(CASES) >= 166


# ---- the public Python entry points: (id, call(ctx), exception type, a substring of its message).
# ctx: t (the temporary folder, with _files), kb (the toy KnowledgeBase), weights (a tiny base
# stage exported beside it), pipe (no retriever), rpipe (bm25 over the toy KB), sr (an SR stage).
API_CASES = [
    ("load name", lambda c: reimagen.load("nope"), ValueError, "name must be one of default"),
    ("load name type", lambda c: reimagen.load(5), ValueError, "name must be one of default"),
    ("load k<0", lambda c: reimagen.load(k=-1), ValueError, "k must be an integer in [0, 8]"),
    ("load k big", lambda c: reimagen.load(k=100), ValueError, "k must be an integer in [0, 8]"),
    ("load k str", lambda c: reimagen.load(k="2"), ValueError, "k must be an integer in [0, 8]"),
    ("load k float", lambda c: reimagen.load(k=2.0), ValueError, "k must be an integer in [0, 8]"),
    (
        "load backend",
        lambda c: reimagen.load(backend="tpu"),
        RegistryError,
        "unknown backend 'tpu'",
    ),
    ("load setting", lambda c: reimagen.load(setting="x"), ValueError, "setting must be one of"),
    ("load retriever", lambda c: reimagen.load(retriever="x"), RegistryError, "unknown retriever"),
    ("load encoder", lambda c: reimagen.load(encoder="x"), RegistryError, "unknown encoder 'x'"),
    (
        "load kb missing",
        lambda c: reimagen.load(kb=c.t / "missing"),
        FileNotFoundError,
        "kb: no knowledge base at {t}/missing",
    ),
    (
        "load kb file",
        lambda c: reimagen.load(kb=c.t / "afile"),
        FileNotFoundError,
        "kb: no knowledge base at {t}/afile",
    ),
    (
        "load kb damaged",
        lambda c: reimagen.load(kb=c.t / "badkb"),
        KnowledgeBaseError,
        "{t}/badkb/SHA256SUMS: missing",
    ),
    ("load kb type", lambda c: reimagen.load(kb=5), TypeError, "kb must be a KnowledgeBase or"),
    (
        "load none k2",
        lambda c: reimagen.load(retriever="none", k=2),
        ValueError,
        "retriever 'none' retrieves no neighbours; use k=0",
    ),
    (
        "from_pretrained missing",
        lambda c: Pipeline.from_pretrained(c.t / "missing.safetensors"),
        FileNotFoundError,
        "weights not found: {t}/missing.safetensors",
    ),
    (
        "from_pretrained text file",
        lambda c: Pipeline.from_pretrained(c.t / "afile"),
        UnsafeFileError,
        "{t}/afile is not a valid safetensors file",
    ),
    (
        "from_pretrained not weights",
        lambda c: Pipeline.from_pretrained(c.t / "notweights.safetensors"),
        UnsafeFileError,
        "{t}/notweights.safetensors is not a valid safetensors file",
    ),
    (
        "from_pretrained empty folder",
        lambda c: Pipeline.from_pretrained(c.t / "emptydir"),
        FileNotFoundError,
        "no model.safetensors or checkpoints/latest in {t}/emptydir",
    ),
    (
        "from_pretrained None",
        lambda c: Pipeline.from_pretrained(None),
        TypeError,
        "weights must be a path",
    ),
    (
        "from_pretrained backend",
        lambda c: Pipeline.from_pretrained(c.weights, backend="tpu"),
        RegistryError,
        "unknown backend 'tpu'",
    ),
    (
        "from_pretrained encoder",
        lambda c: Pipeline.from_pretrained(c.weights, encoder="x"),
        RegistryError,
        "unknown encoder 'x'",
    ),
    (
        "from_pretrained retriever",
        lambda c: Pipeline.from_pretrained(c.weights, kb=c.kb.folder, retriever="x"),
        RegistryError,
        "unknown retriever 'x'",
    ),
    (
        "from_pretrained setting",
        lambda c: Pipeline.from_pretrained(
            c.weights, kb=c.kb.folder, retriever="bm25", setting="x"
        ),
        SplitError,
        "setting must be one of same-style, cross-style",
    ),
    (
        "from_pretrained kb missing",
        lambda c: Pipeline.from_pretrained(c.weights, kb=c.t / "no"),
        FileNotFoundError,
        "kb: no knowledge base at {t}/no",
    ),
    (
        "from_pretrained retriever no kb",
        lambda c: Pipeline.from_pretrained(c.weights, retriever="bm25"),
        ValueError,
        "retriever 'bm25' needs a knowledge base; pass kb",
    ),
    (
        "generate bare str",
        lambda c: c.pipe.generate("x", k=0),
        TypeError,
        "prompts must be a sequence of strings, not a single string",
    ),
    ("generate no prompts", lambda c: c.pipe.generate([], k=0), ValueError, "prompts is empty"),
    ("generate empty", lambda c: c.pipe.generate([""], k=0), ValueError, "prompt 0 is ''"),
    ("generate blank", lambda c: c.pipe.generate(["x", "  "], k=0), ValueError, "prompt 1 is '  '"),
    ("generate int prompt", lambda c: c.pipe.generate([1], k=0), ValueError, "prompt 0 is 1"),
    (
        "generate None prompt",
        lambda c: c.pipe.generate([None], k=0),
        ValueError,
        "prompt 0 is None",
    ),
    (
        "generate huge",
        lambda c: c.pipe.generate(["x" * 5000], k=0),
        ValueError,
        "prompt 0 has 5,000 characters; allowed: at most 1,000",
    ),
    (
        "generate k<0",
        lambda c: c.rpipe.generate(["x"], k=-1),
        ValueError,
        "k must be an integer >= 0, got -1",
    ),
    (
        "generate k > KB",
        lambda c: c.rpipe.generate(["x"], k=7),
        ValueError,
        "k=7 is larger than the 6 indexed documents",
    ),
    (
        "generate k huge",
        lambda c: c.rpipe.generate(["x"], k=100),
        ValueError,
        "k=100 is larger than the 6 indexed documents",
    ),
    (
        "generate k str",
        lambda c: c.rpipe.generate(["x"], k="2"),
        ValueError,
        "k must be an integer >= 0, got '2'",
    ),
    (
        "generate k float",
        lambda c: c.rpipe.generate(["x"], k=1.5),
        ValueError,
        "k must be an integer >= 0, got 1.5",
    ),
    (
        "generate k bool",
        lambda c: c.rpipe.generate(["x"], k=True),
        ValueError,
        "k must be an integer >= 0, got True",
    ),
    (
        "generate k no retriever",
        lambda c: c.pipe.generate(["x"], k=2),
        ValueError,
        "k=2 needs a retriever or neighbor_rows",
    ),
    (
        "generate sampling str",
        lambda c: c.pipe.generate(["x"], k=0, sampling="ddpm"),
        TypeError,
        "sampling must be a SamplingConfig, got str",
    ),
    (
        "generate sampler",
        lambda c: c.pipe.generate(["x"], k=0, sampling=SamplingConfig(sampler="x")),
        RegistryError,
        "unknown sampler 'x'",
    ),
    (
        "generate guidance",
        lambda c: c.pipe.generate(["x"], k=0, sampling=SamplingConfig(guidance="x")),
        RegistryError,
        "unknown guidance 'x'",
    ),
    (
        "SamplingConfig steps",
        lambda c: SamplingConfig(steps=0),
        ConfigError,
        "SamplingConfig.steps must be in [1, 100000], got 0",
    ),
    (
        "SamplingConfig eta",
        lambda c: SamplingConfig(eta=2.0),
        ConfigError,
        "SamplingConfig.eta must be in [0.0, 1.0], got 2.0",
    ),
    (
        "SamplingConfig w nan",
        lambda c: SamplingConfig(w=float("nan")),
        ConfigError,
        "SamplingConfig.w must be in [1.0, inf], got nan",
    ),
    (
        "generate seed<0",
        lambda c: c.pipe.generate(["x"], k=0, seed=-1),
        ValueError,
        "seed must be an integer >= 0, got -1",
    ),
    (
        "generate seed str",
        lambda c: c.pipe.generate(["x"], k=0, seed="a"),
        ValueError,
        "seed must be an integer >= 0, got 'a'",
    ),
    (
        "generate seed float",
        lambda c: c.pipe.generate(["x"], k=0, seed=1.5),
        ValueError,
        "seed must be an integer >= 0, got 1.5",
    ),
    (
        "generate rows shape",
        lambda c: c.pipe.generate(["x"], k=2, neighbor_rows=np.zeros((1, 3), np.int64)),
        ValueError,
        "neighbor_rows must have shape [1, 2] ([B, K]), got [1, 3]",
    ),
    (
        "generate rows dtype",
        lambda c: c.pipe.generate(["x"], k=2, neighbor_rows=np.zeros((1, 2))),
        ValueError,
        "neighbor_rows must be integer KB rows, got dtype float64",
    ),
    (
        "generate rows range",
        lambda c: c.pipe.generate(["x"], k=2, neighbor_rows=np.array([[0, 99]])),
        KnowledgeBaseError,
        "row 99 out of range: this KB has rows 0..5",
    ),
    (
        "generate rows negative",
        lambda c: c.pipe.generate(["x"], k=2, neighbor_rows=np.array([[0, -1]])),
        KnowledgeBaseError,
        "row -1 out of range: this KB has rows 0..5",
    ),
    (
        "generate indices length",
        lambda c: c.pipe.generate(["x"], k=0, indices=[0, 1]),
        ValueError,
        "indices must give one index per prompt (1), got 2",
    ),
    (
        "generate indices negative",
        lambda c: c.pipe.generate(["x"], k=0, indices=[-1]),
        ValueError,
        "indices must be integers >= 0, got -1",
    ),
    (
        "generate indices str",
        lambda c: c.pipe.generate(["x"], k=0, indices=["a"]),
        ValueError,
        "indices must be integers >= 0, got 'a'",
    ),
    (
        "generate indices float",
        lambda c: c.pipe.generate(["x"], k=0, indices=[0.5]),
        ValueError,
        "indices must be integers >= 0, got 0.5",
    ),
    (
        "generate indices twice",
        lambda c: c.pipe.generate(["x", "y"], k=0, indices=[1, 1]),
        ValueError,
        "indices must be distinct, got [1, 1]",
    ),
    (
        "generate lowres on a base stage",
        lambda c: c.pipe.generate(["x"], k=0, lowres=np.zeros((1, 8, 8, 3), np.float32)),
        ValueError,
        "lowres only applies to a super-resolution stage",
    ),
    (
        "sr generate no lowres",
        lambda c: c.sr.generate(["x"], k=0),
        ValueError,
        "lowres images are required by a super-resolution stage",
    ),
    (
        "sr generate lowres shape",
        lambda c: c.sr.generate(["x"], k=0, lowres=np.zeros((1, 4, 4, 3), np.float32)),
        ValueError,
        "lowres must have shape [1, 8, 8, 3] ([B, h, w, 3]), got [1, 4, 4, 3]",
    ),
    (
        "sr generate lowres dtype",
        lambda c: c.sr.generate(["x"], k=0, lowres=np.zeros((1, 8, 8, 3), np.uint8)),
        ValueError,
        "lowres must be floats in [-1, 1], got dtype uint8",
    ),
    (
        "sr generate lowres nan",
        lambda c: c.sr.generate(["x"], k=0, lowres=np.full((1, 8, 8, 3), np.nan, np.float32)),
        ValueError,
        "lowres must be finite floats in [-1, 1], got NaN or Inf",
    ),
    ("retrieve empty", lambda c: c.rpipe.retrieve([""], 1), ValueError, "prompt 0 is ''"),
    (
        "retrieve k<0",
        lambda c: c.rpipe.retrieve(["x"], -1),
        ValueError,
        "k must be an integer >= 0, got -1",
    ),
    (
        "retrieve k > KB",
        lambda c: c.rpipe.retrieve(["x"], 100),
        ValueError,
        "k=100 is larger than the 6 indexed documents",
    ),
    (
        "KnowledgeBase.open missing",
        lambda c: KnowledgeBase.open(c.t / "missing"),
        KnowledgeBaseError,
        "knowledge base folder not found: {t}/missing",
    ),
    (
        "KnowledgeBase.open file",
        lambda c: KnowledgeBase.open(c.t / "afile"),
        KnowledgeBaseError,
        "knowledge base folder not found: {t}/afile",
    ),
    (
        "KnowledgeBase.open empty",
        lambda c: KnowledgeBase.open(c.t / "emptydir"),
        KnowledgeBaseError,
        "{t}/emptydir/kb.json: missing",
    ),
    (
        "KnowledgeBase.open damaged",
        lambda c: KnowledgeBase.open(c.t / "badkb"),
        KnowledgeBaseError,
        "{t}/badkb/SHA256SUMS: missing",
    ),
    (
        "KnowledgeBase.open None",
        lambda c: KnowledgeBase.open(None),
        TypeError,
        "folder must be a knowledge-base folder (str or os.PathLike), got NoneType",
    ),
    (
        "KnowledgeBase.open int",
        lambda c: KnowledgeBase.open(5),
        TypeError,
        "folder must be a knowledge-base folder (str or os.PathLike), got int",
    ),
    (
        "get kind",
        lambda c: reimagen.get("nope", "x"),
        RegistryError,
        "unknown component kind 'nope'; known kinds: retriever",
    ),
    ("get kind int", lambda c: reimagen.get(5, "x"), RegistryError, "unknown component kind 5"),
    (
        "get name",
        lambda c: reimagen.get("sampler", "x"),
        RegistryError,
        "unknown sampler 'x'; known sampler names: ddim, ddpm, dpmpp2m",
    ),
    (
        "get empty name",
        lambda c: reimagen.get("sampler", ""),
        RegistryError,
        "unknown sampler ''; known sampler names",
    ),
    (
        "get None name",
        lambda c: reimagen.get("sampler", None),
        RegistryError,
        "unknown sampler None; known sampler names",
    ),
    (
        "get list name",
        lambda c: reimagen.get("sampler", []),
        RegistryError,
        "unknown sampler []; known sampler names",
    ),
    (
        "names kind",
        lambda c: reimagen.names("nope"),
        RegistryError,
        "unknown component kind 'nope'",
    ),
]


@pytest.fixture(scope="module")
def api(kb_folder, tmp_path_factory):
    from reimagen.core import registry

    kb = KnowledgeBase.open(kb_folder)
    weights = export_stage(
        tmp_path_factory.mktemp("weights") / "base.safetensors", TINY_BASE, "base"
    )
    bm25 = registry.get("retriever", "bm25")().fit(kb)
    return types.SimpleNamespace(
        kb=kb,
        weights=weights,
        pipe=toy_pipeline(kb, TINY_BASE),
        rpipe=toy_pipeline(kb, TINY_BASE, retriever=bm25),
        sr=toy_pipeline(kb, TINY_SR),
    )


@pytest.mark.parametrize(
    "call, error, message", [c[1:] for c in API_CASES], ids=[c[0] for c in API_CASES]
)
def test_python_entry_points_refuse_in_one_line(
    call, error, message, api, tmp_path, monkeypatch, no_forward
):
    home = tmp_path / "home"
    monkeypatch.setenv("REIMAGEN_HOME", str(home))
    _files(tmp_path)
    before, kb_before = _tree(tmp_path), _tree(api.kb.folder)
    with pytest.raises(error) as raised:
        call(types.SimpleNamespace(**vars(api), t=tmp_path))
    text = str(raised.value)
    assert len(text.splitlines()) == 1, text
    assert message.replace("{t}", str(tmp_path)) in text, text
    assert _tree(tmp_path) == before and _tree(api.kb.folder) == kb_before
    assert not home.exists() or not any(home.rglob("*"))
