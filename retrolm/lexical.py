"""Lexical page scores: how much of a query window's rarer text an earlier page repeats.

A question about a fact repeats some of the fact's words ("the amber orchard locker"). The trained retriever
learns such links only for text like its training text: on held-out prose with needle formats it never saw, the
default model's retriever finds the needle's page for 47% / 5% of questions at 16x / 64x its window, and adding
these lexical scores for 100% / 100% (bench/results/lexical/). So a page's score may add `lexical_weight` times
this count, a sparse, exact-match signal next to the dense one: hybrid retrieval, as text RAG combines BM25 with
an embedding model.

The score of page j for a query is the sum, over the distinct token n-grams of the `query_tokens` tokens before
the query (`lexical_query_pages` pages: more than the retriever's one-page window, so that a question's key
stays in view while an answer of several items is written) that occur in page j, of
idf = log((N + 1) / (df + 0.5)), where N is the number of pages before the query page and df how many of them
hold the n-gram. An n-gram held by more than `max_pages` of those pages counts for none (a common phrase, not
evidence). Only the pages before the query page count, so a page's score never depends on text after it
(prefill chunking cannot change it).

`LexicalIndex` keeps, for the complete pages, one sorted int64 key per (n-gram, page): the n-gram's hash in the
high bits, the page in the low `PAGE_BITS`. The pages before m that hold an n-gram are then one contiguous run
of keys, found by two binary searches; scoring is fixed-shape tensor work (searchsorted, gather, scatter_add).
Reference: `reference_scores` (plain Python sets), which tests compare it with.
"""
from __future__ import annotations

import math

import torch

from .errors import RetroLMError
from .pager import page_windows

PAGE_BITS = 23  # pages per sequence < 2**23 (8.4M; 1M tokens is 16K pages of 64)
HASH_MODULUS = 549_755_813_869  # a prime below 2**39: hash << PAGE_BITS stays below 2**62
HASH_BASE = 1_000_003  # ids < 2**20 (any tokenizer's vocabulary): hash * BASE + id < 2**59, no int64 overflow


def gram_hashes(ids: torch.Tensor, n: int) -> torch.Tensor:
    """Polynomial hashes [..., L - n + 1] (int64, in [0, HASH_MODULUS)) of the n-grams of ids [..., L]."""
    grams = ids.long().unfold(-1, n, 1)  # [..., L - n + 1, n]
    h = torch.zeros(grams.shape[:-1], dtype=torch.long, device=ids.device)
    for i in range(n):
        h = (h * HASH_BASE + grams[..., i]) % HASH_MODULUS
    return h


