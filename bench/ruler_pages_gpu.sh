#!/usr/bin/env bash
# Issue 14 on one GPU: bench/ruler_pages.py's split of RULER multi-key and vt into retrieval and reading, 16x and
# 64x, 20 samples a cell, for the shipped model, without lexical scores, with the training-free scorer, and with
# oracle retrieval (asked needles forced in; for multi-key also distractors kept out), side by side; results and
# logs under $OUT. The oracle runs decode eagerly (bench/ruler_pages.py sets it: their bonus is set per sample).
# RUNS=near_miss (default): multi-key, multi-value and vt with near misses judged and not, both scorers;
# RUNS=split: the first runs (shipped, no lexical scores, training-free scorer, both oracles);
# RUNS=hops: lexical hops off, 2, 4 and 8 deep (and 4 with the training-free scorer) on vt and the needle tasks.
#   bash bench/ruler_pages_gpu.sh        # SAMPLES (default 20), FACTORS (default 16,64), DEADLINE (s, default 500)
set -uo pipefail
source bench/device_env.sh
run() {  # run NAME [ruler_pages options]
    local name=$1; shift
    timeout "${DEADLINE:-500}" python3 bench/ruler_pages.py --device "${DEVICE:-cuda}" --samples "${SAMPLES:-20}" \
        --factors "${FACTORS:-16,64}" --out "$OUT" --name "$name" "$@" > "$OUT/$name.log" 2>&1 &
}
if [ "${RUNS:-near_miss}" = hops ]; then  # hops (retrolm/lexical.py): off, and 2 / 4 / 8 deep; the shipped model
    TASKS=vt,niah_multikey_1,niah_multivalue,niah_single_2
    run shipped --tasks "$TASKS"
    run no_hops --tasks "$TASKS" --set lexical_hops=0
    run hops2 --tasks "$TASKS" --set lexical_hops=2
    run hops4 --tasks "$TASKS" --set lexical_hops=4
    run hops8 --tasks "$TASKS" --set lexical_hops=8
    run attention_hops4 --tasks "$TASKS" --set scorer='"attention"' --set lexical_weight=10 --set lexical_hops=4
elif [ "${RUNS:-near_miss}" = near_miss ]; then  # near misses (retrolm/lexical.py) on and off, both scorers
    TASKS=niah_multikey_1,niah_multivalue,vt
    run shipped --tasks "$TASKS"
    run near_miss --tasks "$TASKS" --set lexical_near_miss_margin=0.7
    run no_near_miss --tasks "$TASKS" --set lexical_near_miss_margin=null
    run attention_lexical --tasks "$TASKS" --set scorer='"attention"' --set lexical_weight=10
    run attention_near_miss --tasks "$TASKS" --set scorer='"attention"' --set lexical_weight=10 \
        --set lexical_near_miss_margin=0.7
    run oracle_exclusive --oracle exclusive --tasks niah_multikey_1
else  # RUNS=split: the first split into retrieval and reading (2026-12-05)
    run shipped
    run no_lexical --set lexical_weight=0
    run attention_scorer --set scorer='"attention"'
    run oracle_asked --oracle asked
    run oracle_exclusive --oracle exclusive --tasks niah_multikey_1
fi
wait
for f in "$OUT"/*.md; do echo "## $(basename "$f" .md)"; sed -n 3,20p "$f" | grep "^|"; done | tee "$OUT/ruler_pages_gpu.md"
# the device returns at most 8 files: the runs' files travel as one archive
(cd "$OUT" && tar czf ruler_pages_runs.tgz --exclude ruler_pages_gpu.md *.json *.log *.md && rm -f *.json *.log \
    $(ls *.md | grep -v ruler_pages_gpu.md))
