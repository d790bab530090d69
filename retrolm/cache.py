"""The paged KV cache: a `transformers` Cache whose layers keep K/V as pages, plus per-page bookmark keys.

Layout per layer: K and V pools of shape [1, kv_heads, capacity, head_dim] where page j occupies rows
[j*P, (j+1)*P). This is DESIGN.md's [pages, kv_heads, page, dim] pool with the page axis folded into the
token axis, head-major, so one page is a contiguous [P, dim] block per head: the Triton decode kernel and
the gather paths read pages in place, and pages never need re-packing. Capacity grows in whole pages
(doubling), so a page's rows always exist even while it is being filled.

Shared across layers (one retrieval decision serves every layer): the token ids seen so far, the bookmark
key and query of every complete page, and the position each page was encoded at.

Offloaded (`offload_kv`, offload.py): the pools above live in host memory, reserved whole, and each layer's
`keys` / `values` are instead a device pool of page slots (plus a trash slot) holding the pages in use.
"""
from __future__ import annotations

import time

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from .errors import RetroLMError
from .offload import PageSlots, fetch_pages, host_pool
from .scorer import LayerSummaries


def _grow(tensor: torch.Tensor, dim: int, needed: int) -> torch.Tensor:
    """Return `tensor` with size >= `needed` along `dim` (doubling; new rows are zeros)."""
    have = tensor.shape[dim]
    if have >= needed:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = max(needed, 2 * have)
    grown = tensor.new_zeros(shape)
    grown.narrow(dim, 0, have).copy_(tensor)
    return grown


