"""Offloaded K/V (offload.py): every page in host memory, a few page slots on the device, same numbers.

The slot table is checked against its invariants on random request streams; offloaded models (prefill, eager
decode and the device-side decode step, with slot budgets small enough that pages are evicted and fetched back
many times) against resident ones, token for token; the CUDA tests add the Triton fetch kernel, the
page-locked host view and the captured graph.
"""
import pytest
import torch

from retrolm import RetroLM
from retrolm.errors import RetroLMError
from retrolm.offload import PageSlots, fetch_pages, host_pool

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; run on the GPU host")
SMALL = dict(init_retriever=True, page_size=8, top_k=2, refresh_interval=3, prefill_chunk_pages=2)


def _resident_pages(slots: PageSlots) -> dict[int, int]:
    owners = slots.page_of_slot[:-1].tolist()
    return {page: slot for slot, page in enumerate(owners) if page >= 0}


@pytest.mark.parametrize("num_slots, pages, width", [(4, 10, 4), (7, 40, 5), (16, 200, 12), (30, 31, 30)])
def test_page_slots_keep_needed_pages_and_evict_least_recently_used(num_slots, pages, width):
    generator = torch.Generator().manual_seed(num_slots)
    slots = PageSlots(num_slots, pages, torch.device("cpu"))
    last_use = {}  # page -> request index, the reference's clock
    for request in range(60):
        count = int(torch.randint(1, width + 1, (1,), generator=generator))
        chosen = torch.randperm(pages, generator=generator)[:count]
        needed = torch.cat([chosen, torch.full((width - count,), -1)])[torch.randperm(width, generator=generator)]
        before = _resident_pages(slots)
        fetch, targets = slots.assign(needed)
        after = _resident_pages(slots)
        chosen_set = set(chosen.tolist())
        assert chosen_set <= after.keys()  # every needed page is resident ...
        assert all(slots.slot_of_page[p] == s for p, s in after.items())  # ... and the two tables agree
        assert int((slots.slot_of_page[:-1] >= 0).sum()) == len(after)
        assert {p for p in fetch.tolist() if p >= 0} == chosen_set - before.keys()  # fetch exactly the missing
        for page, slot in zip(fetch.tolist(), targets.tolist()):
            assert (page < 0 and slot == num_slots) or after[page] == slot
        assert all(before[p] == after[p] for p in before.keys() & after.keys())  # resident pages never move
        evicted = before.keys() - after.keys()
        kept = (before.keys() & after.keys()) - chosen_set
        assert not evicted & chosen_set
        if evicted and kept:  # least recently used out first
            assert max(last_use[p] for p in evicted) <= min(last_use[p] for p in kept)
        assert len(evicted) == max(0, len(before) + len(chosen_set - before.keys()) - num_slots)
        last_use.update({p: request for p in chosen_set})


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fetch_pages_copies_exactly_the_listed_pages(dtype):
    P, heads, dim = 4, 3, 5
    host_keys, _ = host_pool((1, heads, 10 * P, dim), dtype, torch.device("cpu"))
    host_values, _ = host_pool((1, heads, 10 * P, dim), dtype, torch.device("cpu"))
    host_keys.normal_(), host_values.normal_()
    keys = torch.zeros(1, heads, 4 * P, dim, dtype=dtype)  # 3 slots + the trash slot
    values = torch.zeros_like(keys)
    pages, targets = torch.tensor([7, -1, 2]), torch.tensor([1, 3, 0])
    fetch_pages(host_keys, host_values, keys, values, pages, targets, P)
    assert torch.equal(keys[:, :, P : 2 * P], host_keys[:, :, 7 * P : 8 * P])
    assert torch.equal(values[:, :, :P], host_values[:, :, 2 * P : 3 * P])
    assert not keys[:, :, 2 * P : 3 * P].any()  # slot 2 was not listed


@pytest.mark.parametrize("mode", ["contiguous", "original"])
@pytest.mark.parametrize("decode_mode", ["eager", "static"])
def test_offload_with_few_device_slots_matches_resident(tiny_dirs, mode, decode_mode):
    """A budget of 12 slots for 40+ pages: pages are evicted and copied back throughout, numbers unchanged."""
    knobs = dict(position_mode=mode, neighbor_pages=1, refresh_on="aeiou", **SMALL)
    resident = RetroLM.from_pretrained(tiny_dirs["llama"], decode_mode="eager", **knobs)
    offloaded = RetroLM.from_pretrained(tiny_dirs["llama"], offload_kv=True, offload_device_pages=12,
                                        decode_mode=decode_mode, **knobs)
    ids = torch.randint(0, 256, (1, 290))
    with torch.no_grad():
        assert torch.equal(offloaded(input_ids=ids).logits, resident(input_ids=ids).logits)
    expected = resident.generate(input_ids=ids, max_new_tokens=40, do_sample=False, eos_token_id=None)
    got = offloaded.generate(input_ids=ids, max_new_tokens=40, do_sample=False, eos_token_id=None)
    assert offloaded.last_timings["decode_mode"] == decode_mode
    assert torch.equal(got, expected)
    assert offloaded.last_cache.retrievals() == resident.last_cache.retrievals()
    cache = offloaded.last_cache
    assert cache.layers[0].keys.shape[2] == 13 * 8  # 12 slots + trash, not the 42 pages
    assert cache.device_bytes() < cache.memory_bytes() / 3
    assert int(cache.slots.clock) > 40  # one assign per forward


