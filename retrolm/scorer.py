"""The training-free page scorer: pages ranked by the LLM's own queries against a summary of their keys.

Works on any Hugging Face model, before any retriever is trained (`scorer="attention"`). Per layer:
- each complete page is summarised once by the per-channel bounds of its keys (Quest, Tang et al. 2024),
  stored as centre c = (max + min) / 2 and radius r = (max - min) / 2 of its RoPE-free keys. The largest
  logit any key of the page can give query q is then  q.c + |q|.r  (two matrix products);
- a group of new tokens (one page of a prefill chunk, or a decode token) is scored with the queries of the
  `scorer_query_tokens` tokens before it (a decode token: the ones up to and including itself), so no
  token's selection depends on a later token, as with the trained retriever;
- each (token, head) spreads one unit of estimated attention over the pages it may attend to (softmax of
  the bounds over the always-kept and candidate pages), and a page's score is the share it gets from all of
  them: pages the layer would attend to most rank first. The top-k candidates are selected per layer,
  with the same rule as the trained scorer (sink + local + top-k, never the future). A decode step keeps
  its layer's selection for `refresh_interval` tokens within a page (or until it reads a refresh-trigger token),
  as the trained scorer does, so the scoring cost of decoding is paid once per refresh rather than at every token.
- with `lexical_weight` > 0, a page's score is its share per query row (the share divided by heads x valid
  window tokens, so in [0, 1]) plus lexical_weight x its lexical score (lexical.py), the same for every layer:
  pages repeating the query window's rare text rank first at every layer, the layer's attention ranks the rest.

Keys and queries are compared without RoPE (rotated back to position 0), so scores do not depend on where
pages were encoded, in either position mode.
"""
from __future__ import annotations

import copy
import dataclasses

import torch
import torch.nn.functional as F

from .retriever import eligible_pages, packed_key_shift, select_pages, topk_in_page_order, with_neighbors
from .rope import shift_keys


@dataclasses.dataclass
class LayerSummaries:
    """Per-layer scorer state kept in the paged cache: key bounds of complete pages, recent RoPE-free queries."""

    center: torch.Tensor | None = None  # [pages, kv_heads, D]
    radius: torch.Tensor | None = None  # [pages, kv_heads, D]
    pages: int = 0  # pages summarised so far
    recent_queries: torch.Tensor | None = None  # [W, H, D], the last W tokens' queries before this forward
    decode_selection: tuple | None = None  # (page, attended, key shift, token) of the last fresh decode selection
    pending_queries: list = dataclasses.field(default_factory=list)  # (query [1, H, D], position) of reused steps
    reserve: int = 0  # rows allocated at the first extend (the cache's capacity in pages + a spare row)

    def extend(self, center: torch.Tensor, radius: torch.Tensor) -> None:
        if self.center is None or self.center.shape[0] < self.pages + center.shape[0]:
            capacity = max(self.pages + center.shape[0], 2 * (0 if self.center is None else self.center.shape[0]),
                           self.reserve)
            grown = [center.new_zeros(capacity, *center.shape[1:]) for _ in range(2)]
            if self.center is not None:
                grown[0][: self.pages], grown[1][: self.pages] = self.center[: self.pages], self.radius[: self.pages]
            self.center, self.radius = grown
        self.center[self.pages : self.pages + center.shape[0]] = center
        self.radius[self.pages : self.pages + center.shape[0]] = radius
        self.pages += center.shape[0]


