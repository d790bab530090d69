"""Echoes of the question (lexical_echo_tokens): a passage repeating a long stretch of the question while the key
is held elsewhere is a near miss; against the set reference and on hand-built cases."""
import random

import pytest
import torch

from retrolm import RetroLM
from retrolm.errors import RetroLMError
from retrolm.lexical import NEAR_MISS_SCORE, LexicalIndex, reference_echoes, reference_scores


def _echo_case(seed: int):
    """Random filler from a small vocabulary (common n-grams), a question window of rarer tokens naming a value, an
    earlier copy of part of that window with another value (an echo, sometimes cut short or absent), and a page
    holding the asked value (sometimes absent, sometimes next to the echo)."""
    rng = random.Random(seed)
    P = rng.choice([8, 16, 32])
    ngram = rng.randint(2, 4)
    W = rng.choice([2 * P, 3 * P])
    value = [rng.randrange(500, 600) for _ in range(rng.randint(ngram, 2 * ngram))]
    words = [rng.randrange(100, 400) for _ in range(W - len(value) - 2)]
    cut = rng.randint(1, len(words))
    question = words[:cut] + value + words[cut:]
    filler = lambda tokens: [rng.randrange(40) for _ in range(tokens)]  # noqa: E731
    ids = filler(rng.randint(P, 4 * P))
    if rng.random() < 0.85:  # the echo: the question with another value, whole or a stretch of it
        other = [rng.randrange(600, 700) for _ in value]
        echo = words[:cut] + other + words[cut:]
        a = rng.randint(0, len(echo) // 2)
        ids += echo[a: rng.randint(a + 1, len(echo))] + filler(rng.randint(0, 3 * P))
    if rng.random() < 0.85:  # the key's page
        ids += filler(rng.randint(0, 2 * P)) + value + filler(rng.randint(1, 3 * P))
    ids += filler(rng.randint(2 * P, 4 * P)) + question
    return ids, P, ngram, W


@pytest.mark.parametrize("seed", range(50))
def test_echoes_equal_the_set_reference(seed):
    """The kept near misses of the prompt's question are the plain near misses plus the set reference's echoes, at
    several run lengths; the window's scores are NEAR_MISS_SCORE there and plain elsewhere."""
    ids, P, ngram, W = _echo_case(seed)
    rng = random.Random(seed)
    n, end = len(ids) // P, len(ids)
    echo_tokens = rng.choice([ngram, P // 2, P, 2 * P])
    margin = rng.choice([0.0, 0.7])
    index = LexicalIndex(ngram, 1000, P, W, near_miss_margin=margin, echo_tokens=echo_tokens)
    index.update(torch.tensor(ids), n)
    got = index.judge_question(torch.tensor(ids), end, n, n)
    plain_index = LexicalIndex(ngram, 1000, P, W, near_miss_margin=margin)
    plain_index.update(torch.tensor(ids), n)
    plain_index.judge_question(torch.tensor(ids), end, n, n)
    judged = min(max(max(end - W, 0) // P - 1, 0), n)
    direct = reference_scores(ids, [end], [n], n, P, ngram, 1000, W)[-1]
    echoes = reference_echoes(ids, ids[end - W: end], direct, judged, P, ngram, echo_tokens)
    expected = [miss or echo for miss, echo in zip(plain_index.near_misses.tolist(), echoes)]
    assert index.near_misses.tolist() == expected
    kept = [j for j in range(n) if not expected[j]]
    torch.testing.assert_close(got[kept], torch.tensor(direct)[kept], rtol=1e-4, atol=1e-4)
    assert (got[[j for j in range(n) if expected[j]]] == NEAR_MISS_SCORE).all()


def _worked_example(fact_page_holds_question: bool = False):
    """Pages of 16 tokens: filler of four common tokens, a worked example (a 40-token question with value 60-63,
    pages 2-4), filler, the fact holding the asked value 90-93 (page 8), filler, and the question (value 90-93)."""
    P, common = 16, [1, 2, 3, 4]
    words = list(range(100, 136))  # the question's wording, 36 tokens

    def padded(tokens: list[int]) -> list[int]:  # to whole pages, with filler
        return tokens + (common * P)[: (-len(tokens)) % P]

    fact = (words[:18] if fact_page_holds_question else [7, 8]) + [90, 91, 92, 93]
    ids = padded([]) + padded(common * 8) + padded(words[:18] + [60, 61, 62, 63] + words[18:])
    ids += padded(common * 12) + padded(fact) + padded(common * 12)
    ids += words[:18] + [90, 91, 92, 93] + words[18:]  # the question, 40 tokens
    return ids, P, 2, 8


def test_a_worked_example_echoing_the_question_is_a_near_miss_and_the_fact_keeps_its_score():
    """The example repeats 18 tokens of the question on each side of its value, and its pages outscore the fact's
    (they repeat more of the question); with echo_tokens 16 they are near misses, the fact keeps its score; with
    24 (longer than either stretch) nothing changes. The window is the question (40 tokens), and n-grams held by
    more than 4 pages (the filler's) count for nothing."""
    ids, P, echo_page, fact_page = _worked_example()
    n = len(ids) // P
    rows = {}
    for echo_tokens in (None, 16, 24):
        index = LexicalIndex(3, 4, P, 40, near_miss_margin=0.7, echo_tokens=echo_tokens)
        index.update(torch.tensor(ids), n)
        rows[echo_tokens] = index.judge_question(torch.tensor(ids), len(ids), n, n)
    assert rows[None][echo_page] > rows[None][fact_page] > 0
    assert (rows[16][echo_page: echo_page + 3] == NEAR_MISS_SCORE).all()  # the example's three pages
    assert rows[16][fact_page] == rows[None][fact_page]
    torch.testing.assert_close(rows[24], rows[None])


def test_a_fact_restating_the_question_is_no_echo_when_it_holds_the_key():
    """A fact that repeats a long stretch of the question and holds its value is the best match and lacks no key
    held elsewhere: it stays, whatever echo_tokens says."""
    ids, P, echo_page, fact_page = _worked_example(fact_page_holds_question=True)
    n = len(ids) // P
    index = LexicalIndex(3, 4, P, 40, near_miss_margin=0.7, echo_tokens=8)
    index.update(torch.tensor(ids), n)
    row = index.judge_question(torch.tensor(ids), len(ids), n, n)
    assert row[fact_page] > 0 and not index.near_misses[fact_page]


@pytest.mark.parametrize("value", [0, -3, 8.5, True])
def test_echo_tokens_must_be_a_positive_integer(value):
    with pytest.raises(RetroLMError, match="lexical_echo_tokens must be an integer >= 1"):
        RetroLM.from_pretrained(lexical_echo_tokens=value)


def test_echo_tokens_need_near_misses():
    """Echo judging set with near misses off is refused when asked for, and dropped when it is the checkpoint's."""
    assert RetroLM.from_pretrained(lexical_echo_tokens=64).config.lexical_echo_tokens == 64
    assert RetroLM.from_pretrained(lexical_near_miss_margin=None).config.lexical_echo_tokens is None
    with pytest.raises(RetroLMError, match="lexical_echo_tokens=64 judges echoes as near misses, and near misses "
                                           r"are off \(lexical_near_miss_margin=None\): set lexical_near_miss_margin"):
        RetroLM.from_pretrained(lexical_near_miss_margin=None, lexical_echo_tokens=64)
