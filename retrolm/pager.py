"""Pagination: token positions -> pages, and the bookmark token that summarises each page.

A page is `page_size` consecutive tokens; page j holds positions [j*P, (j+1)*P). The last page may be
ragged (shorter). Bookmark tokens never enter the LLM's token stream (so RetroLM with every page
selected is exactly the plain model); the page retriever appends one to each page window it encodes.
"""
from __future__ import annotations

import torch


def page_windows(token_ids: torch.Tensor, starts: torch.Tensor, ends: torch.Tensor, page_size: int):
    """Cut windows [starts[w], ends[w]) of at most `page_size` tokens out of a sequence.

    token_ids: [T] ids of the sequence so far; starts, ends: [W] with 0 <= start <= end <= T.
    Returns (windows [W, page_size] right-padded with 0, lengths [W]).
    """
    offsets = torch.arange(page_size, device=token_ids.device)
    positions = starts[:, None] + offsets[None, :]  # [W, P]
    valid = positions < ends[:, None]
    windows = torch.where(valid, token_ids[positions.clamp(max=max(token_ids.shape[0] - 1, 0))], 0)
    return windows, valid.sum(dim=1)


def window_bookmarks(token_ids: torch.Tensor, retriever, embed, ends: torch.Tensor, page_size: int):
    """The retriever's (query, key) [W, heads, dim] of the windows of up to `page_size` tokens of `token_ids` [T]
    ending before `ends` [W], read through the LLM's input embeddings `embed` (frozen: no gradient reaches them)."""
    ids, lengths = page_windows(token_ids, (ends - page_size).clamp(min=0), ends, page_size)
    with torch.no_grad():
        token_embeds = embed(ids.to(embed.weight.device))
    return retriever(token_embeds.to(next(retriever.parameters()).device), lengths.to(token_embeds.device))


def add_bookmark_token(tokenizer, bookmark_token: str) -> int:
    """Register the bookmark as a special token (idempotent); returns its id."""
    if bookmark_token not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [bookmark_token]})
    return tokenizer.convert_tokens_to_ids(bookmark_token)
