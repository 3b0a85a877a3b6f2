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

from reimagen.cli.main import UserError
from reimagen.core import registry
from reimagen.core.paths import home
from reimagen.training.contract import TrainConfig

STAGE_PRESET = {"base": "cpu-base", "baseline": "cpu-base", "sr": "sr-small"}


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "train", help="train a stage of the cascade (resumable)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--stage", default="base", choices=tuple(STAGE_PRESET))
    parser.add_argument("--preset", help="network preset (default: cpu-base for base/baseline, "
                        "sr-small for sr)")
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--k", type=int, default=2, help="neighbours per example (base, sr)")
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--warmup", type=int, default=500,
                        help="linear learning-rate warm-up steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True,
                        help="bf16 autocast (AMX on this CPU)")
    parser.add_argument("--checkpoint-every", type=int, default=200)
    parser.add_argument("--loss-weighting", default="uniform", choices=("uniform", "min-snr"),
                        help="per-row weight of the ε-MSE: uniform (paper Eq. 2) or "
                        "min(SNR, γ)/SNR (Min-SNR-γ)")
    parser.add_argument("--snr-gamma", type=float, default=5.0, help="γ of --loss-weighting "
                        "min-snr")
    parser.add_argument("--t-shift", type=float, default=1.0,
                        help="noise-level shift s: log-SNR of the drawn t moved by −2·ln s "
                        "(s > 1: more high-noise levels, where identity is decided)")
    parser.add_argument("--run-dir", type=Path, help="default: <home>/runs/<stage>")
    parser.add_argument("--kb", type=Path, help="knowledge base (default: the emoji KB); a KB "
                        "of plain image-caption records (kb build --source folder) trains on its "
                        "own records, 10%% held out for bench --kb (docs/own-data.md)")
    parser.add_argument("--no-verify-kb", dest="verify_kb", action="store_false",
                        help="skip the sha256 check of every KB file (a KB copied without "
                        "its images/ folder, e.g. to a GPU machine)")
    parser.add_argument("--encoder", default=None,
                        help="registered text encoder name, e.g. hash, minilm, or t5 (its "
                        "local folder in REIMAGEN_T5_PATH) (default: the run's, else hash)")
    parser.add_argument("--data", default=None, metavar="KEY=VALUE,...",
                        help="training-recipe overrides, fields of reimagen.training.data."
                        "DataConfig, e.g. p_same_style=0.75,p_drop_name=0.75 (default: the "
                        "run's, else the DataConfig defaults)")
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--device", default="cpu", help="torch: cpu | cuda[:N] | auto")
    parser.add_argument("--workers", type=int, default=0,
                        help="processes composing batches ahead (0: inline)")
    parser.add_argument("--composer", default="host", choices=("host", "device"),
                        help="where base/baseline scenes are composed: host (numpy, in the "
                        "--workers) or device (tensors on --device; the workers only draw each "
                        "step's random choices); the batches are bit-identical")
    parser.add_argument("--time-limit", type=float, default=None, metavar="MINUTES",
                        help="checkpoint and stop after this many minutes (resume later)")
    parser.add_argument("--init-from", type=Path, default=None, metavar="WEIGHTS",
                        help="start a new run from these weights (fresh optimizer; torch)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    parser.add_argument("--distributed", action="store_true",
                        help="torch DDP over the processes torchrun started (gloo on cpu, "
                        "nccl on cuda); --batch-size is the global batch")
    parser.add_argument("--resume-from", type=int, default=None, metavar="STEP",
                        help="resume from this committed step instead of the latest (a run "
                        "that diverged; pass a lower --lr): later steps are moved to "
                        "checkpoints/rewound-STEP-N/, not deleted")
    parser.add_argument("--keep", type=int, default=2,
                        help="committed checkpoints kept (the newest); more leaves more steps "
                        "to --resume-from")
    parser.add_argument("--export", type=Path, nargs="?", const=Path("-"),
                        help="after training, write the EMA weights to this .safetensors "
                        "(no value: the shipped file for the stage)")
    parser.add_argument("--export-only", action="store_true",
                        help="only export the run's latest checkpoint, do not train")
    parser.set_defaults(func=run)


