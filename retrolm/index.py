"""Maximum-inner-product search over float32 vectors [n, dim]: exact by default, an approximate (IVF) index as an
option on the CPU.

- `InnerProductIndex` (kind "exact"): faiss's flat index on the CPU, one matrix product and top-k on a CUDA GPU.
- `IVFInnerProductIndex` (kind "ivf"): faiss's inverted-file index on the CPU. The vectors of its first add train
  `nlist` centroids (spherical k-means, inner-product assignment); each vector is stored in the list of its best
  centroid, and a search scores the `nprobe` lists whose centroids score best against the query, exactly, and
  nothing else. nprobe >= nlist scans every vector: the exact top-k. Its recall against exact search is measured
  by bench/index_recall.py.
- `make_index(dim, kind, ...)` builds either by name (`INDEX_KINDS`).

On the CPU, faiss comes from the `cpu` extra (`pip install retrolm[cpu]`, faiss-cpu). On a GPU the search is
exact search in torch on the device, which is what faiss's GPU flat index computes: the PyPI faiss-gpu wheel
for CUDA 12 (faiss-gpu-cu12 1.14.1) carries no Hopper kernels, and on an H100 it aborts the whole process
("no kernel image is available", measured), so RetroLM does not depend on it. Both give the same top-k
(tests/test_index.py, run on the GPU host). For the same reason the IVF index has no GPU form: asking for one on a
GPU raises instead of searching on the CPU unasked. Exact GPU search needs none: one query, host to host, takes
0.44 ms over 1.56M keys of 128 and 3.0 ms over 10M on an H200 (bench/results/collection/index_gpu_nvidia-h200.md).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .errors import RetroLMError

INDEX_KINDS = ("exact", "ivf")
DEFAULT_NPROBE = 16  # lists searched per query by the IVF index (bench/index_recall.py measures recall per nprobe)
# faiss trains the IVF centroids on at most this many vectors per list (a random sample of the first add). faiss's
# own default, 256, makes training 1.56M keys into 4,996 lists several minutes of k-means on a 2-core CPU; 40 (just
# over faiss's floor of 39 for a stable clustering) takes 53 s there, 64 takes 100 s (measured).
TRAIN_POINTS_PER_LIST = 40
# An IVF index's trained lists are kept while it holds between 1/LIST_REUSE_FACTOR and LIST_REUSE_FACTOR times the
# vectors they were trained on (IVFInnerProductIndex.lists_fit); beyond that the lists are too coarse or too fine
# for its size (default_nlist grows as sqrt(n)) and the index is trained again.
LIST_REUSE_FACTOR = 2


def import_faiss():
    try:
        import faiss
    except ImportError as error:
        raise RetroLMError("faiss is not installed: pip install 'retrolm[cpu]' (faiss-cpu) for the CPU index; on a "
                           "CUDA GPU the index needs no faiss (use_gpu=True).") from error
    return faiss


def default_nlist(n: int) -> int:
    """The IVF index's number of lists for `n` vectors when none is given: 4 sqrt(n) (at least 1, at most n)."""
    return max(1, min(n, round(4 * math.sqrt(n))))


