/* libcublas.so.12 for a CUDA 13 host, used only to run faiss-gpu-cu12 on the lent GPU machine (CUDA 13 driver
 * stack, no cuBLAS 12, no network to fetch it). faiss's GPU flat index calls eight cuBLAS entry points; their
 * signatures are unchanged in cuBLAS 13, so each one forwards to libcublas.so.13. Handles, enums and streams are
 * passed through as the same machine types. Not part of RetroLM: users on CUDA 12 hosts get the real cuBLAS 12
 * wheel with `pip install retrolm[gpu]`. */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

typedef int status_t;
typedef void *handle_t;

static void *cublas13(const char *name) {
    static void *lib;
    if (!lib && !(lib = dlopen("libcublas.so.13", RTLD_NOW | RTLD_GLOBAL))) {
        fprintf(stderr, "cublas12_shim: %s\n", dlerror());
        abort();
    }
    void *fn = dlsym(lib, name);
    if (!fn) {
        fprintf(stderr, "cublas12_shim: no %s in libcublas.so.13\n", name);
        abort();
    }
    return fn;
}

#define FORWARD(name, params, args)                        \
    status_t name params {                                 \
        static status_t(*real) params;                     \
        if (!real) real = (status_t(*) params)cublas13(#name); \
        return real args;                                  \
    }

FORWARD(cublasCreate_v2, (handle_t *h), (h))
FORWARD(cublasDestroy_v2, (handle_t h), (h))
FORWARD(cublasSetStream_v2, (handle_t h, void *stream), (h, stream))
FORWARD(cublasGetMathMode, (handle_t h, int *mode), (h, mode))
FORWARD(cublasSetMathMode, (handle_t h, int mode), (h, mode))
FORWARD(cublasSgemmEx,
        (handle_t h, int ta, int tb, int m, int n, int k, const float *alpha, const void *A, int at, int lda,
         const void *B, int bt, int ldb, const float *beta, void *C, int ct, int ldc),
        (h, ta, tb, m, n, k, alpha, A, at, lda, B, bt, ldb, beta, C, ct, ldc))
FORWARD(cublasGemmEx,
        (handle_t h, int ta, int tb, int m, int n, int k, const void *alpha, const void *A, int at, int lda,
         const void *B, int bt, int ldb, const void *beta, void *C, int ct, int ldc, int compute, int algo),
        (h, ta, tb, m, n, k, alpha, A, at, lda, B, bt, ldb, beta, C, ct, ldc, compute, algo))
FORWARD(cublasGemmStridedBatchedEx,
        (handle_t h, int ta, int tb, int m, int n, int k, const void *alpha, const void *A, int at, int lda,
         long long sa, const void *B, int bt, int ldb, long long sb, const void *beta, void *C, int ct, int ldc,
         long long sc, int batch, int compute, int algo),
        (h, ta, tb, m, n, k, alpha, A, at, lda, sa, B, bt, ldb, sb, beta, C, ct, ldc, sc, batch, compute, algo))
