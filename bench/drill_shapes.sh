#!/usr/bin/env bash
# Issue 14: drill styles (train/drills.py) against each other, side by side on one GPU, each through
# `bench/drill_base.sh base` (pretraining, the 1x gate, bench/copy_probe.py on the test and validation formats).
#   bash bench/drill_shapes.sh [plain] [shapes] [rejoined] [bare-rejoined] [rejoined-split] [rejoined-deep]
#                              [partial]
# plain: one statement shape; shapes: all four; rejoined: one shape, half the answers restating the relation with
# another joining word (0.25 in the others); bare-rejoined: the same with plain and bare statements;
# rejoined-split: rejoined with half the pretraining windows holding two documents (--split-windows 0.5);
# rejoined-deep: rejoined on a base of 12 layers instead of 8 (BASE_LAYERS in drill_base.sh; ~1.5x the
# pretraining time); partial: rejoined with half the rejoined answers keeping only the relation's last words
# (DRILL_PARTIAL 0.5: "Its lantern is" for "pebble lantern under a").
# DRILLS (default 0.5), PRETRAIN_STEPS (default 6000), PRETRAIN_SEED (default 0: `PRETRAIN_SEED=1 GATE=0 bash
# bench/drill_shapes.sh rejoined` is a second seed of that variant), compiled.
# plain and shapes by default, sharing the GPU: two runs of 6,000 steps together did not finish pretraining in
# 560 s on an H200 (one alone takes ~260 s), so give them a call each. GATE=0 skips drill_base.sh's 1x gate. At
# DEADLINE seconds
# (default 560, under the device's 600 s per call; one 6,000-step run needs ~350 s: data ~25, pretraining 245-290,
# packing the base and both probes ~80, so a DEADLINE of 310 returned the build log alone on 2026-12-04; 10,000
# steps ~500) the runs are stopped and what they wrote is packed, build logs
# included: pretraining resumes from its last saved step (every 500) if the next call finds the same machine
# (work/ stays while it is warm; a call a minute later found a fresh one on 2026-12-04).
# $OUT gets each base in 15 MB parts (plain/, shapes/) and one results.tgz with the logs, gates and probes.
set -uo pipefail
source bench/device_env.sh  # installs the carried wheels once, before the two runs would race to
DEADLINE=${DEADLINE:-560}
run() {  # run NAME SHAPES REJOINED SPLIT LAYERS PARTIAL
    mkdir -p "$OUT/$1"
    OUT="$OUT/$1" WORK="work/$1" DRILLS=${DRILLS:-0.5} PRETRAIN_STEPS=${PRETRAIN_STEPS:-6000} COMPILE=true \
        DRILL_SHAPES=$2 DRILL_REJOINED=$3 SPLIT_WINDOWS=$4 BASE_LAYERS=$5 DRILL_PARTIAL=$6 \
        WORKERS=$((14 / ${#RUNS[@]})) \
        bash bench/drill_base.sh base > "$OUT/$1/run.log" 2>&1
}
declare -A STYLES=([plain]="plain 0.25 0 8 0" [shapes]="plain,trailing,attribute,bare 0.25 0 8 0"
                   [rejoined]="plain 0.5 0 8 0" [bare-rejoined]="plain,bare 0.5 0 8 0"
                   [rejoined-split]="plain 0.5 0.5 8 0" [rejoined-deep]="plain 0.5 0 12 0"
                   [partial]="plain 0.5 0 8 0.5")
RUNS=("${@:-plain shapes}")
RUNS=(${RUNS[*]})
for name in "${RUNS[@]}"; do
    [ -n "${STYLES[$name]:-}" ] || { echo "unknown run $name: one of ${!STYLES[*]}"; exit 2; }
    run "$name" ${STYLES[$name]} &
done
end=$((SECONDS + DEADLINE))
while [ -n "$(jobs -rp)" ] && [ $SECONDS -lt $end ]; do sleep 2; done
if [ -n "$(jobs -rp)" ]; then
    echo "deadline of $DEADLINE s reached: stopping the runs (run again on the same machine to resume)"
    pkill -f "bench/drill_base.sh" ; pkill -f "build_default_model.py|heldout_prose.py|eval.ruler|copy_probe.py"
    sleep 5
fi
for name in "${RUNS[@]}"; do
    echo "== $name"; tail -25 "$OUT/$name/run.log"
    tr '\r' '\n' < "work/$name/build.log" | grep -vE "it/s]$|step/s]$|s/it]$" > "$OUT/$name/build.log"
done
cd "$OUT" && tar -czf results.tgz --exclude='base.tgz.*' "${RUNS[@]}" && find "${RUNS[@]}" -type f \
    ! -name 'base.tgz.*' -delete
