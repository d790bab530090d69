"""The page retriever: per page window, a bookmark query and key; scoring and top-k page selection.

The retriever is a few fresh transformer layers over the LLM's own (frozen) token embeddings. It reads
one window of up to `page_size` tokens followed by the trainable bookmark embedding; the bookmark's
final hidden state gives the window's query and key vectors. Page j's key comes from page j's own
tokens. The query used while encoding positions [t, ...) comes from the window of the `page_size`
tokens before t, so a retrieval decision never depends on the tokens it helps to predict.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import LlamaConfig, LlamaModel

from .config import RetrieverConfig


class PageRetriever(nn.Module):
    """Encodes page windows into bookmark (query, key) vectors, each [score_heads, score_dim]."""

    def __init__(self, config: RetrieverConfig, llm_hidden_size: int, page_size: int):
        super().__init__()
        self.config = config
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(config.seed)
        self.input_proj = nn.Linear(llm_hidden_size, config.hidden_size)
        self.bookmark_embedding = nn.Parameter(torch.randn(config.hidden_size) * 0.02)
        encoder_config = LlamaConfig(
            vocab_size=1,
            hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size,
            num_hidden_layers=config.num_layers,
            num_attention_heads=config.num_heads,
            num_key_value_heads=config.num_heads,
            max_position_embeddings=page_size + 1,
            pad_token_id=None,
            bos_token_id=None,
            eos_token_id=None,
        )
        encoder_config._attn_implementation = "sdpa"
        self.encoder = LlamaModel(encoder_config)
        self.encoder.embed_tokens = None  # the encoder reads projected LLM embeddings, never ids
        out_dim = config.num_score_heads * config.score_dim
        self.query_head = nn.Linear(config.hidden_size, out_dim)
        self.key_head = nn.Linear(config.hidden_size, out_dim)
        torch.random.set_rng_state(generator_state)

    def forward(self, token_embeds: torch.Tensor, lengths: torch.Tensor,
                full_windows: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """token_embeds: [W, P, E] LLM input embeddings of W windows, right-padded; lengths: [W] >= 0.
        full_windows: the caller knows every window is full (lengths == P): no padding mask is built, so nothing
        reads the lengths on the host (a CUDA-graph decode step). Plain causal attention is what transformers runs
        for an all-ones mask anyway, so the result is the same.

        Returns (query, key), each [W, score_heads, score_dim] in float32.
        """
        windows, width, _ = token_embeds.shape
        # the retriever may be held in bf16 (DeepSpeed bf16 training casts every module); scores stay float32
        x = self.input_proj(token_embeds.to(self.input_proj.weight.dtype))  # [W, P, H]
        x = torch.cat([x, x.new_zeros(windows, 1, x.shape[-1])], dim=1)  # [W, P+1, H]
        rows = torch.arange(windows, device=x.device)
        x[rows, lengths] = self.bookmark_embedding.to(x.dtype)
        slots = torch.arange(width + 1, device=x.device)
        attention_mask = None if full_windows else (slots[None, :] <= lengths[:, None]).long()  # tokens + bookmark
        hidden = self.encoder(inputs_embeds=x, attention_mask=attention_mask, use_cache=False).last_hidden_state
        bookmark = hidden[rows, lengths]  # [W, H]
        shape = (windows, self.config.num_score_heads, self.config.score_dim)
        return self.query_head(bookmark).view(shape).float(), self.key_head(bookmark).view(shape).float()


def score_pages(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """queries: [G, heads, dim], keys: [N, heads, dim] -> scores [G, N] = sum over heads of <q, k>."""
    return queries.flatten(1) @ keys.flatten(1).T


def eligible_pages(query_pages: torch.Tensor, n: int, sink_pages: int, local_pages: int):
    """(always [G, N], candidates [G, N]) masks over pages 0..n-1 for each query page m in `query_pages` [G].

    always: the sink and local pages before m, attended whatever the scores; candidates: the other pages
    before m, among which the top-k are retrieved. Neither ever holds m itself or a later page.
    """
    j = torch.arange(n, device=query_pages.device)[None, :]  # [1, N]
    m = query_pages[:, None]  # [G, 1]
    earlier = j < m
    always = earlier & ((j < sink_pages) | (j >= m - local_pages))
    return always, earlier & ~always


def with_neighbors(seeds: torch.Tensor, seed_ok: torch.Tensor, candidates: torch.Tensor, offsets: list[int],
                   top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The retrieved pages once each top-scored page brings its neighbours, within the same `top_k` slots.

    seeds: [G, k] candidate pages in descending score order (seed_ok [G, k]: a real candidate, not padding);
    candidates: [G, N] mask of the pages that may be retrieved. The pages are tried in the order
    seed1, seed1 + offsets..., seed2, seed2 + offsets..., ...; a page is taken if it is a candidate and not
    taken before, until `top_k` are. Returns (pages [G, L], taken [G, L]) with L = k * (1 + len(offsets)).
    Fixed shapes, no device-to-host copy. With k >= min(top_k, candidates) seeds, as many pages are taken as
    plain top-k would take: each seed is itself a candidate, so neighbours only reorder who fills the slots.
    """
    groups, n = candidates.shape
    # one add per offset rather than a tensor of offsets: building that from a list is a blocking host-to-device copy
    pages = torch.stack([seeds + d for d in (0, *offsets)], dim=2).flatten(1)  # [G, L]
    inside = (pages >= 0) & (pages < n)
    ok = inside & candidates.gather(1, pages.clamp(0, max(n - 1, 0))) if n else torch.zeros_like(inside)
    ok &= seed_ok.repeat_interleave(1 + len(offsets), dim=1)
    width = pages.shape[1]
    before = torch.ones(width, width, dtype=torch.bool, device=seeds.device).tril(-1)  # [L, L]: t' < t
    repeated = ((pages[:, :, None] == pages[:, None, :]) & ok[:, None, :] & before).any(dim=2)
    taken = ok & ~repeated
    taken &= taken.cumsum(dim=1) <= top_k
    return pages, taken


