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
page's rarity is that of its rarest held window n-gram (a fact cut by a page end still holds its key's n-grams in
its two pages, those across the cut included: see below). The best page is the outside page with the highest
lexical score. A page that holds some window n-gram, lies more than one page from the best, and whose rarity is
more than `near_miss_margin` below the best's is a near miss: its lexical score becomes NEAR_MISS_SCORE, below
every page's, so the retriever cannot bring it back (it still comes in as a retrieved page's neighbour). Facts
that all hold the asked key (several values for one key) are equally rare and stay. A prompt's windows decide
for themselves (`scores(..., decide=True)`); the prompt's question, the window ending where the prompt ends (it
may end inside the last page, past every window of the prompt's groups), is judged too (`judge_question`), and
that decision is kept (`near_misses`) and applied while the answer is generated, since the answer's own words (a
first value written) would otherwise make the other values' pages look like near misses.

Hops (`hops`, off when 0). Some answers are chains: "VAR B = VAR A" several statements after "VAR A = 12345", and
the question names only the value, so only the first statement shares anything with it; refreshing the query with
each name the answer writes cannot walk the chain when the model does not write the names in the chain's order. So
the prompt's question (`judge_question`) also follows links: n-grams held by at most HOP_LINK_PAGES judged pages
(a name set in one statement and used in the next; a phrase every fact repeats is held by more). The walk starts
from the pages holding the question's links that the best passage (the run of consecutive matching pages around
the best page) lacks, when those are at most HOP_LINK_PAGES pages: the best match is then an echo of the question
(a worked example asking the same thing of another value), and they hold the part it lacks, the asked key. Else it
starts from the best passage (links it lacks spread over many pages are chance matches of prose). Each
hop follows the new links (n-grams the query has not had) within `hop_span` tokens of a link (`lexical_hop_span`,
a quarter page unless set: a statement's length), in the text around the pages reached (the statement, not the
whole page); with `hop_stops` (`lexical_hop_stops`: the ids of tokens holding a sentence end) only inside the
link's own sentence, so that the look does not reach the text around the statement, whose chance links the walk
would follow. A hop keeps the pages sharing HOP_MIN_LINKS links or more
(with their neighbours: a statement cut by a page end) whose idf sums to at least half the hop's best: the next
statement shares a whole name, prose pages and numbers share a chance n-gram or two. Each adds that idf, as if
the question held those links, but its score (with what it repeats of the question itself) rises no higher than
the pages the hop started from score (a page found through a link is no more relevant than the page that led to
it). A near miss starts no walk, but one a walk reaches is none (the next statement of a chain may repeat the
question's common words, and it names the key's variable). Like near misses, this is decided on the prompt and
kept while the answer is written.

Echoes (`echo_tokens`, off when None; needs near misses). A worked example that asks the question of another
value (RULER vt's one-shot example: its question and answer repeat ~100 tokens of the prompt's question and answer
start) is the best lexical match of the question and takes the page budget before the pages that answer it. When
the best passage lacks the question's key, which lies in at most HOP_LINK_PAGES pages elsewhere (as hops judge it),
and one of its pages, with its neighbours, repeats `echo_tokens` or more consecutive tokens of the question, every
page of that passage is a near miss. A fact rarely repeats so long a stretch of a question about it (RULER's needles
and the held-out needle formats: at most ~50 bytes), and a fact holding the key is not an echo at any length. Decided
on the prompt's question and kept while the answer is written, like near misses.

