"""``reimagen train``: train one stage of the default cascade on the emoji knowledge base.

    reimagen train --stage base      Re-Imagen 32×32, K neighbours per example (paper §3.2)
    reimagen train --stage baseline  the same network with no retrieval (the "Imagen" row)
    reimagen train --stage sr        32→64 super-resolution with noise-conditioning augmentation
    reimagen train --kb KB ...       the same stages on your own collection: a KB of plain
                                     image-caption records (kb build --source folder), each
                                     record an example with its K retrieved neighbours
                                     (reimagen.training.folder_data); run.json records the KB

Resumable: rerunning the same command continues from the run folder's latest committed
checkpoint, bit-identically. ``--export`` writes the EMA weights as the shipped stage file.

Data parallel (torch): ``torchrun --nproc-per-node N -m reimagen.cli.main train --distributed
...`` runs one rank per process (gloo on the CPU, nccl with ``--device cuda``); ``--batch-size``
is the global batch, split evenly over the ranks; rank 0 writes the checkpoints.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

from reimagen.cli.main import UserError
from reimagen.cli.train_options import add_train_arguments
from reimagen.core import registry
from reimagen.core.paths import home
from reimagen.training.contract import TrainConfig
from reimagen.training.run_record import parse_data_overrides, run_facts
from reimagen.training.run_setup import STAGE_PRESET, check_init_weights

if TYPE_CHECKING:
    from reimagen.core.backend import ModelBackend
    from reimagen.core.unet_config import UNetConfig


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "train",
        help="train a stage of the cascade (resumable)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_train_arguments(parser)
    parser.set_defaults(func=run)


@attrs.frozen
class _Plan:
    """A run as the flags ask for it, every cheap check passed (before the KB is opened)."""

    backend: ModelBackend
    preset: str
    model_config: UNetConfig  # text_dim following the encoder
    config: TrainConfig
    run_dir: Path
    export: Path | None
    encoder: str
    overrides: dict | None  # --data as given (None: the run's or the defaults)
    data: object  # the DataConfig the run trains with
    options: dict  # the backend's train() options


def run(args) -> int:
    from reimagen.cli.common import check_out_folder, check_threads
    from reimagen.training.run_setup import with_text_encoder

    check_threads(args.threads)
    backend = registry.get("backend", args.backend)()
    preset = args.preset or STAGE_PRESET[args.stage]
    model_config = registry.get("preset", preset)()
    config = _train_config(args)
    if (args.stage == "sr") != model_config.is_super_resolution:
        raise UserError(f"--preset {preset} does not fit --stage {args.stage}")
    run_dir = check_out_folder(args.run_dir or home() / "runs" / args.stage, "--run-dir")
    export = _export_path(args)
    if args.encoder:
        registry.get("encoder", args.encoder)
    overrides = parse_data_overrides(args.data)
    # checked here; recorded below, once every other check has passed
    encoder, data = run_facts(run_dir, args.encoder, overrides, record=False)
    if args.export_only:
        return _export_only(args, backend, run_dir, export, encoder, data)
    model_config = with_text_encoder(model_config, encoder)
    options = {
        **_loop_options(args, backend, model_config, preset, run_dir),
        **_distributed_options(args, backend, config.batch_size),
    }
    check_composer(args, backend)
    if args.threads:  # checked above
        import torch

        torch.set_num_threads(args.threads)
    return _train(
        args,
        _Plan(
            backend,
            preset,
            model_config,
            config,
            run_dir,
            export,
            encoder,
            overrides,
            data,
            options,
        ),
    )


def _train_config(args) -> TrainConfig:
    return TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        neighbors=0 if args.stage == "baseline" else args.k,
        lr=args.lr,
        seed=args.seed,
        warmup_steps=args.warmup,
        bf16=args.bf16,
        checkpoint_every=args.checkpoint_every,
        loss_weighting=args.loss_weighting,
        snr_gamma=args.snr_gamma,
        t_shift=args.t_shift,
    )


def _export_only(args, backend, run_dir: Path, export: Path | None, encoder: str, data) -> int:
    from reimagen.training.export import default_export_path
    from reimagen.training.run_record import recorded_kb

    if args.resume_from is not None:
        raise UserError(
            "--resume-from rewinds a run to train on; it does not combine with "
            "--export-only (which exports the latest step)"
        )
    if recorded_kb(run_dir) is not None:  # a collection run: never the shipped file
        export = _collection_export(args, run_dir, export)
    return _export(
        backend, run_dir, export or default_export_path(args.stage), encoder, args.stage, data
    )


def _train(args, plan: _Plan) -> int:
    """Open the KB and build the batch source (distributed: rank 0 first), record the run,
    train, export."""
    rank = _join(args)  # distributed: rank 0 builds the source's caches before the others
    if rank > 0:
        _barrier()
    kb, collection, source, options, export = _open_source(args, plan)
    if args.distributed and rank == 0:
        _barrier()
    config, model_config = plan.config, plan.model_config
    print(
        f"training {args.stage} ({plan.preset}, "
        f"{plan.backend.param_count(model_config) / 1e6:.2f}M params, "
        f"K={config.neighbors}) into {plan.run_dir}"
    )
    if collection is not None:
        print(
            f"collection {kb.folder}: {len(source.train_rows):,} training records, "
            f"{len(source.held_out_rows):,} held out; neighbours {source.triples_status}"
        )
    run_facts(plan.run_dir, plan.encoder, plan.overrides, kb=collection)  # the run starts
    result = plan.backend.train(model_config, config, source, plan.run_dir, resume=True, **options)
    print(result)
    if export and rank == 0:
        _export(plan.backend, plan.run_dir, export, plan.encoder, args.stage, plan.data)
    if args.distributed:
        from reimagen.backends.torch import distributed

        distributed.shutdown()
    return 0


def _open_source(args, plan: _Plan) -> tuple:
    """(kb, collection facts, BatchSource, train() options, export path): the KB checked
    against the run's record before any build (reimagen.training.run_setup)."""
    from reimagen.cli import common
    from reimagen.training.run_setup import build_source, collection_facts

    kb = common.open_kb(args.kb, verify=args.verify_kb)
    collection = collection_facts(kb)  # None: the emoji KB (scene composer)
    run_facts(plan.run_dir, plan.encoder, plan.overrides, record=False, kb=collection)
    export, options = plan.export, plan.options
    if collection is not None:
        if args.composer != "host":
            raise UserError(
                "--composer device composes emoji scenes; a collection KB trains "
                "with --composer host"
            )
        export = _collection_export(args, plan.run_dir, export)
    source = build_source(
        args.stage, kb, collection, plan.encoder, plan.config, plan.model_config, plan.data
    )
    if collection is None:
        source, options = composed_on(args.composer, source, options)
    return kb, collection, source, options, export


