"""Toys for the lexical-score tests: prompts holding a chain of statements for hops to walk."""
from __future__ import annotations

import torch

from retrolm.lexical import PAGE_BITS, SENTINEL, LexicalIndex, gram_hashes


def chain_prompt(length: int, seed: int, symbols: int = 4, question_at: int = 20) -> torch.Tensor:
    """[1, length] ids: filler of `symbols` symbols (at most 40) with a chain of statements "9 NAME VALUE" /
    "9 NAME NAME-before" (names of 6 unique tokens) spread through it, and a question naming the value beginning
    `question_at` tokens before the end (by default inside the window before the prompt's last page)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, symbols, (length,), generator=gen)
    names = [list(range(40 + 6 * k, 46 + 6 * k)) for k in range(4)]
    statements = [[9, *names[0], 90, 91]] + [[9, *names[k], *names[k - 1]] for k in range(1, 4)]
    for k, statement in enumerate(statements):
        at = length * (k + 1) // 6
        ids[at:at + len(statement)] = torch.tensor(statement)
    ids[length - question_at:length - question_at + 3] = torch.tensor([5, 90, 91])
    return ids[None]


def held(index: LexicalIndex) -> set[tuple[int, int]]:
    """(page, n-gram hash) of every key of an index."""
    keys = index.keys[index.keys != SENTINEL]
    return set(zip((keys & ((1 << PAGE_BITS) - 1)).tolist(), (keys >> PAGE_BITS).tolist()))


def hashed(page_grams: list[set[tuple[int, ...]]]) -> set[tuple[int, int]]:
    """(page, n-gram hash) of reference_page_grams' sets, to compare with `held`."""
    return {(j, int(gram_hashes(torch.tensor(gram), len(gram))))
            for j, grams in enumerate(page_grams) for gram in grams}