def run(args) -> int:
    from reimagen.cli.common import check_out_folder, check_threads, open_kb

    check_threads(args.threads)
    backend = registry.get("backend", args.backend)()
    preset = args.preset or STAGE_PRESET[args.stage]
    model_config = registry.get("preset", preset)()
    k = 0 if args.stage == "baseline" else args.k
    config = TrainConfig(
        steps=args.steps, batch_size=args.batch_size, neighbors=k, lr=args.lr, seed=args.seed,
        warmup_steps=args.warmup, bf16=args.bf16, checkpoint_every=args.checkpoint_every,
        loss_weighting=args.loss_weighting, snr_gamma=args.snr_gamma, t_shift=args.t_shift,
    )
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
        if args.resume_from is not None:
            raise UserError("--resume-from rewinds a run to train on; it does not combine with "
                            "--export-only (which exports the latest step)")
        if recorded_kb(run_dir) is not None:  # a collection run: never the shipped file
            export = _collection_export(args, run_dir, export)
        return _export(backend, run_dir, export or _export_path_default(args.stage), encoder,
                       args.stage, data)
    # UNetConfig.text_dim follows the text encoder, whose states feed the cross-attention
    # (paper §3.2: T5-XXL, 4096); building it checks its files (t5: REIMAGEN_T5_PATH) first
    model_config = model_config.replace(text_dim=registry.get("encoder", encoder)().dim)
    options = {**_loop_options(args, backend, model_config, preset),
               **_distributed_options(args, backend, config.batch_size)}
    check_composer(args, backend)
    if args.threads:  # checked above
        import torch

        torch.set_num_threads(args.threads)
    rank = _join(args)  # distributed: rank 0 builds the source's caches before the others
    if rank > 0:
        _barrier()
    kb = open_kb(args.kb, verify=args.verify_kb)
    collection = collection_facts(kb)  # None: the emoji KB (scene composer)
    run_facts(run_dir, encoder, overrides, record=False, kb=collection)  # before any build
    if collection is None:
        check_training_kb(kb, model_config, k)
        source = make_batch_source(args.stage, kb, encoder, config, model_config, data)
        source, options = composed_on(args.composer, source, options)
    else:
        if args.composer != "host":
            raise UserError("--composer device composes emoji scenes; a collection KB trains "
                            "with --composer host")
        export = _collection_export(args, run_dir, export)
        source = make_collection_source(kb, encoder, config, model_config, data)
    if args.distributed and rank == 0:
        _barrier()
    print(f"training {args.stage} ({preset}, {backend.param_count(model_config) / 1e6:.2f}M "
          f"params, K={k}) into {run_dir}")
    if collection is not None:
        print(f"collection {kb.folder}: {len(source.train_rows):,} training records, "
              f"{len(source.held_out_rows):,} held out; neighbours {source.triples_status}")
    run_facts(run_dir, encoder, overrides, kb=collection)  # every check passed: the run starts
    result = backend.train(model_config, config, source, run_dir, resume=True, **options)
    print(result)
    if export and rank == 0:
        _export(backend, run_dir, export, encoder, args.stage, data)
    if args.distributed:
        from reimagen.backends.torch import distributed

        distributed.shutdown()
    return 0


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
            raise UserError(f"WORLD_SIZE={world} (started by torchrun?): pass --distributed "
                            "so the processes train one model together")
        return {}
    if backend.name != "torch":
        raise UserError(f"--distributed: only the torch backend, got --backend {backend.name}")
    from reimagen.backends.torch import distributed

    if not distributed.launched() or not world.isdigit():
        raise UserError("--distributed: RANK and WORLD_SIZE are not set; launch with "
                        "torchrun --nproc-per-node N -m reimagen.cli.main train --distributed")
    if args.time_limit is not None:
        raise UserError("--time-limit cannot be combined with --distributed")
    if batch_size % int(world):
        raise UserError(f"--batch-size {batch_size} must be divisible by the world size "
                        f"{world} (torchrun processes)")
    if args.device not in ("cpu", "cuda", "auto"):
        raise UserError(f"--device must be cpu, cuda or auto with --distributed (rank i takes "
                        f"cuda:LOCAL_RANK), got {args.device}")
    return {"distributed": True}