def _join(args) -> int:
    """--distributed: join torchrun's process group; this process's rank (0 otherwise)."""
    if not args.distributed:
        return 0
    from reimagen.backends.torch import distributed

    return distributed.init(args.device).rank


def _barrier() -> None:
    from reimagen.backends.torch import distributed

    distributed.barrier()


def _distributed_options(args, backend, batch_size: int) -> dict:
    """--distributed checks (one line each), before any process group is joined."""
    import os

    world = os.environ.get("WORLD_SIZE", "")
    if not args.distributed:
        if world.isdigit() and int(world) > 1:
            raise UserError(
                f"WORLD_SIZE={world} (started by torchrun?): pass --distributed "
                "so the processes train one model together"
            )
        return {}
    if backend.name != "torch":
        raise UserError(f"--distributed: only the torch backend, got --backend {backend.name}")
    from reimagen.backends.torch import distributed

    if not distributed.launched() or not world.isdigit():
        raise UserError(
            "--distributed: RANK and WORLD_SIZE are not set; launch with "
            "torchrun --nproc-per-node N -m reimagen.cli.main train --distributed"
        )
    if args.time_limit is not None:
        raise UserError("--time-limit cannot be combined with --distributed")
    if batch_size % int(world):
        raise UserError(
            f"--batch-size {batch_size} must be divisible by the world size "
            f"{world} (torchrun processes)"
        )
    if args.device not in ("cpu", "cuda", "auto"):
        raise UserError(
            f"--device must be cpu, cuda or auto with --distributed (rank i takes "
            f"cuda:LOCAL_RANK), got {args.device}"
        )
    return {"distributed": True}


