"""Pagination: token positions -> pages, and the bookmark token that summarises each page.

A page is `page_size` consecutive tokens; page j holds positions [j*P, (j+1)*P). The last page may be
ragged (shorter). Bookmark tokens never enter the LLM's token stream (so RetroLM with every page
selected is exactly the plain model); the page retriever appends one to each page window it encodes.
"""
from __future__ import annotations

import torch

from .errors import RetroLMError


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


def add_bookmark_token(tokenizer, bookmark_token: str) -> int:
    """Register the bookmark as a special token (idempotent); returns its id."""
    if bookmark_token not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [bookmark_token]})
    return tokenizer.convert_tokens_to_ids(bookmark_token)


def check_input_ids(input_ids: torch.Tensor, vocab_size: int, bookmark_id: int, max_tokens: int) -> None:
    """Reject what RetroLM cannot encode, with the fix in the message."""
    if input_ids.dim() != 2:
        raise RetroLMError(f"input_ids must be [batch, seq], got shape {tuple(input_ids.shape)}; add a batch dim.")
    if input_ids.shape[0] != 1:
        raise RetroLMError(
            f"RetroLM encodes one sequence at a time (batch size 1), got batch size {input_ids.shape[0]}; "
            "call it once per sequence."
        )
    if input_ids.shape[1] == 0:
        raise RetroLMError("input is empty: pass at least one token (did the text tokenize to nothing?).")
    if input_ids.shape[1] > max_tokens:
        raise RetroLMError(
            f"input has {input_ids.shape[1]} tokens, over max_context_tokens={max_tokens}; "
            f"pass max_context_tokens={input_ids.shape[1]} or more to RetroLM.from_pretrained, or shorten the input."
        )
    if bool((input_ids == bookmark_id).any()) or int(input_ids.max()) >= vocab_size or int(input_ids.min()) < 0:
        raise RetroLMError(
            "input_ids contain the bookmark token or ids outside the model's vocabulary; bookmarks are added by "
            "RetroLM itself, so strip them from the text before tokenizing."
        )
