"""The inner-product index: exact top-k on the CPU (faiss), the GPU index equal to it (on a GPU host), and the
approximate IVF index: exact when it probes every list, high recall on clustered data at a few lists."""
import numpy as np
import pytest
import torch

from retrolm import RetroLMError
from retrolm.index import DEFAULT_NPROBE, InnerProductIndex, IVFInnerProductIndex, make_index, recall


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


def clustered(rng, centroids, n, noise):
    """[n, dim] float32 vectors, each a random one of the `centroids` [clusters, dim] plus `noise` times a
    standard-normal vector: the shape bench/index_recall.py gives its synthetic bookmark keys."""
    picks = rng.integers(0, centroids.shape[0], n)
    return centroids[picks] + noise * rng.standard_normal((n, centroids.shape[1])).astype(np.float32)


@pytest.mark.parametrize("n, dim, k, nlist", [(1, 4, 1, None), (7, 8, 10, None), (50, 16, 5, 3), (1000, 64, 10, None),
                                              (3000, 128, 15, 40)])
def test_ivf_probing_every_list_finds_the_exact_top_k(n, dim, k, nlist):
    rng = np.random.default_rng(n + dim)
    vectors, queries = rng.standard_normal((n, dim)), rng.standard_normal((9, dim))
    index = IVFInnerProductIndex(dim, nlist=nlist, use_gpu=False)
    index.add(torch.from_numpy(vectors))
    assert index.nlist == (nlist or max(1, min(n, round(4 * n ** 0.5)))) and len(index) == n
    kept = min(k, n)
    for scores, ids in (index.search(queries, k, nprobe=index.nlist), index.search(queries, k, nprobe=10 ** 6)):
        np.testing.assert_array_equal(ids[:, :kept], exact_top_k(vectors, queries, kept))
        np.testing.assert_allclose(scores[:, :kept], np.take_along_axis(queries @ vectors.T, ids[:, :kept], 1),
                                   atol=1e-5)
        assert (ids[:, kept:] == -1).all()


def test_ivf_recall_on_clustered_data_is_high_at_a_few_lists():
    rng = np.random.default_rng(0)
    centroids = rng.standard_normal((200, 32)).astype(np.float32)
    vectors, queries = clustered(rng, centroids, 20000, 0.5), clustered(rng, centroids, 200, 0.5)
    exact, ivf = InnerProductIndex(32, use_gpu=False), IVFInnerProductIndex(32, use_gpu=False)
    for index in (exact, ivf):
        index.add(vectors)
    _, truth = exact.search(queries, 10)
    assert ivf.nlist == 566 and ivf.nprobe == DEFAULT_NPROBE
    measured = {nprobe: recall(ivf.search(queries, 10, nprobe=nprobe)[1], truth) for nprobe in (1, 4, 16)}
    # measured: 0.58 at 1 list, 0.98 at 4, 1.0 at 16 of 566 (each list holds about 35 of the 20000 vectors)
    assert measured[4] >= 0.95 and measured[16] >= 0.99, measured
    assert measured[1] <= measured[4] <= measured[16]
    random_ids = rng.integers(0, len(vectors), truth.shape)
    assert recall(random_ids, truth) < 0.05, "the threshold tells a working index from ids found by chance"
    assert recall(truth, truth) == 1.0 and recall(np.full_like(truth, -1), truth) == 0.0


def test_ivf_later_adds_reuse_the_centroids_and_reset_retrains():
    rng = np.random.default_rng(1)
    first, later = rng.standard_normal((400, 16)), rng.standard_normal((30, 16))
    index = IVFInnerProductIndex(16, nlist=20, use_gpu=False)
    _, ids = index.search(first[:2], 3)
    assert len(index) == 0 and not index.trained and (ids == -1).all()
    index.add(first)
    index.add(later[:5])  # fewer vectors than lists: no training, the first add's centroids file them
    assert len(index) == 405 and index.nlist == 20
    _, ids = index.search(later, 3, nprobe=20)
    np.testing.assert_array_equal(ids, exact_top_k(np.vstack([first, later[:5]]), later, 3))
    index.reset()
    assert len(index) == 0 and not index.trained
    with pytest.raises(RetroLMError, match="pass nlist <= 10"):
        index.add(later[:10])


