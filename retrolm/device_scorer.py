"""The training-free scorer inside a device-side decode step (device_decode.py): its per-layer state in fixed buffers.

Eager decoding (scorer.select_for_layer) keeps each layer's recent queries in a growing tensor and decides on the
host whether a step scores afresh. Here, per layer, every step does the same fixed-shape work:
- this token's RoPE-free query goes into a ring of the last `scorer_query_tokens` queries (slot position % W),
  read back oldest first: the eager path's window;
- the key bounds of the token's own page are computed and written to the page's row at its last token (to a spare
  row otherwise), the step at which the eager path summarises a page;
- the step scores with `scorer.decode_selection` (the eager function, over the layer's reserved rows with later
  pages masked, so both compute the same bits) and keeps the new selection where the step refreshes
  (`refresh`, the rule the decoder shares with the trained scorer), the old one elsewhere.
"""
from __future__ import annotations

import torch

from .errors import RetroLMError
from .layer_compile import compiled_function
from .retriever import packed_key_shift
from .rope import shift_keys
from .scorer import _rope_free_recent, _with_selection, decode_selection, page_bounds


class DeviceScorer:
    """Per-layer selection buffers of one device-side decode (the attention scorer)."""

    def __init__(self, states: list, plan, start: int, steps: int, position: torch.Tensor, refresh: torch.Tensor,
                 compiled: bool = False, lexical: bool = False):
        """states: the cache's `LayerSummaries`; plan: the decoder's plan (scorer fields set); start: the first
        decode position; position, refresh: the decoder's device buffers ([1] long, [1] bool); compiled: run each
        layer's step through torch.compile (decode_compile; one compiled graph serves every layer); lexical: keep
        a buffer `lexical` [reserved rows] of the step's weighted lexical scores, which the decoder fills."""
        self.states, self.start, self.position, self.refresh = states, start, position, refresh
        window, width = plan.scorer_window, plan.sink_pages + plan.local_pages + plan.top_k
        device = position.device
        self.first = torch.tensor([start], device=device)
        self.step = compiled_function(layer_step) if compiled else layer_step
        self.offsets = torch.arange(window, device=device)
        slots = (start - window + self.offsets) % window  # where the prefill's last W queries sit in the ring
        self.rings, self.attended, self.key_shift, self.logs = [], [], [], []
        self.lexical = torch.zeros(states[0].reserve, device=device) if lexical else None
        for state in states:
            recent = _rope_free_recent(state, plan.rope_inv_freq)
            if recent is None or recent.shape[0] < window or state.center is None \
                    or state.center.shape[0] != state.reserve:
                raise RetroLMError("internal: the scorer state was not prepared for a device-side decode.")
            ring = recent.new_zeros(window, *recent.shape[1:])  # [W, H, D]
            ring[slots] = recent[-window:]
            self.rings.append(ring)
            self.attended.append(torch.full((1, width), -1, dtype=torch.long, device=device))
            self.key_shift.append(torch.zeros(1, width, dtype=torch.long, device=device))
            self.logs.append(torch.full((steps, width), -1, dtype=torch.long, device=device))

    def select(self, plan, layer: int, query: torch.Tensor, key_pool: torch.Tensor, scaling: float):
        """This layer's plan for the step (called from the attention): query [1, H, 1, D], key_pool [1, kvh, T, D]."""
        state = self.states[layer]
        key_shift = self.key_shift[layer] if plan.contiguous else None
        self.step(plan, state.center, state.radius, self.rings[layer], self.attended[layer], key_shift,
                  self.logs[layer], query, key_pool, self.position, self.refresh, self.offsets, self.first, scaling,
                  self.lexical)
        return _with_selection(plan, self.attended[layer], key_shift)

    def advance(self, tokens: int, page_size: int) -> None:
        """Host bookkeeping after a step: pages summarised so far."""
        for state in self.states:
            state.pages = tokens // page_size

    def finish(self, cache, steps: int, page_size: int) -> None:
        """Log each mid-page step's per-layer pages (as eager decoding does) and leave the states as eager decoding
        would continue from: the recent window, no reusable selection."""
        for step in range(steps):
            if (self.start + step) % page_size:
                cache.selection_log.append((self.start + step, [log[step] for log in self.logs]))
        end = self.start + steps
        for state, ring in zip(self.states, self.rings):
            state.recent_queries = ring[(end + self.offsets) % ring.shape[0]]
            state.decode_selection = None


def layer_step(plan, center, radius, ring, attended, key_shift, log, query, key_pool, position, refresh, offsets,
               first, scaling: float, lexical=None) -> None:
    """One layer's scorer work in a decode step, on its buffers (all updated in place): the own page's bounds at
    its last token, the token's RoPE-free query into the ring, the selection scored and kept where `refresh`, and
    the step's entry of the log. Every input but `plan` and `scaling` is a tensor, so one compiled graph serves
    every layer and step."""
    P = plan.page_size
    t0 = position
    page = t0 // P
    bounds = page_bounds(key_pool, page, plan.page_starts, plan.rope_inv_freq, P)
    row = torch.where(t0 - page * P == P - 1, page, center.shape[0] - 1)  # the last reserved row is never a page
    center.index_copy_(0, row, bounds[0])
    radius.index_copy_(0, row, bounds[1])
    window = ring.shape[0]
    ring.index_copy_(0, t0 % window, shift_keys(query[0].transpose(0, 1), -plan.position_ids[0][:, None],
                                                plan.rope_inv_freq))
    recent = ring[(t0 + 1 + offsets) % window]  # oldest first, this token last
    fresh = decode_selection(plan, recent, center, radius, scaling, page=page, lexical=lexical)
    attended.copy_(torch.where(refresh, fresh, attended))
    if key_shift is not None:
        key_shift.copy_(torch.where(refresh, packed_key_shift(fresh, plan.page_starts, P), key_shift))
    log.index_copy_(0, t0 - first, attended)