def page_bounds(key_pool: torch.Tensor, pages: torch.Tensor, page_starts: torch.Tensor, inv_freq: torch.Tensor,
                page_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(centre, radius) [n, kv_heads, D] of the RoPE-free keys of complete `pages` [n] of a pool [1, kvh, T, D]."""
    offsets = torch.arange(page_size, device=key_pool.device)
    rows = (pages[:, None] * page_size + offsets).flatten()  # [n*P]
    keys = key_pool[0][:, rows].view(key_pool.shape[1], pages.numel(), page_size, -1)  # [kvh, n, P, D]
    positions = (page_starts[pages][:, None] + offsets).to(key_pool.device)  # [n, P] where each key was rotated
    keys = shift_keys(keys, -positions[None], inv_freq).float()
    high, low = keys.amax(dim=2), keys.amin(dim=2)  # [kvh, n, D]
    return ((high + low) / 2).transpose(0, 1), ((high - low) / 2).transpose(0, 1)


def query_windows(plan, queries: torch.Tensor, window: int, recent: torch.Tensor | None):
    """The queries each group is scored with: rows [G, W, H, D] and their validity [G, W].

    queries: this forward's RoPE-free queries [q, H, D]; recent: the W queries before it (or None).
    A group's window is the W tokens before its first token, or up to and including it when the group is a
    single new token (a decode step).
    """
    t0, t1 = plan.new_tokens
    before = recent if recent is not None else queries.new_zeros(0, *queries.shape[1:])
    rows = torch.cat([before, queries])  # positions [t0 - len(before), t1)
    first = t0 - before.shape[0]
    group_starts = plan.query_pages * plan.page_size
    group_starts = torch.clamp(group_starts, min=t0)
    counts = torch.zeros_like(group_starts).scatter_add_(0, plan.q_group, torch.ones_like(plan.q_group))  # no sync
    ends = group_starts + (counts == 1).long()  # [G] exclusive end of each window
    positions = ends[:, None] - window + torch.arange(window, device=ends.device)  # [G, W]
    valid = (positions >= max(first, 0)) & (positions < t1)
    index = (positions - first).clamp(min=0, max=rows.shape[0] - 1)
    return rows[index], valid


def page_scores(rows: torch.Tensor, valid: torch.Tensor, center: torch.Tensor, radius: torch.Tensor,
                always: torch.Tensor, candidates: torch.Tensor, scaling: float,
                log_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Estimated attention share [G, N] each candidate page gets from the query rows [G, W, H, D].

    center, radius: [N, kv_heads, D]; always, candidates: [G, N] masks (`retriever.eligible_pages`). log_weight:
    [N] or None, the log of how many pages each row stands for in the softmax (a sample standing for the pages
    left out of a shortlist, store_search.SummaryIVFIndex).
    """
    groups, width, heads, dim = rows.shape
    kv_heads, n = center.shape[1], center.shape[0]
    per_kv = heads // kv_heads  # query heads sharing a KV head, HF's repeat_kv order
    q = rows.float().reshape(groups, width, kv_heads, per_kv, dim).permute(2, 0, 1, 3, 4)
    q = q.reshape(kv_heads, groups * width * per_kv, dim)  # [kvh, rows, D]
    bound = q @ center.float().permute(1, 2, 0) + q.abs() @ radius.float().permute(1, 2, 0)  # [kvh, rows, N]
    bound = bound * scaling if log_weight is None else bound * scaling + log_weight.float()
    bound = bound.view(kv_heads, groups, width, per_kv, n)
    reachable = (always | candidates)[None, :, None, None, :]
    share = bound.masked_fill(~reachable, float("-inf")).softmax(dim=-1).nan_to_num(0.0)
    share = share * valid[None, :, :, None, None]
    return (share.sum(dim=(0, 2, 3)) * candidates).float()


def select_for_layer(plan, layer_idx: int, query: torch.Tensor, key_pool: torch.Tensor, scaling: float):
    """The plan of one layer under the training-free scorer: pages attended per group, chosen by this layer.

    query: [1, H, q, D] (RoPE applied at plan.position_ids); key_pool: [1, kvh, T, D] this layer's keys.
    Summaries of pages completed by this forward are added to the layer's state (inference) or computed
    for all complete pages (no cache: training's one-pass forward). A device-side decode step hands the
    choice to its `device_scorer.DeviceScorer`.
    """
    if plan.device_scorer is not None:
        return plan.device_scorer.select(plan, layer_idx, query, key_pool, scaling)
    P = plan.page_size
    t0, t1 = plan.new_tokens
    complete = t1 // P
    state = plan.layer_states[layer_idx] if plan.layer_states else None
    inv_freq = plan.rope_inv_freq
    if state is None:
        state = LayerSummaries()
    if state.pages < complete:
        new = torch.arange(state.pages, complete, device=key_pool.device)
        state.extend(*page_bounds(key_pool, new, plan.page_starts, inv_freq, P))
    reused = fresh_decode_selection(plan, state)
    if reused is not None:  # nothing is computed: the query is kept as it is for the next scoring
        state.pending_queries.append((query[0].transpose(0, 1), plan.position_ids[0]))
        return _with_selection(plan, *reused)

    rope_free = _rope_free_recent(state, inv_freq)
    queries = shift_keys(query[0].transpose(0, 1), -plan.position_ids[0][:, None], inv_freq)  # [q, H, D] RoPE-free
    recent = torch.cat([x for x in (rope_free, queries) if x is not None])[-plan.scorer_window:]
    if _has_decode_shortcut(plan):
        attended = decode_selection(plan, recent, state.center, state.radius, scaling)
    else:
        rows, valid = query_windows(plan, queries, plan.scorer_window, rope_free)
        attended = group_selection(plan, rows, valid, state.center, state.radius, complete, scaling)
    state.recent_queries = recent
    key_shift = packed_key_shift(attended, plan.page_starts, P) if plan.contiguous else None
    if plan.decode_token is not None:
        state.decode_selection = (plan.decode_token[0], attended, key_shift, t0)
    return _with_selection(plan, attended, key_shift)


def group_selection(plan, rows, valid, center, radius, n: int, scaling: float) -> torch.Tensor:
    """Attended pages [G, A] of every group of a forward: windows `rows` [G, W, H, D] against the bounds of the
    n complete pages, the top-k candidates kept beside the sink and local pages (with `plan.lexical`, ranked by
    share per query row plus the weighted lexical scores: module docstring)."""
    always, candidates = eligible_pages(plan.query_pages, n, plan.sink_pages, plan.local_pages)
    if n == 0:
        scores = rows.new_zeros(plan.query_pages.numel(), 0, dtype=torch.float32)
    else:
        scores = page_scores(rows, valid, center[:n], radius[:n], always, candidates, scaling)
        if plan.lexical is not None:
            per_row = scores / (rows.shape[2] * valid.sum(dim=1, keepdim=True).clamp(min=1))
            scores = per_row + plan.lexical[:, :n].to(scores.device)
    return select_pages(scores, plan.query_pages, plan.top_k, plan.sink_pages, plan.local_pages, fixed_width=True,
                        neighbors=plan.neighbors)


def _has_decode_shortcut(plan) -> bool:
    """A decode token on a page m with at least top_k candidate pages: `decode_selection` applies."""
    if plan.decode_token is None or plan.top_k < 1:
        return False
    return plan.decode_token[0] - plan.sink_pages - plan.local_pages >= plan.top_k


def decode_selection(plan, rows: torch.Tensor, center: torch.Tensor, radius: torch.Tensor, scaling: float,
                     page: torch.Tensor | None = None, lexical: torch.Tensor | None = None) -> torch.Tensor:
    """`group_selection` of one decode token in a few kernels (it runs at every layer of a refresh step, where
    per-kernel host cost dominates): rows [w, H, D] are its window; every page before its page m is reachable,
    the candidates are the contiguous range [sink, m - local), and all sink + top_k + local slots fill (with
    neighbours too: there are at least top_k candidates).

    Scores every row of center / radius (the layer's reserved rows) with the pages >= m masked, so the shapes
    do not depend on m: m is the plan's host int, or `page` [1] on the device (device_scorer.py), and both
    compute bit for bit the same selection. lexical: [rows] weighted lexical scores (pages >= m at 0) from the
    device step, or None: eager decoding reads the plan's `lexical`.
    """
    m = plan.decode_token[0] if page is None else page
    sink, local, k = plan.sink_pages, plan.local_pages, plan.top_k
    width, heads, dim = rows.shape
    rows_reserved, kv_heads = center.shape[0], center.shape[1]
    device = rows.device
    index = torch.arange(rows_reserved, device=device)
    q = rows.float().view(width, kv_heads, heads // kv_heads, dim).transpose(0, 1).reshape(kv_heads, -1, dim)
    bound = torch.baddbmm(q @ center.float().permute(1, 2, 0), q.abs(), radius.float().permute(1, 2, 0))
    bound = (bound * scaling).masked_fill(index >= m, float("-inf"))
    share = bound.softmax(dim=-1).sum(dim=(0, 1))  # [rows] estimated attention each earlier page gets
    if lexical is None and plan.lexical is not None:  # eager: the plan's scores of the complete pages
        lexical = F.pad(plan.lexical[0].to(device), (0, rows_reserved - plan.lexical.shape[1]))
    if lexical is not None:
        share = share / (heads * width) + lexical
    candidates = (index >= sink) & (index < m - local)
    ranked = topk_in_page_order(share.masked_fill(~candidates, float("-inf")), k)[1]  # [k] best first
    if plan.neighbors:
        pages, taken = with_neighbors(ranked[None], torch.ones_like(ranked[None], dtype=torch.bool),
                                      candidates[None], list(plan.neighbors), k)
        top = torch.where(taken, pages, rows_reserved).sort(dim=1).values[0, :k]  # exactly k taken: fixed shape
    else:
        top = ranked.sort().values
    local_pages = m - local + torch.arange(local, device=device)
    return torch.cat([torch.arange(sink, device=device), top, local_pages])[None]


def _rope_free_recent(state: LayerSummaries, inv_freq: torch.Tensor) -> torch.Tensor | None:
    """The layer's recent RoPE-free queries [<=W, H, D], with the queries of reused decode steps added."""
    if state.pending_queries:
        pending = torch.cat([q for q, _ in state.pending_queries])  # [n, H, D]
        positions = torch.cat([p for _, p in state.pending_queries])
        rope_free = shift_keys(pending, -positions[:, None], inv_freq)
        state.recent_queries = rope_free if state.recent_queries is None else torch.cat([state.recent_queries,
                                                                                         rope_free])
        state.pending_queries = []
    return state.recent_queries


def _with_selection(plan, attended: torch.Tensor, key_shift: torch.Tensor | None):
    """A copy of the shared plan carrying this layer's pages (a shallow copy: decode calls this per layer)."""
    if plan.log_selection is not None:
        plan.log_selection.append(attended[-1])
    layer_plan = copy.copy(plan)
    layer_plan.attended, layer_plan.key_shift, layer_plan.scratch = attended, key_shift, {}
    return layer_plan


def fresh_decode_selection(plan, state: LayerSummaries) -> tuple | None:
    """A decode step's (attended pages [1, A], key shift) reused from this layer's last selection, as the trained scorer
    does: within the same page, fewer than `refresh_interval` tokens after it was made, and the step's token no refresh
    trigger (`plan.refresh_now`); else None."""
    if plan.decode_token is None or state.decode_selection is None or plan.decode_token[1] == 0 or plan.refresh_now:
        return None
    page, attended, key_shift, made_at = state.decode_selection
    if page != plan.decode_token[0] or plan.new_tokens[0] - made_at >= plan.refresh_interval:
        return None
    return attended, key_shift
