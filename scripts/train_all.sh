#!/usr/bin/env bash
# Train HeadLab's three embedded models side by side (how the weights in assets/ were made).
# Usage: scripts/train_all.sh DEVICE MINUTES OUTDIR     e.g. scripts/train_all.sh cuda 6.5 /tmp/weights
# Each panel's script is seeded; see backends/<panel>/train.py for its settings. To use the new weights, copy
# OUTDIR/<panel>/* to assets/<panel>/, all but checkpoint.pt (the optimizer state for --resume).
set -u
device=${1:-cpu}
minutes=${2:-60}
out=${3:-artifacts/training}
python=${PYTHON:-python3}
mkdir -p "$out"
for panel in guidance segmentation restoration; do
  mkdir -p "$out/$panel"
  $python -m "backends.$panel.train" --device "$device" --minutes "$minutes" --out "$out/$panel" --seed 0 \
    > "$out/$panel.log" 2>&1 &
done
wait
tail -n 25 "$out"/*.log
