"""No pickle anywhere (issue #14, item 6).

A malicious pickle (an object whose ``__reduce__`` runs ``touch <marker>``) is planted in place of
every file of every artifact the library reads: as an object array where the file is ``.npy`` or
``.npz``, as raw pickle bytes everywhere else (safetensors weights and checkpoints, faiss and
bm25s indexes, JSON, JSONL, PNG, SHA256SUMS). Each plant is loaded twice: as planted (the
checksums no longer match) and with the checksums re-recorded over the pickle (what someone who
can write the folder can do), so the format readers themselves are exercised. Every load must be
refused with a one-line error of the library's user-error types naming the planted file, and the
marker must never appear. A second test greps the package source for unsafe loading.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import shutil
import tokenize
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from test_corruption import TOY_KINDS, Artifact, folder_files, toys  # noqa: F401 (toys: fixture)

from reimagen.core import digests

PACKAGE = Path(__file__).resolve().parent.parent / "reimagen"


class Exploit:
    """Unpickling this runs ``touch marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def plant(path: Path, marker: Path) -> None:
    """Replace ``path`` by a pickle of an Exploit in the form a reader of its type could meet."""
    evil = np.array([Exploit(marker)], dtype=object)
    with open(path, "wb") as handle:
        if path.suffix == ".npy":
            np.save(handle, evil, allow_pickle=True)
        elif path.suffix == ".npz":
            np.savez(handle, evil=evil)
        else:
            handle.write(pickle.dumps(Exploit(marker)))


def rerecord(path: Path) -> bool:
    """Re-record every checksum that covers ``path`` (its sidecar, the SHA256SUMS listing it,
    the SHA256SUMS listing that one, ...), as someone who can write the folder would; False
    when there is none (a safetensors digest lives in the header the pickle replaced)."""
    if path.name == digests.SUMS or path.name.endswith(digests.SIDECAR_SUFFIX):
        return False
    if digests.sidecar(path).is_file():
        digests.write_sidecar(path)
        return True
    changed = path
    for listing in listings(path):
        names = digests.read_sums(listing)
        if changed.relative_to(listing.parent).as_posix() in names:
            digests.write_sums(listing.parent, names)
            changed = listing
    return changed != path


def listings(path: Path) -> list[Path]:
    """The checksum files that may list ``path``: its sidecar and every SHA256SUMS above it."""
    found = [digests.sidecar(path), *(folder / digests.SUMS for folder in path.parents)]
    return [p for p in found if p.is_file() and p != path]


def user_errors() -> tuple[type[BaseException], ...]:
    from reimagen.cli.main import user_error_types

    return user_error_types()


# Files an artifact holds that its loader never opens: loading succeeds over a plant there, and
# the payload cannot run. A hybrid index's members keep the rows.npy every saved index has, but
# the hybrid reads the view from its own rows.npy (the members' index.json must hash the same).
NEVER_READ = {
    ("hybrid index", "members/0-tfidf/rows.npy"),
    ("hybrid index", "members/1-dense/rows.npy"),
}


def refusal(
    load: Callable[[], object], path: Path, marker: Path, unread: bool = False
) -> str | None:
    """None if ``load`` refuses in one line naming ``path`` without running the payload (or,
    for a file it never reads, ``unread``, loads without running it)."""
    try:
        load()
        outcome = None if unread else "loaded"
    except user_errors() as err:
        message = str(err)
        outcome = None if "\n" not in message and path.name in message else f"message {message!r}"
    except Exception as err:  # noqa: BLE001 (any other exception is not a clean refusal)
        outcome = f"{type(err).__name__}: {err}"
    if marker.exists():
        marker.unlink()
        return f"PAYLOAD RAN ({outcome})"
    return outcome


def run_plants(kind: str, artifact: Artifact, marker: Path) -> tuple[list[str], int]:
    """Plant in each file in turn (both ways), load, restore; failures and cases run."""
    artifact.load()
    failures, count = [], 0
    for path in artifact.files:
        original = {p: p.read_bytes() for p in [path, *listings(path)]}
        plant(path, marker)
        for mode in ("planted", "checksums re-recorded"):
            if mode == "checksums re-recorded" and not rerecord(path):
                continue
            count += 1
            unread = any(kind == k and path.as_posix().endswith(f"/{n}") for k, n in NEVER_READ)
            failure = refusal(artifact.load, path, marker, unread)
            if failure:
                failures.append(f"{path.name} ({mode}): {failure}")
        for p, data in original.items():  # the plant and any re-recorded listing
            p.write_bytes(data)
    artifact.load()  # restored
    print(f"\n{kind}: {count - len(failures)}/{count} refused ({len(artifact.files)} files)")
    return failures, count


