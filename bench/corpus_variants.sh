#!/usr/bin/env bash
# Issue 14's corpus experiment on one GPU: the default model rebuilt from nothing with varied-format lessons,
# two variants side by side, then RULER and the held-out prose evaluation of each (results under $OUT).
#   bench/corpus_variants.sh build     # both builds, resumable: run again to continue (work/variants/)
#   bench/corpus_variants.sh eval      # RULER (with/without post-training) + held-out prose, each variant
#   bench/corpus_variants.sh baseline  # held-out prose of the shipped model
#   bench/corpus_variants.sh stage2-rate V LR  # V's stage 2 again at learning rate LR (same stage 1), RULER of both
#   bench/corpus_variants.sh diagnose V  # variant V's base LM alone: RULER predictions at 1x, the base as a tarball
#   bench/corpus_variants.sh one V       # variant V alone, resumable: run again until its model exists
#   bench/corpus_variants.sh eval-one V  # RULER (with/without post-training) + held-out prose (test and validation
#                                        # needles) of variant V, its base with full attention at 1x, and the
#                                        # shipped model on the validation needles
# Variants (train/build_default_model.py options):
#   held_out  --fact-fraction 1.0: no RULER template in training at all
#   mixed     --fact-fraction 0.5: half the lessons in RULER's templates, half varied
# PRETRAIN_STEPS (default 3000, the shipped recipe's) sets the base LM's pretraining length in build and diagnose;
# pretraining saves its state every 500 steps, so a build stopped by BUILD_SECONDS resumes inside pretraining too.
# SAMPLES (default 20) sets the samples per cell of eval and eval-one. STOP_AFTER=pretrain (or documents, stage1,
# stage2) ends a build after that phase, so a device call is not spent on a phase it cannot finish.
# SHORT_FRACTION (default 0.25) and STAGE2_LR (default 2e-4) set the long documents' share of window-sized ones
# and stage 2's learning rate.
# Dense recall texts are cut at their end (--cut-dense-end): no question outlives its needle.
# The device returns only a few files: results are gathered in few files, and bulky ones (a base) are tarred.
# Needs deepspeed, datasets, wonderwords and their missing dependencies as wheels in .whl/ (carry: [".whl"]).
set -uo pipefail
source bench/device_env.sh
declare -A FRACTION=([held_out]=1.0 [mixed]=0.5)
STEPS=${PRETRAIN_STEPS:-3000}
# stage 1 keeps the retriever that finds validation needles in held-out prose best (retrolm/training/needle_recall.py)
NEEDLES=(--stage1-set needle_eval_samples=${NEEDLE_SAMPLES:-16} --stage1-set eval_steps=${NEEDLE_EVAL_STEPS:-200}
         --stage1-set keep=needle_recall)
SAMPLES=${SAMPLES:-20}
# issue 14 item 3: long documents mixed with window-sized ones, and a gentler stage-2 LoRA rate than the old 1e-3;
# the variants were measured post-trained without replay and with the attention label alone (no copy labels), at
# the page size and seed of that time (128, top-5, seed 0)
RECIPE=(--short-fraction "${SHORT_FRACTION:-0.25}" --post-train --stage2-replay "${STAGE2_REPLAY:-0}"
        --stage2-set "learning_rate=${STAGE2_LR:-2e-4}" --stage1-set "copy_label_weight=${COPY_LABEL_WEIGHT:-0}"
        --stage1-set "$PAGE128_STAGE1" --stage1-set seed=0)
build_variant() {  # build_variant V: the build of variant V, within BUILD_SECONDS; its log grows across calls
    local v=$1
    mkdir -p "work/variants/$v"
    timeout "${BUILD_SECONDS:-570}" python3 train/build_default_model.py --work "work/variants/$v" \
        --out "work/variants/$v/model" --fact-fraction "${FRACTION[$v]}" --workers "${WORKERS:-8}" \
        --pretrain-set "max_steps=$STEPS" --cut-dense-end "${NEEDLES[@]}" "${RECIPE[@]}" \
        ${STOP_AFTER:+--stop-after "$STOP_AFTER"} >> "work/variants/$v/build.log" 2>&1
    tr '\r' '\n' < "work/variants/$v/build.log" | grep -vE "it/s]$|step/s]$|s/it]$" > "$OUT/build_$v.log"
    echo "== $v"; grep -E "^\[|default model:|resuming|Error" "$OUT/build_$v.log" | tail -8
    cp "work/variants/$v/build_results.json" "$OUT/build_results_$v.json" 2>/dev/null
}
evaluate_variant() {  # evaluate_variant V: RULER with and without post-training, held-out prose (both needle sets)
    local v=$1
    python3 bench/default_model_quality.py --model "work/variants/$v/model" \
        --stage1-retriever "work/variants/$v/stage1/retriever.safetensors" \
        --methods retrolm,retrolm_no_post_training --factors 1,16,64 --num-samples "$SAMPLES" --device cuda \
        --jobs 6 --threads 1 --work "/tmp/quality_$v" --assets "$OUT/$v" > "$OUT/quality_$v.log" 2>&1 &
    python3 bench/heldout_prose.py --model "work/variants/$v/model" --samples "$SAMPLES" --device cuda \
        --out "$OUT/$v" > "$OUT/heldout_$v.log" 2>&1 &
    python3 bench/heldout_prose.py --model "work/variants/$v/model" --needles validation --samples "$SAMPLES" \
        --device cuda --out "$OUT/$v" > "$OUT/heldout_validation_$v.log" 2>&1 &
    wait
}
stage=${1:-build}
case $stage in
build)
    for v in held_out mixed; do build_variant "$v" & done
    wait ;;
