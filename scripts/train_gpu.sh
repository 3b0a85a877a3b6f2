#!/usr/bin/env bash
# Train the three stages of the default cascade at once on one CUDA GPU, for a fixed time,
# and export their EMA weights (float16) and logs into $OUT. The command that produced the
# shipped reimagen/assets/weights/*.safetensors (their logs: reimagen/assets/weights/logs/).
#
# Prepare here:  .venv/bin/python scripts/make_gpu_pack.py     (the KB without images/, ~16 MiB)
# Run there:     OUT=/some/dir MINUTES=7.6 bash scripts/train_gpu.sh
# Second lease:  STAGES=base WORKERS=12 INIT=<folder of the first lease's exports> ...
# Continue the shipped weights: INIT=$PWD/reimagen/assets/weights (tracked, so they travel;
#                 the tree (36 MB) + .gpupack (19 MB) fit the 64 MiB upload)
#                (the repo tree + .gpupack; needs python3 with torch, numpy, attrs, pluggy,
#                 safetensors, tqdm, Pillow; no reimagen install, no network)
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)    # the reimagen source tree to run (a snapshot works)
PACK=${PACK:-$REPO/.gpupack}
OUT=${OUT:?set OUT to the folder for weights and logs}
MINUTES=${MINUTES:-7.5}
DEVICE=${DEVICE:-cuda}
PY=${PYTHON:-python3}
RUNS=${RUNS:-/tmp/reimagen-gpu-runs}
KB=${KB:-/tmp/reimagen-gpu-kb}
export PYTHONPATH=$REPO PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 REIMAGEN_DISABLE_PLUGIN_AUTOLOAD=1
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE

mkdir -p "$KB" "$RUNS" "$OUT"
cp -r "$PACK/kb/." "$KB/"
[ -f "$KB/images.npy" ] || "$PY" -c "import gzip,shutil,sys; shutil.copyfileobj(gzip.open(sys.argv[1]), open(sys.argv[2], 'wb'), 1 << 20)" "$KB/images.npy.gz" "$KB/images.npy"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"

# STAGES: which stages (concurrently, one process each); INIT: a folder of <stage>.safetensors
# to start from (a second lease continues the first one's weights with a fresh optimizer).
STAGES=${STAGES:-base baseline sr}
WORKERS=${WORKERS:-}
train() {
  local stage=$1; shift
  local init=()
  [ -n "${INIT:-}" ] && init=(--init-from "$INIT/$stage.safetensors")
  # DATA: training-recipe overrides (DataConfig fields), e.g. DATA=p_same_style=0.75,p_drop_name=0.75
  [ -n "${DATA:-}" ] && init+=(--data "$DATA")
  "$PY" -m reimagen.cli.main train --stage "$stage" --device "$DEVICE" \
    --threads 2 --time-limit "$MINUTES" --steps 1000000 --checkpoint-every 1000 \
    --kb "$KB" --no-verify-kb --encoder hash --run-dir "$RUNS/$stage" "${init[@]}" \
    --export "$OUT/$stage.safetensors" "$@" >"$RUNS/$stage.out" 2>&1
}
declare -A pid
for stage in $STAGES; do
  case $stage in
    base)     train base --workers "${WORKERS:-6}" --k 2 --batch-size 256 --lr 3e-4 & ;;
    baseline) train baseline --workers "${WORKERS:-4}" --batch-size 256 --lr 3e-4 & ;;
    sr)       train sr --workers "${WORKERS:-4}" --k 1 --batch-size 128 --lr 3e-4 & ;;
    *) echo "unknown stage $stage"; exit 2 ;;
  esac
  pid[$stage]=$!
done
status=0
for stage in $STAGES; do
  wait "${pid[$stage]}" || { echo "stage $stage FAILED"; status=1; }
  tail -c 4000 "$RUNS/$stage.out" | tr '\r' '\n' | grep -v '^ *[0-9]*%' | tail -n 15 || true
  cp "$RUNS/$stage/log.jsonl" "$OUT/$stage.jsonl" 2>/dev/null || true
done
for stage in $STAGES; do echo "== $stage"; tr '\r' '\n' <"$RUNS/$stage.out" | tail -n 3; done >"$OUT/train.out"
nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv 2>/dev/null || true
exit $status
