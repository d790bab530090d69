#!/usr/bin/env bash
# Builds the cuBLAS 12 shim (see cublas12_shim.c) and an empty libcublasLt.so.12 into $1 (faiss-gpu-cu12 links
# both; it calls nothing in cublasLt itself).
set -euo pipefail
out=$1; here=$(dirname "$0")
mkdir -p "$out"
gcc -O2 -shared -fPIC -Wl,-soname,libcublas.so.12 -Wl,--version-script="$here/cublas12.map" \
    -o "$out/libcublas.so.12" "$here/cublas12_shim.c" -ldl
echo 'LT12 { local: *; };' > "$out/lt.map"
echo '' | gcc -shared -fPIC -x c -Wl,-soname,libcublasLt.so.12 -Wl,--version-script="$out/lt.map" \
    -o "$out/libcublasLt.so.12" -
