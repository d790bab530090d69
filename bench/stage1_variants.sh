#!/usr/bin/env bash
# Issue 14 on one GPU: stage-1 variants of the default model at copy_label_weight 0.5, side by side, each through
# bench/stage1_copy_labels.sh with its own work directory, its files packed into $OUT/<variant>-<stage>.tgz:
# - p64: pages of 64 tokens, top-13 (the same 1,024-token window as the shipped 5 x 128), trained at that size;
#   bench/page_granularity.py measured the shipped retriever at that size (multi-value 57.5 -> 77.5 at 16x,
#   single NIAH 95 / 100 -> 55 / 40): does training at 64 keep single NIAH?
# - seed1: pages of 128 (the recipe before these runs) with seed 1: how much of copy labels' +9 points is noise?
# - p64_seed1, p64_seed2: p64 with other seeds.
#   bash bench/stage1_variants.sh train p64 seed1   # ~6 minutes on an H200 for two variants
#   bash bench/stage1_variants.sh eval p64 seed1    # ~2 minutes: RULER 1x/16x/64x and held-out prose per variant
set -uo pipefail
source bench/device_env.sh  # once, before the side-by-side invocations (they would install the wheels together)
stage=${1:-train}
shift
variants=("${@:-p64}")
root=$OUT
# each variant pins its page size and seed: the committed config is now the p64_seed2 variant's
P64='--stage1-set retrolm={"page_size":64,"top_k":13,"sink_pages":1,"local_pages":1}'
P128="--stage1-set $PAGE128_STAGE1"
declare -A ARGS=([p64]="$P64 --stage1-set seed=0" [seed1]="$P128 --stage1-set seed=1"
                 [p64_seed1]="$P64 --stage1-set seed=1" [p64_seed2]="$P64 --stage1-set seed=2")
for variant in "${variants[@]}"; do
    [ -n "${ARGS[$variant]:-}" ] || { echo "unknown variant $variant (one of ${!ARGS[*]})" >&2; exit 2; }
done
for variant in "${variants[@]}"; do
    mkdir -p "$root/$variant"
    WORK=work/stage1_$variant OUT=$root/$variant BUILD_ARGS=${ARGS[$variant]} WORKERS=7 SHIPPED_ROW=0 \
        bash bench/stage1_copy_labels.sh "$stage" 0.5 > "$root/$variant/$stage.out" 2>&1 &
done
wait
for variant in "${variants[@]}"; do
    echo "== $variant"
    tail -25 "$root/$variant/$stage.out"
    (cd "$root" && tar -czf "$variant-$stage.tgz" --remove-files "$variant")  # the device returns few files
done
