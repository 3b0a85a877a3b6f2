"""Setting up a training run of one cascade stage: what ``reimagen train`` checks and builds
before the loop starts (reimagen.training.loop), framework-free.

    network   the preset's UNetConfig, its text width following the text encoder (paper §3.2:
              T5-XXL's 4096-dim states feed the cross-attention; here hash / minilm / t5)
    weights   --init-from: a finite file of exactly that network (check_init_weights)
    resume    --resume-from: a committed step of the run (check_resume_step)
    data      the knowledge base the examples come from: the emoji KB (scene composer,
              reimagen.training.data) or a collection of plain ⟨image, caption⟩ records
              (reimagen.training.folder_data); build_source makes the BatchSource

Each check raises :class:`RunSetupError` with one line naming the flag it is about (the
command line prints it as is), before any heavy work.
"""

from __future__ import annotations

from pathlib import Path

from reimagen.core import registry
from reimagen.training.contract import TrainConfig

STAGE_PRESET = {"base": "cpu-base", "baseline": "cpu-base", "sr": "sr-small"}


class RunSetupError(ValueError):
    """A training run that cannot start as asked (bad flag value, a KB or weights file that
    does not fit, a resume that changes the run). One line, naming the flag."""


def with_text_encoder(model_config, encoder_name: str):
    """``model_config`` with text_dim = the encoder's state width D (tokens [B, L, D] feed the
    cross-attention); building the encoder checks its files (t5: REIMAGEN_T5_PATH) first."""
    return model_config.replace(text_dim=registry.get("encoder", encoder_name)().dim)


def check_init_weights(path: Path, backend, model_config, preset: str) -> Path:
    """--init-from: a finite weights file of exactly this preset's network (or of the same
    network without neighbour position tables, which it grows), checked before the run folder
    is written (the trainer would find out only after building everything)."""
    from reimagen.core.io import UnsafeFileError
    from reimagen.core.unet_config import grows_position_tables
    from reimagen.generation.shipped import WeightsError, check_finite, describe, read_config

    if not path.is_file():
        raise RunSetupError(f"--init-from: no weights file at {path}")
    try:
        config, _ = read_config(path)
        if config != model_config and not grows_position_tables(config, model_config):
            fields = model_config.to_dict()
            changed = sorted(k for k, v in config.to_dict().items() if fields[k] != v)
            same = [n for n in registry.names("preset") if registry.get("preset", n)() == config]
            holds = f"preset {same[0]!r}'s network" if same else describe(config)
            raise RunSetupError(
                f"--init-from: {path} holds {holds} ({', '.join(changed[:3])} "
                f"differ); allowed: weights of --preset {preset}"
            )
        check_finite(path, backend.state_dict(backend.load_model(path)))
    except (UnsafeFileError, WeightsError) as err:
        raise RunSetupError(f"--init-from: {err}") from None
    return path


def check_resume_step(run_dir: Path, step: int) -> int:
    """--resume-from STEP: a committed step of the run in ``run_dir`` (read and checked when
    training starts, before anything is moved)."""
    from reimagen.training.checkpoint import step_folders

    folders = step_folders(run_dir) if run_dir.is_dir() else []
    held = sorted(int(p.name.split("-")[1]) for p in folders)
    if step not in held:
        raise RunSetupError(
            f"--resume-from {step}: not a committed step of {run_dir} "
            f"(its steps: {', '.join(map(str, held)) or 'none'})"
        )
    return step


def check_training_kb(kb, model_config, k: int) -> None:
    """The knowledge base can train this network: Twemoji drawings of seen entities (the
    targets), images at least the network's size, more training-view rows than K."""
    from reimagen.kb.splits import load_split, seen_entities_in, view_rows

    if not seen_entities_in(kb, load_split()):
        raise RunSetupError(
            f"--kb: {kb.folder} has no Twemoji drawing of a seen entity; "
            "training needs the emoji knowledge base (reimagen kb build)"
        )
    if kb.resolution < model_config.image_size:
        raise RunSetupError(
            f"--kb: {kb.folder} stores {kb.resolution}px images; the "
            f"{model_config.image_size}px network needs >= "
            f"{model_config.image_size}px"
        )
    rows = len(view_rows(kb, "training"))
    if k > rows - 1:  # an example never gets its own image as a neighbour
        raise RunSetupError(
            f"--k {k}: the training view of {kb.folder} has {rows} rows; "
            f"allowed: at most {max(rows - 1, 0)}"
        )


def collection_facts(kb) -> dict | None:
    """The KB facts run.json records for a collection run; None for the emoji KB."""
    from reimagen.training.folder_data import is_collection, kb_facts

    return kb_facts(kb) if is_collection(kb) else None


def build_source(
    stage: str,
    kb,
    collection: dict | None,
    encoder_name: str,
    config: TrainConfig,
    model_config,
    data=None,
    composer: str = "host",
):
    """The BatchSource of the run: the emoji scene composer when ``collection`` is None
    (after check_training_kb), else the collection's records (``--composer host`` only)."""
    if collection is None:
        check_training_kb(kb, model_config, config.neighbors)
        return make_batch_source(stage, kb, encoder_name, config, model_config, data)
    if composer != "host":
        raise RunSetupError(
            "--composer device composes emoji scenes; a collection KB trains with --composer host"
        )
    return make_collection_source(kb, encoder_name, config, model_config, data)


def make_collection_source(kb, encoder_name: str, config: TrainConfig, model_config, data=None):
    """The FolderBatchSource of a collection KB (checks first: one line, naming the KB)."""
    from reimagen.training.folder_data import FolderBatchSource, check_collection

    check_collection(
        kb,
        image_size=model_config.image_size,
        k=config.neighbors,
        lowres_size=model_config.lowres_size,
    )
    encoder = registry.get("encoder", encoder_name)()
    return FolderBatchSource(
        kb,
        encoder,
        config,
        data,
        image_size=model_config.image_size,
        lowres_size=model_config.lowres_size,
        progress=True,
    )


def make_batch_source(
    stage: str, kb, encoder_name: str, config: TrainConfig, model_config, data=None
):
    """The emoji KB's BatchSource of ``stage`` (SRBatchSource for "sr"), its prompt pool
    encoded once into an EncodingTable beside the KB."""
    from reimagen.encoders.table import EncodingTable
    from reimagen.kb.splits import load_split
    from reimagen.training.emoji_batches import EmojiBatchSource, SRBatchSource

    encoder = registry.get("encoder", encoder_name)()
    split = load_split()
    source: EmojiBatchSource
    if stage == "sr":
        source = SRBatchSource(
            kb,
            split,
            encoder,
            config,
            data,
            image_size=model_config.image_size,
            lowres_size=model_config.lowres_size,
            progress=True,
        )
    else:
        source = EmojiBatchSource(
            kb, split, encoder, config, data, image_size=model_config.image_size, progress=True
        )
    # Every prompt comes from the fixed pool: encode them all once (a training step then
    # spends no time in the text encoder).
    folder = Path(kb.folder) / "encodings" / f"{encoder.name}-pool-{len(source.pool)}"
    source.encoder = EncodingTable.build_or_load(
        encoder, source.pool.prompts, folder, progress=_progress("pool prompts encoded")
    )
    return source


def _progress(what: str):
    def report(done: int, total: int) -> None:
        print(f"\r{what} {done}/{total}", end="" if done < total else "\n", flush=True)

    return report
