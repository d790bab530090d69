#!/usr/bin/env bash
# One device session's GPU checks (issues 10 and 13), results under $OUT:
#   1. faiss-gpu-cu12 on this CUDA 13 host (cuBLAS 12 shim, bench/cuda12_shim/) and the GPU tests of the suite
#      (GPU faiss index = CPU top-k, Triton decode paths, RetroLM = plain model on CUDA);
#   2. bench/scorer_cost.py (training-free vs trained scorer on the Llama-3-8B shape);
#   3. bench/scorer_quality.py (RULER, five methods, default base LM), RAG on the GPU index.
# Needs in .carry/: faiss_gpu.tar.xz (the files of the faiss-gpu-cu12 wheel for the device's Python, 3.12), the
# nvidia-cuda-runtime-cu12 wheel and the wonderwords wheel (RULER's word lists).
set -uo pipefail
OUT=${OUT:-/tmp/out}
root=$(pwd)
sp=$(python3 -c 'import site; print(site.getsitepackages()[0])')
mkdir -p /tmp/fg /tmp/cu12 /tmp/cu12rt
tar xJf .carry/faiss_gpu.tar.xz -C /tmp/fg
python3 -m zipfile -e .carry/wonderwords-*.whl /tmp/fg
python3 -m zipfile -e .carry/nvidia_cuda_runtime_cu12-*.whl /tmp/cu12rt
cp /tmp/cu12rt/nvidia/cuda_runtime/lib/libcudart.so.12 /tmp/cu12/
bash bench/cuda12_shim/build.sh /tmp/cu12
cublas13=$(dirname "$(find "$sp/nvidia" -name 'libcublas.so.13*' | head -1)")
export LD_LIBRARY_PATH=/tmp/cu12:$cublas13:${LD_LIBRARY_PATH:-}
export PYTHONPATH=/tmp/fg:$root _FAISS_WHEEL_DISABLE_CUDA_PRELOAD=1
python3 -c "import faiss, torch; print('faiss', faiss.__version__, 'GPUs seen by faiss:', faiss.get_num_gpus(), torch.cuda.get_device_name())"
python3 -m pytest -q -p no:cacheprovider -rs tests/test_index.py tests/test_attention_paths.py tests/test_equivalence.py \
    tests/test_scorer.py > "$OUT/gpu_tests.log" 2>&1; tail -25 "$OUT/gpu_tests.log"
python3 bench/scorer_cost.py --contexts 32768 131072 --out "$OUT" 2>&1 | grep -v "encoding pages" | tail -12
python3 bench/scorer_quality.py --device cuda --jobs 10 --threads 1 --work /tmp/sq --out "$OUT" \
    --note "All methods on one $(python3 -c 'import torch; print(torch.cuda.get_device_name())'); rag on the GPU faiss index." \
    2>&1 | tail -40