A page holds the n-grams that end in it, those begun on the page before included: a name cut by a page end is
still one of the text's n-grams, held by the page that completes it. `LexicalIndex` keeps, for the complete pages,
one sorted int64 key per (n-gram, page): the n-gram's hash in the high bits, the page in the low `PAGE_BITS`. The
pages before m that hold an n-gram are then one contiguous run of keys, found by two binary searches; scoring is
fixed-shape tensor work (searchsorted, gather, scatter_add). Reference: `reference_scores`, `reference_near_misses`,
`reference_hop_scores` and `reference_echoes` (plain Python sets), which tests compare it with.
"""
from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import RetroLMError
from .pager import page_windows

PAGE_BITS = 23  # pages per sequence < 2**23 (8.4M; 1M tokens is 16K pages of 64)
HASH_MODULUS = 549_755_813_869  # a prime below 2**39: hash << PAGE_BITS stays below 2**62
HASH_BASE = 1_000_003  # ids < 2**20 (any tokenizer's vocabulary): hash * BASE + id < 2**59, no int64 overflow
NEAR_MISS_SCORE = -1e4  # a near miss's lexical score: below every score a sum of idf (each < 20 per n-gram) reaches
HOP_LINK_PAGES = 2  # a hop follows an n-gram held by at most this many judged pages: a name set in one statement
# and used in the next, not a phrase every fact repeats
HOP_MIN_LINKS = 3  # a hop reaches a page sharing at least this many links (with its neighbours): a name a few
# tokens longer than the n-gram, not an n-gram or two that prose pages or numbers share by chance


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


def _near_in_sentence(at: torch.Tensor, sentence: torch.Tensor, span: int) -> torch.Tensor:
    """[F, L] bool: the positions within `span` of a True of `at` [F, L] in the same `sentence` [F, L] (numbered in
    order along a row). A sentence is a run of positions, so only the nearest True on either side can share one's."""
    L = at.shape[1]
    position = torch.arange(L, device=at.device).expand_as(at)
    far = L + span + 1
    before = torch.where(at, position, -far).cummax(1).values
    after = torch.where(at, position, L + far).flip(1).cummin(1).values.flip(1)

    def joined(link: torch.Tensor, gap: torch.Tensor) -> torch.Tensor:
        return (gap <= span) & (sentence.gather(1, link.clamp(0, L - 1)) == sentence)

    return joined(before, position - before) | joined(after, after - position)


def _check_page_count(pages: int) -> None:
    """A key holds its page in PAGE_BITS bits: more pages would collide."""
    if pages >= 1 << PAGE_BITS:
        raise RetroLMError(f"lexical page scores index at most {(1 << PAGE_BITS) - 1} pages, {pages} asked for; set "
                           "lexical_weight=0 for inputs or stores this large.")


@dataclass
class _Matches:
    """Per window [G] and distinct window n-gram [grams]: its hash in the key's high bits (`base`), whether it is
    one (`distinct`: each valid n-gram once), where its keys start (`lo`), whether it counts (`use`) and its idf;
    per (n-gram, holder) [G, grams, max_pages] whether that holder is a real one (`hit`) and its page; the count
    of pages before the query page (`before` [G, 1])."""

    base: torch.Tensor
    distinct: torch.Tensor
    lo: torch.Tensor
    use: torch.Tensor
    idf: torch.Tensor
    hit: torch.Tensor
    pages: torch.Tensor
    before: torch.Tensor


