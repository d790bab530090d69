"""Planning one forward: which pages each new token attends to, and at which positions.

Runs before the LLM sees the tokens (a forward pre-hook):
1. record the new ids; with the trained scorer, compute bookmark (query, key) for every page this forward
   completes (retrieval needs only token ids);
2. group the new tokens by page; with the trained scorer each group's query is the retriever's view of the
   `page_size` tokens before the group's first token (for a group starting on a page boundary that is simply
   the previous page's bookmark query); decode groups reuse their selection until `refresh_interval` tokens
   passed or the token a decode step reads is a refresh trigger (`refresh_on`); select sink + local + top-k
   earlier pages per group (never a future page), each retrieved page bringing its `neighbor_pages`. With the
   training-free scorer the pages are chosen later, per layer, from the layer's own queries (scorer.py); the
   plan fixes how many each group attends to, which is all the positions need;
3. assign positions: original, or contiguous (attended pages re-packed at 0, P, 2P, ... in page order,
   the group's own page right after), and the key shift that moves each attended page there.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .cache import PagedKVCache
from .config import RetroLMConfig
from .errors import RetroLMError
from .lexical import LexicalIndex
from .pager import window_bookmarks
from .retriever import PageRetriever, eligible_pages, packed_key_shift, score_pages, select_pages
from .scorer import fresh_decode_selection


@dataclass
class AttentionPlan:
    """What the attention of one forward must do. G groups (pages touched), A attended earlier pages max."""

    page_size: int
    query_pages: torch.Tensor  # [G] page index of each group
    attended: torch.Tensor | None  # [G, A] earlier pages per group, ascending, -1 padded (None: chosen per layer)
    key_shift: torch.Tensor | None  # [G, A] position shift for each attended page's keys; None: no shift
    q_group: torch.Tensor  # [q] group of each new token
    q_row: torch.Tensor  # [q] row of each new token inside its group's query block
    q_offset: torch.Tensor  # [q] offset of each new token inside its page
    rows: int  # R, rows of a group's query block (max token count of one group)
    row_offsets: torch.Tensor  # [G, R] page offset of each row (rows past a group's tokens are padding)
    position_ids: torch.Tensor  # [1, q] RoPE positions of the new tokens
    inv_freq: torch.Tensor | None  # rotary inverse frequencies, for key_shift
    backend: str = "sdpa"  # attention path: a key of attention.BACKENDS
    decode_token: tuple[int, int] | None = None  # (page, offset) of the single new token of a decode step
    scratch: dict = field(default_factory=dict)  # per-forward values an attention path derives once, not per layer
    write_rows: torch.Tensor | None = None  # [q] pool rows of the new K/V, on the device (device_decode.DeviceDecoder)
    # offload (offload.py): page ids above are device slots; (pages [W], slots [W]) to copy in from the host pool
    # (page -1: nothing), the slot-pool rows of the new tokens [q], and the side-stream copies' events per layer
    fetch: tuple[torch.Tensor, torch.Tensor] | None = None
    slot_rows: torch.Tensor | None = None
    fetch_events: list | None = None
    new_tokens: tuple[int, int] = (0, 0)  # [start, end) positions of the tokens this forward encodes
    attention_calls: int = 0  # layers whose attention ran with this plan (checked after the forward)
    # the training-free scorer (scorer.select_for_layer) chooses `attended` per layer from these:
    scorer: str = "trained"
    rope_inv_freq: torch.Tensor | None = None  # the model's rotary frequencies (keys/queries made RoPE-free)
    page_starts: torch.Tensor | None = None  # [pages] position each page's keys were encoded at
    layer_states: list | None = None  # per-layer `LayerSummaries` (None: no cache, summarise from the keys given)
    sink_pages: int = 0
    local_pages: int = 0
    top_k: int = 0
    scorer_window: int = 0
    refresh_interval: int = 1  # decode: a layer keeps its selection this many tokens within a page
    refresh_now: bool = False  # decode: this step reads a refresh-trigger token, every layer selects afresh
    neighbors: tuple = ()  # page offsets each retrieved page brings along (RetroLMConfig.neighbor_offsets)
    contiguous: bool = False
    log_selection: list | None = None  # per-layer selections of a decode step, for cache.selection_log
    device_scorer: object | None = None  # a device-side decode step's per-layer scorer (device_scorer.DeviceScorer)
    lexical: torch.Tensor | None = None  # [G, complete pages] lexical_weight x lexical scores, shared by the layers


def _window_bookmarks(cache, retriever, embed, ends, page_size):
    """Retriever (query, key) of the windows of up to `page_size` recorded tokens ending before `ends` [W]."""
    return window_bookmarks(cache.token_ids[: cache.num_tokens], retriever, embed, ends, page_size)


def _triggered(new_ids: torch.Tensor, table: torch.Tensor | None) -> bool:
    """Whether the token a decode step reads is a refresh trigger.

    The one host read that triggers add, made only on steps that would otherwise reuse their selection:
    eager PyTorch decides on the host whether the scoring kernels run at all (the device-only alternative,
    scoring at every step and keeping the new selection with torch.where, costs a refresh per token). Under
    transformers' generate the read waits for no kernel: generate has already synchronised on this token
    (its stopping check reads `unfinished_sequences.max()` on the host).
    """
    return table is not None and bool(table[new_ids[-1]])


def plan_forward(
    cache: PagedKVCache,
    new_ids: torch.Tensor,
    retriever: PageRetriever,
    embed: torch.nn.Embedding,
    config: RetroLMConfig,
    inv_freq: torch.Tensor,
    refresh_table: torch.Tensor | None = None,
    hop_stops: torch.Tensor | None = None,
) -> AttentionPlan:
    """Plan the forward that encodes `new_ids` [q] after the tokens already in `cache`; the plan is also set as
    `cache.plan`, which the cache's layers require for this forward's update. refresh_table: [V] bool on the
    device, the ids whose decode step refreshes retrieval (`token_tables.character_table`); None: none do.
    hop_stops: [V] bool, the ids that end a sentence for lexical hops (config.lexical_hop_stops' table; None: the
    config sets none)."""
    end = cache.num_tokens + new_ids.shape[0]
    room = cache.slots.pages * config.page_size if cache.slots is not None else end
    if end > room:  # checked before the cache changes
        raise RetroLMError(f"an offloaded KV cache is reserved whole: this one holds {room} tokens, the forward "
                           f"writes up to {end}. Build it with RetroLM.new_cache(capacity_tokens) large enough for "
                           "prompt + new tokens.")
    if config.lexical_weight and cache.lexical is None:
        lexical_index(cache, config, hop_stops)  # made with the model's table (later forwards only update it)
    plan = _plan(cache, new_ids, retriever, embed, config, inv_freq, refresh_table)
    cache.plan = _to_slots(plan, cache) if cache.slots is not None else plan
    return cache.plan


def _plan(cache, new_ids, retriever, embed, config, inv_freq, refresh_table=None) -> AttentionPlan:
    P = config.page_size
    t0 = cache.num_tokens
    cache.append_tokens(new_ids)
    t1 = cache.num_tokens
    device = cache.token_ids.device
    trained = retriever is not None and config.scorer != "attention"

    done_before, done_after = t0 // P, t1 // P
    if trained and done_after > done_before:
        ends = torch.arange(done_before + 1, done_after + 1, device=device) * P
        queries, keys = _window_bookmarks(cache, retriever, embed, ends, P)
        cache.store_bookmarks(done_before, queries.to(device), keys.to(device))
    cache.num_complete_pages = done_after

    first_page, last_page = t0 // P, (t1 - 1) // P
    query_pages = torch.arange(first_page, last_page + 1, device=device)  # [G]
    group_starts = torch.clamp(query_pages * P, min=t0)  # first new token of each group
    if trained:
        triggered = lambda: _triggered(new_ids, refresh_table)  # noqa: E731 (read only where a reuse is possible)
        attended = _select(cache, retriever, embed, config, query_pages, group_starts, t0, triggered)
        count = (attended >= 0).sum(dim=1)  # [G] attended pages: the group's own page is packed right after them
    else:
        attended = None
        always, candidates = eligible_pages(query_pages, int(last_page), config.sink_pages, config.local_pages)
        count = always.sum(dim=1) + candidates.sum(dim=1).clamp(max=config.top_k)  # what select_pages will pick

    positions = torch.arange(t0, t1, device=device)
    q_group = positions // P - first_page
    q_offset = positions % P
    first_offset = group_starts % P  # [G]
    q_row = q_offset - first_offset[q_group]
    rows = min(t1, (first_page + 1) * P) - t0 if first_page == last_page else P  # most tokens in one group
    row_offsets = first_offset[:, None] + torch.arange(rows, device=device)[None, :]  # [G, R]
    decode_token = (t0 // P, t0 % P) if t1 - t0 == 1 else None

    contiguous = config.position_mode == "contiguous"
    cache.set_page_starts(query_pages, count * P if contiguous else query_pages * P)
    position_ids = (count[q_group] * P + q_offset)[None, :] if contiguous else positions[None, :]
    key_shift = None
    if contiguous and trained:
        key_shift = packed_key_shift(attended, cache.page_starts, P)  # [G, A]
    plan = AttentionPlan(P, query_pages, attended, key_shift, q_group, q_row, q_offset, rows, row_offsets,
                         position_ids, inv_freq if contiguous else None, decode_token=decode_token,
                         new_tokens=(t0, t1))
    if not trained:
        plan.scorer, plan.rope_inv_freq, plan.page_starts = "attention", inv_freq, cache.page_starts
        plan.layer_states = cache.layer_summaries() or None
        plan.sink_pages, plan.local_pages, plan.top_k = config.sink_pages, config.local_pages, config.top_k
        plan.scorer_window, plan.contiguous = config.scorer_query_tokens, contiguous
        plan.refresh_interval, plan.neighbors = config.refresh_interval, config.neighbor_offsets
        reuses = _would_reuse(plan)
        plan.refresh_now = reuses and _triggered(new_ids, refresh_table)
        if config.lexical_weight and (not reuses or plan.refresh_now):  # the layers score afresh
            plan.lexical = config.lexical_weight * _lexical_scores(cache, config, group_starts, query_pages,
                                                                  cache.num_complete_pages, t0)
        if t0 % P != 0 and t1 - t0 == 1 and int(last_page) > 0:  # a decode step mid-page: log what it retrieves
            plan.log_selection = []
            cache.selection_log.append((t0, plan.log_selection))
    return plan


def _to_slots(plan: AttentionPlan, cache: PagedKVCache) -> AttentionPlan:
    """Offload: make the pages this forward reads and writes resident in the device slots (copies of pages already
    written start now, on CUDA on a side stream) and renumber the plan's pages as slots."""
    P, slots = plan.page_size, cache.slots
    start, end = plan.new_tokens
    needed = torch.cat([plan.attended[plan.attended >= 0], plan.query_pages]).unique()
    slots.check_fits(needed.numel())
    pages, targets = slots.assign(needed)
    plan.fetch = (torch.where(pages * P < start, pages, -1), targets)  # pages not yet written need no copy
    lookup = slots.slot_of_page
    plan.attended = torch.where(plan.attended >= 0, lookup[plan.attended.clamp(min=0)], -1)
    plan.query_pages = lookup[plan.query_pages]
    plan.slot_rows = slots.slot_rows(torch.arange(start, end, device=needed.device), P)
    cache.prefetch(plan)
    return plan


