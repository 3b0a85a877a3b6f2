#!/usr/bin/env bash
# Train the default cascade on the emoji knowledge base, resumably: rerun to continue.
# The CPU route; the shipped weights came from a GPU (scripts/train_gpu.sh, and
# reimagen/assets/weights/logs/README.md). To continue them here, pass
# `--init-from reimagen/assets/weights/<stage>.safetensors` to a new run folder.
# Run folders live outside the repo so a fresh checkout keeps them.
#   STAGES="base" scripts/train_default.sh         # only the Re-Imagen base
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${REIMAGEN_RUNS:-$HOME/reimagen-runs}
THREADS=${THREADS:-2}
ENCODER=${ENCODER:-hash}   # recorded in <run>/run.json; a resume with another one is refused
export OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1
for stage in ${STAGES:-base baseline sr}; do
  case $stage in
    base)     args=(--k 2 --steps "${BASE_STEPS:-20000}") ;;
    baseline) args=(--steps "${BASE_STEPS:-20000}") ;;
    sr)       args=(--k 1 --steps "${SR_STEPS:-8000}") ;;
  esac
  mkdir -p "$RUNS"
  .venv/bin/reimagen train --stage "$stage" --run-dir "$RUNS/$stage" --threads "$THREADS" \
    --encoder "$ENCODER" "${args[@]}" 2>&1 | tee -a "$RUNS/$stage.log"
  .venv/bin/reimagen train --stage "$stage" --run-dir "$RUNS/$stage" --export-only
  mkdir -p reimagen/assets/weights/logs
  cp "$RUNS/$stage/log.jsonl" "reimagen/assets/weights/logs/$stage.jsonl"
done