def _loop_options(args, backend, model_config, preset: str) -> dict:
    """TrainLoop / backend options from the flags (checked before any heavy work)."""
    if not 0 <= args.workers <= 256:
        raise UserError(f"--workers must be in [0, 256], got {args.workers}")
    if args.time_limit is not None and not args.time_limit > 0:
        raise UserError(f"--time-limit must be > 0 minutes, got {args.time_limit}")
    options = {"workers": args.workers, "keep": args.keep}
    if not 1 <= args.keep <= 1_000_000:
        raise UserError(f"--keep must be in [1, 1000000] checkpoints, got {args.keep}")
    if args.resume_from is not None:
        options["resume_from"] = check_resume_from(args)
    if args.init_from is not None:
        if backend.name != "torch":
            raise UserError("--init-from: only the torch backend takes initial weights")
        options["init_weights"] = check_init_weights(args.init_from, backend, model_config,
                                                     preset)
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
        raise UserError("--composer device: only --stage base or baseline (sr composes on the "
                        "host)")
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


def check_resume_from(args) -> int:
    """--resume-from STEP: a committed step of the run (read and checked when training starts,
    before anything is moved), on one process."""
    from reimagen.training.checkpoint import step_folders

    if args.distributed:
        raise UserError("--resume-from cannot be combined with --distributed: rewind in one "
                        "process first (reimagen train --resume-from STEP --steps STEP)")
    run_dir = args.run_dir or home() / "runs" / args.stage
    folders = step_folders(run_dir) if run_dir.is_dir() else []
    held = sorted(int(p.name.split("-")[1]) for p in folders)
    if args.resume_from not in held:
        raise UserError(f"--resume-from {args.resume_from}: not a committed step of {run_dir} "
                        f"(its steps: {', '.join(map(str, held)) or 'none'})")
    return args.resume_from


def check_init_weights(path: Path, backend, model_config, preset: str) -> Path:
    """--init-from: a finite weights file of exactly this preset's network (or of the same
    network without neighbour position tables, which it grows), checked before the run folder
    is written (the trainer would find out only after building everything)."""
    from reimagen.core.io import UnsafeFileError
    from reimagen.core.unet_config import grows_position_tables
    from reimagen.generation.shipped import WeightsError, check_finite, describe, read_config

    if not path.is_file():
        raise UserError(f"--init-from: no weights file at {path}")
    try:
        config, _ = read_config(path)
        if config != model_config and not grows_position_tables(config, model_config):
            fields = model_config.to_dict()
            changed = sorted(k for k, v in config.to_dict().items() if fields[k] != v)
            same = [n for n in registry.names("preset") if registry.get("preset", n)() == config]
            holds = f"preset {same[0]!r}'s network" if same else describe(config)
            raise UserError(f"--init-from: {path} holds {holds} ({', '.join(changed[:3])} "
                            f"differ); allowed: weights of --preset {preset}")
        check_finite(path, backend.state_dict(backend.load_model(path)))
    except (UnsafeFileError, WeightsError) as err:
        raise UserError(f"--init-from: {err}") from None
    return path


def check_training_kb(kb, model_config, k: int) -> None:
    """The knowledge base can train this network: Twemoji drawings of seen entities (the
    targets), images at least the network's size, more training-view rows than K."""
    from reimagen.kb.splits import load_split, seen_entities_in, view_rows

    if not seen_entities_in(kb, load_split()):
        raise UserError(f"--kb: {kb.folder} has no Twemoji drawing of a seen entity; training "
                        "needs the emoji knowledge base (reimagen kb build)")
    if kb.resolution < model_config.image_size:
        raise UserError(f"--kb: {kb.folder} stores {kb.resolution}px images; the "
                        f"{model_config.image_size}px network needs >= {model_config.image_size}px")
    rows = len(view_rows(kb, "training"))
    if k > rows - 1:  # an example never gets its own image as a neighbour
        raise UserError(f"--k {k}: the training view of {kb.folder} has {rows} rows; allowed: "
                        f"at most {max(rows - 1, 0)}")


def collection_facts(kb) -> dict | None:
    """The KB facts run.json records for a collection run; None for the emoji KB."""
    from reimagen.training.folder_data import is_collection, kb_facts

    return kb_facts(kb) if is_collection(kb) else None


def make_collection_source(kb, encoder_name: str, config: TrainConfig, model_config, data=None):
    """The FolderBatchSource of a collection KB (checks first: one line, naming the KB)."""
    from reimagen.training.folder_data import FolderBatchSource, check_collection

    check_collection(kb, image_size=model_config.image_size, k=config.neighbors,
                     lowres_size=model_config.lowres_size)
    encoder = registry.get("encoder", encoder_name)()
    return FolderBatchSource(kb, encoder, config, data, image_size=model_config.image_size,
                             lowres_size=model_config.lowres_size, progress=True)