def _lexical_scores(cache: PagedKVCache, config: RetroLMConfig, group_starts: torch.Tensor, query_pages: torch.Tensor,
                    n: int, t0: int) -> torch.Tensor:
    """The lexical scores [G, n] of the groups of a forward encoding tokens t0.. up to the cache's end. A forward
    that ends a prompt first judges its question, the window before the prompt's end (lexical.py), whose judgement
    the answer's steps apply; the prompt's groups judge their own windows."""
    index, t1 = lexical_index(cache, config), cache.num_tokens
    if cache.prompt_chunk == "last" or (cache.prompt_chunk is None and t1 - t0 > 1):
        index.judge_question(cache.token_ids, t1, n, n)
    return index.scores(cache.token_ids, group_starts, query_pages, n, decide=t1 - t0 > 1)


def lexical_index(cache: PagedKVCache, config: RetroLMConfig, hop_stops: torch.Tensor | None = None) -> LexicalIndex:
    """The cache's lexical index, made at first use from `config` and the model's hop_stops table (`plan_forward`),
    brought up to the cache's complete pages (the device decode step starts from it too)."""
    if cache.lexical is None:
        cache.lexical = LexicalIndex.from_config(config, hop_stops, cache.token_ids.device)
    cache.lexical.update(cache.token_ids, cache.num_complete_pages)
    return cache.lexical


