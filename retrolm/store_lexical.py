"""Lexical page scores across a page store: the rule used within one input (lexical.py), every stored page earlier.

A model with `lexical_weight` > 0 adds to a page's bookmark-key score `lexical_weight` times the idf of the
distinct token n-grams of the question window that the page repeats, as it does within one input, with every page
of the store counting as an earlier page (N and df count stored pages). The question window is the last
`lexical_query_pages` x page_size tokens of the question prompt.

With `lexical_near_miss_margin` set, the question judges near misses among all stored pages as a window judges the
pages before it (lexical.py; a page's neighbours there are its store rows, which at a document's end are the next
document's first page); a near miss scores NEAR_MISS_SCORE. With `lexical_hops`, the pages the question reaches hop by
hop score as within one input (their text read from the stored pages, which the index then keeps).

The combined top k is found exactly from two short lists: the key index's top k + m (m: the near misses), and the
pages sharing at least one counted n-gram with the question (lexical score != 0; at most `lexical_max_pages` per
n-gram). A page in neither list scores its key score alone, which is at most the (k + m)-th best key score, itself
at most the combined score of each page of the first list that is no near miss, k of them at least: so no such page
can displace one of those. The key scores of the second list's pages are computed exactly from their indexed keys.
"""
from __future__ import annotations

import torch

from .lexical import NEAR_MISS_SCORE, LexicalIndex
from .store_search import rows_of


class StoreLexicalIndex:
    """The n-grams of every page of a store (documents' token ids in store order), for `scores`."""

    def __init__(self, token_ids: dict[str, torch.Tensor], config, hop_stops: torch.Tensor | None = None):
        """token_ids: doc id -> its stored token ids [pages * page_size] (pages padded whole), in store order;
        hop_stops: the model's table of config.lexical_hop_stops (RetroLM._hop_stop_table())."""
        self.rows: list[tuple[str, int]] = []
        self.page_ids = torch.zeros(0, dtype=torch.int32)  # every stored page's token ids, for hops (else empty)
        self.index = LexicalIndex.from_config(config, hop_stops)
        self.extend(token_ids)

    def extend(self, token_ids: dict[str, torch.Tensor]) -> None:
        """Index documents added after those indexed (same form as __init__'s). Document frequencies are counted
        when a question is scored, so the pages indexed before need no change."""
        if token_ids:
            stored = torch.cat([ids.long() for ids in token_ids.values()])
            pages = {doc_id: ids.numel() // self.index.page_size for doc_id, ids in token_ids.items()}
            opens = torch.zeros(sum(pages.values()), dtype=torch.bool)
            opens[torch.tensor(list(pages.values())).cumsum(0)[:-1]] = True  # no n-gram joins two documents
            self.index.append(stored, opens=opens)  # may refuse: rows after
            if self.index.hops:
                self.page_ids = torch.cat([self.page_ids, stored.int()])
            self.rows += rows_of(pages)

    def scores(self, question_ids: torch.Tensor) -> dict[tuple[str, int], float]:
        """(document, page) -> lexical score != 0 (a near miss: NEAR_MISS_SCORE), for the question prompt's ids [T]."""
        n = len(self.rows)
        ids = question_ids.cpu().long()
        row = self.index.judge_question(ids, ids.numel(), n, n, judged=n, page_ids=self.page_ids)
        hits = row.nonzero().flatten().tolist()
        return {self.rows[i]: float(row[i]) for i in hits}


def near_miss_count(lexical: dict[tuple[str, int], float]) -> int:
    """How many of `StoreLexicalIndex.scores`' pages are near misses: the key index's seeds must reach that many
    further for the combined top k to stay exact (module docstring)."""
    return sum(score <= NEAR_MISS_SCORE for score in lexical.values())


def combined_top(seeds: list[tuple[str, int, float]], lexical: dict[tuple[str, int], float],
                 key_scores, weight: float, k: int) -> list[tuple[str, int, float]]:
    """The k best (document, page, key score + weight x lexical score), best first, from the key index's top
    `seeds` and the lexically matched pages `lexical` (module docstring); `key_scores(pages)` gives the exact key
    scores of pages the seeds lack."""
    keyed = {(doc_id, page): score for doc_id, page, score in seeds}
    missing = [page for page in lexical if page not in keyed]
    keyed.update(zip(missing, key_scores(missing)))
    combined = {page: score + weight * lexical.get(page, 0.0) for page, score in keyed.items()}
    best = sorted(combined.items(), key=lambda item: -item[1])[:k]
    return [(doc_id, page, score) for (doc_id, page), score in best]
