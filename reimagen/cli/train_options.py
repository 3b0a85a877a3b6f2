"""The options of ``reimagen train``, in four groups (``reimagen train --help`` lists them in this
order): the recipe (TrainConfig's fields), the data, the machine, the run's checkpoints.
reimagen.cli.train checks them and runs the training.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from reimagen.training.run_setup import STAGE_PRESET


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Every option of ``reimagen train``, group by group."""
    _add_recipe_arguments(parser)
    _add_data_arguments(parser)
    _add_machine_arguments(parser)
    _add_run_arguments(parser)


def _add_recipe_arguments(parser) -> None:
    """The network and the optimisation: TrainConfig's fields."""
    parser.add_argument("--stage", default="base", choices=tuple(STAGE_PRESET))
    parser.add_argument(
        "--preset", help="network preset (default: cpu-base for base/baseline, sr-small for sr)"
    )
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--k", type=int, default=2, help="neighbours per example (base, sr)")
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument(
        "--warmup", type=int, default=500, help="linear learning-rate warm-up steps"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="bf16 autocast (AMX on this CPU)",
    )
    parser.add_argument("--checkpoint-every", type=int, default=200)
    parser.add_argument(
        "--loss-weighting",
        default="uniform",
        choices=("uniform", "min-snr"),
        help="per-row weight of the ε-MSE: uniform (paper Eq. 2) or min(SNR, γ)/SNR (Min-SNR-γ)",
    )
    parser.add_argument(
        "--snr-gamma", type=float, default=5.0, help="γ of --loss-weighting min-snr"
    )
    parser.add_argument(
        "--t-shift",
        type=float,
        default=1.0,
        help="noise-level shift s: log-SNR of the drawn t moved by −2·ln s "
        "(s > 1: more high-noise levels, where identity is decided)",
    )


def _add_data_arguments(parser) -> None:
    """Where the run lives and what it trains on: run folder, KB, text encoder, data recipe."""
    parser.add_argument("--run-dir", type=Path, help="default: <home>/runs/<stage>")
    parser.add_argument(
        "--kb",
        type=Path,
        help="knowledge base (default: the emoji KB); a KB "
        "of plain image-caption records (kb build --source folder) trains on its "
        "own records, 10%% held out for bench --kb (docs/own-data.md)",
    )
    parser.add_argument(
        "--no-verify-kb",
        dest="verify_kb",
        action="store_false",
        help="skip the sha256 check of every KB file (a KB copied without "
        "its images/ folder, e.g. to a GPU machine)",
    )
    parser.add_argument(
        "--encoder",
        default=None,
        help="registered text encoder name, e.g. hash, minilm, or t5 (its "
        "local folder in REIMAGEN_T5_PATH) (default: the run's, else hash)",
    )
    parser.add_argument(
        "--data",
        default=None,
        metavar="KEY=VALUE,...",
        help="training-recipe overrides, fields of reimagen.training.data."
        "DataConfig, e.g. p_same_style=0.75,p_drop_name=0.75 (default: the "
        "run's, else the DataConfig defaults)",
    )


def _add_machine_arguments(parser) -> None:
    """Backend, device, workers, processes; initial weights."""
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--device", default="cpu", help="torch: cpu | cuda[:N] | auto")
    parser.add_argument(
        "--workers", type=int, default=0, help="processes composing batches ahead (0: inline)"
    )
    parser.add_argument(
        "--composer",
        default="host",
        choices=("host", "device"),
        help="where base/baseline scenes are composed: host (numpy, in the "
        "--workers) or device (tensors on --device; the workers only draw each "
        "step's random choices); the batches are bit-identical",
    )
    parser.add_argument(
        "--time-limit",
        type=float,
        default=None,
        metavar="MINUTES",
        help="checkpoint and stop after this many minutes (resume later)",
    )
    parser.add_argument(
        "--init-from",
        type=Path,
        default=None,
        metavar="WEIGHTS",
        help="start a new run from these weights (fresh optimizer; torch)",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    parser.add_argument(
        "--distributed",
        action="store_true",
        help="torch DDP over the processes torchrun started (gloo on cpu, "
        "nccl on cuda); --batch-size is the global batch",
    )


def _add_run_arguments(parser) -> None:
    """Checkpoints kept, rewinding, exporting."""
    parser.add_argument(
        "--resume-from",
        type=int,
        default=None,
        metavar="STEP",
        help="resume from this committed step instead of the latest (a run "
        "that diverged; pass a lower --lr): later steps are moved to "
        "checkpoints/rewound-STEP-N/, not deleted",
    )
    parser.add_argument(
        "--keep",
        type=int,
        default=2,
        help="committed checkpoints kept (the newest); more leaves more steps to --resume-from",
    )
    parser.add_argument(
        "--export",
        type=Path,
        nargs="?",
        const=Path("-"),
        help="after training, write the EMA weights to this .safetensors "
        "(no value: the shipped file for the stage)",
    )
    parser.add_argument(
        "--export-only",
        action="store_true",
        help="only export the run's latest checkpoint, do not train",
    )