def _collection_export(args, run_dir: Path, export: Path | None) -> Path | None:
    """A collection run's bare --export goes to <run-dir>/<stage>.safetensors, never over the
    shipped emoji weights (bench --kb --weights <run-dir> then finds it)."""
    from reimagen.cli.common import check_out_file

    bare = str(args.export) == "-" or (args.export is None and args.export_only)
    if not bare:
        return export
    return check_out_file(Path(run_dir) / f"{args.stage}.safetensors", "--export")


def make_batch_source(stage: str, kb, encoder_name: str, config: TrainConfig, model_config,
                      data=None):
    from reimagen.kb.splits import load_split
    from reimagen.training.emoji_batches import EmojiBatchSource, SRBatchSource
    from reimagen.encoders.table import EncodingTable

    encoder = registry.get("encoder", encoder_name)()
    split = load_split()
    if stage == "sr":
        source = SRBatchSource(kb, split, encoder, config, data,
                               image_size=model_config.image_size,
                               lowres_size=model_config.lowres_size, progress=True)
    else:
        source = EmojiBatchSource(kb, split, encoder, config, data,
                                  image_size=model_config.image_size, progress=True)
    # Every prompt comes from the fixed pool: encode them all once (a training step then
    # spends no time in the text encoder).
    folder = Path(kb.folder) / "encodings" / f"{encoder.name}-pool-{len(source.pool)}"
    source.encoder = EncodingTable.build_or_load(
        encoder, source.pool.prompts, folder, progress=_progress("pool prompts encoded"))
    return source


def _progress(what: str):
    def report(done: int, total: int) -> None:
        print(f"\r{what} {done}/{total}", end="" if done < total else "\n", flush=True)

    return report


def _export_path_default(stage: str) -> Path:
    from reimagen.generation.shipped import weights_path

    return weights_path(stage)


def _export_path(args) -> Path | None:
    from reimagen.cli.common import check_out_file

    if args.export is None:
        return None
    path = _export_path_default(args.stage) if str(args.export) == "-" else args.export
    if path.suffix != ".safetensors":
        raise UserError(f"--export: {path} must end in .safetensors")
    return check_out_file(path, "--export")


RUN_FILE = "run.json"  # facts of a run that its checkpoints do not hold: encoder, recipe
DEFAULT_ENCODER = "hash"  # see the module docstring


def parse_data_overrides(text: str | None) -> dict | None:
    """``--data "p_same_style=0.75,p_drop_name=0.75"`` -> {field: value}, each value read as
    JSON where it parses (numbers, true/false) and as a string otherwise; None without the flag.
    The keys and values are checked against DataConfig here, before any heavy work."""
    import json

    import attrs

    from reimagen.core.config import ConfigError
    from reimagen.training.data import DataConfig

    if text is None:
        return None
    overrides = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--data: expected KEY=VALUE items separated by commas, got {item!r}")
        try:
            overrides[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key.strip()] = value.strip()
    fields = attrs.fields_dict(DataConfig)
    for key, value in overrides.items():  # "1" for a probability is the float 1.0
        if key in fields and isinstance(fields[key].default, float) and type(value) is int:
            overrides[key] = float(value)
    if not overrides:
        raise UserError(f"--data: no KEY=VALUE item in {text!r}; allowed: fields of DataConfig, "
                        "e.g. p_same_style=0.75")
    try:
        DataConfig.from_dict(overrides)
    except ConfigError as err:
        for key, value in overrides.items():  # a message that does not name the item: name it
            try:
                DataConfig.from_dict({key: value})
            except ConfigError as one:
                if key not in str(one):
                    raise UserError(f"--data: {key}={value!r}: {one}") from None
        raise UserError(f"--data: {err}") from None
    return overrides


UNCHECKED = "unchecked"  # run_facts(kb=): the KB is not open yet, do not compare it


