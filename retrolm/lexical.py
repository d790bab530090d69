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

Near misses (`near_miss_margin`, off when None). A question about one of several facts of the same shape ("the
code for the amber locker", among codes for other lockers) shares its common words with all of them: each of those
pages repeats much of the query window, and together they fill the page budget, so the model reads every fact and
picks one. What tells the asked fact apart is its rare part (the key) that only it repeats. So a window also
judges the pages outside it: the rarity of an n-gram is log((O + 1) / (held + 0.5)), over the O pages before the
page before the window (that page is taken as the question's own beginning) and the `held` of them holding it; a
page's rarity is that of its rarest held window n-gram, and its passage's rarity the highest of it and its two
neighbours' (a fact cut by a page end). The best page is the outside page with the highest lexical score. A page
that holds some window n-gram, lies more than one page from the best, and whose passage's rarity is more than
`near_miss_margin` below the best's passage's is a near miss: its lexical score becomes NEAR_MISS_SCORE, below
every page's, so the retriever cannot bring it back (it still comes in as a retrieved page's neighbour). Facts
that all hold the asked key (several values for one key) are equally rare and stay. A prompt's windows decide
for themselves (`scores(..., decide=True)`); the last one's decision is kept (`near_misses`) and applied while
the answer is generated, since the answer's own words (a first value written) would otherwise make the other
values' pages look like near misses.

`LexicalIndex` keeps, for the complete pages, one sorted int64 key per (n-gram, page): the n-gram's hash in the
high bits, the page in the low `PAGE_BITS`. The pages before m that hold an n-gram are then one contiguous run
of keys, found by two binary searches; scoring is fixed-shape tensor work (searchsorted, gather, scatter_add).
Reference: `reference_scores` and `reference_near_misses` (plain Python sets), which tests compare it with.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import RetroLMError
from .pager import page_windows

PAGE_BITS = 23  # pages per sequence < 2**23 (8.4M; 1M tokens is 16K pages of 64)
HASH_MODULUS = 549_755_813_869  # a prime below 2**39: hash << PAGE_BITS stays below 2**62
HASH_BASE = 1_000_003  # ids < 2**20 (any tokenizer's vocabulary): hash * BASE + id < 2**59, no int64 overflow
NEAR_MISS_SCORE = -1e4  # a near miss's lexical score: below every score a sum of idf (each < 20 per n-gram) reaches


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


@dataclass
class _Matches:
    """Per window [G] and distinct window n-gram [grams]: its hash in the key's high bits (`base`), where its keys
    start (`lo`), whether it counts (`use`) and its idf; per (n-gram, holder) [G, grams, max_pages] whether that
    holder is a real one (`hit`) and its page; the count of pages before the query page (`before` [G, 1])."""

    base: torch.Tensor
    lo: torch.Tensor
    use: torch.Tensor
    idf: torch.Tensor
    hit: torch.Tensor
    pages: torch.Tensor
    before: torch.Tensor


class LexicalIndex:
    """The n-grams of every complete page of one sequence, for `scores` (see the module docstring)."""

    def __init__(self, ngram: int, max_pages: int, page_size: int, query_tokens: int | None = None, device=None,
                 near_miss_margin: float | None = None):
        """query_tokens: how many tokens before a query's start it scores with (default page_size);
        near_miss_margin: None (off) or the rarity margin of near misses (module docstring)."""
        query_tokens = page_size if query_tokens is None else query_tokens
        if ngram > page_size:
            raise ValueError(f"lexical n-grams of {ngram} tokens do not fit in pages of {page_size}")
        self.ngram, self.max_pages, self.page_size, self.query_tokens = ngram, max_pages, page_size, query_tokens
        self.keys = torch.empty(0, dtype=torch.long, device=device)  # [K] sorted (hash << PAGE_BITS) | page
        self.pages = 0  # pages indexed: 0 .. pages - 1
        self.near_miss_margin = near_miss_margin
        self.near_misses = torch.zeros(0, dtype=torch.bool, device=device)  # [pages judged] the last prompt window's

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

    def _matches(self, token_ids: torch.Tensor, starts: torch.Tensor, query_pages: torch.Tensor, n: int) -> _Matches:
        """The window n-grams of `scores` and the earlier pages holding them (see `_Matches`)."""
        G, W, device = starts.shape[0], self.query_tokens, self.keys.device
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
        return _Matches(base, lo, use, idf, hit, pages.clamp(max=n - 1), before)

    def scores(self, token_ids: torch.Tensor, starts: torch.Tensor, query_pages: torch.Tensor, n: int,
               decide: bool = False, judged: int | None = None) -> torch.Tensor:
        """Lexical scores [G, n] of pages 0..n-1 for the windows of the `query_tokens` tokens of token_ids before
        `starts` [G] (fewer at the sequence's start), each scored against the pages before its query page
        `query_pages` [G]; pages at or after it score 0. Needs `update` to have indexed n pages.
        With `near_miss_margin` set, near misses score NEAR_MISS_SCORE (module docstring): decide=True (a prompt's
        windows) judges them per window and keeps the last window's judgement in `near_misses`; decide=False (an
        answer's steps) applies the kept one."""
        if n > self.pages:
            raise ValueError(f"lexical index holds {self.pages} pages, {n} asked for")
        out = torch.zeros(starts.shape[0], n, device=self.keys.device)
        if self.keys.numel() and starts.shape[0]:
            m = self._matches(token_ids, starts, query_pages, n)
            out.scatter_add_(1, m.pages.flatten(1), (m.idf[:, :, None] * m.hit).flatten(1))
        if self.near_miss_margin is None:
            return out
        if decide:
            near = (self._near_misses(m, out, starts.to(out.device), judged) if self.keys.numel() and starts.shape[0]
                    else torch.zeros_like(out, dtype=torch.bool))
            if near.shape[0]:
                self.near_misses = near[-1]
        else:
            kept = self.near_misses[:n]
            near = F.pad(kept, (0, n - kept.numel()))[None]
        return torch.where(near, NEAR_MISS_SCORE, out)

    def _near_misses(self, m: _Matches, scores: torch.Tensor, starts: torch.Tensor,
                     judged: int | None) -> torch.Tensor:
        """[G, n] bool: the near misses of each window (module docstring)."""
        G, n = scores.shape
        page = torch.arange(n, device=scores.device)
        if judged is None:  # the pages before the question's own beginning
            own = ((starts - self.query_tokens).clamp(min=0) // self.page_size - 1).clamp(min=0)[:, None]
        else:
            own = torch.full((G, 1), judged, device=scores.device)
        outside = torch.minimum(own, m.before)  # [G, 1]: pages judged
        held = torch.searchsorted(self.keys, m.base + outside) - m.lo  # [G, grams]: outside pages holding it
        rarity = torch.log((outside.float() + 1) / (held.float() + 0.5)) * (m.use & (held > 0))
        outside_hit = m.hit & (m.pages < outside[:, :, None])
        rarest = torch.zeros_like(scores).scatter_reduce_(
            1, m.pages.flatten(1), (rarity[:, :, None] * outside_hit).flatten(1), "amax")  # [G, n]
        padded = F.pad(rarest, (1, 1))
        passage = torch.maximum(torch.maximum(padded[:, :-2], padded[:, 1:-1]), padded[:, 2:])
        candidate = page[None, :] < outside
        best = torch.where(candidate, scores, -math.inf).argmax(dim=1, keepdim=True)  # [G, 1]
        anchor = passage.gather(1, best)
        return (candidate & (rarest > 0) & ((page[None, :] - best).abs() > 1)
                & (passage < anchor - self.near_miss_margin))

SENTINEL = torch.iinfo(torch.long).max  # an unused key slot of DeviceLexicalIndex: sorts after every key


class DeviceLexicalIndex(LexicalIndex):
    """A LexicalIndex in fixed buffers, for the device decode step (device_decode.py): room for the keys of
    `capacity` pages plus one page more, unused slots holding SENTINEL (sorted last). Adding a page merges its keys
    into the buffer (`_merged`, the last page's slots, always unused, dropped); scoring reads it as LexicalIndex
    does, over `capacity` pages (a page at or after a query's page scores 0), applying the prompt's near misses.
    Both are fixed-shape device work: a CUDA graph can replay them."""

    def __init__(self, index: LexicalIndex, capacity: int):
        """From `index` (the prefill's: its pages are already indexed), with room up to `capacity` pages."""
        super().__init__(index.ngram, index.max_pages, index.page_size, index.query_tokens, index.keys.device,
                         index.near_miss_margin)
        _check_page_count(capacity)
        # the prompt's near misses in a fixed buffer (pages decoding adds are none)
        self.near_misses = F.pad(index.near_misses[:capacity], (0, capacity - min(index.near_misses.numel(), capacity)))
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


def reference_near_misses(token_ids: list[int], start: int, query_page: int, n: int, page_size: int, ngram: int,
                          max_pages: int, query_tokens: int, margin: float, best: int,
                          judged: int | None = None) -> list[bool]:
    """The near misses of one window (`LexicalIndex.scores` with near_miss_margin, and its `judged`) in plain Python
    sets, for tests, given the best page (the caller picks it among the judged pages of highest score, which float
    sums may order differently)."""
    P = page_size
    page_grams = [{tuple(token_ids[j * P + i: j * P + i + ngram]) for i in range(P - ngram + 1)} for j in range(n)]
    window = token_ids[max(start - query_tokens, 0): start]
    query = {tuple(window[i: i + ngram]) for i in range(len(window) - ngram + 1)}
    earlier = page_grams[:min(query_page, n)]
    counted = {g for g in query if 0 < sum(g in grams for grams in earlier) <= max_pages}
    own = max(max(start - query_tokens, 0) // P - 1, 0) if judged is None else judged
    outside = min(own, query_page, n)
    rarest = [0.0] * n
    for j in range(outside):
        for gram in counted & page_grams[j]:
            held = sum(gram in grams for grams in page_grams[:outside])
            rarest[j] = max(rarest[j], math.log((outside + 1) / (held + 0.5)))
    passage = [max(rarest[max(j - 1, 0): j + 2]) for j in range(n)]
    return [j < outside and rarest[j] > 0 and abs(j - best) > 1 and passage[j] < passage[best] - margin
            for j in range(n)]
