"""Exact inner-product search with faiss, on the GPU when the installed faiss has GPU support and CUDA is up.

faiss comes from one of two extras: `pip install retrolm[cpu]` (faiss-cpu) or `pip install retrolm[gpu]`
(faiss-gpu-cu12, for CUDA 12 hosts, with the CUDA runtime and cuBLAS wheels it needs). Both provide the same
`faiss` module; the GPU build also searches on the CPU, so code never needs to know which one is installed.
"""
from __future__ import annotations

import numpy as np
import torch

from .errors import RetroLMError


def import_faiss():
    try:
        import faiss
    except ImportError as error:
        raise RetroLMError("faiss is not installed: pip install 'retrolm[cpu]' (faiss-cpu), or on a CUDA 12 host "
                           "'retrolm[gpu]' (faiss-gpu-cu12).") from error
    return faiss


def faiss_has_gpu() -> bool:
    """True when the installed faiss is a GPU build and sees at least one CUDA device."""
    faiss = import_faiss()
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


class InnerProductIndex:
    """Exact maximum-inner-product search over float32 vectors [n, dim].

    use_gpu: None picks the GPU when `faiss_has_gpu()`; True without one raises `RetroLMError`.
    """

    def __init__(self, dim: int, use_gpu: bool | None = None, device: int = 0):
        faiss = import_faiss()
        gpu = faiss_has_gpu() if use_gpu is None else use_gpu
        if gpu and not faiss_has_gpu():
            raise RetroLMError("a GPU faiss index was asked for, but the installed faiss has no GPU support or sees "
                               "no CUDA device; install 'retrolm[gpu]' on a CUDA 12 host, or pass use_gpu=False.")
        self.dim, self.on_gpu = dim, gpu
        self.index = faiss.IndexFlatIP(dim)
        if gpu:
            self._resources = faiss.StandardGpuResources()  # must outlive the GPU index
            self.index = faiss.index_cpu_to_gpu(self._resources, device, self.index)

    def __len__(self) -> int:
        return self.index.ntotal

    def reset(self) -> None:
        """Remove every vector; a GPU index keeps its device memory and resources for the next ones."""
        self.index.reset()

    def add(self, vectors) -> None:
        self.index.add(_as_float32(vectors))

    def search(self, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores [q, k], ids [q, k]) of the k largest inner products per query, best first; ids -1 past n."""
        return self.index.search(_as_float32(queries), k)


def _as_float32(vectors) -> np.ndarray:
    if isinstance(vectors, torch.Tensor):
        vectors = vectors.detach().float().cpu().numpy()
    return np.ascontiguousarray(vectors, dtype=np.float32)
