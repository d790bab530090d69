"""Decode steps decided wholly on the device, replayed as one CUDA graph per step.

Eager decoding (planner.py) plans every step on the host and launches each layer's kernels from Python, so a
7-8B model decodes several times slower than reading its weights takes. Here a decode step (trained scorer)
is a fixed-shape function of device buffers:
- the token's id, its position, the selection in force and the position it was made at are device tensors;
- the retriever encodes the window of the `page_size` tokens before the position at every step. At a page
  boundary that window is the page just completed: its bookmark is stored (unless the prefill stored it) and
  its query is the step's query, as in eager decoding; mid-page it is the refresh query;
- whether the step refreshes (a new page, `refresh_interval` tokens since the last selection, or a
  `refresh_on` trigger token) is a device bool choosing between the new and the kept selection. The host
  mirrors that rule (it counts tokens, and reads the token's trigger bit when only a trigger could refresh:
  transformers' generate has read each step's token by then) and runs one of two steps: with the retriever
  and the scoring, or, when the selection is kept, without them;
- selection is sink + local + top-k over the cache's reserved bookmark rows, padded to sink + local + top_k
  slots (pages not yet complete are never eligible: they are not before the token's page). Every layer then
  runs with a plan whose tensors are these buffers and writes its K/V at the position's row (`index_copy_`).
With offloaded K/V (offload.py) the step also makes the selection and its own page resident in the device's
page slots (`PageSlots.assign` on the device, copies of missing pages by the layers) and plans with slots.
The host only counts tokens (plain ints, and the trigger bit above), so each of the two steps can be captured: on
CUDA ("graph") the first step runs as is (kernels compile, the allocator warms up), every later step replays
the `torch.cuda.CUDAGraph` of its kind, captured the first time it is needed. "static" runs the same step
without capture on any device: tests compare it with eager decoding on the CPU, and the GPU tests compare the
graph with both.

The model's forward is entered as usual (transformers' generate, the planning hooks and their checks all run);
only the decoder's own forward is served by the step, while `RetroLM.generate` runs (`installed`).
"""
from __future__ import annotations

import contextlib
import copy

import torch
import torch.nn.functional as F

from .cache import PagedKVCache
from .compat import cache_argument
from .errors import RetroLMError
from .layer_compile import compiled_layers
from .lexical import DeviceLexicalIndex
from .planner import AttentionPlan, lexical_index
from .retriever import packed_key_shift, score_pages, select_pages
from .device_scorer import DeviceScorer
from .rope import rope_inv_freq


def device_decode_blocker(config, device: torch.device, prompt_tokens: int, mode: str) -> str | None:
    """Why a generate call cannot decode with `mode` ("graph" or "static") on the device; None when it can."""
    if config.scorer != "trained":
        pages_needed = config.max_attended_pages
        if (prompt_tokens - 1) // config.page_size < pages_needed or prompt_tokens - 1 < config.scorer_query_tokens:
            return (f"the training-free scorer's device-side step needs a prompt of at least (sink_pages + "
                    f"local_pages + top_k) x page_size + 1 = {pages_needed * config.page_size + 1} tokens (and "
                    f"scorer_query_tokens + 1); this one has {prompt_tokens}")
    elif prompt_tokens - 1 < config.page_size:
        return (f"the prompt ({prompt_tokens} tokens) is shorter than page_size + 1 ({config.page_size + 1}): the "
                "retriever's decode window would be short")
    if mode == "graph" and device.type != "cuda":
        return f"CUDA graphs need a CUDA device, the model is on {device.type}"
    return None


