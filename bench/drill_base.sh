#!/usr/bin/env bash
# Issue 14 on one GPU: the default model's base LM pretrained again with recall drills (train/drills.py: values
# to copy in a phrasing invented per document) mixed into the shipped pretraining corpus, gated on copying
# unseen formats, then the shipped stage 1 on it.
#   bash bench/drill_base.sh base     # pretraining (~4-8 minutes on an H200) and the gate: full attention at 1x on
#                                     # held-out prose (unseen needle formats) and RULER, and bench/copy_probe.py
#   bash bench/drill_base.sh stage1   # stage 1 with the committed config on that base, the model exported
#   bash bench/drill_base.sh eval     # RULER 1x/16x/64x and held-out prose 1x/4x/16x/64x of the exported model
# DRILLS (default 0.3) sets the share of pretraining documents that are drills; PRETRAIN_STEPS (default 3000, the
# shipped recipe's) the pretraining length (~13 steps/s on an H200); COMPILE=true compiles pretraining's forward;
# DRILL_SHAPES (default all four of train/drills.py; "plain" is the one-shape drills of the first runs) the
# statement shapes drills take; DRILL_REJOINED (default 0.25) the share of drill answers restating the relation with
# another joining word; DRILL_PARTIAL (default 0) the share of those keeping only the relation's last words;
# SPLIT_WINDOWS (default 0) the share of pretraining windows holding two documents;
# PRETRAIN_SEED (default 0) pretraining's seed (initial weights and window order; the corpus stays the same), so
# that variants can be told from seed noise; STAGE_DRILLS (default 0) the share of stage 1's long documents that are
# drills
# (generated in the first call: give it to every call); BASE_LAYERS (default: the shipped config's 8) the base's
# depth, every other size of configs/default_model/pretrain.json kept (12 layers: 18.9M parameters against 12.7M,
# ~38 MB in bf16, still inside the 50 MB asset budget with the retriever); WORK (default work/drills) the build's
# directory; SAMPLES (default 20) the samples per cell.
# The base comes back in $OUT in parts of 15 MB (`cat base.tgz.* > base.tgz`), for a later call on a fresh machine
# (carry it to $WORK/base).
# Needs deepspeed, datasets, wonderwords and their missing dependencies as wheels in .whl/ (carry: [".whl"]).
set -uo pipefail
source bench/device_env.sh
WORK=${WORK:-work/drills}
SAMPLES=${SAMPLES:-20}
SHIPPED=assets/retrolm-byte-llama
build() {
    mkdir -p "$WORK"
    local depth=()
    [ -n "${BASE_LAYERS:-}" ] && depth=(--pretrain-set "model=$(python3 -c 'import json, sys
model = json.load(open("configs/default_model/pretrain.json"))["model"]
model["num_hidden_layers"] = int(sys.argv[1])
print(json.dumps(model))' "$BASE_LAYERS")")
    python3 train/build_default_model.py --work "$WORK" --out "$WORK/model" --drill-fraction "${DRILLS:-0.3}" \
        --drill-shapes "${DRILL_SHAPES:-plain,trailing,attribute,bare}" --drill-rejoined "${DRILL_REJOINED:-0.25}" \
        --drill-partial "${DRILL_PARTIAL:-0}" --split-windows "${SPLIT_WINDOWS:-0}" \
        --stage-drill-fraction "${STAGE_DRILLS:-0}" \
        --pretrain-set "max_steps=${PRETRAIN_STEPS:-3000}" --pretrain-set "compile=${COMPILE:-false}" \
        --pretrain-set "seed=${PRETRAIN_SEED:-0}" \
        "${depth[@]}" --workers "${WORKERS:-14}" "$@" >> "$WORK/build.log" 2>&1
    local status=$?
    tr '\r' '\n' < "$WORK/build.log" | grep -vE "it/s]$|step/s]$|s/it]$" > "$OUT/build.log"
    grep -E "^\[|default model:|stopped|Error" "$OUT/build.log" | tail -8
    cp "$WORK/build_results.json" "$OUT/" 2>/dev/null
    return $status
}
gate() {  # gate NAME BASE: full attention at 1x (every page fits the window) on unseen formats and on RULER
    local name=$1 base=$2
    python3 bench/heldout_prose.py --model "$base" --scorers attention --factors 1 --samples "$SAMPLES" \
        --device cuda --out "$OUT/gate_$name" > "$OUT/gate_heldout_$name.log" 2>&1 &
    python3 -m eval.ruler --model "$base" --method full --tasks niah_single_1,niah_multivalue,niah_multikey_1 \
        --lengths 1024 --num-samples "$SAMPLES" --device cuda --out "$OUT/gate_ruler_$name" \
        > "$OUT/gate_ruler_$name.log" 2>&1 &
    wait
    echo "== $name"; grep -E "accuracy" "$OUT/gate_$name/heldout_prose.md"; cat "$OUT/gate_ruler_$name/scores.md"
}
case ${1:-base} in
base)
    build --stop-after pretrain || exit 1
    (cd "$WORK" && tar -czf - base | split -b 15M - "$OUT/base.tgz.")
    [ "${GATE:-1}" = 1 ] && gate drills "$WORK/base"  # GATE=0: the copy probes alone (quicker)
    for needles in test validation; do  # bench/copy_probe.py: copying unseen formats at three haystack sizes
        python3 bench/copy_probe.py --bases "$WORK/base" \
            --names "drills ${DRILLS:-0.3} (${DRILL_SHAPES:-four shapes}, rejoined ${DRILL_REJOINED:-0.25}, partial\
 ${DRILL_PARTIAL:-0}, split ${SPLIT_WINDOWS:-0}), ${BASE_LAYERS:-8} layers, ${PRETRAIN_STEPS:-3000} steps, seed\
 ${PRETRAIN_SEED:-0}" \
            --needles $needles --out "$OUT/gate_probe" > "$OUT/gate_probe_$needles.log" 2>&1
    done
    cat "$OUT"/gate_probe/copy_probe*.md
    # the shipped base's gate does not change (bench/results/drills/gate_*_shipped.*): GATE_SHIPPED=1 reruns it
    [ "${GATE_SHIPPED:-0}" = 1 ] && gate shipped "$SHIPPED/base"
    (cd "$OUT" && tar -czf gate.tgz --remove-files gate_*) ;;  # the device returns few files
stage1)
    build ;;
eval)
    python3 bench/default_model_quality.py --model "$WORK/model" --methods retrolm --factors 1,16,64 \
        --num-samples "$SAMPLES" --device cuda --jobs 6 --threads 1 --work "$WORK/quality" \
        --assets "$OUT/quality" > "$OUT/quality.log" 2>&1 &
    python3 bench/heldout_prose.py --model "$WORK/model" --scorers trained --factors 1,4,16,64 \
        --samples "$SAMPLES" --device cuda --out "$OUT/heldout" > "$OUT/heldout.log" 2>&1 &
    wait
    cat "$OUT/quality/quality.md" "$OUT/heldout/heldout_prose.md"
    (cd "$OUT" && tar -czf eval.tgz --remove-files quality quality.log heldout heldout.log) ;;
*)
    echo "unknown stage $1 (base, stage1 or eval)" >&2; exit 2 ;;
esac