def run_facts(run_dir: Path, encoder: str | None, data: dict | None, record: bool = True,
              kb: dict | None | str = UNCHECKED):
    """(text encoder name, DataConfig) of the run in ``run_dir``. run.json records both at the
    run's first start; a resume that asks for another encoder or recipe is refused (its batches
    would differ from the ones the checkpoints were trained on). None: the recorded value, else
    DEFAULT_ENCODER / the DataConfig defaults. A run.json without "data" (written before the
    recipe was recorded) ran the defaults. ``kb``: the collection's facts (collection_facts;
    None for the emoji KB), recorded as "kb"; a resume on another KB is refused."""
    import json

    from reimagen.core import digests
    from reimagen.core.io import atomic_write_text
    from reimagen.training.data import DataConfig

    path = Path(run_dir) / RUN_FILE
    requested = None if data is None else DataConfig.from_dict(data)
    if path.is_file():
        if digests.sidecar(path).is_file():  # run.json.sha256 (runs begun before it have none)
            digests.verify_sidecar(path)  # a flipped recipe value would train on silently
        try:
            facts = json.loads(path.read_bytes())  # bytes: json detects UTF-8 itself
            recorded_encoder = facts["encoder"]
            recorded_data = DataConfig.from_dict(facts.get("data", {}))
        except (ValueError, KeyError, TypeError, AttributeError) as err:  # not what we wrote
            raise UserError(f"--run-dir: {path} is damaged ({type(err).__name__}: {err}); "
                            "move the run folder aside or restore the file") from None
        if encoder not in (None, recorded_encoder):
            raise UserError(f"--encoder {encoder}: the run in {run_dir} was trained with "
                            f"--encoder {recorded_encoder}")
        if requested not in (None, recorded_data):
            changed = sorted(k for k, v in requested.to_dict().items()
                             if recorded_data.to_dict()[k] != v)
            raise UserError(f"--data: the run in {run_dir} was trained with another recipe "
                            f"({', '.join(f'{k}={recorded_data.to_dict()[k]}' for k in changed)})")
        if kb != UNCHECKED:
            check_run_kb(run_dir, facts.get("kb"), kb)
        return recorded_encoder, recorded_data
    encoder = encoder or DEFAULT_ENCODER
    requested = requested or DataConfig()
    if record:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        facts = {"encoder": encoder, "data": requested.to_dict()}
        if kb not in (None, UNCHECKED):
            facts["kb"] = kb
        atomic_write_text(path, json.dumps(facts) + "\n")
        digests.write_sidecar(path)
    return encoder, requested


def check_run_kb(run_dir: Path, recorded: dict | None, kb: dict | None) -> None:
    """A run resumes on the knowledge base it started on (by fingerprint: the same records;
    a KB moved to another folder is the same KB)."""
    if recorded is None and kb is None:
        return
    if recorded is None:
        raise UserError(f"--kb: the run in {run_dir} was trained on the emoji knowledge base, "
                        f"not the collection {kb['path']}; choose another --run-dir")
    if kb is None:
        raise UserError(f"--kb: the run in {run_dir} was trained on the collection "
                        f"{recorded['path']}; pass --kb {recorded['path']}")
    if kb["fingerprint"] != recorded.get("fingerprint"):
        raise UserError(f"--kb: the run in {run_dir} was trained on {recorded['path']} "
                        f"(fingerprint {str(recorded.get('fingerprint'))[:12]}), not "
                        f"{kb['path']} (fingerprint {kb['fingerprint'][:12]}); choose another "
                        "--run-dir")


def recorded_kb(run_dir: Path) -> dict | None:
    """The collection a run's run.json records (None: an emoji run, or no run yet)."""
    import json

    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_bytes()).get("kb")
    except (ValueError, AttributeError):
        return None  # damaged: run_facts reports it


def _export(backend, run_dir: Path, path: Path, encoder: str, stage: str,
            data=None) -> int:
    import json

    from reimagen.training.checkpoint import (
        ENCODER_KEY,
        RECIPE_KEY,
        latest_checkpoint,
        read_checkpoint,
        recipe_record,
    )
    from reimagen.generation.shipped import STAGE_KEY

    model = backend.load_model(run_dir, ema=True)  # float16: shipped weights, half the bytes
    state = read_checkpoint(latest_checkpoint(run_dir)).state
    recipe = recipe_record(state, None if data is None else data.to_dict(), encoder)
    if recorded_kb(run_dir) is not None:  # a collection run: bench --kb reads it
        recipe["kb"] = recorded_kb(run_dir)
    # the stage it is for: load_stage refuses it under another stage's name
    backend.save_model(model, path, dtype="float16",
                       metadata={ENCODER_KEY: encoder, STAGE_KEY: stage,
                                 RECIPE_KEY: json.dumps(recipe, sort_keys=True)})
    print(f"exported EMA weights of {run_dir} to {path} (float16, encoder {encoder})")
    return 0
