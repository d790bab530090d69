#!/usr/bin/env bash
# Issue 14 item 3 on one GPU: stage 2 (train/build_default_model.py --post-train) trained from the shipped model
# (base + stage-1 retriever, no adapter) on the shipped recipe's long documents, with replay of pretraining
# windows (--stage2-replay), at each REPLAY:RATE setting side by side; then RULER at 1x, 16x and 64x of every
# post-trained model and of the same model without its adapter (stage 1 alone), all in one run.
#   bash bench/stage2_replay.sh 0.25:1e-3 0.5:3e-4     # results under $OUT: replay.md, replay.json, logs
# SAMPLES (default 20) sets RULER's samples per cell; FACTORS (default 1,16,64), DEVICE (default cuda) and BUILD_ARGS
# (extra build options, e.g. "--smoke --stage2-set max_steps=2") let a CPU check the script end to end. At DEADLINE
# seconds (default 560) builds stop and measurements tabulate the cells they finished. Needs deepspeed, datasets, wonderwords and their missing
# dependencies as wheels in .whl/ (carry: [".whl"]).
set -uo pipefail
source bench/device_env.sh
SHIPPED=assets/retrolm-byte-llama
SAMPLES=${SAMPLES:-20}
ENDS=$((SECONDS + ${DEADLINE:-560}))  # builds and measurements stop here, under the device's 600 s per call
left() { local s=$((ENDS - SECONDS)); echo $((s > 1 ? s : 1)); }  # seconds to the deadline (timeout 0 never stops)
WORK=work/stage2_replay
mkdir -p "$WORK"
# the shipped stage 1 (base + trained retriever) under the training-time RetroLM config, as stage 2 trains from it;
# STAGE1_RETRIEVER=R.safetensors puts another stage-1 run's retriever on the shipped base instead;
# STAGE1_SET="KNOB=VALUE ..." sets RetroLM knobs for stage 2's training and every row measured (the post-trained
# model keeps its stage 1's settings), e.g. STAGE1_SET="lexical_weight=10" trains and measures with lexical scores
STAGE1_RETRIEVER=${STAGE1_RETRIEVER:-}
SETS=()
for knob in ${STAGE1_SET:-}; do SETS+=(--set "$knob"); done
python3 bench/stage1_model.py "$SHIPPED" "$WORK/stage1" --training-settings ${STAGE1_RETRIEVER:+--retriever "$STAGE1_RETRIEVER"} \
    "${SETS[@]}" || exit 1
build() {  # build DIR [options]: the shipped recipe's documents (fact and short fractions 0) from the shipped base
    local dir=$1; shift
    timeout "$(left)" python3 train/build_default_model.py --work "$dir" --out "$dir/model" --base "$SHIPPED/base" \
        --stage1 "$WORK/stage1" --post-train --workers "${WORKERS:-14}" ${BUILD_ARGS:-} "$@"
}
# documents and packing once (the replay share only switches on the pretraining windows), shared by every setting
build "$WORK/shared" --stage2-replay 0.5 --stop-after pretrain > "$OUT/shared.log" 2>&1 || { tail -20 "$OUT/shared.log"; exit 1; }
for setting in "${@:-0.25:1e-3}"; do
    replay=${setting%%:*} rate=${setting##*:} dir="$WORK/replay${setting/:/_lr}"
    mkdir -p "$dir"
    for part in pretrain.jsonl long.jsonl pretrain-data long-data; do ln -sfn "$(pwd)/$WORK/shared/$part" "$dir/$part"; done
    build "$dir" --stage2-replay "$replay" --stage2-set "learning_rate=$rate" > "$OUT/build_${setting/:/_lr}.log" 2>&1 &
done
wait
quality() {  # quality MODEL NAME METHODS; past the deadline, the cells finished so far are tabulated
    local grid=(python3 bench/default_model_quality.py --model "$1" --stage1-retriever "$WORK/stage1/retriever.safetensors"
        --methods "$3" --factors "${FACTORS:-1,16,64}" --num-samples "$SAMPLES" --device "${DEVICE:-cuda}" --jobs 5
        --threads 1 --work "/tmp/quality_$2" --assets "$OUT/quality_$2")
    timeout "$(left)" "${grid[@]}" > "$OUT/quality_$2.log" 2>&1 || "${grid[@]}" --collect-only >> "$OUT/quality_$2.log" 2>&1
}
for setting in "${@:-0.25:1e-3}"; do
    name="replay${setting/:/_lr}"
    [ -f "$WORK/$name/model/retrolm_config.json" ] && quality "$WORK/$name/model" "$name" \
        retrolm,retrolm_no_post_training &
done
wait
python3 - "$OUT" "$WORK" <<'EOF'
import glob, json, os, sys
out, work = sys.argv[1:]
lengths = ("1024", "16384", "65536")
models = {}  # label -> {task: {length: score}}
for path in sorted(glob.glob(os.path.join(out, "quality_*", "quality.json"))):
    name = os.path.basename(os.path.dirname(path))[len("quality_"):]
    for method, tasks in json.load(open(path))["scores"].items():
        models[{"retrolm": name, "retrolm_no_post_training": "stage1_only"}.get(method, method)] = tasks
tasks = list(next(iter(models.values())))
lines = ["| model | " + " | ".join(f"{t} 1x / 16x / 64x" for t in tasks) + " | mean of 16x and 64x |",
         "|---" * (len(tasks) + 2) + "|"]
record = {"samples": int(os.environ.get("SAMPLES", 20)), "scores": models, "mean_16x_64x": {}, "stage2": {}}
for label, scores in models.items():
    long = [cells[n] for cells in scores.values() for n in lengths[1:] if n in cells]
    mean = record["mean_16x_64x"][label] = sum(long) / len(long) if long else None  # None: FACTORS without them
    row = [" / ".join(f"{cells[n]:.0f}" if n in cells else "n/a" for n in lengths) for cells in scores.values()]
    lines.append(f"| {label} | " + " | ".join(row) + f" | {'n/a' if mean is None else f'{mean:.1f}'} |")
for path in sorted(glob.glob(os.path.join(work, "replay*", "stage2", "train_results.json"))):
    done = json.load(open(path))
    record["stage2"][path.split(os.sep)[-3]] = {k: done[k] for k in ("steps", "eval_before", "eval_after")}
losses = [f"- {name}: " + ", ".join(f"{k} {run['eval_before'][k]:.3f} -> {run['eval_after'][k]:.3f}"
                                    for k in run["eval_after"]) for name, run in record["stage2"].items()]
with open(os.path.join(out, "replay.json"), "w") as f:
    json.dump(record, f, indent=2)
with open(os.path.join(out, "replay.md"), "w") as f:
    f.write("\n".join(lines) + "\n\nStage 2's held-out losses (nats/token), before -> after:\n\n" + "\n".join(losses) + "\n")
print(open(os.path.join(out, "replay.md")).read())
EOF
# the device returns few files: everything but the summary goes into one tarball
(cd "$OUT" && tar -czf replay_runs.tgz --remove-files quality_*/ ./*.log)