@pytest.mark.parametrize("kind", ["exact", "ivf"] + (["gpu"] if torch.cuda.is_available() else []))
def test_vectors_reads_back_the_rows_as_added(kind):
    """What a rebuilt store index keeps of unchanged documents (collection.document_rows): rows start..end of
    every add, in order, as float32."""
    rng = np.random.default_rng(3)
    parts = [rng.standard_normal((n, 12)) for n in (300, 1, 57)]
    index = make_index(12, "ivf", nlist=8) if kind == "ivf" else InnerProductIndex(12, use_gpu=kind == "gpu")
    for part in parts:
        index.add(part)
    every = np.vstack(parts).astype(np.float32)
    for start, end in [(0, 358), (299, 301), (301, 358), (5, 5)]:
        np.testing.assert_array_equal(index.vectors(start, end).cpu().numpy(), every[start:end])
    with pytest.raises(RetroLMError, match="rows 350..359 asked of an index holding 358"):
        index.vectors(350, 359)
    if kind == "ivf":  # a shortlist read back by id (store_search.SummaryIVFIndex), in the order asked
        ids = torch.tensor([357, 0, 300, 299, 42])
        np.testing.assert_array_equal(index.take(ids).numpy(), every[ids.numpy()])
        assert index.take(ids[:0]).shape == (0, 12)
        with pytest.raises(RetroLMError, match="rows 0..358 asked of an index whose rows are numbered below 358"):
            index.take(torch.tensor([0, 358]))


def test_ivf_rows_taken_out_leave_the_others_numbers_and_lists():
    """What an in-place store update does (store_search.InPlaceUpdates): rows removed are never found or read back
    again, later rows take new numbers, and the trained lists are kept while they fit the index's size."""
    rng = np.random.default_rng(4)
    first, later = rng.standard_normal((300, 12)), rng.standard_normal((20, 12))
    index = IVFInnerProductIndex(12, nlist=8, use_gpu=False)
    index.add(first)
    centroids = index._quantizer.reconstruct_n(0, 8)
    index.remove(100, 150)
    index.add(later)
    assert len(index) == 270 and index.end == 320 and index.trained_on == 300
    np.testing.assert_array_equal(index._quantizer.reconstruct_n(0, 8), centroids)
    numbers = np.r_[0:100, 150:320]
    kept = np.vstack([first, later])[numbers]
    queries = rng.standard_normal((6, 12))
    _, ids = index.search(queries, 5, nprobe=8)
    np.testing.assert_array_equal(ids, numbers[exact_top_k(kept, queries, 5)])
    np.testing.assert_array_equal(index.vectors(300, 320).numpy(), later.astype(np.float32))
    np.testing.assert_array_equal(index.vectors(90, 100).numpy(), first[90:100].astype(np.float32))
    with pytest.raises(RetroLMError, match="rows 120..129 asked of the index include one removed"):
        index.vectors(120, 130)
    with pytest.raises(RetroLMError, match="include one removed"):
        index.remove(140, 160)  # partly removed already: nothing is taken out
    assert len(index) == 270
    assert [index.lists_fit(n) for n in (149, 150, 600, 601)] == [False, True, True, False]
    index.reset()
    assert not index.lists_fit(300) and index.end == 0


def test_bad_ivf_parameters_are_clear_errors():
    for nlist in (0, -3, 2.5, True):
        with pytest.raises(RetroLMError, match="nlist must be an integer >= 1"):
            IVFInnerProductIndex(8, nlist=nlist, use_gpu=False)
    with pytest.raises(RetroLMError, match="nprobe must be an integer >= 1"):
        make_index(8, "ivf", use_gpu=False, nprobe=0)
    index = IVFInnerProductIndex(8, nlist=10, use_gpu=False)
    with pytest.raises(RetroLMError, match="nprobe must be an integer >= 1"):
        index.nprobe = 0
    with pytest.raises(RetroLMError, match="nprobe must be an integer >= 1"):
        index.search(np.zeros((1, 8)), 3, nprobe=-1)
    with pytest.raises(RetroLMError, match="trains 10 lists on the vectors of its first add, which holds only 4"):
        index.add(np.zeros((4, 8)))
    with pytest.raises(RetroLMError, match="unknown index kind 'hnsw'"):
        make_index(8, "hnsw", use_gpu=False)
    with pytest.raises(RetroLMError, match="nprobe only apply to the approximate index"):
        make_index(8, "exact", use_gpu=False, nprobe=4)
    assert isinstance(make_index(8, "exact", use_gpu=False), InnerProductIndex)
    assert isinstance(make_index(8, "ivf", use_gpu=False, nlist=3, nprobe=2), IVFInnerProductIndex)


def test_asking_for_the_ivf_index_on_a_gpu_is_a_clear_error():
    """faiss-gpu is not used (retrolm/index.py): the GPU's index is exact search, and IVF never quietly runs on the
    CPU instead."""
    for build in (lambda: make_index(8, "ivf", use_gpu=True), lambda: IVFInnerProductIndex(8, use_gpu=True)):
        with pytest.raises(RetroLMError, match="IVF\\) index runs on the CPU only.*exact"):
            build()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="use_gpu=None picks the GPU only where CUDA is available")
def test_ivf_index_by_default_on_a_cuda_host_is_a_clear_error():
    with pytest.raises(RetroLMError, match="runs on the CPU only"):
        make_index(8, "ivf")
    assert make_index(8, "ivf", use_gpu=False).on_gpu is False
