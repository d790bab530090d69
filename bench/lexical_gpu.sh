#!/usr/bin/env bash
# Issue 14, lexical page scores on one GPU, all in one run (the CPU numbers are in bench/results/lexical/):
# - RULER, every method of bench/default_model_quality.py (the shipped model, with lexical scores since 2026-12-05,
#   beside it without them: retrolm_no_lexical, near misses judged or not: retrolm_(no_)near_miss, and lexical hops
#   or not: retrolm_(no_)hops), every length, SAMPLES per cell: assets/quality.* are this table;
# - held-out prose end to end (bench/heldout_prose.py, scorers trained+lexical+near_miss with and without hops; the
#   plain ones were measured on 2026-12-05, bench/results/lexical/) on the test formats and on the sealed ones,
#   1x / 16x / 64x;
# - held-out chains (bench/heldout_chain.py: chains of five statements in formats of our own, in the language
#   reference), with and without hops, 1x / 16x / 64x, without and with a worked example opening the prompt.
#   bash bench/lexical_gpu.sh          # $OUT gets lexical_gpu.tgz (tables, JSON, plots, logs) and the tables
# METHODS (default: every distinct one), SAMPLES (default 25), HELDOUT_SAMPLES (default 40), CHAIN_SAMPLES (default
# 30), DEVICE (default cuda), FACTORS (default 1,4,16,64) and HELDOUT_FACTORS (default 1,16,64) let a CPU check the
# script end to end with small numbers. Everything stops at DEADLINE seconds (default 540) and what was written is packed.
set -uo pipefail
source bench/device_env.sh
DEADLINE=${DEADLINE:-540}
DEVICE=${DEVICE:-cuda}
RESULTS="$OUT/lexical_gpu"
mkdir -p "$RESULTS"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$RESULTS/device.txt" 2>&1 || echo "no GPU" > "$RESULTS/device.txt"
timeout "$DEADLINE" python3 bench/default_model_quality.py ${METHODS:+--methods "$METHODS"} --device "$DEVICE" \
    --factors "${FACTORS:-1,4,16,64}" --num-samples "${SAMPLES:-25}" --jobs "${JOBS:-8}" --threads 1 \
    --work "${WORK:-/tmp/lexical_gpu_quality}" --assets "$RESULTS/quality" \
    --note "$(cat "$RESULTS/device.txt"), bench/lexical_gpu.sh" > "$RESULTS/quality.log" 2>&1 &
for needles in test sealed; do
    timeout "$DEADLINE" python3 bench/heldout_prose.py --scorers trained+lexical+near_miss,trained+lexical+near_miss+hops \
        --needles "$needles" \
        --factors "${HELDOUT_FACTORS:-1,16,64}" --samples "${HELDOUT_SAMPLES:-40}" --device "$DEVICE" \
        --out "$RESULTS/heldout" > "$RESULTS/heldout_$needles.log" 2>&1 &
done
for example in "" --worked-example; do
    timeout "$DEADLINE" python3 bench/heldout_chain.py --factors "${HELDOUT_FACTORS:-1,16,64}" $example \
        --samples "${CHAIN_SAMPLES:-30}" --device "$DEVICE" --out "$RESULTS/heldout" \
        > "$RESULTS/heldout_chain${example:+_example}.log" 2>&1 &
done
wait
pkill -f "eval.ruler" 2>/dev/null  # timeout stops the grid's parent only: its eval processes would run on
if [ ! -f "$RESULTS/quality/quality.md" ]; then  # cut at DEADLINE: tabulate the cells that finished
    python3 bench/default_model_quality.py ${METHODS:+--methods "$METHODS"} --collect-only \
        --factors "${FACTORS:-1,4,16,64}" --num-samples "${SAMPLES:-25}" --work "${WORK:-/tmp/lexical_gpu_quality}" \
        --assets "$RESULTS/quality" --note "$(cat "$RESULTS/device.txt"), bench/lexical_gpu.sh, cut at ${DEADLINE} s: \
cells that finished" >> "$RESULTS/quality.log" 2>&1
fi
cat "$RESULTS"/quality/quality.md "$RESULTS"/heldout/*.md 2>/dev/null
# the device returns few files: the tables beside one tarball of everything
cp "$RESULTS"/quality/quality.md "$OUT/quality_lexical.md" 2>/dev/null
(cd "$OUT" && tar -czf lexical_gpu.tgz lexical_gpu && rm -rf lexical_gpu)