class LexicalIndex:
    """The n-grams of every complete page of one sequence, for `scores` (see the module docstring)."""

    def __init__(self, ngram: int, max_pages: int, page_size: int, query_tokens: int | None = None, device=None,
                 near_miss_margin: float | None = None, hops: int = 0, hop_span: int | None = None,
                 hop_stops: torch.Tensor | None = None, echo_tokens: int | None = None):
        """query_tokens: how many tokens before a query's start it scores with (default page_size);
        near_miss_margin: None (off) or the rarity margin of near misses; hops: how many hops a prompt's question
        follows, hop_span: how far from a link a hop looks for the next (default a quarter page), hop_stops: [V]
        bool, the token ids that end a sentence, past which a hop does not look (None: none do); echo_tokens: None
        (off) or how many consecutive tokens of the question a page must repeat to be judged an echo of it (module
        docstring)."""
        query_tokens = page_size if query_tokens is None else query_tokens
        if ngram > page_size:
            raise ValueError(f"lexical n-grams of {ngram} tokens do not fit in pages of {page_size}")
        self.ngram, self.max_pages, self.page_size, self.query_tokens = ngram, max_pages, page_size, query_tokens
        self.keys = torch.empty(0, dtype=torch.long, device=device)  # [K] sorted (hash << PAGE_BITS) | page
        self.pages = 0  # pages indexed: 0 .. pages - 1
        self.near_miss_margin = near_miss_margin
        self.near_misses = torch.zeros(0, dtype=torch.bool, device=device)  # [pages judged] the last prompt window's
        self.hops, self._hop_span = hops, hop_span
        self.hop_stops = None if hop_stops is None else hop_stops.to(device=self.keys.device, dtype=torch.bool)
        self.hop_scores = torch.zeros(0, device=device)  # [pages judged] the last prompt window's hop pages' scores
        self.echo_tokens = echo_tokens

    @classmethod
    def from_config(cls, config, hop_stops: torch.Tensor | None = None, device=None) -> LexicalIndex:
        """The index of a RetroLMConfig's lexical knobs. hop_stops: the [V] bool table of config.lexical_hop_stops
        (`token_tables.character_table`), which hops need when the config sets stops."""
        if config.lexical_hops and config.lexical_hop_stops and hop_stops is None:
            raise RetroLMError(f"internal: lexical_hop_stops={config.lexical_hop_stops!r} needs its token table; "
                               "pass the model's (RetroLM._hop_stop_table()).")
        return cls(config.lexical_ngram, config.lexical_max_pages, config.page_size,
                   config.lexical_query_pages * config.page_size, device, config.lexical_near_miss_margin,
                   config.lexical_hops, config.lexical_hop_span, hop_stops if config.lexical_hops else None,
                   config.lexical_echo_tokens)

    def update(self, token_ids: torch.Tensor, complete_pages: int) -> None:
        """Index the pages from `self.pages` up to `complete_pages` of token_ids [>= complete_pages * P]."""
        P, first = self.page_size, self.pages
        if complete_pages > first:
            before = token_ids[first * P - self.ngram + 1: first * P] if first else None
            self.append(token_ids[first * P: complete_pages * P], before)

    def append(self, page_ids: torch.Tensor, before: torch.Tensor | None = None,
               opens: torch.Tensor | None = None) -> None:
        """Index the whole pages of page_ids [pages * P] as the pages after those indexed. A page holds the n-grams
        that end in it, those begun on the page before included (a name cut by a page end is still indexed once):
        `before` is the ngram - 1 tokens before page_ids (None: page_ids begin a text); `opens` [pages] bool marks
        pages that begin a text (a store's documents), whose first n-grams would join two texts."""
        P, first, n = self.page_size, self.pages, self.ngram
        complete_pages = first + page_ids.numel() // P
        _check_page_count(complete_pages)
        ids = page_ids.view(complete_pages - first, P).to(self.keys.device)
        tails = ids[:, P - n + 1:]  # [pages, n - 1]: what each page's next page's first n-grams begin with
        previous = torch.cat([torch.zeros_like(tails[:1]) if before is None else before.to(ids)[None], tails[:-1]])
        opened = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
        if opens is not None:
            opened |= opens.to(ids.device)
        opened[0] |= before is None
        begun_before = torch.arange(P, device=ids.device) < n - 1  # [P] n-grams holding the page before's tokens
        hashes, keep = _first_occurrences(gram_hashes(torch.cat([previous, ids], dim=1), n),
                                          ~(opened[:, None] & begun_before[None, :]))
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
        return _Matches(base, keep, lo, use, idf, hit, pages.clamp(max=n - 1), before)

    def scores(self, token_ids: torch.Tensor, starts: torch.Tensor, query_pages: torch.Tensor, n: int,
               decide: bool = False) -> torch.Tensor:
        """Lexical scores [G, n] of pages 0..n-1 for the windows of the `query_tokens` tokens of token_ids before
        `starts` [G] (fewer at the sequence's start), each scored against the pages before its query page
        `query_pages` [G]; pages at or after it score 0. Needs `update` to have indexed n pages.
        With `near_miss_margin` set, near misses score NEAR_MISS_SCORE: decide=True (a prompt's windows) judges
        each window's own; decide=False (an answer's steps) applies the prompt question's judgement, and with
        `hops` adds its hop scores (`judge_question`; module docstring)."""
        out, m = self._direct(token_ids, starts, query_pages, n)
        if self.near_miss_margin is None and not self.hops:
            return out
        if decide:
            near = torch.zeros_like(out, dtype=torch.bool)
            if self.near_miss_margin is not None and m is not None:
                near = self._near_misses(m, out, self._judged(m, starts.to(out.device), None))
        else:
            near = F.pad(self.near_misses[:n], (0, n - self.near_misses[:n].numel()))[None]
            out = out + F.pad(self.hop_scores[:n], (0, n - self.hop_scores[:n].numel()))[None]
        return torch.where(near, NEAR_MISS_SCORE, out)

    def judge_question(self, token_ids: torch.Tensor, end: int, query_page: int, n: int, judged: int | None = None,
                       page_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Judge a prompt's question, the window of the `query_tokens` tokens of token_ids before `end`, against the
        pages before `query_page`: its near misses, and the pages it reaches hop by hop with their hop scores, are
        kept (`near_misses`, `hop_scores`) for the answer's steps (`scores(..., decide=False)`). Returns the
        question's scores [n] with both applied. judged: how many pages it judges (default: those before the
        question's own beginning; a store: all); page_ids: the indexed pages' token ids, which hops read (default
        token_ids)."""
        starts = torch.tensor([end], device=token_ids.device)
        query_pages = torch.tensor([query_page], device=token_ids.device)
        out, m = self._direct(token_ids, starts, query_pages, n)
        near = torch.zeros(n, dtype=torch.bool, device=out.device)
        hop_scores = torch.zeros(n, device=out.device)
        if m is not None:
            outside = self._judged(m, starts.to(out.device), judged)
            judged_pages = int(outside[-1])
            echoes = self.near_miss_margin is not None and self.echo_tokens is not None
            # where the question's links are: read by echoes and hops alike, found once
            links = (self._question_links(m, out[0], judged_pages) if judged_pages and (echoes or self.hops)
                     else None)
            if self.near_miss_margin is not None:
                near = self._near_misses(m, out, outside)[0]
            if echoes and links is not None:
                window = token_ids[max(end - self.query_tokens, 0): end].to(out.device)
                near |= self._echoes(links, judged_pages, window, n)
            hop_scores, reached = self._hop_scores(links, out[0], judged_pages, near,
                                                   token_ids if page_ids is None else page_ids)
            near &= ~reached  # a page a walk reaches names what the key's page names
        self.near_misses, self.hop_scores = near, hop_scores
        return torch.where(near, NEAR_MISS_SCORE, out[0] + hop_scores)

    def _direct(self, token_ids: torch.Tensor, starts: torch.Tensor, query_pages: torch.Tensor,
                n: int) -> tuple[torch.Tensor, _Matches | None]:
        """The plain lexical scores [G, n] of `scores`, and the matches they come from (None: nothing to match)."""
        if n > self.pages:
            raise ValueError(f"lexical index holds {self.pages} pages, {n} asked for")
        out = torch.zeros(starts.shape[0], n, device=self.keys.device)
        if not (self.keys.numel() and starts.shape[0]):
            return out, None
        m = self._matches(token_ids, starts, query_pages, n)
        return out.scatter_add_(1, m.pages.flatten(1), (m.idf[:, :, None] * m.hit).flatten(1)), m

    def _judged(self, m: _Matches, starts: torch.Tensor, judged: int | None) -> torch.Tensor:
        """[G, 1] how many pages each window judges: those before the question's own beginning (the page before the
        window), or `judged` (a store's: all), never past its query page."""
        if judged is None:
            own = ((starts - self.query_tokens).clamp(min=0) // self.page_size - 1).clamp(min=0)[:, None]
        else:
            own = torch.full((starts.shape[0], 1), judged, device=starts.device)
        return torch.minimum(own, m.before)

    def _near_misses(self, m: _Matches, scores: torch.Tensor, outside: torch.Tensor) -> torch.Tensor:
        """[G, n] bool: the near misses of each window among its `outside` [G, 1] judged pages (module docstring)."""
        G, n = scores.shape
        page = torch.arange(n, device=scores.device)
        held = torch.searchsorted(self.keys, m.base + outside) - m.lo  # [G, grams]: outside pages holding it
        rarity = torch.log((outside.float() + 1) / (held.float() + 0.5)) * (m.use & (held > 0))
        outside_hit = m.hit & (m.pages < outside[:, :, None])
        rarest = torch.zeros_like(scores).scatter_reduce_(
            1, m.pages.flatten(1), (rarity[:, :, None] * outside_hit).flatten(1), "amax")  # [G, n]
        candidate = page[None, :] < outside
        best = torch.where(candidate, scores, -math.inf).argmax(dim=1, keepdim=True)  # [G, 1]
        anchor = rarest.gather(1, best)
        return (candidate & (rarest > 0) & ((page[None, :] - best).abs() > 1)
                & (rarest < anchor - self.near_miss_margin))

    def _hop_scores(self, links: tuple | None, direct: torch.Tensor, judged: int, near: torch.Tensor,
                    page_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """([n] the hop scores, [n] bool the pages the walk reached) of a question whose direct scores are `direct`
        [n], its links `links` (`_question_links` over the `judged` pages; None: none judged) (module docstring)."""
        n = near.numel()
        scores = torch.zeros(n, device=self.keys.device)
        reached = torch.zeros(n, dtype=torch.bool, device=scores.device)
        if not self.hops or links is None:
            return scores, reached
        seen, pages, grams, passage, lacking, focused = links
        keep = ~near[pages] & (lacking if focused else passage[pages])
        pages, grams = pages[keep], grams[keep]
        reached[pages] = True
        cap = direct[pages].max() if pages.numel() else None  # no page scores above the pages that led to it
        for _ in range(self.hops):
            if not pages.numel():
                break
            start = torch.zeros(n, dtype=torch.bool, device=scores.device)
            start[pages] = True
            terms = self._near_links(page_ids, pages, grams)
            terms = terms[~torch.isin(terms, seen)]
            seen = torch.cat([seen, terms])
            pages, grams, idf = self._linked(terms, judged)
            keep = ~reached[pages]
            pages, grams, idf = pages[keep], grams[keep], idf[keep]
            linked = torch.zeros_like(scores).scatter_add_(0, pages, idf)
            strong = self._strong(pages, idf, linked, start)
            pages, grams = pages[strong], grams[strong]
            hop = torch.zeros_like(scores)
            # capped on the page's whole score: a page that also repeats some of the question's words must not
            # outrank the page that led to it
            hop[pages] = torch.minimum(linked[pages], (cap - direct[pages]).clamp(min=0))
            scores += hop
            if pages.numel():
                cap = torch.minimum(cap, (direct + hop)[pages].max())
            reached[pages] = True
        return scores, reached

    def _question_links(self, m: _Matches, direct: torch.Tensor, judged: int):
        """Where the question's links (n-grams held by at most HOP_LINK_PAGES of the `judged` pages) are: (its
        distinct n-grams [S], the (page [M], n-gram [M]) of each link's holders, the best passage [judged] bool,
        [M] bool the links the best passage lacks, and whether those lie in at most HOP_LINK_PAGES pages: then the
        best passage lacks the question's key, which is held in one place, not matched by chance)."""
        seen = (m.base[-1][m.distinct[-1]] >> PAGE_BITS).unique()
        pages, grams, _ = self._linked(seen, judged)
        passage = self._best_passage(direct[:judged])
        lacking = ~passage[pages] & ~torch.isin(grams, grams[passage[pages]])
        focused = 0 < pages[lacking].unique().numel() <= HOP_LINK_PAGES
        return seen, pages, grams, passage, lacking, focused

    def _echoes(self, links: tuple, judged: int, window: torch.Tensor, n: int) -> torch.Tensor:
        """[n] bool: the pages of the best passage, when one of them repeats `echo_tokens` or more consecutive tokens
        of the question `window` (with its judged neighbours: a run cut by a page end) while the question's key lies
        elsewhere (`links`: `_question_links` over the `judged` pages; module docstring)."""
        _, _, _, passage, _, focused = links
        echo = torch.zeros(n, dtype=torch.bool, device=passage.device)
        if not focused or window.numel() < self.ngram:
            return echo
        candidates = passage.nonzero()[:, 0]  # [C]
        if self._repeated_runs(window, candidates, judged).max() >= self.echo_tokens:
            echo[candidates] = True
        return echo

    def _repeated_runs(self, window: torch.Tensor, pages: torch.Tensor, judged: int) -> torch.Tensor:
        """[C] the longest run of consecutive tokens of `window` [L] whose every n-gram one of `pages` [C] (each
        with its neighbours among the `judged` pages) holds, in tokens (0: none held)."""
        hashes = gram_hashes(window, self.ngram)  # [grams], in the window's order
        around = pages[:, None] + torch.arange(-1, 2, device=pages.device)  # [C, 3]
        inside = (around >= 0) & (around < judged)
        keys = (hashes[None, None, :] << PAGE_BITS) | around.clamp(min=0)[:, :, None]  # [C, 3, grams]
        at = torch.searchsorted(self.keys, keys).clamp(max=max(self.keys.numel() - 1, 0))
        held = ((self.keys[at] == keys) & inside[:, :, None]).any(dim=1)  # [C, grams]
        position = torch.arange(hashes.numel(), device=pages.device)
        gap = torch.where(held, -1, position).cummax(dim=1).values  # the last position not held, so far
        run = (position - gap).max(dim=1).values  # n-grams in the longest held run
        return torch.where(run > 0, run + self.ngram - 1, 0)

    @staticmethod
    def _strong(pages: torch.Tensor, idf: torch.Tensor, linked: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
        """[M] bool: which (page, link) pairs of a hop a statement naming the last one makes, not a chance n-gram:
        the page shares HOP_MIN_LINKS links or more, counted with its neighbours' (a statement cut by a page end),
        and its links' idf `linked` [n] is at least half the hop's best, the bar set apart from the pages beside the
        hop's `start` [n] (the rest of a cut statement, which holds more of it)."""
        count = torch.zeros_like(linked).scatter_add_(0, pages, torch.ones_like(idf))
        count = F.conv1d(count[None, None], torch.ones(1, 1, 3, device=count.device), padding=1)[0, 0]
        beside = F.max_pool1d(start[None, None].float(), 3, stride=1, padding=1)[0, 0] > 0
        apart = torch.where(beside, 0.0, linked)
        bar = (apart.max() if apart.any() else linked.max()) / 2 - 1e-4  # a tie (2 links of 4) is kept
        return (linked[pages] >= bar) & (count[pages] >= HOP_MIN_LINKS)

    @staticmethod
    def _best_passage(direct: torch.Tensor) -> torch.Tensor:
        """[judged] bool: the run of consecutive pages matching the window (direct score > 0) around the best."""
        best = int(direct.argmax())
        page = torch.arange(direct.numel(), device=direct.device)
        unmatched = page[direct <= 0]
        left = unmatched[unmatched < best].max() if (unmatched < best).any() else -1
        right = unmatched[unmatched > best].min() if (unmatched > best).any() else direct.numel()
        return (page > left) & (page < right)

    def _linked(self, hashes: torch.Tensor, judged: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(page, hash, idf) [M] of each judged page holding one of the distinct n-gram `hashes` that at most
        HOP_LINK_PAGES judged pages hold (a link)."""
        base = hashes << PAGE_BITS
        lo, hi = torch.searchsorted(self.keys, base), torch.searchsorted(self.keys, base + judged)
        held = hi - lo
        run = lo[:, None] + torch.arange(HOP_LINK_PAGES, device=hashes.device)  # [T, HOP_LINK_PAGES]
        hit = (held[:, None] <= HOP_LINK_PAGES) & (run < hi[:, None])
        pages = self.keys[run.clamp(max=max(self.keys.numel() - 1, 0))] & ((1 << PAGE_BITS) - 1)
        idf = torch.log(torch.tensor(judged + 1.0, device=hashes.device) / (held.float() + 0.5))
        return pages[hit], hashes[:, None].expand_as(hit)[hit], idf[:, None].expand_as(hit)[hit]

    def _near_links(self, page_ids: torch.Tensor, pages: torch.Tensor, links: torch.Tensor) -> torch.Tensor:
        """The distinct n-grams within `hop_span` tokens of an occurrence of a `links` n-gram, in its sentence when
        `hop_stops` is set (an n-gram's sentence is its first token's), in the text around `pages` (each page with
        its two neighbours: a statement cut by a page end stays whole)."""
        P, n = self.page_size, self.ngram
        pages = pages.unique()
        positions = (pages[:, None] - 1) * P + torch.arange(3 * P, device=pages.device)  # [F, 3P]
        inside = (positions >= 0) & (positions < page_ids.numel())
        ids = page_ids.to(pages.device)[positions.clamp(0, max(page_ids.numel() - 1, 0))].long()
        hashes = gram_hashes(ids, n)
        valid = inside.unfold(1, n, 1).all(dim=2)
        at_link = valid & torch.isin(hashes, links)
        sentence = self._sentences(ids, inside)[:, : hashes.shape[1]]
        return hashes[valid & _near_in_sentence(at_link, sentence, self.hop_span)].unique()

    def _sentences(self, ids: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
        """[F, L] each position's sentence, numbered along its row: a token that `hop_stops` marks ends its sentence
        (all one sentence without stops)."""
        if self.hop_stops is None:
            return torch.zeros_like(ids)
        stop = (self.hop_stops[ids.clamp(0, self.hop_stops.numel() - 1)] & inside).long()
        return stop.cumsum(1) - stop

    @property
    def hop_span(self) -> int:
        """Tokens each side of a link whose n-grams the next hop follows: a statement's length, not a page's."""
        return max(self.page_size // 4 if self._hop_span is None else self._hop_span, self.ngram)


SENTINEL = torch.iinfo(torch.long).max  # an unused key slot of DeviceLexicalIndex: sorts after every key


class DeviceLexicalIndex(LexicalIndex):
    """A LexicalIndex in fixed buffers, for the device decode step (device_decode.py): room for the keys of
    `capacity` pages plus one page more, unused slots holding SENTINEL (sorted last). Adding a page merges its keys
    into the buffer (`_merged`, the last page's slots, always unused, dropped); scoring reads it as LexicalIndex
    does, over `capacity` pages (a page at or after a query's page scores 0), applying the prompt's near misses and
    hop scores. Both are fixed-shape device work: a CUDA graph can replay them."""

    def __init__(self, index: LexicalIndex, capacity: int):
        """From `index` (the prefill's: its pages are already indexed), with room up to `capacity` pages."""
        super().__init__(index.ngram, index.max_pages, index.page_size, index.query_tokens, index.keys.device,
                         index.near_miss_margin, index.hops, index._hop_span, index.hop_stops, index.echo_tokens)
        _check_page_count(capacity)
        # the prompt's near misses and hop scores in fixed buffers (pages decoding adds are neither)
        self.near_misses = F.pad(index.near_misses[:capacity], (0, capacity - min(index.near_misses.numel(), capacity)))
        self.hop_scores = F.pad(index.hop_scores[:capacity], (0, capacity - min(index.hop_scores.numel(), capacity)))
        self.per_page = self.page_size  # the n-grams that end in a page (LexicalIndex.append)
        keys = torch.full(((capacity + 1) * self.per_page,), SENTINEL, dtype=torch.long, device=index.keys.device)
        keys[: index.keys.numel()] = index.keys
        self.keys, self.pages = keys, capacity

    def add_page(self, token_ids: torch.Tensor, page: torch.Tensor, add: torch.Tensor) -> None:
        """Index page `page` [1] of token_ids where `add` [1] (a bool on the device); else leave the index as is."""
        P, n = self.page_size, self.ngram
        positions = page * P + torch.arange(1 - n, P, device=token_ids.device)  # the page and the n - 1 tokens before
        ids = token_ids[positions.clamp(min=0)][None]  # [1, P + n - 1]
        hashes, keep = _first_occurrences(gram_hashes(ids, n), (positions[:P] >= 0)[None])
        new = torch.where(keep & add, (hashes << PAGE_BITS) | page, SENTINEL)[0].sort().values
        self.keys.copy_(_merged(self.keys[: -self.per_page], new))


def reference_page_grams(token_ids: list[int], n: int, page_size: int, ngram: int,
                         opens: Collection[int] = ()) -> list[set[tuple[int, ...]]]:
    """The n-grams each of pages 0..n-1 holds (`LexicalIndex.append`) as sets, for tests: those ending in it, begun
    on the page before unless the page begins a text (page 0 and the pages `opens`)."""
    P = page_size
    return [{tuple(token_ids[i: i + ngram])
             for i in range(j * P - (0 if j == 0 or j in opens else ngram - 1), (j + 1) * P - ngram + 1)}
            for j in range(n)]


def reference_scores(token_ids: list[int], starts: list[int], query_pages: list[int], n: int, page_size: int,
                     ngram: int, max_pages: int, query_tokens: int | None = None,
                     opens: Collection[int] = ()) -> list[list[float]]:
    """`LexicalIndex.scores` in plain Python sets, for tests: the same rule, no hashing."""
    P = page_size
    W = P if query_tokens is None else query_tokens
    page_grams = reference_page_grams(token_ids, n, P, ngram, opens)
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
                          judged: int | None = None, opens: Collection[int] = ()) -> list[bool]:
    """The near misses of one window (`LexicalIndex.scores` with near_miss_margin, and its `judged`) in plain Python
    sets, for tests, given the best page (the caller picks it among the judged pages of highest score, which float
    sums may order differently)."""
    P = page_size
    page_grams = reference_page_grams(token_ids, n, P, ngram, opens)
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
    return [j < outside and rarest[j] > 0 and abs(j - best) > 1 and rarest[j] < rarest[best] - margin
            for j in range(n)]


def _reference_links(page_grams: list[set], terms, judged: int) -> list[tuple[int, tuple, float]]:
    """(page, n-gram, idf) of the judged pages holding a link (an n-gram held by at most HOP_LINK_PAGES of them)
    among `terms`, for the references."""
    found = []
    for gram in terms:
        holders = [j for j in range(judged) if gram in page_grams[j]]
        if len(holders) <= HOP_LINK_PAGES:
            found += [(j, gram, math.log((judged + 1) / (len(holders) + 0.5))) for j in holders]
    return found


def _reference_question_links(page_grams: list[set], seen: set, direct: list[float], judged: int):
    """`LexicalIndex._question_links` in plain Python: (the best passage's pages, the (page, n-gram) links it
    lacks, whether those lie in at most HOP_LINK_PAGES pages)."""
    best = max(range(judged), key=lambda j: (direct[j], -j))  # the first of the highest
    left, right = best, best
    while left > 0 and direct[left - 1] > 0:
        left -= 1
    while right + 1 < judged and direct[right + 1] > 0:
        right += 1
    passage = set(range(left, right + 1))
    links = _reference_links(page_grams, seen, judged)
    held_by_passage = {gram for j, gram, _ in links if j in passage}
    lacking = [(j, gram) for j, gram, _ in links if j not in passage and gram not in held_by_passage]
    return passage, lacking, 0 < len({j for j, _ in lacking}) <= HOP_LINK_PAGES


def reference_repeated_runs(token_ids: list[int], window: list[int], judged: int, page_size: int, ngram: int,
                            opens: Collection[int] = ()) -> list[int]:
    """`LexicalIndex._repeated_runs` in plain Python sets, for tests and bench/echo_runs.py: per judged page, the
    longest run of consecutive `window` tokens whose every n-gram the page or a judged neighbour holds, in tokens
    (0: none held)."""
    page_grams = reference_page_grams(token_ids, judged, page_size, ngram, opens)
    grams = [tuple(window[i: i + ngram]) for i in range(len(window) - ngram + 1)]
    runs = []
    for j in range(judged):
        held = set().union(*page_grams[max(j - 1, 0): j + 2])
        longest = run = 0
        for gram in grams:
            run = run + 1 if gram in held else 0
            longest = max(longest, run)
        runs.append(longest + ngram - 1 if longest else 0)
    return runs


def reference_echoes(token_ids: list[int], window: list[int], direct: list[float], judged: int, page_size: int,
                     ngram: int, echo_tokens: int, opens: Collection[int] = ()) -> list[bool]:
    """The echoes of one question `window` (`LexicalIndex.judge_question` with echo_tokens) in plain Python, for
    tests, given its direct scores of the n pages: the best passage's pages, when one of them, with its judged
    neighbours, holds every n-gram of a run of `echo_tokens` or more consecutive window tokens and the key is
    elsewhere."""
    n = len(direct)
    page_grams = reference_page_grams(token_ids, n, page_size, ngram, opens)
    grams = [tuple(window[i: i + ngram]) for i in range(len(window) - ngram + 1)]
    if not judged or not grams:
        return [False] * n
    passage, _, focused = _reference_question_links(page_grams, set(grams), direct, judged)
    if not focused:
        return [False] * n
    runs = reference_repeated_runs(token_ids, window, judged, page_size, ngram, opens)
    echo = max(runs[j] for j in passage) >= echo_tokens
    return [echo and j in passage for j in range(n)]


def reference_hop_scores(page_ids: list[int], window: list[int], direct: list[float], judged: int, near: list[bool],
                         page_size: int, ngram: int, hops: int, opens: Collection[int] = (),
                         hop_span: int | None = None, stops: Collection[int] = ()) -> tuple[list[float], list[bool]]:
    """The hop scores of one question `window` (`LexicalIndex.judge_question` with hops) and the pages its walk
    reached, in plain Python sets, for tests, given its direct scores of the n pages (which decide the best passage)
    and its near misses before the walk; `stops`: the token ids that end a sentence (`hop_stops`)."""
    P, n = page_size, len(direct)
    page_grams = reference_page_grams(page_ids, n, P, ngram, opens)

    scores = [0.0] * n
    if not hops or not judged:
        return scores, [False] * n
    seen = {tuple(window[i: i + ngram]) for i in range(len(window) - ngram + 1)}
    passage, lacking, focused = _reference_question_links(page_grams, seen, direct, judged)
    frontier = [(j, gram) for j, gram in (lacking if focused else
                                          [(j, gram) for j, gram, _ in _reference_links(page_grams, seen, judged)
                                           if j in passage])
                if not near[j]]
    reached = {j for j, _ in frontier}
    cap = max((direct[j] for j in reached), default=0.0)
    span = max(P // 4 if hop_span is None else hop_span, ngram)
    for _ in range(hops):
        frontier_before = frontier
        grams, terms = {gram for _, gram in frontier}, set()
        for j in {j for j, _ in frontier}:
            text = page_ids[max((j - 1) * P, 0): (j + 2) * P]
            at = [tuple(text[i: i + ngram]) for i in range(len(text) - ngram + 1)]
            sentence = [sum(token in stops for token in text[:i]) for i in range(len(text))]
            hits = [i for i, gram in enumerate(at) if gram in grams]
            terms |= {gram for i, gram in enumerate(at)
                      if any(abs(i - k) <= span and sentence[i] == sentence[k] for k in hits)}
        terms -= seen
        seen |= terms
        frontier = [(j, gram, idf) for j, gram, idf in _reference_links(page_grams, terms, judged)
                    if j not in reached]
        linked, count = {}, {}
        for j, _, idf in frontier:
            linked[j] = linked.get(j, 0.0) + idf
            count[j] = count.get(j, 0) + 1
        starts = {j for j, _ in frontier_before}
        apart = [v for j, v in linked.items() if all(abs(j - k) > 1 for k in starts)]
        strong = {j for j in linked if linked[j] >= max(apart or linked.values()) / 2 - 1e-4
                  and sum(count.get(k, 0) for k in (j - 1, j, j + 1)) >= HOP_MIN_LINKS}
        for j in strong:
            scores[j] = min(linked[j], max(cap - direct[j], 0.0))
        cap = min(cap, max((direct[j] + scores[j] for j in strong), default=cap))
        reached |= strong
        frontier = [(j, gram) for j, gram, _ in frontier if j in strong]
    return scores, [j in reached for j in range(n)]
