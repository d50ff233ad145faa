#!/usr/bin/env bash
# The GPU measurements of issue 13 in one run on a lent GPU machine (15 minutes of device
# time: each step bounded), from the repository root; tables and logs go to $OUT.
#   1. reader threads against reader processes, alone and feeding ViT-B/32 (reader_sweep.py);
#   2. 50 TCGA-sized slides (≈ 17,000 spots) through the features stage as the workflow runs
#      it, one process per job of 10 slides against one per slide (on 5), seconds per slide
#      split into start-up, reading, encoding and writing, GPU busy, and the TCGA projection
#      (cohort_features.py), with ViT-B/32; then 20 slides (one per process on 3) with $VIT_L
#      (default uni: ViT-L/16, random weights);
#   3. one large slide end to end (gpu_features.py);
#   4. the encoders alone: ViT-B/32, UNI (ViT-L/16) and H-optimus-0 (ViT-g/14), random weights
#      (encoder_throughput.py; issue 12);
#   5. on a machine with several GPUs only: the workflow's features jobs one GPU at a time
#      against all at once, each job on the GPU it claims (multi_gpu.py; issue 20).
# The machine needs hespotex's dependencies (carried as wheels, see the device tool's notes).
# Smoke test on a CPU, small:
#   SMOKE=1 OUT=/tmp/gpu-smoke PYTHON=.venv/bin/python benchmarks/gpu_session.sh
set -uo pipefail
OUT=${OUT:-gpu-session}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
if [ "${SMOKE:-0}" = 1 ]; then
    device=cpu limits=(600 600 600 600 600 600) vit_b=vit-tiny-32 vit_l=vit-tiny-32
    sweep=(--side 3000 --workers 1 2)
    slides=(--side 3000 --spacing-um 200 --slides-per-job 2 --num-workers 2)
    slides_b=(--slides 4 --per-process-slides 2) slides_l=(--slides 2 --per-process-slides 1)
    large=(--side 3000 --num-workers 2)
    encoders=(--depth 1 --batch-size 4 --batches 1)
    multi=(--slides 2 --side 3000)
else
    # ≈ 12 minutes in all, inside the 15 of a session with the machine's start.
    device=cuda limits=(100 280 180 90 90 150) vit_b=vit-b-32 vit_l=${VIT_L:-uni}
    sweep=(--side 12000 --workers 4 12)
    slides=(--side 24300 --slides-per-job 10 --num-workers 12)
    slides_b=(--slides 50 --per-process-slides 5) slides_l=(--slides 20 --per-process-slides 3)
    large=(--side 12000 --num-workers 12)
    encoders=(--batch-size 256 --batches 8)
    multi=(--slides 8 --side 12000)
fi
step() {  # name, seconds, work folder, command...: its log and table into $OUT
    local name=$1 seconds=$2 work=$3
    shift 3
    echo "== $name" | tee -a "$OUT/session.log"
    timeout "$seconds" "$@" --work "$work" >"$OUT/$name.log" 2>&1
    echo "   exit $? after ${SECONDS}s of the session" | tee -a "$OUT/session.log"
    tail -25 "$OUT/$name.log" >>"$OUT/session.log"
    for table in "$work"/*.md; do
        [ -e "$table" ] && cp "$table" "$OUT/$name-$(basename "$table")"
    done
}
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
step reader_sweep "${limits[0]}" /tmp/hx-sweep "$PYTHON" benchmarks/reader_sweep.py \
    --device "$device" --architecture "$vit_b" "${sweep[@]}"
# Both cohort runs share one folder: the pyramid and the slides' tissue and tiles are made once.
step cohort_vit_b "${limits[1]}" /tmp/hx-cohort "$PYTHON" benchmarks/cohort_features.py \
    --device "$device" --architecture "$vit_b" --reading processes "${slides[@]}" "${slides_b[@]}"
rm -f /tmp/hx-cohort/*.md
step cohort_vit_l "${limits[2]}" /tmp/hx-cohort "$PYTHON" benchmarks/cohort_features.py \
    --device "$device" --architecture "$vit_l" --reading processes "${slides[@]}" "${slides_l[@]}"
step gpu_features "${limits[3]}" /tmp/hx-gpu "$PYTHON" benchmarks/gpu_features.py \
    --device "$device" --architecture "$vit_b" --reading processes "${large[@]}"
step encoders "${limits[4]}" /tmp/hx-encoders "$PYTHON" benchmarks/encoder_throughput.py \
    --no-onnx --architectures vit-b-32 uni h-optimus-0 "${encoders[@]}"
gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ')
if [ "${gpus:-0}" -gt 1 ] || [ "${SMOKE:-0}" = 1 ]; then
    step multi_gpu "${limits[5]}" /tmp/hx-multi "$PYTHON" benchmarks/multi_gpu.py \
        --device "$device" --architecture "$vit_b" "${multi[@]}"
fi
echo "done in ${SECONDS}s" | tee -a "$OUT/session.log"
