#!/usr/bin/env bash
# The peers' venv for `make bench-peers` (benchmarks/peers/run_peers.py): diffusers 0.42.1 and
# imagen-pytorch 2.1.0 beside torch 2.13.0, outside the project's own .venv so that the peers'
# dependencies never touch it. A copy of ../shared/tools/peer_setup_venv.sh plus what reimagen
# needs to import from the checkout (attrs, pluggy, safetensors; run_peers.py sets PYTHONPATH).
#   bash benchmarks/peers/setup_venv.sh [VENV]      # default: .cache/peers/venv (git-ignored)
# Only package registries are reachable; torch 2.13.0 is the local CPU wheel (an unpinned torch
# pulls a multi-GB CUDA build). A few minutes.
set -euo pipefail
VENV=${1:-${REIMAGEN_PEERS_VENV:-.cache/peers/venv}}
python3 -m venv "$VENV"
PIP="$VENV/bin/pip"
"$PIP" install -q --upgrade pip
"$PIP" install torch==2.13.0                  # FIRST: the local +cpu wheel
C=$(mktemp); echo "torch==2.13.0" > "$C"      # pin it for every later install
# diffusers: plain install, nothing asks for another torch
"$PIP" install -c "$C" diffusers==0.42.1
# imagen-pytorch: its deps resolve torchvision 0.29.1 -> torch 2.14.1 (a CUDA build),
# so install it and torchvision 0.28.0 (the release paired with torch 2.13.0) without deps
"$PIP" install --no-deps imagen-pytorch==2.1.0 torchvision==0.28.0
"$PIP" install -c "$C" accelerate beartype click datasets 'einops>=0.7.0' \
    'ema-pytorch>=0.0.3' fsspec kornia numpy packaging pillow 'pydantic>=2' \
    pytorch-warmup sentencepiece transformers tqdm
# reimagen itself is imported from the checkout (PYTHONPATH), with its core dependencies
"$PIP" install -c "$C" attrs pluggy safetensors
"$VENV/bin/python" -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__; print('torch', torch.__version__)"
rm -f "$C"