class PagedLayer(CacheLayerMixin):
    """One layer's K/V pool. `update` appends the new tokens and returns the whole pool (all pages)."""

    is_sliding = False
    is_compileable = False
    is_croppable = False

    def __init__(self, page_size: int, capacity_tokens: int = 0, index: int = 0, slots: PageSlots | None = None):
        super().__init__()
        self.page_size = page_size
        self.capacity_pages = max(1, -(-capacity_tokens // page_size))  # allocated at first update
        self.length = 0  # tokens written
        self.index = index
        self.slots = slots  # offloaded: the cache's slot table (None: the pool is resident)
        self.summaries = LayerSummaries()  # the training-free scorer's state for this layer

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        batch, kv_heads, _, head_dim = key_states.shape
        capacity = self.capacity_pages * self.page_size
        self.keys = key_states.new_zeros(batch, kv_heads, capacity, head_dim)  # [1, kvh, cap, D]
        self.values = value_states.new_zeros(batch, kv_heads, capacity, value_states.shape[-1])
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        plan = kwargs.get("plan")
        if plan is None or plan.new_tokens != (self.length, self.length + key_states.shape[-2]):
            raise RetroLMError(
                "RetroLM's paged cache got keys/values without a plan for them: its planning hook did not run for "
                "this forward. Run the model through RetroLM (forward / generate), or pass the paged cache as the "
                "forward's cache argument so the hook can plan it."
            )
        if self.slots is not None:
            return self._update_offloaded(key_states, value_states, plan)
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if plan.write_rows is not None:  # a device-side decode step: rows on the device, `length` moved by its host
            self.keys.index_copy_(2, plan.write_rows, key_states)
            self.values.index_copy_(2, plan.write_rows, value_states)
            return self.keys, self.values
        new = key_states.shape[-2]
        end = self.length + new
        pages_needed = -(-end // self.page_size)
        self.keys = _grow(self.keys, 2, pages_needed * self.page_size)
        self.values = _grow(self.values, 2, pages_needed * self.page_size)
        self.keys[:, :, self.length : end] = key_states
        self.values[:, :, self.length : end] = value_states
        self.length = end
        return self.keys, self.values

    def _update_offloaded(self, key_states, value_states, plan):
        """Write the new K/V to the host pool and to their pages' slots, bring in the missing pages this forward
        attends to, and return the device slot pools (the plan's page ids are slots)."""
        if not self.is_initialized:
            self._allocate_offloaded(key_states, value_states)
        start, end = plan.new_tokens
        if plan.write_rows is not None:  # a device-side decode step: rows on the device
            self.host_keys_view.index_copy_(2, plan.write_rows, key_states)
            self.host_values_view.index_copy_(2, plan.write_rows, value_states)
        else:
            self.host_keys_view[:, :, start:end] = key_states
            self.host_values_view[:, :, start:end] = value_states
            self.length = end
        if plan.fetch_events is not None:  # copied in on a side stream while earlier layers ran
            torch.cuda.current_stream(key_states.device).wait_event(plan.fetch_events[self.index])
        else:
            fetch_pages(self.host_keys_view, self.host_values_view, self.keys, self.values, *plan.fetch,
                        self.page_size)
        self.keys.index_copy_(2, plan.slot_rows, key_states)
        self.values.index_copy_(2, plan.slot_rows, value_states)
        return self.keys, self.values

    def _allocate_offloaded(self, key_states, value_states) -> None:
        started = time.perf_counter()
        batch, kv_heads, _, head_dim = key_states.shape
        capacity = self.capacity_pages * self.page_size
        device = key_states.device
        self.host_keys, self.host_keys_view = host_pool((batch, kv_heads, capacity, head_dim), key_states.dtype,
                                                        device)  # [1, kvh, cap, D]
        self.host_values, self.host_values_view = host_pool((batch, kv_heads, capacity, value_states.shape[-1]),
                                                            value_states.dtype, device)
        rows = (self.slots.slots + 1) * self.page_size  # the slots, then the trash slot
        self.keys = key_states.new_zeros(batch, kv_heads, rows, head_dim)  # [1, kvh, (slots + 1) * P, D]
        self.values = value_states.new_zeros(batch, kv_heads, rows, value_states.shape[-1])
        self.is_initialized = True
        self.allocate_s = time.perf_counter() - started  # zeroing and page-locking the host pool dominate

    def get_seq_length(self) -> int:
        return self.length

    def get_max_length(self) -> int:
        return -1

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        # RetroLM's attention builds its own page mask; a query-sized stand-in keeps the unused HF mask tiny.
        return query_length, 0

    def reset(self) -> None:
        self.length = 0

    def crop(self, tokens_to_remove: int) -> None:
        raise RetroLMError("the paged KV cache cannot be cropped; assisted/speculative decoding is unsupported.")

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        raise RetroLMError("beam search is unsupported with RetroLM; use greedy decoding or sampling.")

    def batch_repeat_interleave(self, repeats: int) -> None:
        if repeats != 1:
            raise RetroLMError("RetroLM decodes one sequence at a time; pass num_return_sequences=1.")

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        raise RetroLMError("RetroLM decodes one sequence at a time (batch size 1).")


class PagedKVCache(Cache):
    """Paged KV cache for one sequence. Build it with `RetroLM.new_cache()`; pass it as `past_key_values`."""

    def __init__(self, num_layers: int, page_size: int, score_heads: int, score_dim: int, device=None,
                 capacity_tokens: int = 0, offload_pages: int = 0):
        """capacity_tokens: reserve room for this many tokens up front (pools otherwise grow by doubling).
        offload_pages: > 0 keeps every page in host memory (reserved for capacity_tokens, no growth) and this many
        page slots per layer on `device` (offload.py)."""
        device = torch.device("cpu") if device is None else torch.device(device)
        capacity_pages = max(1, -(-capacity_tokens // page_size))
        self.slots = PageSlots(min(offload_pages, capacity_pages), capacity_pages, device) if offload_pages else None
        super().__init__(layers=[PagedLayer(page_size, capacity_tokens, i, self.slots) for i in range(num_layers)])
        self.page_size = page_size
        self._fetch_stream = None
        # reserved whole up front (a graph-captured decode step needs buffers that never move), one spare page row
        pages = -(-max(capacity_tokens, page_size) // page_size) + 1
        for layer in self.layers:
            layer.summaries.reserve = pages
        self.token_ids = torch.zeros(pages * page_size, dtype=torch.long, device=device)  # [capacity]
        self.num_tokens = 0
        self.bookmark_keys = torch.zeros(pages, score_heads, score_dim, device=device)  # [pages, heads, dim]
        self.page_queries = torch.zeros(pages, score_heads, score_dim, device=device)  # [pages, heads, dim]
        self.page_starts = torch.zeros(pages, dtype=torch.long, device=device)  # [pages] position of row 0
        self.num_complete_pages = 0
        # The selection in force for the page being decoded: (page, attended [A], position it was made at).
        self.selection: tuple[int, torch.Tensor, int] | None = None
        # (position, selection) of each decode-time retrieval: the attended pages [A] (trained scorer), or the
        # list of each layer's [A] (attention scorer); kept on the device, read with `retrievals()`
        self.selection_log: list[tuple[int, torch.Tensor | list[torch.Tensor]]] = []
        self.plan = None  # AttentionPlan of the forward in flight
        self.lexical = None  # lexical.LexicalIndex of the complete pages, made by the planner when lexical_weight > 0
        # which chunk of a prompt RetroLM.encode is encoding: "last" (it ends with the question, whose lexical
        # judgement the answer's steps apply), "earlier", or None outside encode (a forward of several tokens is
        # then taken as a whole prompt, one token as an answer's step)
        self.prompt_chunk: str | None = None

    def retrievals(self) -> list[tuple[int, list[int]]]:
        """(position, pages) of each decode-time retrieval, pages in ascending order. Under the attention scorer
        (a selection per layer) the pages are those most layers chose, as many as one layer attends to."""
        out = []
        for position, selection in self.selection_log:
            if isinstance(selection, list):  # per layer: rank pages by how many layers chose them
                chosen = torch.cat(selection)
                chosen = chosen[chosen >= 0]
                votes = torch.bincount(chosen, minlength=1)
                width = max(int((s >= 0).sum()) for s in selection) if selection else 0
                order = torch.argsort(votes, descending=True, stable=True)[:width]
                pages = sorted(p for p in order.tolist() if votes[p] > 0)
            else:
                pages = [p for p in selection.tolist() if p >= 0]
            out.append((position, pages))
        return out

    def layer_summaries(self) -> list:
        """Each layer's training-free scorer state (`scorer.LayerSummaries`)."""
        return [layer.summaries for layer in self.layers]

    def append_tokens(self, ids: torch.Tensor) -> None:
        """Record the ids of the tokens about to be encoded (the retriever reads windows of them)."""
        end = self.num_tokens + ids.shape[0]
        self.token_ids = _grow(self.token_ids, 0, end)
        self.token_ids[self.num_tokens : end] = ids.to(self.token_ids.device)
        self.num_tokens = end

    def store_bookmarks(self, first_page: int, queries: torch.Tensor, keys: torch.Tensor) -> None:
        """Store bookmark queries/keys [n, heads, dim] of pages first_page .. first_page+n-1."""
        end = first_page + keys.shape[0]
        self.bookmark_keys = _grow(self.bookmark_keys, 0, end)
        self.page_queries = _grow(self.page_queries, 0, end)
        self.bookmark_keys[first_page:end] = keys
        self.page_queries[first_page:end] = queries
        self.num_complete_pages = end

    def load_pages(self, token_ids: torch.Tensor, keys: list[torch.Tensor], values: list[torch.Tensor],
                   page_starts: torch.Tensor, queries: torch.Tensor | None, bookmark_keys: torch.Tensor | None) -> None:
        """Fill this empty, resident cache with whole pages encoded elsewhere (a page store's), as if they had been
        encoded here: token ids [T] (T a whole number of pages), per layer keys / values [kv_heads, T, D] rotated
        at `page_starts` [T / P], and the pages' retriever queries and bookmark keys [T / P, heads, dim] (None
        under the training-free scorer, which summarises the loaded pages from their keys at the next forward)."""
        tokens, P = token_ids.shape[0], self.page_size
        if self.num_tokens or self.slots is not None or tokens % P or not tokens:
            raise RetroLMError(f"load_pages fills an empty resident cache with whole pages; got {tokens} tokens "
                               f"(page size {P}) into a cache holding {self.num_tokens}"
                               f"{' (offloaded)' if self.slots is not None else ''}.")
        self.append_tokens(token_ids)
        for layer, k, v in zip(self.layers, keys, values, strict=True):
            device = self.token_ids.device
            layer.lazy_initialization(k[None].to(device), v[None].to(device))
            layer.keys, layer.values = _grow(layer.keys, 2, tokens), _grow(layer.values, 2, tokens)
            layer.keys[0, :, :tokens], layer.values[0, :, :tokens] = k, v
            layer.length = tokens
        if bookmark_keys is None:
            bookmark_keys = queries = self.bookmark_keys.new_zeros(tokens // P, *self.bookmark_keys.shape[1:])
        self.store_bookmarks(0, queries.to(self.bookmark_keys.device), bookmark_keys.to(self.bookmark_keys.device))
        self.set_page_starts(torch.arange(tokens // P, device=self.page_starts.device),
                             page_starts.to(self.page_starts.device))

    def set_page_starts(self, pages: torch.Tensor, starts: torch.Tensor) -> None:
        """Record the position at which each of `pages` is (being) encoded."""
        self.page_starts = _grow(self.page_starts, 0, int(pages.max()) + 1)
        self.page_starts[pages] = starts

    def prefetch(self, plan) -> None:
        """Offloaded, on CUDA, once every layer's pools exist: start copying in the plan's missing pages of every
        layer on a side stream now, so the copies overlap the forward's compute (each layer waits for its own)."""
        layers = self.layers
        if not all(layer.is_initialized for layer in layers) or layers[0].keys.device.type != "cuda":
            return
        device = layers[0].keys.device
        main = torch.cuda.current_stream(device)
        if self._fetch_stream is None:
            self._fetch_stream = torch.cuda.Stream(device)
        side = self._fetch_stream
        side.wait_stream(main)  # the victim slots may still be read by the previous forward's kernels
        events = []
        with torch.cuda.stream(side):
            for layer in layers:
                fetch_pages(layer.host_keys_view, layer.host_values_view, layer.keys, layer.values, *plan.fetch,
                            self.page_size)
                events.append(side.record_event())
        for tensor in plan.fetch:
            tensor.record_stream(side)
        plan.fetch_events = events

    @torch.compiler.disable  # compiled layers (layer_compile.py) call it as written: it reads the forward's plan
    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs):
        # the forward's plan tells an offloaded layer which pages to bring in
        return self.layers[layer_idx].update(key_states, value_states, plan=self.plan)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.layers[layer_idx].length  # tokens already encoded (the ids of a forward in flight excluded)

    def memory_bytes(self) -> int:
        """Bytes held by the K/V pools of all layers (in host memory when offloaded)."""
        pools = [(l.host_keys if self.slots is not None else l.keys) for l in self.layers if l.is_initialized]
        return sum(pool.numel() * pool.element_size() * 2 for pool in pools)

    def device_bytes(self) -> int:
        """Bytes of K/V on the model's device: the whole pools, or the page slots when offloaded."""
        return sum(l.keys.numel() * l.keys.element_size() * 2 for l in self.layers if l.is_initialized)
