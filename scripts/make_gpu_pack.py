"""Pack what a GPU machine needs to train the default cascade (scripts/train_gpu.sh).

The borrowed GPU machine has torch but no model hub, no package index and a 64 MiB upload, so
the knowledge base travels without its images/ folder (training reads only the packed
images.npy, gzip-compressed here: 114 MB -> ~13 MB) and with the cached training triples (the
GPU machine has no bm25s to rebuild them). The hash text encoder needs no weights.

    .venv/bin/python scripts/make_gpu_pack.py        # -> .gpupack/ (git-ignored)

Also a snapshot of the committed source (``git archive HEAD reimagen scripts``, less the shipped weights, into
.gpupack/src), so the run uses exactly a commit, not whatever the working tree holds:
    PACK=$PWD/.gpupack OUT=... bash .gpupack/src/scripts/train_gpu.sh
"""

from __future__ import annotations

import gzip
import io
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from reimagen.core.paths import home

KB_FILES = ("kb.json", "entities.json", "manifest.jsonl")


def main() -> int:
    source = home() / "kb" / "emoji"
    target = ROOT / ".gpupack" / "kb"
    if not (source / "kb.json").is_file():
        print(f"no knowledge base at {source}: run `reimagen kb build` first", file=sys.stderr)
        return 1
    shutil.rmtree(target, ignore_errors=True)
    (target / "triples").mkdir(parents=True)
    for name in KB_FILES:
        shutil.copy2(source / name, target / name)
    for triples in (source / "triples").glob("*.safetensors"):
        shutil.copy2(triples, target / "triples" / triples.name)
    with open(source / "images.npy", "rb") as raw, gzip.open(target / "images.npy.gz", "wb", 6) as packed:
        shutil.copyfileobj(raw, packed, 1 << 20)
    snapshot = ROOT / ".gpupack" / "src"
    shutil.rmtree(snapshot, ignore_errors=True)
    # Not the shipped weights (30 MB): training does not read them, and the upload is 64 MiB
    # (a lease that continues them carries its INIT folder separately).
    paths = ["reimagen", "scripts", ":(exclude)reimagen/assets/weights"]
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "HEAD", *paths],
                             check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(snapshot, filter="data")
    pack = ROOT / ".gpupack"
    total = sum(p.stat().st_size for p in pack.rglob("*") if p.is_file())
    print(f"packed {pack} ({total / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