@pytest.fixture
def marker(tmp_path) -> Path:
    """The payload's marker; first prove the fixture is live: unpickling it does run."""
    path = tmp_path / "pwned"
    pickle.loads(pickle.dumps(Exploit(path)))
    assert path.exists(), "the exploit fixture does not run when unpickled"
    path.unlink()
    np.load(_npy(tmp_path, path), allow_pickle=True)  # the object-array form runs it too
    assert path.exists()
    path.unlink()
    return path


def _npy(folder: Path, marker: Path) -> Path:
    path = folder / "live.npy"
    plant(path, marker)
    return path


@pytest.mark.parametrize("kind", TOY_KINDS)
def test_a_planted_pickle_is_refused_and_never_run(toys, marker, kind):  # noqa: F811
    failures, _ = run_plants(kind, toys[kind](), marker)
    assert not failures, f"{kind}: {failures}"
    assert not marker.exists()


# ---- loaders outside the artifact matrix ----------------------------------------------------


def test_weights_through_the_jax_loader(tmp_path, marker):
    pytest.importorskip("jax")
    from reimagen.backends.jax import BACKEND as JAX
    from reimagen.backends.torch import BACKEND as TORCH
    from reimagen.core.unet_config import PRESETS

    path = TORCH.save_model(TORCH.build_model(PRESETS["tiny"], seed=0), tmp_path / "w.safetensors")
    artifact = Artifact([path], lambda: JAX.load_model(path))
    failures, _ = run_plants("weights via the JAX backend", artifact, marker)
    assert not failures


def test_minilm_encoder_files(tmp_path, marker, monkeypatch):
    minilm = pytest.importorskip("reimagen.encoders.minilm")
    try:
        source = minilm.model_dir()
    except (ImportError, FileNotFoundError) as err:
        pytest.skip(f"all-MiniLM-L6-v2 not installed: {err}")
    folder = tmp_path / "minilm"
    shutil.copytree(source, folder)
    monkeypatch.setattr(minilm, "model_dir", lambda: folder)
    files = [folder / name for name in ("model.safetensors", "config.json", "tokenizer.json")]

    def load():
        minilm.MiniLMEncoder(device="cpu").encode(["a robot"])

    failures, _ = run_plants("minilm encoder", Artifact(files, load), marker)
    assert not failures


def test_t5_encoder_files(tmp_path, marker):
    """The folder of the ``t5`` encoder (a tiny random T5, built as tests/test_t5_encoder.py
    does): weights, config, tokenizer and its config."""
    pytest.importorskip("transformers")
    from test_t5_encoder import save_tiny_t5

    from reimagen.encoders.t5 import T5Encoder

    folder = save_tiny_t5(tmp_path / "t5")
    names = ("model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json")

    def load():
        T5Encoder(path=folder).encode(["a robot"])

    failures, _ = run_plants("t5 encoder", Artifact([folder / n for n in names], load), marker)
    assert not failures


def test_user_supplied_text_files(tmp_path, marker):
    """Files the user hands in (captions of a folder source, prompts, a split) are JSON or
    JSONL: a pickle there is refused as bad text, naming the file."""
    from toys import toy_kb

    from reimagen.bench.prompt_sets import read_prompts
    from reimagen.kb import folder_source, splits

    kb = toy_kb(tmp_path / "kb")
    source = tmp_path / "source"
    source.mkdir()
    (source / "a.png").write_bytes((kb.folder / kb.records[0].image).read_bytes())
    (source / "captions.jsonl").write_text('{"image": "a.png", "text": "a robot"}\n')
    shutil.copyfile(splits.SPLIT_FILE, tmp_path / "split.json")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("")
    cases = {
        source / "captions.jsonl": lambda: folder_source.read_captions(source),
        tmp_path / "split.json": lambda: splits.load_split(tmp_path / "split.json"),
        prompts: lambda: read_prompts(prompts, known=()),
    }
    failures = []
    for path, load in cases.items():
        plant(path, marker)
        if failure := refusal(load, path, marker):
            failures.append(f"{path.name}: {failure}")
    assert not failures
    assert not marker.exists()


# ---- the source holds no unsafe loading -------------------------------------------------------

