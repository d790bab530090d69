"""Lexical page scores across a page store: the rule used within one input (lexical.py), every stored page earlier.

A model with `lexical_weight` > 0 adds to a page's bookmark-key score `lexical_weight` times the idf of the
distinct token n-grams of the question window that the page repeats, as it does within one input, with every page
of the store counting as an earlier page (N and df count stored pages). The question window is the last
`lexical_query_pages` x page_size tokens of the question prompt.

The combined top k is found exactly from two short lists: the key index's top k, and the pages sharing at least one
counted n-gram with the question (lexical score > 0; at most `lexical_max_pages` per n-gram). A page in neither list
scores its key score alone, which is at most the k-th best key score, itself at most the combined score of each
page in the first list: so no such page can displace one of them. The key scores of the second list's pages are
computed exactly from their indexed keys.
"""
from __future__ import annotations

import torch

from .lexical import LexicalIndex
from .store_search import rows_of


class StoreLexicalIndex:
    """The n-grams of every page of a store (documents' token ids in store order), for `scores`."""

    def __init__(self, token_ids: dict[str, torch.Tensor], config):
        """token_ids: doc id -> its stored token ids [pages * page_size] (pages padded whole), in store order."""
        P = config.page_size
        self.rows: list[tuple[str, int]] = []
        self.index = LexicalIndex(config.lexical_ngram, config.lexical_max_pages, P,
                                  config.lexical_query_pages * P)
        self.extend(token_ids)

    def extend(self, token_ids: dict[str, torch.Tensor]) -> None:
        """Index documents added after those indexed (same form as __init__'s). Document frequencies are counted
        when a question is scored, so the pages indexed before need no change."""
        if token_ids:
            self.index.append(torch.cat([ids.long() for ids in token_ids.values()]))  # may refuse: rows after
            self.rows += rows_of({doc_id: ids.numel() // self.index.page_size for doc_id, ids in token_ids.items()})

    def scores(self, question_ids: torch.Tensor) -> dict[tuple[str, int], float]:
        """(document, page) -> lexical score > 0, for the question prompt's ids [T]."""
        n = len(self.rows)
        ids = question_ids.cpu().long()
        row = self.index.scores(ids, torch.tensor([ids.numel()]), torch.tensor([n]), n)[0]
        hits = row.nonzero().flatten().tolist()
        return {self.rows[i]: float(row[i]) for i in hits}


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
