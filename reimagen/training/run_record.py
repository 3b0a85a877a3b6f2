"""``<run-dir>/run.json``: the facts of a training run that its checkpoints do not hold.

    {"encoder": "hash", "data": {DataConfig fields}, "kb": {collection facts}}

Recorded at the run's first start (with a ``run.json.sha256`` sidecar, reimagen.core.digests),
read back at every resume: a resume that asks for another text encoder, data recipe or
knowledge base is refused, since its batches would differ from the ones the checkpoints were
trained on. ``"kb"`` is present for a collection run only (reimagen.training.folder_data).
"""

from __future__ import annotations

from pathlib import Path

from reimagen.training.run_setup import RunSetupError

RUN_FILE = "run.json"  # facts of a run that its checkpoints do not hold: encoder, recipe
DEFAULT_ENCODER = "hash"  # the text encoder of a run started without --encoder
UNCHECKED = "unchecked"  # run_facts(kb=): the KB is not open yet, do not compare it


def parse_data_overrides(text: str | None) -> dict | None:
    """``--data "p_same_style=0.75,p_drop_name=0.75"`` -> {field: value}, each value read as
    JSON where it parses (numbers, true/false) and as a string otherwise; None without the flag.
    The keys and values are checked against DataConfig here, before any heavy work."""
    if text is None:
        return None
    overrides = _split_items(text)
    if not overrides:
        raise RunSetupError(
            f"--data: no KEY=VALUE item in {text!r}; allowed: fields of "
            "DataConfig, e.g. p_same_style=0.75"
        )
    _check_data_overrides(overrides)
    return overrides


def _split_items(text: str) -> dict:
    """ "a=1, b=x" -> {"a": 1, "b": "x"}; an int given for a float field becomes a float ("1"
    for a probability is 1.0)."""
    import json

    import attrs

    from reimagen.training.data import DataConfig

    overrides = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise RunSetupError(
                f"--data: expected KEY=VALUE items separated by commas, got {item!r}"
            )
        try:
            overrides[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key.strip()] = value.strip()
    fields = attrs.fields_dict(DataConfig)
    for key, value in overrides.items():
        if key in fields and isinstance(fields[key].default, float) and type(value) is int:
            overrides[key] = float(value)
    return overrides


def _check_data_overrides(overrides: dict) -> None:
    """DataConfig accepts the overrides; else one line, naming the item when its message does
    not."""
    from reimagen.core.config import ConfigError
    from reimagen.training.data import DataConfig

    try:
        DataConfig.from_dict(overrides)
    except ConfigError as err:
        for key, value in overrides.items():
            try:
                DataConfig.from_dict({key: value})
            except ConfigError as one:
                if key not in str(one):
                    raise RunSetupError(f"--data: {key}={value!r}: {one}") from None
        raise RunSetupError(f"--data: {err}") from None


def run_facts(
    run_dir: Path,
    encoder: str | None,
    data: dict | None,
    record: bool = True,
    kb: dict | None | str = UNCHECKED,
):
    """(text encoder name, DataConfig) of the run in ``run_dir``. run.json records both at the
    run's first start; a resume that asks for another encoder or recipe is refused (its batches
    would differ from the ones the checkpoints were trained on). None: the recorded value, else
    DEFAULT_ENCODER / the DataConfig defaults. A run.json without "data" (written before the
    recipe was recorded) ran the defaults. ``kb``: the collection's facts (run_setup.
    collection_facts; None for the emoji KB), recorded as "kb"; a resume on another KB is
    refused."""
    from reimagen.training.data import DataConfig

    path = Path(run_dir) / RUN_FILE
    requested = None if data is None else DataConfig.from_dict(data)
    if path.is_file():
        return _resume_facts(run_dir, encoder, requested, kb)
    encoder = encoder or DEFAULT_ENCODER
    requested = requested or DataConfig()
    if record:
        _record(path, encoder, requested, kb)
    return encoder, requested


def _resume_facts(run_dir: Path, encoder: str | None, requested, kb):
    """The recorded (encoder, DataConfig), after checking the request does not change them."""
    import json

    from reimagen.core import digests
    from reimagen.training.data import DataConfig

    path = Path(run_dir) / RUN_FILE
    if digests.sidecar(path).is_file():  # run.json.sha256 (runs begun before it have none)
        digests.verify_sidecar(path)  # a flipped recipe value would train on silently
    try:
        facts = json.loads(path.read_bytes())  # bytes: json detects UTF-8 itself
        recorded_encoder = facts["encoder"]
        recorded_data = DataConfig.from_dict(facts.get("data", {}))
    except (ValueError, KeyError, TypeError, AttributeError) as err:  # not what we wrote
        raise RunSetupError(
            f"--run-dir: {path} is damaged ({type(err).__name__}: {err}); "
            "move the run folder aside or restore the file"
        ) from None
    if encoder not in (None, recorded_encoder):
        raise RunSetupError(
            f"--encoder {encoder}: the run in {run_dir} was trained with "
            f"--encoder {recorded_encoder}"
        )
    if requested not in (None, recorded_data):
        recorded = recorded_data.to_dict()
        changed = sorted(k for k, v in requested.to_dict().items() if recorded[k] != v)
        raise RunSetupError(
            f"--data: the run in {run_dir} was trained with another recipe "
            f"({', '.join(f'{k}={recorded[k]}' for k in changed)})"
        )
    if kb != UNCHECKED:
        check_run_kb(run_dir, facts.get("kb"), kb)
    return recorded_encoder, recorded_data


def _record(path: Path, encoder: str, data, kb) -> None:
    import json

    from reimagen.core import digests
    from reimagen.core.io import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    facts = {"encoder": encoder, "data": data.to_dict()}
    if kb not in (None, UNCHECKED):
        facts["kb"] = kb
    atomic_write_text(path, json.dumps(facts) + "\n")
    digests.write_sidecar(path)


def check_run_kb(run_dir: Path, recorded: dict | None, kb: dict | None) -> None:
    """A run resumes on the knowledge base it started on (by fingerprint: the same records;
    a KB moved to another folder is the same KB)."""
    if recorded is None:
        if kb is None:
            return
        raise RunSetupError(
            f"--kb: the run in {run_dir} was trained on the emoji knowledge "
            f"base, not the collection {kb['path']}; choose another --run-dir"
        )
    if kb is None:
        raise RunSetupError(
            f"--kb: the run in {run_dir} was trained on the collection "
            f"{recorded['path']}; pass --kb {recorded['path']}"
        )
    if kb["fingerprint"] != recorded.get("fingerprint"):
        raise RunSetupError(
            f"--kb: the run in {run_dir} was trained on {recorded['path']} "
            f"(fingerprint {str(recorded.get('fingerprint'))[:12]}), not "
            f"{kb['path']} (fingerprint {kb['fingerprint'][:12]}); choose "
            "another --run-dir"
        )


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