MODULES = r"(c?pickle|_pickle|cloudpickle|dill|joblib|shelve|marshal)"
UNSAFE = {
    "a pickling module": re.compile(rf"^\s*(import|from)\s+{MODULES}\b", re.MULTILINE),
    "a pickling module's loader": re.compile(rf"\b{MODULES}\.(loads?|open|Unpickler)\b"),
    "allow_pickle=True": re.compile(r"allow_pickle\s*=\s*True"),
    "pandas read_pickle": re.compile(r"\bread_pickle\b"),
}
# calls that unpickle unless told not to: (pattern, the keyword argument that makes them safe)
CALLS = {
    "np.load without allow_pickle=False": (
        re.compile(r"\b(np|numpy)\.load\s*\("),
        re.compile(r"allow_pickle\s*=\s*False"),
    ),
    "torch.load without weights_only=True": (
        re.compile(r"\btorch\.load\s*\("),
        re.compile(r"weights_only\s*=\s*True"),
    ),
    # transformers falls back to a pickled pytorch_model.bin unless told safetensors only
    "Model.from_pretrained without use_safetensors=True": (
        re.compile(r"\b\w*Model\w*\.from_pretrained\s*\("),
        re.compile(r"use_safetensors\s*=\s*True"),
    ),
}


def code_only(text: str) -> str:
    """``text`` with comments and string literals blanked (same line numbers), so a docstring
    that mentions ``np.load(`` is not a hit."""
    lines = text.splitlines(keepends=True)
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type not in (tokenize.COMMENT, tokenize.STRING):
            continue
        (row, col), (end_row, end_col) = token.start, token.end
        for r in range(row, end_row + 1):
            line = lines[r - 1]
            start, stop = (col if r == row else 0), (end_col if r == end_row else len(line) - 1)
            lines[r - 1] = line[:start] + " " * (stop - start) + line[stop:]
    return "".join(lines)


def call_arguments(code: str, open_paren: int) -> str:
    """The text between ``(`` at ``open_paren`` and its matching ``)``."""
    depth = 0
    for at in range(open_paren, len(code)):
        depth += {"(": 1, ")": -1}.get(code[at], 0)
        if depth == 0:
            return code[open_paren + 1 : at]
    return code[open_paren + 1 :]


def unsafe_lines(text: str) -> list[str]:
    code = code_only(text)
    found = [(m.start(), what) for what, p in UNSAFE.items() for m in p.finditer(code)]
    for what, (call, safe) in CALLS.items():
        for match in call.finditer(code):
            if not safe.search(call_arguments(code, match.end() - 1)):
                found.append((match.start(), what))
    lines = text.splitlines()
    return [
        f"{code.count(chr(10), 0, at) + 1}: {what}: {lines[code.count(chr(10), 0, at)].strip()}"
        for at, what in sorted(found)
    ]


def test_the_package_source_loads_nothing_unsafely():
    sources = sorted(PACKAGE.rglob("*.py"))
    assert len(sources) > 50, f"found only {len(sources)} sources under {PACKAGE}"
    found = [
        f"{path.relative_to(PACKAGE.parent)}:{hit}"
        for path in sources
        for hit in unsafe_lines(path.read_text())
    ]
    assert not found, "unsafe loading in the package:\n" + "\n".join(found)


@pytest.mark.parametrize(
    "line",
    [
        "import pickle",
        "from dill import loads",
        "x = joblib.load(p)",
        "pickle.loads(blob)",
        "np.load(p, allow_pickle=True)",
        "np.load(p)",
        "torch.load(p)",
        "marshal.loads(b)",
        "shelve.open(p)",
        "df = pd.read_pickle(p)",
        "np.load(str(p))\nx = f(allow_pickle=False)",
        "torch.load(\n    p,\n    map_location='cpu',\n)",
        "T5EncoderModel.from_pretrained(folder, local_files_only=True)",
        "AutoModel.from_pretrained(\n    p,\n)",
    ],
)
def test_the_grep_catches_each_unsafe_form(line):
    assert unsafe_lines(line), line


@pytest.mark.parametrize(
    "line",
    [
        "np.load(path, mmap_mode=None, allow_pickle=False)",
        "torch.load(p, weights_only=True)",
        "# nothing is unpickled here: np.load(x)",
        "np.save(handle, a, allow_pickle=False)",
        "np.load(str(p),\n        allow_pickle=False)",
        '"""np.load(p) in a docstring"""',
        "T5EncoderModel.from_pretrained(\n    p, local_files_only=True, use_safetensors=True)",
        "Pipeline.from_pretrained(p)",
        "AutoTokenizer.from_pretrained(p, local_files_only=True)",
    ],
)
def test_the_grep_passes_safe_forms(line):
    assert not unsafe_lines(line), line
