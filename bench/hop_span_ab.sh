#!/usr/bin/env bash
# Issue 14: how far the default model's hops look for the next name (RetroLMConfig.lexical_hop_span, and
# lexical_hop_stops: the sentence ends past which they do not look), each variant of VARIANTS side by side in one run
# on one GPU, on samples other than the reported tables':
# - held-out prose (bench/heldout_prose.py, seed 101): needle-page recall on the test and the validation formats;
# - held-out chains (bench/heldout_chain.py, seed 29), with and without a worked example opening the prompt;
# - RULER's five tasks (bench/ruler_pages.py, seed 43): scores and where the first answer token's pages go.
# The sealed needle formats are not run here: they are for the final report (bench/lexical_gpu.sh), not for choosing.
#   bash bench/hop_span_ab.sh          # $OUT gets hop_span_ab.tgz (tables, JSON, logs) and the tables
# VARIANTS: space-separated NAME=JSON, the knobs each variant sets in a copy of the default model's config (default:
# span 32 as shipped, and span 32 bounded by sentence ends). SAMPLES (held-out prose, default 80), CHAIN_SAMPLES
# (default 30), RULER_SAMPLES (default 40), FACTORS (default 16,64), DEVICE (default cuda) and DEADLINE (seconds,
# default 420) let a CPU check the script end to end with small numbers.
set -uo pipefail
source bench/device_env.sh
DEADLINE=${DEADLINE:-420}
DEVICE=${DEVICE:-cuda}
FACTORS=${FACTORS:-16,64}
RESULTS="$OUT/hop_span_ab"
MODELS=${MODELS_DIR:-/tmp/hop_span_models}
mkdir -p "$RESULTS" "$MODELS"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$RESULTS/device.txt" 2>&1 || echo "no GPU" > "$RESULTS/device.txt"
VARIANTS=${VARIANTS:-'span32={"lexical_hop_span":32} sentence32={"lexical_hop_span":32,"lexical_hop_stops":".!?\n"}'}
for variant in $VARIANTS; do
    name=${variant%%=*}
    model="$MODELS/$name"
    rm -rf "$model" && cp -r assets/retrolm-byte-llama "$model"
    python3 -c "import json, sys; from retrolm.config import RetroLMConfig as C; c = C.load(sys.argv[1]); \
[setattr(c, k, v) for k, v in json.loads(sys.argv[2]).items()]; c.validate(); c.save(sys.argv[1])" \
        "$model" "${variant#*=}"
    out="$RESULTS/$name"
    mkdir -p "$out"
    for needles in test validation; do
        timeout "$DEADLINE" python3 bench/heldout_prose.py --model "$model" --scorers trained+lexical+near_miss+hops \
            --needles "$needles" --factors "$FACTORS" --samples "${SAMPLES:-80}" --seed 101 --device "$DEVICE" \
            --out "$out" > "$out/heldout_$needles.log" 2>&1 &
    done
    for example in "" --worked-example; do
        timeout "$DEADLINE" python3 bench/heldout_chain.py --model "$model" --scorers trained+lexical+near_miss+hops \
            --factors "$FACTORS" $example --samples "${CHAIN_SAMPLES:-30}" --seed 29 --device "$DEVICE" --out "$out" \
            > "$out/heldout_chain${example:+_example}.log" 2>&1 &
    done
    timeout "$DEADLINE" python3 bench/ruler_pages.py --model "$model" \
        --tasks niah_single_1,niah_single_2,niah_multikey_1,niah_multivalue,vt --factors "$FACTORS" \
        --samples "${RULER_SAMPLES:-40}" --seed 43 --device "$DEVICE" --out "$out" --name ruler \
        > "$out/ruler.log" 2>&1 &
done
wait
for variant in $VARIANTS; do out="$RESULTS/${variant%%=*}"; echo "## $(basename "$out")"; cat "$out"/*.md 2>/dev/null; done | tee "$OUT/hop_span_ab.md"
(cd "$OUT" && tar -czf hop_span_ab.tgz hop_span_ab && rm -rf hop_span_ab)