one)
    build_variant "${2:-mixed}" ;;
eval)
    for v in held_out mixed; do evaluate_variant "$v" & done
    wait
    for v in held_out mixed; do echo "== $v"; cat "$OUT/$v"/*.md 2>/dev/null; done ;;
eval-one)
    v=${2:-mixed}
    python3 -m eval.ruler --model "work/variants/$v/base" --method full --tasks niah_single_1,niah_multivalue \
        --lengths 1024 --num-samples 10 --device cuda --out "$OUT/ruler_full_$v" > "$OUT/ruler_full_$v.log" 2>&1 &
    python3 bench/heldout_prose.py --needles validation --samples "$SAMPLES" --device cuda --out "$OUT/shipped" \
        > "$OUT/heldout_validation_shipped.log" 2>&1 &  # the shipped model on the same validation needles
    evaluate_variant "$v"
    wait
    echo "== $v"; cat "$OUT/$v"/*.md "$OUT/ruler_full_$v/scores.md" 2>/dev/null ;;
stage2-rate)  # variant V's stage 2 again at learning rate LR in a copy of its build (same base and stage 1), then
             # RULER of both post-trained models and of stage 1 alone, in one tarball
    v=${2:-mixed}; lr=${3:-5e-5}; w="work/variants/${v}_lr$lr"
    rm -rf "$w" && mkdir -p "$w"
    cp -r work/variants/"$v"/{pretrain.jsonl,long.jsonl,pretrain-data,long-data,base,stage1,build_results.json} "$w"/
    RECIPE=(--short-fraction "${SHORT_FRACTION:-0.25}" --post-train --stage2-replay "${STAGE2_REPLAY:-0}"
            --stage2-set "learning_rate=$lr" --stage1-set "copy_label_weight=${COPY_LABEL_WEIGHT:-0}")
    python3 train/build_default_model.py --work "$w" --out "$w/model" --fact-fraction "${FRACTION[$v]}" \
        --pretrain-set "max_steps=$STEPS" --cut-dense-end "${NEEDLES[@]}" "${RECIPE[@]}" > "$OUT/build_${v}_lr$lr.log" 2>&1
    for model in "$v" "${v}_lr$lr"; do
        python3 bench/default_model_quality.py --model "work/variants/$model/model" \
            --stage1-retriever "work/variants/$model/stage1/retriever.safetensors" \
            --methods retrolm,retrolm_no_post_training --factors 1,16,64 --num-samples "$SAMPLES" --device cuda \
            --jobs 7 --threads 1 --work "/tmp/quality_$model" --assets "$OUT/stage2_$model" > "$OUT/quality_$model.log" 2>&1 &
    done
    wait
    tar -C "$OUT" -czf "$OUT/stage2_rate_$v.tgz" "stage2_$v" "stage2_${v}_lr$lr" "build_${v}_lr$lr.log"
    cat "$OUT"/stage2_*/quality.md ;;
diagnose)  # one variant's base LM alone (pretraining only), its RULER predictions at 1x, the base as a tarball
    v=${2:-mixed}
    timeout "${BUILD_SECONDS:-570}" python3 train/build_default_model.py --work "work/variants/$v" \
        --out "work/variants/$v/model" --fact-fraction "${FRACTION[$v]}" --workers 12 --pretrain-set "max_steps=$STEPS" --cut-dense-end "${NEEDLES[@]}" "${RECIPE[@]}" \
        > "$OUT/build_$v.log" 2>&1
    tar -C "work/variants/$v" -czf "$OUT/base_$v.tgz" base
    for base in "work/variants/$v/base" assets/retrolm-byte-llama/base; do  # the shipped base is the control
        name=$(basename "$(dirname "$base")")
        python3 -m eval.ruler --model "$base" --method full --tasks niah_single_1,niah_multivalue \
            --lengths 1024 --num-samples 10 --device cuda --out "$OUT/ruler_full_$name" > "$OUT/ruler_full_$name.log" 2>&1
        echo "== $name"; tail -3 "$OUT/ruler_full_$name.log"; head -c 1500 "$OUT/ruler_full_$name"/predictions/*single_1*
    done
    python3 bench/heldout_prose.py --model "work/variants/$v/base" --scorers attention --factors 1,16 --samples 20 \
        --device cuda --out "$OUT/heldout_base_$v" 2>&1 | tail -8
    cat "$OUT"/ruler_full_*/scores.md ;;
baseline)
    python3 bench/heldout_prose.py --samples 40 --device cuda --out "$OUT/shipped" 2>&1 | tail -12 ;;
esac
