"""Exact inner-product search: faiss's flat index on the CPU, one matrix product and top-k on a CUDA GPU.

On the CPU, faiss comes from the `cpu` extra (`pip install retrolm[cpu]`, faiss-cpu). On a GPU the search is
exact search in torch on the device, which is what faiss's GPU flat index computes: the PyPI faiss-gpu wheel
for CUDA 12 (faiss-gpu-cu12 1.14.1) carries no Hopper kernels, and on an H100 it aborts the whole process
("no kernel image is available", measured), so RetroLM does not depend on it. Both give the same top-k
(tests/test_index.py, run on the GPU host).
"""
from __future__ import annotations

import numpy as np
import torch

from .errors import RetroLMError


def import_faiss():
    try:
        import faiss
    except ImportError as error:
        raise RetroLMError("faiss is not installed: pip install 'retrolm[cpu]' (faiss-cpu) for the CPU index; on a "
                           "CUDA GPU the index needs no faiss (use_gpu=True).") from error
    return faiss


class InnerProductIndex:
    """Exact maximum-inner-product search over float32 vectors [n, dim].

    use_gpu: None picks the GPU when CUDA is available; True without CUDA raises `RetroLMError`.
    """

    def __init__(self, dim: int, use_gpu: bool | None = None, device: int = 0):
        gpu = torch.cuda.is_available() if use_gpu is None else use_gpu
        if gpu and not torch.cuda.is_available():
            raise RetroLMError("a GPU index was asked for, but torch sees no CUDA device; pass use_gpu=False for "
                               "the CPU index (faiss-cpu).")
        self.dim, self.on_gpu = dim, gpu
        if gpu:
            self.device = torch.device("cuda", device)
            self._vectors = torch.empty(0, dim, device=self.device)
        else:
            self._cpu = import_faiss().IndexFlatIP(dim)

    def __len__(self) -> int:
        return self._vectors.shape[0] if self.on_gpu else self._cpu.ntotal

    def reset(self) -> None:
        """Remove every vector."""
        if self.on_gpu:
            self._vectors = self._vectors[:0]
        else:
            self._cpu.reset()

    def add(self, vectors) -> None:
        vectors = _as_float32(vectors, self.dim)
        if self.on_gpu:
            self._vectors = torch.cat([self._vectors, torch.from_numpy(vectors).to(self.device)])
        else:
            self._cpu.add(vectors)

    def search(self, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores [q, k], ids [q, k]) of the k largest inner products per query, best first; ids -1 past n."""
        queries = _as_float32(queries, self.dim)
        if not self.on_gpu:
            return self._cpu.search(queries, k)
        kept = min(k, len(self))
        tf32, torch.backends.cuda.matmul.allow_tf32 = torch.backends.cuda.matmul.allow_tf32, False  # exact fp32
        try:
            scores = torch.from_numpy(queries).to(self.device) @ self._vectors.T  # [q, n]
        finally:
            torch.backends.cuda.matmul.allow_tf32 = tf32
        top_scores, top_ids = scores.topk(kept, dim=1) if kept else (scores[:, :0], scores[:, :0].long())
        out_scores = np.full((queries.shape[0], k), -np.finfo(np.float32).max, dtype=np.float32)
        out_ids = np.full((queries.shape[0], k), -1, dtype=np.int64)
        out_scores[:, :kept], out_ids[:, :kept] = top_scores.cpu().numpy(), top_ids.cpu().numpy()
        return out_scores, out_ids


def _as_float32(vectors, dim: int) -> np.ndarray:
    if isinstance(vectors, torch.Tensor):
        vectors = vectors.detach().float().cpu().numpy()
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[1] != dim:
        raise RetroLMError(f"index vectors must be [n, {dim}]; got shape {list(vectors.shape)}.")
    return vectors
