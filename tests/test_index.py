"""The inner-product index: exact top-k on the CPU (faiss), and the GPU index equal to it (on a GPU host)."""
import numpy as np
import pytest
import torch

from retrolm import RetroLMError
from retrolm.index import InnerProductIndex


def exact_top_k(vectors, queries, k):
    scores = queries @ vectors.T
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


@pytest.mark.parametrize("n, dim, k", [(1, 4, 1), (50, 16, 5), (1000, 64, 10), (7, 8, 10)])
def test_cpu_index_finds_the_exact_top_k(n, dim, k):
    rng = np.random.default_rng(n)
    vectors, queries = rng.standard_normal((n, dim)), rng.standard_normal((9, dim))
    index = InnerProductIndex(dim, use_gpu=False)
    index.add(torch.from_numpy(vectors))  # tensors and arrays are both accepted
    scores, ids = index.search(queries, k)
    kept = min(k, n)
    np.testing.assert_array_equal(ids[:, :kept], exact_top_k(vectors, queries, kept))
    np.testing.assert_allclose(scores[:, :kept], np.take_along_axis(queries @ vectors.T, ids[:, :kept], 1), atol=1e-5)
    assert (ids[:, kept:] == -1).all()


def test_reset_empties_the_index_for_new_vectors():
    rng = np.random.default_rng(0)
    old, new = rng.standard_normal((30, 8)), rng.standard_normal((5, 8))
    index = InnerProductIndex(8, use_gpu=False)
    index.add(old)
    index.reset()
    assert len(index) == 0
    index.add(new)
    _, ids = index.search(old[:3], 7)  # the old vectors would be their own best matches
    np.testing.assert_array_equal(ids[:, :5], exact_top_k(new, old[:3], 5))
    assert (ids[:, 5:] == -1).all()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on hosts without CUDA")
def test_asking_for_a_gpu_index_without_one_is_a_clear_error():
    with pytest.raises(RetroLMError, match="use_gpu=False"):
        InnerProductIndex(8, use_gpu=True)


def test_vectors_of_the_wrong_width_are_a_clear_error():
    index = InnerProductIndex(8, use_gpu=False)
    with pytest.raises(RetroLMError, match=r"\[n, 8\]"):
        index.add(np.zeros((3, 5)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; run on the GPU host")
@pytest.mark.parametrize("n, dim, k", [(100, 32, 1), (20000, 128, 16), (100000, 64, 100), (5, 16, 9)])
def test_gpu_index_gives_the_cpu_top_k(n, dim, k):
    rng = np.random.default_rng(k)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    queries = rng.standard_normal((64, dim)).astype(np.float32)
    cpu, gpu = InnerProductIndex(dim, use_gpu=False), InnerProductIndex(dim, use_gpu=True)
    assert gpu.on_gpu and not cpu.on_gpu
    for index in (cpu, gpu):
        index.add(vectors)
    (cpu_scores, cpu_ids), (gpu_scores, gpu_ids) = cpu.search(queries, k), gpu.search(queries, k)
    np.testing.assert_allclose(gpu_scores, cpu_scores, rtol=1e-4, atol=1e-4)
    # ids equal except where two scores tie to float32 precision (then either order is exact)
    differs = gpu_ids != cpu_ids
    assert np.abs(gpu_scores - cpu_scores)[differs].max(initial=0) <= 1e-4
    assert differs.mean() < 1e-3