def _first_occurrences(hashes: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the hashes [R, L] sorted, and a mask [R, L] keeping each valid hash once."""
    hashes = torch.where(valid, hashes, -1).sort(dim=1).values  # invalid ones first, as -1
    repeat = torch.zeros_like(valid)
    repeat[:, 1:] = hashes[:, 1:] == hashes[:, :-1]
    return hashes, (hashes >= 0) & ~repeat


def _merged(old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """Two sorted key tensors merged into one, in linear work and fixed shapes (each key's place is its own index
    plus the count of the other tensor's keys before it; equal keys: old first), so a long prefill adding a chunk's
    keys does not sort everything again, and the device decode step can merge inside a CUDA graph."""
    out = torch.empty(old.numel() + new.numel(), dtype=old.dtype, device=old.device)
    out.scatter_(0, torch.arange(old.numel(), device=old.device) + torch.searchsorted(new, old), old)
    out.scatter_(0, torch.arange(new.numel(), device=old.device) + torch.searchsorted(old, new, right=True), new)
    return out


def _check_page_count(pages: int) -> None:
    """A key holds its page in PAGE_BITS bits: more pages would collide."""
    if pages >= 1 << PAGE_BITS:
        raise RetroLMError(f"lexical page scores index at most {(1 << PAGE_BITS) - 1} pages, {pages} asked for; set "
                           "lexical_weight=0 for inputs or stores this large.")


class LexicalIndex:
    """The n-grams of every complete page of one sequence, for `scores` (see the module docstring)."""

    def __init__(self, ngram: int, max_pages: int, page_size: int, query_tokens: int | None = None, device=None):
        """query_tokens: how many tokens before a query's start it scores with (default page_size)."""
        query_tokens = page_size if query_tokens is None else query_tokens
        if ngram > page_size:
            raise ValueError(f"lexical n-grams of {ngram} tokens do not fit in pages of {page_size}")
        self.ngram, self.max_pages, self.page_size, self.query_tokens = ngram, max_pages, page_size, query_tokens
        self.keys = torch.empty(0, dtype=torch.long, device=device)  # [K] sorted (hash << PAGE_BITS) | page
        self.pages = 0  # pages indexed: 0 .. pages - 1

    def update(self, token_ids: torch.Tensor, complete_pages: int) -> None:
        """Index the pages from `self.pages` up to `complete_pages` of token_ids [>= complete_pages * P]."""
        if complete_pages > self.pages:
            self.append(token_ids[self.pages * self.page_size: complete_pages * self.page_size])

    def append(self, page_ids: torch.Tensor) -> None:
        """Index the whole pages of page_ids [pages * P] as the pages after those indexed."""
        P, first = self.page_size, self.pages
        complete_pages = first + page_ids.numel() // P
        _check_page_count(complete_pages)
        ids = page_ids.view(complete_pages - first, P).to(self.keys.device)
        hashes, keep = _first_occurrences(gram_hashes(ids, self.ngram),
                                          torch.ones(ids.shape[0], P - self.ngram + 1, dtype=torch.bool,
                                                     device=ids.device))
        page = torch.arange(first, complete_pages, device=ids.device)[:, None].expand_as(hashes)
        new = ((hashes << PAGE_BITS) | page)[keep].sort().values
        self.keys = _merged(self.keys, new)
        self.pages = complete_pages

    def scores(self, token_ids: torch.Tensor, starts: torch.Tensor, query_pages: torch.Tensor, n: int) -> torch.Tensor:
        """Lexical scores [G, n] of pages 0..n-1 for the windows of the `query_tokens` tokens of token_ids before
        `starts` [G] (fewer at the sequence's start), each scored against the pages before its query page
        `query_pages` [G]; pages at or after it score 0. Needs `update` to have indexed n pages."""
        if n > self.pages:
            raise ValueError(f"lexical index holds {self.pages} pages, {n} asked for")
        G, W, device = starts.shape[0], self.query_tokens, self.keys.device
        out = torch.zeros(G, n, device=device)
        if not self.keys.numel() or not G:
            return out
        windows, lengths = page_windows(token_ids, (starts - W).clamp(min=0), starts, W)
        windows, lengths, query_pages = windows.to(device), lengths.to(device), query_pages.to(device)
        grams = W - self.ngram + 1
        valid = torch.arange(grams, device=device)[None, :] + self.ngram <= lengths[:, None]  # [G, grams]
        hashes, keep = _first_occurrences(gram_hashes(windows, self.ngram), valid)
        base = hashes.clamp(min=0) << PAGE_BITS
        before = query_pages.clamp(max=n)[:, None]  # pages < query page count
        lo = torch.searchsorted(self.keys, base)
        hi = torch.searchsorted(self.keys, base + before)
        df = hi - lo  # [G, grams]: earlier pages holding the n-gram
        use = keep & (df > 0) & (df <= self.max_pages)
        idf = torch.log((before.float() + 1) / (df.float() + 0.5)) * use
        run = lo[:, :, None] + torch.arange(self.max_pages, device=device)  # [G, grams, max_pages]
        hit = use[:, :, None] & (run < hi[:, :, None])
        pages = self.keys[run.clamp(max=self.keys.numel() - 1)] & ((1 << PAGE_BITS) - 1)
        weight = idf[:, :, None] * hit
        return out.scatter_add_(1, pages.clamp(max=n - 1).flatten(1), weight.flatten(1))


SENTINEL = torch.iinfo(torch.long).max  # an unused key slot of DeviceLexicalIndex: sorts after every key


class DeviceLexicalIndex(LexicalIndex):
    """A LexicalIndex in fixed buffers, for the device decode step (device_decode.py): room for the keys of
    `capacity` pages plus one page more, unused slots holding SENTINEL (sorted last). Adding a page merges its keys
    into the buffer (`_merged`, the last page's slots, always unused, dropped); scoring reads it as LexicalIndex
    does, over `capacity` pages (a page at or after a query's page scores 0). Both are fixed-shape device work: a
    CUDA graph can replay them."""

    def __init__(self, index: LexicalIndex, capacity: int):
        """From `index` (the prefill's: its pages are already indexed), with room up to `capacity` pages."""
        super().__init__(index.ngram, index.max_pages, index.page_size, index.query_tokens, index.keys.device)
        _check_page_count(capacity)
        self.per_page = self.page_size - self.ngram + 1
        keys = torch.full(((capacity + 1) * self.per_page,), SENTINEL, dtype=torch.long, device=index.keys.device)
        keys[: index.keys.numel()] = index.keys
        self.keys, self.pages = keys, capacity

    def add_page(self, token_ids: torch.Tensor, page: torch.Tensor, add: torch.Tensor) -> None:
        """Index page `page` [1] of token_ids where `add` [1] (a bool on the device); else leave the index as is."""
        P = self.page_size
        ids = token_ids[page * P + torch.arange(P, device=token_ids.device)][None]  # [1, P]
        hashes, keep = _first_occurrences(gram_hashes(ids, self.ngram),
                                          torch.ones(1, self.per_page, dtype=torch.bool, device=ids.device))
        new = torch.where(keep & add, (hashes << PAGE_BITS) | page, SENTINEL)[0].sort().values
        self.keys.copy_(_merged(self.keys[: -self.per_page], new))


def reference_scores(token_ids: list[int], starts: list[int], query_pages: list[int], n: int, page_size: int,
                     ngram: int, max_pages: int, query_tokens: int | None = None) -> list[list[float]]:
    """`LexicalIndex.scores` in plain Python sets, for tests: the same rule, no hashing."""
    P = page_size
    W = P if query_tokens is None else query_tokens
    page_grams = [{tuple(token_ids[j * P + i: j * P + i + ngram]) for i in range(P - ngram + 1)} for j in range(n)]
    rows = []
    for start, m in zip(starts, query_pages):
        window = token_ids[max(start - W, 0): start]
        query = {tuple(window[i: i + ngram]) for i in range(len(window) - ngram + 1)}
        earlier = page_grams[:min(m, n)]
        row = [0.0] * n
        for gram in query:
            holders = [j for j, grams in enumerate(earlier) if gram in grams]
            if 0 < len(holders) <= max_pages:
                idf = math.log((len(earlier) + 1) / (len(holders) + 0.5))
                for j in holders:
                    row[j] += idf
        rows.append(row)
    return rows
