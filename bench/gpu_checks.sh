#!/usr/bin/env bash
# GPU checks (issues 10 and 13), results under $OUT; stages as arguments (default: all):
#   bench/gpu_checks.sh [index] [tests] [cost] [quality] [rag]
#   index    the GPU index gives faiss-cpu's top-k (tests/test_index.py)
#   tests    the suite's CUDA tests: Triton decode paths, RetroLM = plain model on CUDA, the scorer
#   cost     bench/scorer_cost.py: training-free vs trained scorer on the Llama-3-8B shape
#   quality  bench/scorer_quality.py: RULER, five methods, default base LM
#   rag      bench/scorer_quality.py's rag method alone, merged into bench/results/scorer_quality.json
# The device image lacks faiss-cpu and wonderwords: their wheels travel in .carry/ (carry: [".carry"]).
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p /tmp/wheels
for wheel in .carry/*.whl; do python3 -m zipfile -e "$wheel" /tmp/wheels; done
export PYTHONPATH=/tmp/wheels:$(pwd)
gpu=$(python3 -c 'import torch; print(torch.cuda.get_device_name())')
for stage in ${*:-index tests cost quality rag}; do
    case $stage in
    index)
        python3 -m pytest -q -p no:cacheprovider -rs tests/test_index.py > "$OUT/index_gpu_test.log" 2>&1
        tail -5 "$OUT/index_gpu_test.log" ;;
    tests)
        python3 -m pytest -q -p no:cacheprovider -rs tests/test_attention_paths.py tests/test_equivalence.py \
            tests/test_scorer.py > "$OUT/gpu_tests.log" 2>&1; tail -5 "$OUT/gpu_tests.log" ;;
    cost)
        python3 bench/scorer_cost.py --contexts 32768 131072 --out "$OUT" 2>&1 | grep -v "encoding pages" | tail -8 ;;
    quality)
        python3 bench/scorer_quality.py --device cuda --jobs 10 --threads 1 --work /tmp/sq --out "$OUT" \
            --note "All methods on one $gpu." 2>&1 | tail -40 ;;
    rag)
        python3 bench/scorer_quality.py --methods rag --device cuda --jobs 4 --threads 1 --work /tmp/sq --out "$OUT" \
            --merge bench/results/scorer_quality.json --note "All methods on one $gpu; rag's index on the GPU." \
            2>&1 | tail -40 ;;
    esac
done
