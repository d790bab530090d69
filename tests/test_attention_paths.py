"""Every attention path equals the plain-torch reference on random plans of many shapes."""
import pytest
import torch

from retrolm.attention import reference_attention, sdpa_page_attention
from retrolm.cache import PagedKVCache
from retrolm.config import RetroLMConfig
from retrolm.planner import plan_forward
from retrolm.retriever import PageRetriever
from retrolm.config import RetrieverConfig


def random_case(seed, page_size, heads, kv_heads, dim, t0, q, mode, device="cpu", dtype=torch.float32, top_k=2):
    """A cache holding t0 random tokens' K/V and the plan of a forward adding q more."""
    torch.manual_seed(seed)
    config = RetroLMConfig(page_size=page_size, top_k=top_k, position_mode=mode, refresh_interval=1,
                           retriever=RetrieverConfig(hidden_size=16, num_layers=1, num_heads=2,
                                                     intermediate_size=32, score_dim=8))
    retriever = PageRetriever(config.retriever, 24, page_size).to(device)
    embed = torch.nn.Embedding(50, 24).to(device)
    cache = PagedKVCache(1, page_size, 1, 8, device=device)
    inv_freq = 1.0 / (10000 ** (torch.arange(0, dim, 2, device=device).float() / dim))
    if t0:
        plan_forward(cache, torch.randint(0, 50, (t0,), device=device), retriever, embed, config, inv_freq)
        cache.update(torch.randn(1, kv_heads, t0, dim, device=device, dtype=dtype),
                     torch.randn(1, kv_heads, t0, dim, device=device, dtype=dtype), 0)
    plan = plan_forward(cache, torch.randint(0, 50, (q,), device=device), retriever, embed, config, inv_freq)
    keys, values = cache.update(torch.randn(1, kv_heads, q, dim, device=device, dtype=dtype),
                                torch.randn(1, kv_heads, q, dim, device=device, dtype=dtype), 0)
    query = torch.randn(1, heads, q, dim, device=device, dtype=dtype)
    return plan, query, keys, values


SHAPES = [  # page_size, heads, kv_heads, dim, tokens before, new tokens
    (4, 2, 2, 8, 0, 1), (4, 4, 2, 8, 0, 13), (8, 4, 1, 16, 37, 1), (8, 6, 2, 16, 40, 1),
    (8, 4, 4, 8, 23, 19), (16, 8, 2, 32, 100, 50), (5, 3, 1, 8, 61, 7), (8, 4, 2, 16, 64, 64),
    (16, 32, 8, 128, 300, 1), (8, 12, 4, 80, 50, 1),  # Llama-3-8B's heads; a head width that is no power of two
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mode", ["original", "contiguous"])
def test_sdpa_path_matches_reference(shape, mode):
    for seed in range(3):
        plan, query, keys, values = random_case(seed, *shape, mode)
        expected = reference_attention(plan, query, keys, values, 0.3)
        got = sdpa_page_attention(plan, query, keys, values, 0.3)
        assert got.shape == (1, shape[5], shape[1], shape[3])
        assert torch.isfinite(got).all()
        assert (got - expected).abs().max() <= 1e-5


def test_reference_equals_dense_attention_when_all_pages_attended():
    """The reference itself against textbook causal attention, all pages attended (original positions)."""
    plan, query, keys, values = random_case(0, 4, 4, 2, 8, 0, 23, "original")
    plan.attended = torch.stack([torch.arange(5).where(torch.arange(5) < m, -1) for m in plan.query_pages.tolist()])
    got = reference_attention(plan, query, keys, values, 0.25)
    k = keys[0, :, :23].repeat_interleave(2, dim=0)
    v = values[0, :, :23].repeat_interleave(2, dim=0)
    scores = (query[0] @ k.transpose(-1, -2)) * 0.25
    scores = scores.masked_fill(torch.ones(23, 23, dtype=torch.bool).triu(1), float("-inf"))
    expected = (scores.softmax(-1) @ v).transpose(0, 1)[None]
    assert (got - expected).abs().max() <= 1e-5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the Triton decode kernel needs a CUDA GPU; "
                    "bench/attention_paths.py runs this comparison on the GPU host")
@pytest.mark.parametrize("shape", [s for s in SHAPES if s[5] == 1])
@pytest.mark.parametrize("mode", ["original", "contiguous"])
def test_triton_decode_matches_reference(shape, mode):
    from retrolm.triton_decode import paged_decode_attention

    for seed in range(3):
        plan, query, keys, values = random_case(seed, *shape, mode, device="cuda", dtype=torch.bfloat16)
        expected = reference_attention(plan, query, keys, values, 0.3)
        got = paged_decode_attention(plan, query, keys, values, 0.3)
        assert (got.float() - expected.float()).abs().max() <= 2e-2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the Triton prefill kernel needs a CUDA GPU; run on the GPU host")
@pytest.mark.parametrize("shape", [s for s in SHAPES if s[5] > 1])
@pytest.mark.parametrize("mode", ["original", "contiguous"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("top_k", [2, 13])  # 13: 15 slots, padded to 16 (the kernel skips empty ones)
def test_triton_prefill_matches_reference(shape, mode, dtype, top_k):
    from retrolm.triton_prefill import paged_prefill_attention

    for seed in range(3):
        plan, query, keys, values = random_case(seed, *shape, mode, device="cuda", dtype=dtype, top_k=top_k)
        expected = reference_attention(plan, query, keys, values, 0.3)
        got = paged_prefill_attention(plan, query, keys, values, 0.3)
        assert got.shape == expected.shape and got.dtype == expected.dtype
        assert (got.float() - expected.float()).abs().max() <= (2e-2 if dtype == torch.bfloat16 else 1e-4)
