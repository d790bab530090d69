"""With top_k covering every page, RetroLM is the plain model: same logits, same greedy tokens."""
import pytest
import torch
from transformers import AutoModelForCausalLM

from retrolm import RetroLM


SCORERS = {"attention": {}, "trained": {"init_retriever": True}}


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "qwen3"])
@pytest.mark.parametrize("length", [1, 7, 32, 45])
@pytest.mark.parametrize("mode", ["original", "contiguous"])
@pytest.mark.parametrize("scorer", sorted(SCORERS))
def test_logits_equal_base_model(tiny_dirs, arch, length, mode, scorer):
    base = AutoModelForCausalLM.from_pretrained(tiny_dirs[arch]).eval()
    model = RetroLM.from_pretrained(tiny_dirs[arch], page_size=8, top_k=64, position_mode=mode,
                                    prefill_chunk_pages=2, attention_backend="reference", **SCORERS[scorer])
    assert model.config.scorer == scorer
    ids = torch.randint(0, 256, (1, length))
    with torch.no_grad():
        expected = base(input_ids=ids).logits
        got = model(input_ids=ids).logits
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() <= 1e-4


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "qwen3"])
@pytest.mark.parametrize("backend", ["reference", "sdpa"])
@pytest.mark.parametrize("scorer", sorted(SCORERS))
def test_greedy_generate_equals_base_model(tiny_dirs, arch, backend, scorer):
    base = AutoModelForCausalLM.from_pretrained(tiny_dirs[arch]).eval()
    model = RetroLM.from_pretrained(tiny_dirs[arch], page_size=8, top_k=64, attention_backend=backend,
                                    refresh_interval=3, **SCORERS[scorer])
    ids = torch.randint(0, 256, (1, 37))
    expected = base.generate(ids, max_new_tokens=24, do_sample=False, eos_token_id=None, pad_token_id=0)
    got = model.generate(input_ids=ids, max_new_tokens=24, do_sample=False, eos_token_id=None)
    assert got.shape == (1, 37 + 24)
    assert torch.equal(got, expected)


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
@pytest.mark.parametrize("scorer", sorted(SCORERS))
def test_neighbours_and_refresh_triggers_keep_the_all_pages_equivalence(tiny_dirs, arch, scorer):
    """neighbor_pages and refresh_on change which pages a small top_k reads; with every page selected they change
    nothing."""
    base = AutoModelForCausalLM.from_pretrained(tiny_dirs[arch]).eval()
    model = RetroLM.from_pretrained(tiny_dirs[arch], page_size=8, top_k=64, neighbor_pages=2,
                                    neighbor_direction="both", refresh_on="".join(map(chr, range(32, 127))),
                                    attention_backend="reference", **SCORERS[scorer])
    ids = torch.randint(0, 256, (1, 45))
    with torch.no_grad():
        assert (model(input_ids=ids).logits - base(input_ids=ids).logits).abs().max().item() <= 1e-4
    expected = base.generate(ids, max_new_tokens=20, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert torch.equal(model.generate(input_ids=ids, max_new_tokens=20, do_sample=False, eos_token_id=None), expected)


def test_sampling_generates_and_is_seeded(tiny_dirs):
    model = RetroLM.from_pretrained(tiny_dirs["llama"], page_size=8, top_k=2)
    ids = torch.randint(0, 256, (1, 50))
    torch.manual_seed(3)
    first = model.generate(input_ids=ids, max_new_tokens=12, do_sample=True, temperature=1.0, eos_token_id=None)
    torch.manual_seed(3)
    second = model.generate(input_ids=ids, max_new_tokens=12, do_sample=True, temperature=1.0, eos_token_id=None)
    assert first.shape == (1, 62) and torch.equal(first, second)
    assert torch.equal(first[:, :50], ids)


@pytest.mark.parametrize("scorer", sorted(SCORERS))
def test_sparse_attention_changes_logits(tiny_dirs, scorer):
    """A small top_k must really drop pages: logits of late tokens differ from full attention."""
    base = AutoModelForCausalLM.from_pretrained(tiny_dirs["llama"]).eval()
    model = RetroLM.from_pretrained(tiny_dirs["llama"], page_size=8, top_k=1, position_mode="original",
                                    **SCORERS[scorer])
    ids = torch.randint(0, 256, (1, 80))
    with torch.no_grad():
        diff = (model(input_ids=ids).logits - base(input_ids=ids).logits).abs()
    assert diff[:, :24].max() <= 1e-4  # pages 0-2 see sink + local + 1 retrieved = everything
    assert diff[:, 40:].max() > 1e-3


@pytest.mark.parametrize("mode", ["original", "contiguous"])
def test_offloaded_kv_gives_identical_outputs(tiny_dirs, mode):
    """offload_kv keeps pages in host memory and copies in only attended ones: same numbers, exactly."""
    knobs = dict(page_size=8, top_k=2, position_mode=mode, prefill_chunk_pages=3, refresh_interval=4,
                 init_retriever=True)
    resident = RetroLM.from_pretrained(tiny_dirs["mistral"], **knobs)
    offloaded = RetroLM.from_pretrained(tiny_dirs["mistral"], offload_kv=True, **knobs)
    ids = torch.randint(0, 256, (1, 77))
    with torch.no_grad():
        assert torch.equal(offloaded(input_ids=ids).logits, resident(input_ids=ids).logits)
    out = offloaded.generate(input_ids=ids, max_new_tokens=20, do_sample=False, eos_token_id=None)
    assert torch.equal(out, resident.generate(input_ids=ids, max_new_tokens=20, do_sample=False, eos_token_id=None))
    assert offloaded.last_cache.layers[0].host_keys.device.type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (Triton decode kernel); run on the GPU host")
def test_offloaded_kv_with_triton_decode_on_gpu(tiny_dirs):
    knobs = dict(page_size=16, top_k=2, device="cuda", dtype=torch.float32, init_retriever=True)
    resident = RetroLM.from_pretrained(tiny_dirs["llama"], **knobs)
    offloaded = RetroLM.from_pretrained(tiny_dirs["llama"], offload_kv=True, **knobs)
    ids = torch.randint(0, 256, (1, 300))
    expected = resident.generate(input_ids=ids, max_new_tokens=16, do_sample=False, eos_token_id=None)
    got = offloaded.generate(input_ids=ids, max_new_tokens=16, do_sample=False, eos_token_id=None)
    assert offloaded._backend() == "triton"
    assert torch.equal(got, expected)
    assert offloaded.last_cache.layers[0].host_keys.device.type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (Triton kernels); run on the GPU host")
@pytest.mark.parametrize("mode", ["original", "contiguous"])
@pytest.mark.parametrize("scorer", sorted(SCORERS))
def test_triton_prefill_with_every_page_is_the_plain_model(tiny_dirs, mode, scorer, monkeypatch):
    import retrolm.triton_prefill

    calls = []
    kernel = retrolm.triton_prefill.paged_prefill_attention
    monkeypatch.setattr(retrolm.triton_prefill, "paged_prefill_attention", lambda *a: calls.append(1) or kernel(*a))
    base = AutoModelForCausalLM.from_pretrained(tiny_dirs["llama"]).cuda().eval()
    model = RetroLM.from_pretrained(tiny_dirs["llama"], device="cuda", dtype=torch.float32, page_size=8, top_k=64,
                                    position_mode=mode, prefill_chunk_pages=4, **SCORERS[scorer])
    ids = torch.randint(0, 256, (1, 300), device="cuda")
    with torch.no_grad():
        expected = base(input_ids=ids).logits
        got = model(input_ids=ids).logits
    assert len(calls) == base.config.num_hidden_layers * 10  # every layer of the ten 32-token chunks
    assert (got - expected).abs().max().item() <= 1e-4