def _would_reuse(plan: AttentionPlan) -> bool:
    """Training-free scorer: whether this decode step's layers hold a fresh selection (the first layer's state
    tells for all: every layer refreshes at the same steps)."""
    if plan.decode_token is None or not plan.layer_states:
        return False
    return fresh_decode_selection(plan, plan.layer_states[0]) is not None


def _select(cache, retriever, embed, config, query_pages, group_starts, t0, triggered):
    """Attended earlier pages [G, A] of each group, reusing the decode selection while it is fresh and the
    step's token is no refresh trigger (`triggered()`)."""
    P = config.page_size
    first_page, last_page = t0 // P, (cache.num_tokens - 1) // P  # host copies of query_pages' ends
    if cache.selection is not None and first_page == last_page:
        page, attended, made_at = cache.selection
        start = t0  # a single group starts at the first new token
        if page == first_page and start % P != 0 and start - made_at < config.refresh_interval and not triggered():
            return attended[None, :]

    n = cache.num_complete_pages
    scores = torch.zeros(query_pages.numel(), n, device=query_pages.device)
    if n > 0 and config.top_k > 0:
        on_boundary = group_starts % P == 0
        queries = cache.page_queries[(query_pages - 1).clamp(min=0)]  # [G, heads, dim]
        mid = (~on_boundary).nonzero().flatten()
        if mid.numel():  # a group starting mid-page: its window straddles two pages
            mid_queries, _ = _window_bookmarks(cache, retriever, embed, group_starts[mid], P)
            queries[mid] = mid_queries.to(queries.device)
        scores = score_pages(queries, cache.bookmark_keys[:n])
        if config.lexical_weight:
            scores = scores + config.lexical_weight * _lexical_scores(cache, config, group_starts, query_pages, n,
                                                                      t0).to(scores.device)
    attended = select_pages(scores, query_pages, config.top_k, config.sink_pages, config.local_pages,
                            neighbors=config.neighbor_offsets)

    last_start = max(last_page * P, t0)
    cache.selection = (last_page, attended[-1], last_start)
    if last_start % P != 0:
        cache.selection_log.append((last_start, attended[-1]))
    return attended