def check_index_options(kind: str, nlist: int | None = None, nprobe: int | None = None,
                        use_gpu: bool | None = None) -> None:
    """Raise `RetroLMError` for an index kind or parameters `make_index` cannot build (before any vector is read)."""
    if kind not in INDEX_KINDS:
        raise RetroLMError(f"unknown index kind {kind!r}; use one of {', '.join(INDEX_KINDS)} (exact: exact "
                           "inner-product search; ivf: approximate, faiss IVF on the CPU).")
    if kind == "exact":
        given = [name for name, value in (("nlist", nlist), ("nprobe", nprobe)) if value is not None]
        if given:
            raise RetroLMError(f"{' and '.join(given)} only apply to the approximate index; pass kind 'ivf' "
                               f"(`--index ivf`) with them, or leave them out for exact search.")
        return
    for name, value in (("nlist", nlist), ("nprobe", nprobe)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise RetroLMError(f"the IVF index's {name} must be an integer >= 1; got {value!r}.")
    gpu = torch.cuda.is_available() if use_gpu is None else use_gpu
    if gpu:
        raise RetroLMError("the approximate (IVF) index runs on the CPU only (faiss-cpu; faiss-gpu is not used, see "
                           "retrolm/index.py): on a GPU use the exact index (kind 'exact', `--index exact`), exact "
                           "search on the device, or pass use_gpu=False for the IVF index on the CPU.")


def make_index(dim: int, kind: str = "exact", use_gpu: bool | None = None, device: int = 0,
               nlist: int | None = None, nprobe: int | None = None):
    """An empty index of `kind` ("exact" or "ivf") over vectors [n, dim]; nlist and nprobe apply to "ivf" only, and
    "ivf" raises on a GPU (see check_index_options)."""
    check_index_options(kind, nlist, nprobe, use_gpu)
    if kind == "exact":
        return InnerProductIndex(dim, use_gpu=use_gpu, device=device)
    return IVFInnerProductIndex(dim, nlist=nlist, nprobe=nprobe, use_gpu=use_gpu)


class InnerProductIndex:
    """Exact maximum-inner-product search over float32 vectors [n, dim].

    use_gpu: None picks the GPU when CUDA is available; True without CUDA raises `RetroLMError`.
    """

    kind = "exact"

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
        if self.on_gpu:  # a tensor goes to the GPU directly, never through host memory
            vectors = vectors if isinstance(vectors, torch.Tensor) else torch.from_numpy(_as_float32(vectors, self.dim))
            _check_shape(vectors.shape, self.dim)
            self._vectors = torch.cat([self._vectors, vectors.detach().to(self.device, torch.float32)])
        else:
            vectors = _as_float32(vectors, self.dim)
            self._cpu.add(vectors)

    def vectors(self, start: int, end: int) -> torch.Tensor:
        """Rows start..end [end - start, dim] float32 as added (on the index's device): what an index rebuilt after
        a change keeps, not read again."""
        _check_rows(start, end, len(self))
        if self.on_gpu:
            return self._vectors[start:end]
        return torch.from_numpy(self._cpu.reconstruct_n(start, end - start))

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
        out_scores, out_ids = _empty_results(queries.shape[0], k)
        out_scores[:, :kept], out_ids[:, :kept] = top_scores.cpu().numpy(), top_ids.cpu().numpy()
        return out_scores, out_ids


class IVFInnerProductIndex:
    """Approximate maximum-inner-product search over float32 vectors [n, dim]: faiss's IVF index on the CPU.

    The first `add` trains the lists' centroids on its vectors (at most TRAIN_POINTS_PER_LIST per list, sampled)
    and must hold at least `nlist` of them; later adds reuse those centroids, so vectors unlike the first ones are
    filed less well (`lists_fit` says while the trained lists still suit the index's size; else `reset` and add
    everything again). Rows are numbered in add order; `remove` takes rows out, and their numbers are not used
    again (`end`: the number the next added row takes). nlist: None picks `default_nlist` of the first add's
    size. nprobe: lists searched per query (default DEFAULT_NPROBE; at least nlist is exact search), settable at
    any time or per search.
    use_gpu: None or False run on the CPU where CUDA is absent; a GPU (True, or None with CUDA) raises
    `RetroLMError`, never a silent CPU index.
    """

    kind = "ivf"

    def __init__(self, dim: int, nlist: int | None = None, nprobe: int | None = None, use_gpu: bool | None = None):
        check_index_options("ivf", nlist, nprobe, use_gpu)
        self._faiss = import_faiss()
        self.dim, self.on_gpu = dim, False
        self._nlist_asked, self.nlist = nlist, nlist  # nlist: the trained list count once trained
        self._nprobe = DEFAULT_NPROBE if nprobe is None else nprobe
        self._cpu = None  # the faiss index, made and trained at the first add
        self.end = 0  # the row number the next added vector takes
        self.trained_on = 0  # vectors the lists were trained on

    @property
    def nprobe(self) -> int:
        return self._nprobe

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        check_index_options("ivf", nprobe=value, use_gpu=False)
        self._nprobe = value

    @property
    def trained(self) -> bool:
        return self._cpu is not None

    def __len__(self) -> int:
        return 0 if self._cpu is None else self._cpu.ntotal

    def reset(self) -> None:
        """Remove every vector and the trained centroids: the next add trains again, and rows count from 0."""
        self._cpu, self.nlist, self.end, self.trained_on = None, self._nlist_asked, 0, 0

    def lists_fit(self, n: int) -> bool:
        """Whether the trained lists suit an index of `n` vectors (within LIST_REUSE_FACTOR of those they were
        trained on), so that vectors may be added and removed without training again."""
        return self.trained and self.trained_on <= n * LIST_REUSE_FACTOR and n <= self.trained_on * LIST_REUSE_FACTOR

    def add(self, vectors) -> None:
        """Add vectors [n, dim] as rows end..end + n (the first add trains the lists on them)."""
        vectors = _as_float32(vectors, self.dim)
        if self._cpu is None:
            self._train(vectors)
        self._cpu.add_with_ids(vectors, np.arange(self.end, self.end + vectors.shape[0], dtype=np.int64))
        self.end += vectors.shape[0]

    def remove(self, start: int, end: int) -> None:
        """Take rows start..end out of the index (each must be in it); the other rows keep their numbers."""
        _check_rows(start, end, self.end)
        self.take(torch.arange(start, end))  # raises for a row not in the index, before anything is removed
        ids = np.arange(start, end, dtype=np.int64)
        self._cpu.remove_ids(self._faiss.IDSelectorArray(ids.size, self._faiss.swig_ptr(ids)))

    def vectors(self, start: int, end: int) -> torch.Tensor:
        """Rows start..end [end - start, dim] float32 as added (InnerProductIndex.vectors); each must be in the
        index."""
        _check_rows(start, end, self.end)
        return self.take(torch.arange(start, end))

    def take(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows `ids` [m] [m, dim] float32 as added, in that order (a shortlist read back for reranking)."""
        if not ids.numel():
            return torch.empty(0, self.dim)
        if not (0 <= int(ids.min()) and int(ids.max()) < self.end):
            raise RetroLMError(f"rows {int(ids.min())}..{int(ids.max())} asked of an index whose rows are numbered "
                               f"below {self.end}.")
        try:
            return torch.from_numpy(self._cpu.reconstruct_batch(ids.numpy().astype(np.int64)))
        except RuntimeError as error:  # faiss's direct map: a row removed
            raise RetroLMError(f"rows {int(ids.min())}..{int(ids.max())} asked of the index include one removed "
                               "from it.") from error

    def state(self) -> tuple[np.ndarray, dict]:
        """(the faiss index's bytes [n] uint8, the settings beside them): what `restored` builds the index from."""
        if self._cpu is None:
            raise RetroLMError("an IVF index holds nothing before its first add; there is nothing to save.")
        return self._faiss.serialize_index(self._cpu), {"dim": self.dim, "nlist": self._nlist_asked,
                                                        "nprobe": self._nprobe, "end": self.end,
                                                        "trained_on": self.trained_on}

    @classmethod
    def restored(cls, data: np.ndarray, settings: dict) -> "IVFInnerProductIndex":
        """The index `state` returned (`data`, `settings`), trained lists and rows as they were."""
        index = cls(settings["dim"], nlist=settings["nlist"], nprobe=settings["nprobe"], use_gpu=False)
        index._cpu = index._faiss.deserialize_index(data)  # owns its quantizer
        index._quantizer, index.nlist = index._cpu.quantizer, index._cpu.nlist
        index.end, index.trained_on = settings["end"], settings["trained_on"]
        return index

    def _train(self, vectors: np.ndarray) -> None:
        n, faiss = vectors.shape[0], self._faiss
        nlist = default_nlist(n) if self._nlist_asked is None else self._nlist_asked
        if n < nlist:
            raise RetroLMError(f"the IVF index trains {nlist} lists on the vectors of its first add, which holds only "
                               f"{n}: pass nlist <= {n} (or leave it out: 4 sqrt(n)), add all vectors at once, or "
                               "use the exact index (kind 'exact') for so few vectors.")
        quantizer = faiss.IndexFlatIP(self.dim)
        index = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.max_points_per_centroid = TRAIN_POINTS_PER_LIST
        index.cp.min_points_per_centroid = 1  # fewer than faiss's 39 per list is the caller's choice, not a warning
        index.train(vectors)
        # rows read back (`take`) and removed by number; a hash table, since removed numbers leave gaps
        index.set_direct_map_type(faiss.DirectMap.Hashtable)
        self._quantizer, self._cpu, self.nlist = quantizer, index, nlist  # the index uses the quantizer: keep it
        self.trained_on = n

    def search(self, queries, k: int, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores [q, k], ids [q, k]) of the k largest inner products among the vectors of the `nprobe` (default
        self.nprobe) lists that score best for each query, best first; ids -1 past the vectors found."""
        queries = _as_float32(queries, self.dim)
        if nprobe is not None:
            check_index_options("ivf", nprobe=nprobe, use_gpu=False)
        if self._cpu is None:
            return _empty_results(queries.shape[0], k)
        params = self._faiss.SearchParametersIVF(nprobe=min(self.nlist, nprobe or self.nprobe))
        return self._cpu.search(queries, k, params=params)


def recall(found_ids: np.ndarray, exact_ids: np.ndarray) -> float:
    """Recall@k of a search against exact search: the mean over queries of the fraction of each query's exact ids
    [q, k] among its found ids [q, k'] (-1, nothing found, never counts)."""
    if found_ids.shape[0] != exact_ids.shape[0] or exact_ids.shape[1] == 0:
        raise RetroLMError(f"recall compares the ids of the same queries, k >= 1; got {list(found_ids.shape)} and "
                           f"{list(exact_ids.shape)}.")
    hits = [len(set(found[found >= 0].tolist()) & set(exact.tolist())) for found, exact in zip(found_ids, exact_ids)]
    return float(np.mean(hits)) / exact_ids.shape[1]


def _empty_results(queries: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores [q, k], ids [q, k]) with nothing found: the lowest float32 and id -1, as faiss pads."""
    return (np.full((queries, k), -np.finfo(np.float32).max, dtype=np.float32),
            np.full((queries, k), -1, dtype=np.int64))


def _as_float32(vectors, dim: int) -> np.ndarray:
    if isinstance(vectors, torch.Tensor):
        vectors = vectors.detach().float().cpu().numpy()
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    _check_shape(vectors.shape, dim)
    return vectors


def _check_rows(start: int, end: int, n: int) -> None:
    if not 0 <= start <= end <= n:
        raise RetroLMError(f"rows {start}..{end} asked of an index holding {n} vectors.")


def _check_shape(shape, dim: int) -> None:
    if len(shape) != 2 or shape[1] != dim:
        raise RetroLMError(f"index vectors must be [n, {dim}]; got shape {list(shape)}.")
