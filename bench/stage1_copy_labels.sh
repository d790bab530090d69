#!/usr/bin/env bash
# Issue 14 item 2 on one GPU: stage 1 of the default model trained again from the shipped base on the shipped
# recipe's long documents, its target mixing the LLM's attention label with copy labels (training config
# copy_label_weight W; retrolm/training/supervision.py), one run per W side by side; then every stage-1 model
# beside the shipped stage 1, all with the shipped inference settings: needle-page recall and accuracy on
# held-out prose (the five test formats and stage 1's three validation formats) and RULER at 1x, 16x and 64x.
#   bash bench/stage1_copy_labels.sh train 0.5 1.0   # the stage-1 runs (resumable: run again to go on)
#   bash bench/stage1_copy_labels.sh eval 0.5 1.0    # the evaluations; $OUT/copy_labels.{md,json} + a tarball
# SAMPLES (default 20) sets the samples per cell; WORK (default work/stage1_copy_labels) the work directory, so that
# two invocations with different BUILD_ARGS run side by side (each with its own OUT: the RULER grids are resumable
# and cached under WORK); SHIPPED_ROW=0 skips the shipped model's row, HELDOUT_SETS="" the held-out prose. The
# stage-1 runs also measure validation needles every 300 steps (needle_eval_samples=12) and keep the last step, as
# the shipped stage 1 did. The sweep in bench/results/copy_labels/ ran at pages of 128, top-5, seed 0
# (BUILD_ARGS="--stage1-set $PAGE128_STAGE1 --stage1-set seed=0", bench/device_env.sh, now that the committed
# config is at 64).
# Needs deepspeed, datasets, wonderwords and their missing dependencies as wheels in .whl/ (carry: [".whl"]).
set -uo pipefail
source bench/device_env.sh
SHIPPED=assets/retrolm-byte-llama
WORK=${WORK:-work/stage1_copy_labels}  # one per concurrent invocation (their OUTs apart too)
SAMPLES=${SAMPLES:-20}
stage=${1:-train}
shift
weights=("${@:-0.5}")
build() {  # build DIR [options]: the shipped recipe's long documents from the shipped base
    local dir=$1; shift
    python3 train/build_default_model.py --work "$dir" --out "$dir/model" --base "$SHIPPED/base" \
        --workers "${WORKERS:-14}" ${BUILD_ARGS:-} "$@"
}
case $stage in
train)
    build "$WORK/shared" --stop-after pretrain > "$OUT/shared.log" 2>&1 || { tail -20 "$OUT/shared.log"; exit 1; }
    for w in "${weights[@]}"; do
        dir="$WORK/w$w"
        mkdir -p "$dir"
        for part in long.jsonl long-data; do ln -sfn "$(pwd)/$WORK/shared/$part" "$dir/$part"; done
        build "$dir" --stop-after stage1 --stage1-set "copy_label_weight=$w" --stage1-set needle_eval_samples=12 \
            --stage1-set eval_steps=300 > "$OUT/train_w$w.log" 2>&1 &
    done
    wait
    for w in "${weights[@]}"; do
        echo "== copy_label_weight $w"
        python3 -c "import json, sys; r = json.load(open(sys.argv[1])); print(r['eval_before'], r['eval_after'], \
r.get('needle_recall'))" "$WORK/w$w/stage1/train_results.json" || tail -5 "$OUT/train_w$w.log"
        # the machine may go back before `eval`: the retriever comes home too (the base is the shipped one)
        tar -czf "$OUT/stage1_w$w.tgz" -C "$WORK/w$w/stage1" retriever.safetensors retrolm_config.json \
            train_results.json best_retriever.json
    done ;;
eval)
    mkdir -p "$WORK/models"
    names=()
    if [ "${SHIPPED_ROW:-1}" = 1 ]; then  # SHIPPED_ROW=0: only the new runs (the shipped row measured elsewhere)
        python3 bench/stage1_model.py "$SHIPPED" "$WORK/models/shipped" > /dev/null && names+=(shipped)
    fi
    for w in "${weights[@]}"; do
        python3 bench/stage1_model.py "$WORK/w$w/stage1" "$WORK/models/w$w" > /dev/null && names+=("w$w")
    done
    for name in "${names[@]}"; do
        model="$WORK/models/$name"
        python3 bench/default_model_quality.py --model "$model" --stage1-retriever "$model/retriever.safetensors" \
            --methods retrolm --factors "${FACTORS:-1,16,64}" --num-samples "$SAMPLES" --device "${DEVICE:-cuda}" \
            --jobs 4 --threads 1 --work "$WORK/quality_$name" --assets "$OUT/quality_$name" > "$OUT/quality_$name.log" 2>&1 &
        for needles in ${HELDOUT_SETS-test validation}; do  # HELDOUT_SETS="": RULER only
            python3 bench/heldout_prose.py --model "$model" --scorers trained --needles "$needles" \
                --factors "${FACTORS:-1,16,64}" --samples "$SAMPLES" --device "${DEVICE:-cuda}" \
                --out "$OUT/heldout_${needles}_$name" > "$OUT/heldout_${needles}_$name.log" 2>&1 &
        done
    done
    wait
    python3 - "$OUT" "${names[@]}" <<'EOF'
import glob, json, os, sys
out, names = sys.argv[1], sys.argv[2:]
record, lines = {}, []
for name in names:
    entry = record[name] = {}
    quality = os.path.join(out, f"quality_{name}", "quality.json")
    if os.path.isfile(quality):
        entry["ruler"] = json.load(open(quality))["scores"]["retrolm"]
    for needles in ("test", "validation"):
        found = glob.glob(os.path.join(out, f"heldout_{needles}_{name}", "*.json"))
        if found:
            entry[f"heldout_{needles}"] = json.load(open(found[0]))
    for task, cells in entry.get("ruler", {}).items():
        lines.append(f"| {name} | RULER {task} | " + " / ".join(f"{v:.0f}" for v in cells.values()) + " |")
with open(os.path.join(out, "copy_labels.json"), "w") as f:
    json.dump(record, f, indent=2)
with open(os.path.join(out, "copy_labels.md"), "w") as f:
    f.write("| stage 1 | cell | 1x / 16x / 64x |\n|---|---|---|\n" + "\n".join(lines) + "\n\nHeld-out prose: "
            "heldout_*/ (one table per model and needle set, in the tarball).\n")
print(open(os.path.join(out, "copy_labels.md")).read())
EOF
    for md in "$OUT"/heldout_*/*.md; do echo "== $md"; grep -E "^\| trained" "$md"; done
    # the device returns few files: everything but the summary goes into one tarball
    (cd "$OUT" && tar -czf copy_labels_runs.tgz --remove-files quality_*/ heldout_*/ ./*.log) ;;
*)
    echo "usage: bash bench/stage1_copy_labels.sh train|eval [copy_label_weight ...]" >&2
    exit 2 ;;
esac
