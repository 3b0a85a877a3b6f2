#!/usr/bin/env bash
# Train the three stages of the default cascade at once on one CUDA GPU, for a fixed time,
# and export their EMA weights (float16) and logs into $OUT. The command that produced the
# shipped reimagen/assets/weights/*.safetensors (their logs: reimagen/assets/weights/logs/).
#
# Prepare here:  .venv/bin/python scripts/make_gpu_pack.py     (the KB without images/, ~16 MiB)
# Run there:     OUT=/some/dir MINUTES=7.5 bash scripts/train_gpu.sh
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

# stage  preset-args                         workers  threads
train() {
  local stage=$1 workers=$2; shift 2
  "$PY" -m reimagen.cli.main train --stage "$stage" --device "$DEVICE" --workers "$workers" \
    --threads 2 --time-limit "$MINUTES" --steps 1000000 --checkpoint-every 1000 \
    --kb "$KB" --no-verify-kb --encoder hash --run-dir "$RUNS/$stage" \
    --export "$OUT/$stage.safetensors" "$@" >"$RUNS/$stage.out" 2>&1
}
train base 6 --k 2 --batch-size 256 --lr 3e-4 & base=$!
train baseline 4 --batch-size 256 --lr 3e-4 & baseline=$!
train sr 4 --k 1 --batch-size 128 --lr 3e-4 & sr=$!
status=0
for stage in base baseline sr; do
  wait "${!stage}" || { echo "stage $stage FAILED"; status=1; }
  tail -c 4000 "$RUNS/$stage.out" | tr '\r' '\n' | grep -v '^ *[0-9]*%' | tail -n 15 || true
  cp "$RUNS/$stage/log.jsonl" "$OUT/$stage.jsonl" 2>/dev/null || true
done
for stage in base baseline sr; do echo "== $stage"; tr '\r' '\n' <"$RUNS/$stage.out" | tail -n 3; done >"$OUT/train.out"
nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv 2>/dev/null || true
exit $status