def _loop_options(args, backend, model_config, preset: str, run_dir: Path) -> dict:
    """TrainLoop / backend options from the flags (checked before any heavy work)."""
    if not 0 <= args.workers <= 256:
        raise UserError(f"--workers must be in [0, 256], got {args.workers}")
    if args.time_limit is not None and not args.time_limit > 0:
        raise UserError(f"--time-limit must be > 0 minutes, got {args.time_limit}")
    options = {"workers": args.workers, "keep": args.keep}
    if not 1 <= args.keep <= 1_000_000:
        raise UserError(f"--keep must be in [1, 1000000] checkpoints, got {args.keep}")
    if args.resume_from is not None:
        options["resume_from"] = check_resume_from(args, run_dir)
    if args.init_from is not None:
        if backend.name != "torch":
            raise UserError("--init-from: only the torch backend takes initial weights")
        options["init_weights"] = check_init_weights(args.init_from, backend, model_config, preset)
    if args.time_limit is not None:
        options["time_limit"] = args.time_limit * 60.0
    if args.device != "cpu":
        if backend.name != "torch":
            raise UserError(f"--device {args.device}: only the torch backend takes a device")
        from reimagen.backends.torch.trainer import resolve_device

        try:
            options["device"] = resolve_device(args.device)
        except ValueError as err:
            raise UserError(f"--device: {err}") from None
    return options


def check_composer(args, backend) -> None:
    """--composer device: one torch process composing base-stage scenes (one line each)."""
    if args.composer == "host":
        return
    if backend.name != "torch":
        raise UserError(f"--composer device: only the torch backend, got --backend {backend.name}")
    if args.stage == "sr":
        raise UserError(
            "--composer device: only --stage base or baseline (sr composes on the host)"
        )
    if args.distributed:
        raise UserError("--composer device cannot be combined with --distributed")


def composed_on(composer: str, source, options: dict) -> tuple:
    """(BatchSource, trainer options) for --composer: ``device`` composes on the training
    device, and its --workers draw the steps' random choices ahead (the trainer's none)."""
    if composer == "host":
        return source, options
    from reimagen.backends.torch.scene_composer import DeviceBatchSource

    device = options.get("device", "cpu")
    print(f"composing scenes on {device} (atlas of {len(source.entities)} drawings)")
    source = DeviceBatchSource(source, device, workers=options.get("workers", 0))
    return source, {**options, "workers": 0}


def check_resume_from(args, run_dir: Path) -> int:
    """--resume-from STEP: a committed step of the run, on one process."""
    from reimagen.training.run_setup import check_resume_step

    if args.distributed:
        raise UserError(
            "--resume-from cannot be combined with --distributed: rewind in one "
            "process first (reimagen train --resume-from STEP --steps STEP)"
        )
    return check_resume_step(run_dir, args.resume_from)


def _collection_export(args, run_dir: Path, export: Path | None) -> Path | None:
    """A collection run's bare --export goes to <run-dir>/<stage>.safetensors, never over the
    shipped emoji weights (bench --kb --weights <run-dir> then finds it)."""
    from reimagen.cli.common import check_out_file
    from reimagen.training.export import collection_export_path

    bare = str(args.export) == "-" or (args.export is None and args.export_only)
    if not bare:
        return export
    return check_out_file(collection_export_path(run_dir, args.stage), "--export")


def _export_path(args) -> Path | None:
    from reimagen.cli.common import check_out_file
    from reimagen.training.export import default_export_path

    if args.export is None:
        return None
    path = default_export_path(args.stage) if str(args.export) == "-" else args.export
    if path.suffix != ".safetensors":
        raise UserError(f"--export: {path} must end in .safetensors")
    return check_out_file(path, "--export")


def _export(backend, run_dir: Path, path: Path, encoder: str, stage: str, data=None) -> int:
    from reimagen.training.export import export_stage

    export_stage(backend, run_dir, path, encoder, stage, data)
    print(f"exported EMA weights of {run_dir} to {path} (float16, encoder {encoder})")
    return 0