class DeviceDecoder:
    """Serves the decode steps of one `generate` call from device buffers (see the module docstring)."""

    def __init__(self, model, cache: PagedKVCache, max_new_tokens: int, capture: bool):
        config = model.config
        self.model, self.cache, self.config, self.capture = model, cache, config, capture
        inner = model.base_model.get_base_model() if hasattr(model.base_model, "get_base_model") else model.base_model
        self.decoder = inner.get_decoder()
        self.embed = inner.get_input_embeddings()
        self.cache_name = cache_argument(model.base_model)
        self.num_layers = inner.config.num_hidden_layers
        device = model.device
        P = config.page_size
        self.start = cache.num_tokens  # position of the first decode token
        self.pages_before = cache.num_complete_pages  # pages whose bookmark the prefill stored
        self.spare_page = cache.bookmark_keys.shape[0] - 1  # reserved row that takes the writes of non-boundary steps
        if cache.token_ids.shape[0] < self.start + max_new_tokens or self.spare_page * P < self.start + max_new_tokens:
            raise RetroLMError("internal: the paged cache was not reserved for the whole generation.")
        self.contiguous = config.position_mode == "contiguous"
        self.trigger_table = model._refresh_table()
        width = config.max_attended_pages

        def longs(*shape, fill=0):
            return torch.full(shape, fill, dtype=torch.long, device=device)

        self.input_ids = longs(1, 1)
        self.position = longs(1, fill=self.start)
        self.attended = longs(1, width, fill=-1)
        self.key_shift = longs(1, width)
        self.made_at = longs(1, fill=self.start - config.refresh_interval)  # the first step selects afresh
        self.host_made_at = self.start - config.refresh_interval  # made_at's value, mirrored on the host
        self.window_offsets = torch.arange(-P, 0, device=device)
        self.full_length = longs(1, fill=P)
        self.log_pages = longs(max_new_tokens, width, fill=-1)  # the selection in force at each step
        self.log_refresh = torch.zeros(max_new_tokens, dtype=torch.bool, device=device)  # a mid-page refresh
        self.plan = AttentionPlan(
            P, query_pages=longs(1), attended=self.attended, key_shift=self.key_shift if self.contiguous else None,
            q_group=longs(1), q_row=longs(1), q_offset=longs(1), rows=1, row_offsets=longs(1, 1),
            position_ids=longs(1, 1), inv_freq=rope_inv_freq(inner) if self.contiguous else None,
            backend=model._backend(), write_rows=longs(1),
        )
        self.lexical = None
        if config.lexical_weight:  # lexical page scores (either scorer), from fixed buffers
            self.lexical = DeviceLexicalIndex(lexical_index(cache, config, model._hop_stop_table()), self.spare_page)
        self.scorer = None
        if config.scorer != "trained":  # every layer chooses its pages inside its attention (device_scorer.py)
            plan = self.plan
            plan.attended = plan.key_shift = None
            plan.scorer, plan.rope_inv_freq, plan.page_starts = "attention", rope_inv_freq(inner), cache.page_starts
            plan.layer_states = cache.layer_summaries()
            plan.sink_pages, plan.local_pages, plan.top_k = config.sink_pages, config.local_pages, config.top_k
            plan.scorer_window, plan.contiguous = config.scorer_query_tokens, self.contiguous
            plan.refresh_interval, plan.neighbors = config.refresh_interval, config.neighbor_offsets
            self.refresh = torch.zeros(1, dtype=torch.bool, device=device)
            self.scorer = DeviceScorer(plan.layer_states, plan, self.start, max_new_tokens, self.position,
                                       self.refresh, compiled=config.decode_compile,
                                       lexical=self.lexical is not None)
            plan.device_scorer = self.scorer
        if cache.slots is not None:  # offloaded: the plan reads slots; the pages to copy in are chosen per step
            self.plan.attended = longs(1, width, fill=-1)
            self.plan.slot_rows = longs(1)
            self.plan.fetch = (longs(width + 1, fill=-1), longs(width + 1))
        self.steps = 0
        self.graphs = {}  # refreshes (bool) -> (the captured step of that kind, its output)
        self.output = None

    # ------------------------------------------------------------------ host side
    def plan_step(self) -> AttentionPlan:
        """The plan of the next decode step (called by the planning hook): host ints only, no device read."""
        t0 = self.cache.num_tokens
        if t0 - self.start >= self.log_refresh.shape[0]:
            raise RetroLMError("internal: more decode steps than the device decoder was built for.")
        plan = self.plan
        P = self.config.page_size
        plan.new_tokens, plan.decode_token = (t0, t0 + 1), (t0 // P, t0 % P)
        plan.attention_calls, plan.scratch = 0, {}  # the scratch is rebuilt inside the step, so a capture records it
        self.cache.plan = plan
        return plan

    def forward(self, input_ids=None, **unused):
        """Stands in for the decoder's forward during generate: one decode step from the device buffers."""
        if input_ids is None or tuple(input_ids.shape) != (1, 1) or self.cache.plan is not self.plan:
            raise RetroLMError("internal: the device decoder serves single-token decode steps planned by RetroLM.")
        self.input_ids.copy_(input_ids)
        refreshes = self._refreshes(input_ids)
        if not self.capture:
            self.output = self._step(refreshes)
        else:
            with torch.cuda.device(self.input_ids.device):  # the model's GPU, whichever is current
                if refreshes in self.graphs:
                    graph, self.output = self.graphs[refreshes]
                    graph.replay()
                    self.plan.attention_calls = self.num_layers  # the replayed kernels are the captured layers'
                elif self.steps >= 1:
                    self._capture(refreshes)
                else:  # the first step warms up on a side stream, as capture needs
                    side = torch.cuda.Stream()
                    side.wait_stream(torch.cuda.current_stream())
                    with torch.cuda.stream(side):
                        self.output = self._step(refreshes)
                    torch.cuda.current_stream().wait_stream(side)
        self._advance()
        return copy.copy(self.output)

    def _refreshes(self, input_ids: torch.Tensor) -> bool:
        """Whether this step may select afresh: the device's rule (`_step`) on host values. True for the
        training-free scorer, whose layers select on the device."""
        if self.scorer is not None:
            return True
        t0, config = self.cache.num_tokens, self.config
        refresh = t0 % config.page_size == 0 or t0 - self.host_made_at >= config.refresh_interval
        if not refresh and self.trigger_table is not None:
            refresh = bool(self.trigger_table[input_ids[0, 0]])
        if refresh:
            self.host_made_at = t0
        return refresh

    def _capture(self, refreshes: bool) -> None:
        graph = torch.cuda.CUDAGraph()  # a pool of its own: the two kinds of step replay in any order
        with torch.cuda.graph(graph):
            output = self._step(refreshes)
            calls = self.plan.attention_calls
        graph.replay()  # capture records without running: this step runs now
        self.graphs[refreshes] = (graph, output)
        self.output = output
        self.plan.attention_calls = calls

    def _advance(self) -> None:
        """Host bookkeeping after a step: every count moves on by one token."""
        cache = self.cache
        cache.num_tokens += 1
        for layer in cache.layers:
            layer.length = cache.num_tokens
        cache.num_complete_pages = cache.num_tokens // self.config.page_size
        if self.scorer is not None:
            self.scorer.advance(cache.num_tokens, self.config.page_size)
        self.steps += 1

    def finish(self) -> None:
        """After generate: record the mid-page refreshes in `cache.selection_log` (one read of the device log)."""
        if self.scorer is not None:
            self.scorer.finish(self.cache, self.steps, self.config.page_size)
            return
        refreshed = self.log_refresh[: self.steps].nonzero().flatten().tolist()
        for step in refreshed:
            pages = self.log_pages[step]
            self.cache.selection_log.append((self.start + step, pages[pages >= 0]))
        self.cache.selection = None

    # ------------------------------------------------------------------ the step (device work only)
    def _step(self, refreshes: bool = True):
        """One decode step; `refreshes` False: the host knows the selection is kept, so the retriever does not
        run."""
        config, cache, plan = self.config, self.cache, self.plan
        P = config.page_size
        t0 = self.position
        cache.token_ids.index_copy_(0, t0, self.input_ids[0])
        page = t0 // P
        offset = t0 - page * P
        boundary = offset == 0
        refresh = boundary | (t0 - self.made_at >= config.refresh_interval)
        if self.trigger_table is not None:
            refresh |= self.trigger_table[self.input_ids[0]]
        if self.scorer is None and refreshes:
            count = self._select_trained(t0, page, boundary, refresh)  # [1]: pages the own page is packed after
        elif self.scorer is None:
            count = self._keep_selection(t0)
        else:  # the layers select (device_scorer.py); the prompt's length guarantees every slot fills
            self.refresh.copy_(refresh)
            if self.lexical is not None:  # one set of lexical scores for every layer's selection
                self._add_completed_page(page, boundary)
                lexical = self.lexical.scores(cache.token_ids, t0, page, self.spare_page)[0]
                self.scorer.lexical[: self.spare_page].copy_(config.lexical_weight * lexical)
            count = config.max_attended_pages
        self.made_at.copy_(torch.where(refresh, t0, self.made_at))
        if self.contiguous:
            cache.page_starts.index_copy_(0, page, count * P + torch.zeros_like(page))
            if self.scorer is None:
                self.key_shift.copy_(packed_key_shift(self.attended, cache.page_starts, P))
            position = count * P + offset
        else:
            cache.page_starts.index_copy_(0, page, page * P)
            position = t0
        if cache.slots is None:
            plan.query_pages.copy_(page)
        else:
            self._bring_in(page, offset)
        plan.q_offset.copy_(offset)
        plan.row_offsets.copy_(offset[None])
        plan.write_rows.copy_(t0)
        plan.position_ids.copy_(position[None])
        output = self._original_forward(input_ids=self.input_ids, position_ids=plan.position_ids, use_cache=True,
                                        retrolm_plan=plan, **{self.cache_name: cache})
        self.position += 1
        return output

    def _select_trained(self, t0, page, boundary, refresh) -> torch.Tensor:
        """The trained scorer's pages for this step into `self.attended` (kept unless `refresh`); returns their
        count [1]."""
        config, cache = self.config, self.cache
        window = cache.token_ids[t0 + self.window_offsets]  # the P tokens before t0
        retriever = self.model.retriever
        embeds = self.embed(window)[None].to(next(retriever.parameters()).device)
        query, key = retriever(embeds, self.full_length, full_windows=True)  # [1, heads, dim]
        completed = (page - 1).clamp(min=0)
        row = torch.where(boundary & (page - 1 >= self.pages_before), completed, self.spare_page)
        cache.bookmark_keys.index_copy_(0, row, key.to(cache.bookmark_keys.device))
        cache.page_queries.index_copy_(0, row, query.to(cache.page_queries.device))
        query = torch.where(boundary, cache.page_queries[completed], query)
        scores = score_pages(query, cache.bookmark_keys[: self.spare_page])
        if self.lexical is not None:
            self._add_completed_page(page, boundary)
            lexical = self.lexical.scores(cache.token_ids, t0, page, self.spare_page)
            scores = scores + config.lexical_weight * lexical.to(scores.device)
        fresh = select_pages(scores, page, config.top_k, config.sink_pages, config.local_pages, fixed_width=True,
                             neighbors=config.neighbor_offsets)
        fresh = F.pad(fresh, (0, self.attended.shape[1] - fresh.shape[1]), value=-1)
        self.attended.copy_(torch.where(refresh, fresh, self.attended))
        return self._log_selection(t0, refresh & ~boundary)

    def _add_completed_page(self, page, boundary) -> None:
        """At a page's first token, the page before it (complete, if decoding wrote it) into the lexical index."""
        self.lexical.add_page(self.cache.token_ids, (page - 1).clamp(min=0), boundary & (page - 1 >= self.pages_before))

    def _keep_selection(self, t0) -> torch.Tensor:
        """A step that keeps its selection (the host knows no refresh is due): logged as kept; returns the count."""
        return self._log_selection(t0, torch.zeros_like(t0, dtype=torch.bool))

    def _log_selection(self, t0, refreshed) -> torch.Tensor:
        """Log the selection in force at position t0 and whether it was refreshed mid-page; returns its count [1]."""
        step = t0 - self.start
        self.log_pages.index_copy_(0, step, self.attended)
        self.log_refresh.index_copy_(0, step, refreshed)
        return (self.attended >= 0).sum(dim=1)

    def _bring_in(self, page: torch.Tensor, offset: torch.Tensor) -> None:
        """Offloaded: make the selection and the own page resident in the device slots (the layers copy in the
        missing ones, a no-op program per resident page) and point the plan at their slots."""
        plan, slots, P = self.plan, self.cache.slots, self.config.page_size
        pages, targets = slots.assign(torch.cat([self.attended[0], page]))
        plan.fetch[0].copy_(torch.where(pages * P < self.position, pages, -1))  # pages not yet written need no copy
        plan.fetch[1].copy_(targets)
        lookup = slots.slot_of_page
        plan.attended.copy_(torch.where(self.attended >= 0, lookup[self.attended.clamp(min=0)], -1))
        own = lookup[page]
        plan.query_pages.copy_(own)
        plan.slot_rows.copy_(own * P + offset)

    @contextlib.contextmanager
    def installed(self):
        """Within this block the decoder's single-token forwards are this decoder's steps."""
        self._original_forward = self.decoder.forward
        self.decoder.forward = self.forward
        try:
            with compiled_layers(self.decoder) if self.config.decode_compile else contextlib.nullcontext():
                yield self
        finally:
            del self.decoder.forward  # the class's forward again
            self.cache.plan = None
