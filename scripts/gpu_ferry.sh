#!/usr/bin/env bash
# Carry a GPU pack (scripts/make_gpu_pack.py) that does not fit one upload in parts, one device
# call each, into $FERRY on the warm machine, then put it back together there.
#   bash scripts/gpu_ferry.sh receive .gpupack/parts/part-00   # checks the part, keeps it
#   PACK=$(bash scripts/gpu_ferry.sh unpack)                   # all parts -> $FERRY/pack
# A missing or damaged part stops unpack with one line naming it (the machine was given back
# between calls: start again from part-00).
set -euo pipefail
FERRY=${FERRY:-/tmp/reimagen-ferry}
case ${1:-} in
  receive)
    part=${2:?receive needs a part folder}
    name=$(basename "$part")
    mkdir -p "$FERRY"
    want=$(awk -v n="$name" '$2 == n {print $1}' "$part/SHA256SUMS")
    have=$(sha256sum "$part/blob" | cut -d' ' -f1)
    [ -n "$want" ] && [ "$want" = "$have" ] || { echo "gpu_ferry: $part/blob is damaged (sha256 $have, want ${want:-none})" >&2; exit 1; }
    cp "$part/blob" "$FERRY/$name.tmp" && mv "$FERRY/$name.tmp" "$FERRY/$name"
    cp "$part/SHA256SUMS" "$FERRY/SHA256SUMS"
    echo "gpu_ferry: received $name ($(ls "$FERRY" | grep -c '^part-') of $(grep -c ' part-' "$FERRY/SHA256SUMS") parts)" >&2 ;;
  unpack)
    [ -f "$FERRY/SHA256SUMS" ] || { echo "gpu_ferry: no parts in $FERRY (a fresh machine? send part-00 first)" >&2; exit 1; }
    parts=$(awk '$2 ~ /^part-/ {print $2}' "$FERRY/SHA256SUMS")
    for name in $parts; do
      [ -f "$FERRY/$name" ] || { echo "gpu_ferry: $name missing from $FERRY (the machine went back between calls? send every part again)" >&2; exit 1; }
    done
    want=$(awk '$2 == "pack.tar" {print $1}' "$FERRY/SHA256SUMS")
    have=$(cd "$FERRY" && cat $parts | sha256sum | cut -d' ' -f1)
    [ "$want" = "$have" ] || { echo "gpu_ferry: the parts in $FERRY do not make the pack (sha256 $have, want $want)" >&2; exit 1; }
    rm -rf "$FERRY/pack" && mkdir -p "$FERRY/pack"
    (cd "$FERRY" && cat $parts) | tar -x -C "$FERRY/pack"
    echo "$FERRY/pack" ;;
  *) echo "usage: gpu_ferry.sh receive PART_FOLDER | unpack" >&2; exit 2 ;;
esac
