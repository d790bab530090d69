#!/usr/bin/env bash
# GPU runs of issue 12 (decode), results under $OUT; stages as arguments (default: tests 32k):
#   bench/gpu_decode.sh [tests] [32k] [128k] [both] [profile] [profile-prefill]
#   fused-tests  the CUDA tests of compiled layers with fused projections, and of the graph on the default model
#   tests   the CUDA tests of the decode paths: CUDA graph = eager = static tokens, Triton kernel, RetroLM = plain model
#   prefill-tests  the CUDA tests that run the Triton prefill kernel (a subset of tests, ~2 minutes)
#   32k     bench/decode.py at 32K: hf-dynamic, hf-static-compile, retrolm-eager, retrolm-graph, floors, token check
#   128k    the same at 128K
#   both    32K and 128K in one run (one model, one token check)
#   profile bench/profile_decode.py: kernels of one decode step
#   profile-prefill  the same for prefill chunks
#   prefill RetroLM's 128K prefill twice (first of the process, then warm), a short graph decode
#   prefill-chunks  the same with prefill_chunk_pages 32 (the default) and 64
#   offload-tests  the CUDA tests of offloaded K/V (Triton fetch, page-locked host view, graph = resident eager)
#   offload Qwen2.5-7B shape: HF baselines and RetroLM at 32K and 128K, RetroLM offloaded at 512K and 1M
#   offload-1m  the offloaded 1M run alone (host pool time, pages fetched per step, a step with no page resident)
#   compiled   Qwen2.5-7B shape at 32K and 128K: HF StaticCache + compile against RetroLM eager, graph and graph with
#              compiled layers (decode_compile), token checks of both graphs against eager
#   compiled-llama  the same on the Llama-3-8B shape (graph, compiled graph without and with fused projections)
#   lexical    Llama-3-8B shape at 128K, the graph step without and with lexical page scores (weight 10), token check;
#              SCORERS="trained attention" for both scorers
#   scorer     the same RetroLM modes with the training-free scorer (no HF rows)
#   profile-compiled  kernels of one step, graph with and without compiled layers (Qwen2.5-7B shape)
# A failing tests stage stops the script (no benchmark of broken kernels).
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export PYTHONPATH=$(pwd)
for stage in ${*:-tests 32k}; do
    case $stage in
    fused-tests)
        python3 -m pytest -q -p no:cacheprovider -rs -x tests/test_device_decode.py tests/test_fused_projections.py \
            -k "cuda_graph_with_compiled_layers or fused or cuda_graph_decodes_like_eager_on_the_default_model" > "$OUT/gpu_tests_fused.log" 2>&1
        status=$?; tail -15 "$OUT/gpu_tests_fused.log"; [ $status = 0 ] || exit 1 ;;
    tests)
        python3 -m pytest -q -p no:cacheprovider -rs -x tests/test_device_decode.py tests/test_attention_paths.py \
            tests/test_equivalence.py > "$OUT/gpu_tests_decode.log" 2>&1
        status=$?; tail -15 "$OUT/gpu_tests_decode.log"; [ $status = 0 ] || exit 1 ;;
    32k|128k|both)
        contexts=$(case $stage in 32k) echo 32768;; 128k) echo 131072;; both) echo 32768 131072;; esac)
        python3 bench/decode.py --contexts $contexts --out "$OUT" 2>&1 | tee "$OUT/decode_$stage.log" | tail -14 ;;
    prefill-tests)  # the CUDA tests that run the Triton prefill kernel: against the reference, RetroLM = plain model
        python3 -m pytest -q -p no:cacheprovider -rs -x tests/test_attention_paths.py tests/test_equivalence.py \
            tests/test_device_decode.py -k "prefill or equivalence or plain or default_model" \
            > "$OUT/gpu_tests_prefill.log" 2>&1
        status=$?; tail -15 "$OUT/gpu_tests_prefill.log"; [ $status = 0 ] || exit 1 ;;
    offload-tests)
        python3 -m pytest -q -p no:cacheprovider -rs -x tests/test_offload.py tests/test_equivalence.py \
            tests/test_device_decode.py > "$OUT/gpu_tests_offload.log" 2>&1
        status=$?; tail -15 "$OUT/gpu_tests_offload.log"; [ $status = 0 ] || exit 1 ;;
    offload)
        python3 bench/decode.py --shape qwen2.5-7b --contexts 32768 131072 --offload-contexts 524288 1048576 \
            --generate-tokens 0 --out "$OUT" 2>&1 | grep -v "encoding pages" | tee "$OUT/decode_offload.log" | tail -16 ;;
    offload-1m)
        python3 bench/decode.py --shape qwen2.5-7b --contexts --full --offload-contexts 1048576 --generate-tokens 0 \
            --name decode_offload_cold_1024k --out "$OUT" 2>&1 | grep -v "encoding pages" | tail -4 ;;
    compiled)
        python3 bench/decode.py --shape qwen2.5-7b --contexts 32768 131072 --full static-compile \
            --modes eager graph graph+compile --name decode_qwen7b_compiled --out "$OUT" 2>&1 \
            | grep -v "encoding pages" | tee "$OUT/decode_compiled.log" | tail -14 ;;
    compiled-llama)
        python3 bench/decode.py --shape llama3-8b --contexts 32768 131072 --full static-compile \
            --modes graph graph+compile-unfused graph+compile --name decode_llama8b_compiled --out "$OUT" 2>&1 \
            | grep -v "encoding pages" | tee "$OUT/decode_compiled_llama.log" | tail -10 ;;
    scorer)
        python3 bench/decode.py --shape qwen2.5-7b --scorer attention --contexts 32768 131072 --full \
            --modes eager graph graph+compile --name decode_qwen7b_attention_scorer --out "$OUT" 2>&1 \
            | grep -v "encoding pages" | tee "$OUT/decode_scorer.log" | tail -12 ;;
    profile-compiled)
        python3 bench/profile_decode.py --shape qwen2.5-7b --modes graph graph+compile --name profile_decode_compiled \
            --out "$OUT" 2>&1 | grep -v Warning | grep "^##" ;;
    profile)
        python3 bench/profile_decode.py --out "$OUT" 2>&1 | grep -v Warning | head -30 ;;
    lexical)  # the graph step's cost of lexical page scores (the n-gram merge and search), 128K, SCORERS (default:
              # trained; the training-free scorer's step scores them at every step, not only at refreshes)
        for scorer in ${SCORERS:-trained}; do
            for weight in 0 10; do
                python3 bench/decode.py --contexts 131072 --full --modes graph --generate-tokens 0 --steps 64 \
                    --scorer $scorer --lexical-weight $weight --name decode_${scorer}_lexical${weight}_128k \
                    --out "$OUT" 2>&1 | grep -E "^token check|^\| retrolm" | tail -2
            done
        done ;;
    prefill-chunks)  # RetroLM's 128K prefill with chunks of 32 (the default) and 64 pages
        for pages in 32 64; do
            python3 bench/decode.py --contexts 131072 --full --modes graph --steps 8 --warmup 2 --generate-tokens 0 \
                --check-tokens 1024 --check-new-tokens 8 --prefills 2 --prefill-chunk-pages $pages \
                --name prefill_128k_chunk$pages \
                --out "$OUT" 2>&1 | grep -E "^\| retrolm" | tail -1
        done ;;
    prefill)
        python3 bench/decode.py --contexts 131072 --full --modes graph --steps 8 --warmup 2 --generate-tokens 0 \
            --check-tokens 1024 --check-new-tokens 8 --prefills 2 --name prefill_128k --out "$OUT" 2>&1 \
            | grep -v "encoding pages" | tail -4 ;;
    profile-prefill)
        python3 bench/profile_decode.py --modes prefill --context 16384 --steps 3 --name profile_prefill --out "$OUT" \
            2>&1 | grep -v -i warn | head -30 ;;
    esac
done