def topk_in_page_order(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`scores.topk(k)` along the last dim with ties taken in page order (lowest index first): (values, indices).

    topk orders tied values by a rule that depends on the width of the scores, which a prompt's chunking (the
    pages complete at a chunk's end) and the cache's reserved rows set, so ties of exactly equal scores (pages
    with the same key bounds) would be broken differently by them. Each score becomes one int64 key, its float
    bits mapped to an integer of the same order in the high half, less the page index: all keys distinct, one
    topk, capturable in a CUDA graph (a stable sort is not everywhere)."""
    bits = scores.float().contiguous().view(torch.int32).long()
    magnitude = bits & 0x7FFFFFFF
    ordered = torch.where(bits < 0, -magnitude, magnitude)  # the float's order; -0.0 and +0.0 both 0
    key = (ordered << 32) - torch.arange(scores.shape[-1], device=scores.device)  # equal scores: lower page first
    indices = key.topk(k, dim=-1).indices
    return scores.gather(-1, indices), indices


def select_pages(
    scores: torch.Tensor, query_pages: torch.Tensor, top_k: int, sink_pages: int, local_pages: int,
    fixed_width: bool = False, neighbors: list[int] | tuple = (),
) -> torch.Tensor:
    """Earlier pages each query page attends to: sink + local + the top-k scored among the rest.

    scores: [G, N] over the N pages that have keys; query_pages: [G] page index m of each query.
    Only pages j < m are eligible (never the future, never the page itself).
    neighbors: page offsets (`RetroLMConfig.neighbor_offsets`) each retrieved page brings along, inside the same
    top_k slots (`with_neighbors`); empty: plain top-k.
    Returns [G, A] page indices, ascending within a row, padded with -1 on the right. A is the largest row's
    count, or with fixed_width the most any row can hold (min(N, sink + local + top_k)), which needs no
    device-to-host copy: the per-layer scorer calls this at every layer of a decode step.
    """
    groups, n = scores.shape
    device = scores.device
    j = torch.arange(n, device=device)[None, :]  # [1, N]
    always, candidates = eligible_pages(query_pages, n, sink_pages, local_pages)
    chosen = always.clone()
    k = min(top_k, n)
    if k > 0:
        masked = scores.float().masked_fill(~candidates, float("-inf"))
        top_scores, top_index = topk_in_page_order(masked, k)
        if neighbors:
            pages, taken = with_neighbors(top_index, top_scores > float("-inf"), candidates, list(neighbors), top_k)
            hits = torch.zeros(groups, n, dtype=torch.long, device=device)
            chosen |= hits.scatter_add_(1, pages.clamp(0, n - 1), taken.long()) > 0  # scatter_add: repeats are safe
        else:  # plain top-k, a few kernels fewer: this runs at every layer of a refresh step
            chosen.scatter_(1, top_index, top_scores > float("-inf"))
            chosen |= always
    if fixed_width:
        width = min(n, sink_pages + local_pages + max(top_k, 0))
    else:
        width = int(chosen.sum(dim=1).max()) if groups else 0
    order = torch.where(chosen, j.expand(groups, n), n).sort(dim=1).values[:, :width]
    return torch.where(order < n, order, -1)


def packed_key_shift(attended: torch.Tensor, page_starts: torch.Tensor, page_size: int) -> torch.Tensor:
    """Contiguous positions: the shift [G, A] that moves each attended page's keys from the position they were
    encoded at (`page_starts`) to its rank in the packed context (0, P, 2P, ...); 0 for -1 padding."""
    rank = torch.arange(attended.shape[1], device=attended.device)[None, :]
    return torch.where(attended >= 0, rank * page_size - page_starts[attended.clamp(min=0)], 0)
