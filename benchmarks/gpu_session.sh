#!/usr/bin/env bash
# The GPU measurements of issue 13 in one run on a lent GPU machine (15 minutes of device
# time: each step bounded), from the repository root; tables and logs go to $OUT.
#   1. reader threads against reader processes, alone and feeding ViT-B/32 (reader_sweep.py);
#   2. 50 TCGA-sized slides (≈ 17,000 spots) through the features stage as the workflow runs
#      it, one process per job of 10 slides against one per slide (on 5), seconds per slide
#      split into start-up, reading, encoding and writing, GPU busy, and the TCGA projection
#      (cohort_features.py), with ViT-B/32, then with $VIT_L (a ViT-L/16 preset, UNI's size);
#   3. one large slide end to end (gpu_features.py).
# The machine needs hespotex's dependencies (carried as wheels, see the device tool's notes).
# Smoke test on a CPU, small: SMOKE=1 OUT=/tmp/gpu-smoke benchmarks/gpu_session.sh
set -uo pipefail
OUT=${OUT:-gpu-session}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
if [ "${SMOKE:-0}" = 1 ]; then
    device=cpu limit=900 vit_b=vit-tiny-32 vit_l=vit-tiny-32
    sweep=(--side 3000 --workers 1 2)
    slides=(--slides 4 --per-process-slides 2 --side 3000 --spacing-um 200 --slides-per-job 2
        --num-workers 2)
    large=(--side 3000 --num-workers 2)
else
    device=cuda limit=240 vit_b=vit-b-32 vit_l=${VIT_L:-vit-b-32}
    sweep=(--side 12000 --workers 4 8 14)
    slides=(--slides 50 --per-process-slides 5 --side 24300 --slides-per-job 10
        --num-workers 12)
    large=(--side 12000 --num-workers 12)
fi
step() {  # name, seconds, command...
    local name=$1 seconds=$2
    shift 2
    echo "== $name" | tee -a "$OUT/session.log"
    timeout "$seconds" "$@" >"$OUT/$name.log" 2>&1
    echo "   exit $? after ${SECONDS}s of the session" | tee -a "$OUT/session.log"
    tail -25 "$OUT/$name.log" >>"$OUT/session.log"
}
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
step reader_sweep "$limit" "$PYTHON" benchmarks/reader_sweep.py --work /tmp/hx-sweep \
    --device "$device" --architecture "$vit_b" "${sweep[@]}"
step cohort_vit_b "$limit" "$PYTHON" benchmarks/cohort_features.py --work /tmp/hx-cohort-b \
    --device "$device" --architecture "$vit_b" --readers processes "${slides[@]}"
step cohort_vit_l "$limit" "$PYTHON" benchmarks/cohort_features.py --work /tmp/hx-cohort-l \
    --device "$device" --architecture "$vit_l" --readers processes "${slides[@]}"
step gpu_features "$limit" "$PYTHON" benchmarks/gpu_features.py --work /tmp/hx-gpu \
    --device "$device" --architecture "$vit_b" --readers processes "${large[@]}"
for folder in /tmp/hx-sweep /tmp/hx-cohort-b /tmp/hx-cohort-l /tmp/hx-gpu; do
    cp "$folder"/*.md "$OUT/$(basename "$folder")-$(ls "$folder" | grep -m1 '\.md$')" 2>/dev/null
done
echo "done in ${SECONDS}s" | tee -a "$OUT/session.log"