def test_offload_errors_say_what_to_change(tiny_dirs):
    with pytest.raises(RetroLMError, match="offload_device_pages .* must hold a decode step's pages"):
        RetroLM.from_pretrained(tiny_dirs["llama"], offload_kv=True, offload_device_pages=4, **SMALL)
    model = RetroLM.from_pretrained(tiny_dirs["llama"], offload_kv=True, offload_device_pages=6,
                                    **{**SMALL, "prefill_chunk_pages": 4})
    with pytest.raises(RetroLMError, match="Raise offload_device_pages"):
        model(input_ids=torch.randint(0, 256, (1, 200)))
    model = RetroLM.from_pretrained(tiny_dirs["llama"], offload_kv=True, **SMALL)
    cache = model.new_cache(capacity_tokens=40)
    with pytest.raises(RetroLMError, match="reserved whole"):
        model.encode(torch.randint(0, 256, (1, 60)), cache)


@CUDA
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_host_pool_view_and_triton_fetch_on_gpu(dtype):
    P, heads, dim = 16, 4, 64
    host_keys, keys_view = host_pool((1, heads, 50 * P, dim), dtype, torch.device("cuda"))
    host_values, values_view = host_pool((1, heads, 50 * P, dim), dtype, torch.device("cuda"))
    assert keys_view.device.type == "cuda" and keys_view.data_ptr() == host_keys.data_ptr()
    host_keys.normal_(), host_values.normal_()
    written = torch.randn(1, heads, 3, dim, dtype=dtype, device="cuda")
    keys_view.index_copy_(2, torch.tensor([5, 6, 40], device="cuda"), written)  # GPU writes host memory
    torch.cuda.synchronize()
    assert torch.equal(host_keys[:, :, [5, 6, 40]], written.cpu())
    keys = torch.zeros(1, heads, 9 * P, dim, dtype=dtype, device="cuda")
    values = torch.zeros_like(keys)
    pages = torch.tensor([0, 49, -1, 3, 17, -1, 2, 8], device="cuda")
    targets = torch.tensor([7, 0, 8, 2, 1, 8, 3, 4], device="cuda")
    fetch_pages(keys_view, values_view, keys, values, pages, targets, P)
    expected_keys = torch.zeros_like(keys, device="cpu")
    expected_values = torch.zeros_like(expected_keys)
    fetch_pages(host_keys, host_values, expected_keys, expected_values, pages.cpu(), targets.cpu(), P)
    assert torch.equal(keys[:, :, : 8 * P].cpu(), expected_keys[:, :, : 8 * P])  # the trash slot aside
    assert torch.equal(values[:, :, : 8 * P].cpu(), expected_values[:, :, : 8 * P])


@CUDA
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_offloaded_cuda_graph_decodes_like_resident_eager(tiny_dirs, dtype):
    knobs = dict(device="cuda", dtype=dtype, neighbor_pages=1, refresh_on="aeiou", page_size=16, top_k=2,
                 refresh_interval=3, prefill_chunk_pages=4, init_retriever=True)
    resident = RetroLM.from_pretrained(tiny_dirs["llama"], decode_mode="eager", **knobs)
    for decode_mode in ("graph", "eager"):
        offloaded = RetroLM.from_pretrained(tiny_dirs["llama"], decode_mode=decode_mode, offload_kv=True,
                                            offload_device_pages=24, **knobs)
        for length in (100, 700):
            ids = torch.randint(0, 256, (1, length), device="cuda")
            expected = resident.generate(input_ids=ids, max_new_tokens=70, do_sample=False, eos_token_id=None)
            got = offloaded.generate(input_ids=ids, max_new_tokens=70, do_sample=False, eos_token_id=None)
            assert offloaded.last_timings["decode_mode"] == decode_mode and offloaded._backend() == "triton"
            assert torch.equal(got, expected)
            assert offloaded.last_cache.retrievals() == resident.last_cache.retrievals()
