#!/usr/bin/env bash
# Issue 15 on one GPU: train a copy of the default model's page retriever to tell same-shape facts apart
# (bench/key_retriever.py), then measure the default model with that retriever: the collection questions at 1,000
# documents (bench/collection_qa.py, store and concatenation) and RULER within one input at 1x / 16x / 64x (did
# single-needle retrieval survive, does multi-key gain?). The shipped model is not changed.
#   bash bench/key_retriever_gpu.sh        # STEPS (default 2500), BATCH (default 64), SAMPLES (default 20)
# $OUT: key_retriever.{json,md}, retriever.safetensors, collection_qa_1000.{json,md}, ruler.tgz.
set -uo pipefail
source bench/device_env.sh
WORK=work/key_retriever
rm -rf "$WORK" && mkdir -p "$WORK" && cp -r assets/retrolm-byte-llama "$WORK/model"
timeout 330 python3 bench/key_retriever.py --device cuda --steps "${STEPS:-2500}" --batch "${BATCH:-64}" \
    --save "$WORK/model/retriever.safetensors" --out "$OUT" 2>&1 | grep -v Loading | tail -14
cp "$WORK/model/retriever.safetensors" "$OUT/" || exit 1
timeout 120 python3 bench/collection_qa.py --model "$WORK/model" --docs 1000 --questions 20 --methods store \
    --device cuda --out "$OUT" 2>&1 | tr '\r' '\n' | grep -vE "doc/s]$|s/doc]$" | tail -6
for task in niah_single_1 niah_single_2 niah_multikey_1 niah_multivalue; do
    timeout 150 python3 -m eval.ruler --model "$WORK/model" --method retrolm --tasks $task --lengths 1024,16384,65536 \
        --num-samples "${SAMPLES:-20}" --seed 42 --device cuda --out "$OUT/ruler/$task" > "$OUT/ruler_$task.log" 2>&1 &
done
wait
cat "$OUT"/ruler/*/scores.md 2>/dev/null | grep -E "^\| (niah|\*\*)"
(cd "$OUT" && tar -czf ruler.tgz --remove-files ruler ruler_*.log)
