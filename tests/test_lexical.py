"""Lexical page scores (retrolm/lexical.py): the fixed-shape index against plain Python sets; the knob end to end."""
import math
import random

import pytest
import torch
from lexical_toys import chain_prompt, hashed, held
from transformers import AutoModelForCausalLM

from retrolm import RetroLM, RetroLMConfig
from retrolm.errors import RetroLMError
from retrolm.lexical import (NEAR_MISS_SCORE, DeviceLexicalIndex, LexicalIndex, _near_in_sentence, gram_hashes,
                             reference_hop_scores, reference_near_misses, reference_page_grams, reference_scores)


def _random_case(seed: int):
    rng = random.Random(seed)
    page_size = rng.choice([4, 5, 8, 16])
    ngram = rng.randint(1, min(page_size, 5))
    vocab = rng.choice([3, 7, 60, 150_000])  # few symbols: many shared n-grams; a large vocabulary: hashing
    tokens = rng.randint(page_size, 24 * page_size)
    ids = [rng.randrange(vocab) for _ in range(tokens)]
    pages = tokens // page_size
    starts = [rng.randint(0, tokens) for _ in range(rng.randint(1, 6))]
    query_pages = [min(s // page_size, pages) if rng.random() < 0.7 else rng.randint(0, pages) for s in starts]
    query_tokens = rng.choice([page_size, 2 * page_size, 3 * page_size + 1])
    return ids, page_size, ngram, rng.choice([1, 2, 5, 1000]), starts, query_pages, pages, query_tokens


@pytest.mark.parametrize("seed", range(60))
def test_scores_equal_the_set_reference_on_random_sequences(seed):
    ids, P, ngram, max_pages, starts, query_pages, n, query_tokens = _random_case(seed)
    index = LexicalIndex(ngram, max_pages, P, query_tokens)
    index.update(torch.tensor(ids), n)
    got = index.scores(torch.tensor(ids), torch.tensor(starts), torch.tensor(query_pages), n)
    expected = reference_scores(ids, starts, query_pages, n, P, ngram, max_pages, query_tokens)
    expected = torch.tensor(expected).reshape(len(starts), n)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("seed", range(10))
def test_pages_indexed_in_steps_score_as_indexed_at_once(seed):
    ids, P, ngram, max_pages, starts, query_pages, n, query_tokens = _random_case(seed)
    whole, steps = LexicalIndex(ngram, max_pages, P, query_tokens), LexicalIndex(ngram, max_pages, P, query_tokens)
    whole.update(torch.tensor(ids), n)
    for done in sorted(random.Random(seed).sample(range(n + 1), k=min(3, n + 1))) + [n]:
        steps.update(torch.tensor(ids), done)
    assert torch.equal(whole.keys, steps.keys) and steps.pages == n
    args = (torch.tensor(ids), torch.tensor(starts), torch.tensor(query_pages), n)
    assert torch.equal(whole.scores(*args), steps.scores(*args))


def test_a_pages_score_ignores_the_text_after_its_query_page():
    """Only pages before the query page count, df included: appending text changes no earlier score, so how a
    prefill is chunked cannot change a selection."""
    rng = random.Random(5)
    P, ngram = 8, 3
    ids = [rng.randrange(5) for _ in range(20 * P)]
    short, long = LexicalIndex(ngram, 4, P), LexicalIndex(ngram, 4, P)
    short.update(torch.tensor(ids[:10 * P]), 10)
    long.update(torch.tensor(ids), 20)
    starts, query_pages = torch.tensor([40, 77, 80]), torch.tensor([5, 9, 10])
    a = short.scores(torch.tensor(ids[:10 * P]), starts, query_pages, 10)
    b = long.scores(torch.tensor(ids), starts, query_pages, 20)
    assert torch.equal(a, b[:, :10]) and not b[:, 10:].any()


@pytest.mark.parametrize("seed", range(30))
def test_a_page_holds_the_ngrams_that_end_in_it(seed):
    """Indexed in steps, at once, or as texts that each begin a page (`opens`), a page holds the set reference's
    n-grams: those ending in it, begun on the page before unless it begins a text."""
    ids, P, ngram, max_pages, _, _, n, query_tokens = _random_case(seed)
    rng = random.Random(seed)
    steps = LexicalIndex(ngram, max_pages, P, query_tokens)
    for done in sorted(rng.sample(range(n + 1), k=min(3, n + 1))) + [n]:
        steps.update(torch.tensor(ids), done)
    assert held(steps) == hashed(reference_page_grams(ids, n, P, ngram))
    opens = sorted(rng.sample(range(1, n), k=min(2, n - 1))) if n > 1 else []
    texts = LexicalIndex(ngram, max_pages, P, query_tokens)
    flags = torch.zeros(n, dtype=torch.bool)
    flags[opens] = True
    texts.append(torch.tensor(ids[:n * P]), opens=flags)
    assert held(texts) == hashed(reference_page_grams(ids, n, P, ngram, opens))


@pytest.mark.parametrize("seed", range(10))
def test_a_device_index_adds_a_page_as_the_index_appends_it(seed):
    """DeviceLexicalIndex.add_page (the device decode step's) indexes a page as LexicalIndex does, and a step that
    adds none (`add` false) changes nothing."""
    ids, P, ngram, max_pages, _, _, n, query_tokens = _random_case(seed)
    first = n // 2
    prompt, whole = LexicalIndex(ngram, max_pages, P, query_tokens), LexicalIndex(ngram, max_pages, P, query_tokens)
    prompt.update(torch.tensor(ids), first)
    whole.update(torch.tensor(ids), n)
    device = DeviceLexicalIndex(prompt, n + 2)
    for page in range(first, n):
        before = device.keys.clone()
        device.add_page(torch.tensor(ids), torch.tensor([page]), torch.tensor([False]))
        assert torch.equal(device.keys, before)
        device.add_page(torch.tensor(ids), torch.tensor([page]), torch.tensor([True]))
    assert held(device) == held(whole)


def test_a_name_cut_by_a_page_end_is_found():
    """A name whose every n-gram crosses a page end is held by the page that completes it: the question naming it
    scores that page."""
    P, ngram = 8, 4
    filler = [1, 2] * (3 * P)
    ids = filler[:2 * P + 5] + [50, 51, 52, 53, 54] + filler[:2 * P - 10] + list(range(100, 100 + P))  # name: 21-25
    ids += [60, 61, 62, 50, 51, 52, 53, 54, 63]  # the question: only the name is shared
    n = len(ids) // P
    index = LexicalIndex(ngram, 64, P, 2 * P)
    index.update(torch.tensor(ids), n)
    row = index.scores(torch.tensor(ids), torch.tensor([len(ids)]), torch.tensor([n]), n)[0]
    assert row[3] > 0 and (row[:3] == 0).all()  # pages 4-5 hold the window itself


def test_the_page_repeating_the_querys_rare_text_scores_highest():
    P = 16
    filler = [1, 2, 3, 4] * 4  # the same text on every page: its n-grams are in all of them
    fact = [1, 2, 3, 4, 90, 91, 92, 93, 94, 95, 1, 2, 3, 4, 1, 2]
    ids = filler * 3 + fact + filler * 4 + [1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 92, 93, 94, 95, 1, 2]
    index = LexicalIndex(4, 2, P)
    index.update(torch.tensor(ids), len(ids) // P)
    scores = index.scores(torch.tensor(ids), torch.tensor([len(ids)]), torch.tensor([len(ids) // P]), len(ids) // P)
    # page 8 is the query window itself (the local page, attended anyway); among the others the fact's page wins
    assert int(scores[0, :8].argmax()) == 3 and scores[0, 3] > 0
    assert not scores[0, :3].any()  # the filler's n-grams are held by more pages than max_pages


def _phrase_case(seed: int):
    """`_random_case`'s shape for near misses: text of random phrases, some frequent and some rare (n-grams of many
    rarities), and noise, scored by windows late in it (many pages to judge)."""
    rng = random.Random(seed)
    page_size = rng.choice([4, 5, 8, 16])
    ngram = rng.randint(2, min(page_size, 3))
    phrases = [[rng.randrange(300) for _ in range(rng.randint(3, 6))] for _ in range(rng.randint(8, 30))]
    weights = [1 / (i + 1) ** 1.5 for i in range(len(phrases))]
    ids, length = [], rng.randint(12, 40) * page_size
    while len(ids) < length:
        ids += rng.choices(phrases, weights)[0] if rng.random() < 0.6 else [rng.randrange(300, 400)]
    pages = len(ids) // page_size
    starts = [rng.randint(len(ids) // 2, len(ids)) for _ in range(rng.randint(1, 4))]
    query_pages = [min(start // page_size, pages) for start in starts]
    query_tokens = rng.choice([page_size, 2 * page_size])
    return ids, page_size, ngram, rng.choice([3, 1000]), starts, query_pages, pages, query_tokens


@pytest.mark.parametrize("seed", range(60))
def test_near_misses_equal_the_set_reference_on_random_sequences(seed):
    """Each window's near misses (decide=True) are the set reference's, for one of the pages of highest plain score
    (float sums may order equal sets of n-grams differently); the other pages keep their plain scores."""
    ids, P, ngram, max_pages, starts, query_pages, n, query_tokens = (_phrase_case if seed % 3 else _random_case)(seed)
    margin = random.Random(seed).choice([0.0, 0.3, 0.7] if seed % 3 else [0.0, 2.0])
    index = LexicalIndex(ngram, max_pages, P, query_tokens, near_miss_margin=margin)
    index.update(torch.tensor(ids), n)
    got = index.scores(torch.tensor(ids), torch.tensor(starts), torch.tensor(query_pages), n, decide=True)
    plain = reference_scores(ids, starts, query_pages, n, P, ngram, max_pages, query_tokens)
    for row, (start, query_page) in enumerate(zip(starts, query_pages)):
        near = (got[row] == NEAR_MISS_SCORE).tolist()
        outside = min(max(max(start - query_tokens, 0) // P - 1, 0), query_page, n)
        top = max(plain[row][:outside], default=0.0)
        bests = [j for j in range(outside) if plain[row][j] >= top - 1e-4] or [0]
        assert any(near == reference_near_misses(ids, start, query_page, n, P, ngram, max_pages, query_tokens, margin,
                                                 best) for best in bests)
        kept = [j for j in range(n) if not near[j]]
        torch.testing.assert_close(got[row, kept], torch.tensor(plain[row])[kept], rtol=1e-5, atol=1e-5)
    if n:  # the question judged where the last window ends is that window, judged alike, and kept
        question = index.judge_question(torch.tensor(ids), starts[-1], query_pages[-1], n)
        assert torch.equal(question, got[-1]) and torch.equal(index.near_misses, got[-1] == NEAR_MISS_SCORE)


def _same_shape_facts(P: int = 8):
    """Token ids of pages of filler (unique tokens), facts "template + key" (8 tokens, one page, its value on the
    next page) for the asked key twice and six other keys, then a question repeating the template and the asked
    key; (ids, pages of the asked key's facts, pages of the other keys' facts)."""
    gen = torch.Generator().manual_seed(0)
    fresh = iter(torch.randperm(50_000, generator=gen).add(1000).tolist())
    filler = lambda pages: [next(fresh) for _ in range(pages * P)]  # noqa: E731
    template = [100, 101, 102, 103, 104]
    keys = [[110 + 10 * k, 111 + 10 * k, 112 + 10 * k] for k in range(7)]  # key 0 is asked
    ids, asked, others = filler(1), [], []
    for key in [0, 1, 2, 3, 0, 4, 5, 6]:
        (asked if key == 0 else others).append(len(ids) // P)
        ids += template + keys[key] + filler(1) + filler(2)  # fact, its value page, two filler pages
    ids += filler(2) + filler(1)[:3] + template + keys[0] + filler(1)[:6]  # the question: 2 pages of window
    return ids, asked, others


def test_the_other_keys_facts_are_near_misses_and_the_asked_keys_are_not():
    ids, asked, others = _same_shape_facts()
    P, n = 8, len(ids) // 8
    plain, judged = LexicalIndex(3, 64, P, 2 * P), LexicalIndex(3, 64, P, 2 * P, near_miss_margin=0.7)
    for index in (plain, judged):
        index.update(torch.tensor(ids), n)
    args = (torch.tensor(ids), torch.tensor([n * P]), torch.tensor([n]), n)
    before, after = plain.scores(*args)[0], judged.scores(*args, decide=True)[0]
    assert all(before[page] > 0 for page in asked + others)  # every fact repeats the question's template
    near = (after == NEAR_MISS_SCORE).nonzero().flatten().tolist()
    assert near == others  # the other keys' facts only; the asked key's both stay, and no page without a match
    assert torch.equal(after[asked], before[asked])


def test_an_answer_keeps_the_prompts_near_misses():
    """Steps after the prompt (decide=False) apply the prompt's judgement, pages indexed later being none, whatever
    the answer's words; a device index starts from it and scores the same."""
    ids, asked, others = _same_shape_facts()
    P, n = 8, len(ids) // 8
    index = LexicalIndex(3, 64, P, 2 * P, near_miss_margin=0.7)
    index.update(torch.tensor(ids), n)
    index.judge_question(torch.tensor(ids), n * P, n, n)
    answer = ids + ids[(asked[0] + 1) * P:(asked[0] + 1) * P + 5] + ids[others[0] * P:others[0] * P + 8] + [7] * 11
    index.update(torch.tensor(answer), n + 2)
    step = (torch.tensor(answer), torch.tensor([len(answer) - 1]), torch.tensor([n + 2]), n + 2)
    kept = index.scores(*step)[0]
    assert (kept == NEAR_MISS_SCORE).nonzero().flatten().tolist() == others
    assert kept[asked[1]] > 0
    device = DeviceLexicalIndex(index, n + 4)
    on_device = device.scores(step[0], step[1], step[2], n + 4)[0]
    assert torch.equal(on_device[: n + 2], kept) and not on_device[n + 2:].any()


def _chain_case(seed: int, P: int | None = None):
    """Random filler with chains of statements "set NAME VALUE" / "set NAME NAME-before" (names of random length,
    sometimes cut by a page end), a decoy chain, then a question naming the first chain's value: links of every
    hop, shared filler n-grams, and pages reached more than one way."""
    rng = random.Random(seed)
    P = P or rng.choice([16, 32, 64])
    ngram = rng.randint(2, 3)
    fresh = iter(rng.sample(range(1000, 60_000), 20_000))
    name = lambda: [next(fresh) for _ in range(rng.randint(ngram + 2, ngram + 4))]  # noqa: E731  (3+ n-grams)
    value, set_ = name(), [7]
    chains = []
    for _ in range(2):
        names = [name() for _ in range(rng.randint(2, 6))]
        chains.append([set_ + names[0] + (value if not chains else name())] +
                      [set_ + names[j] + names[j - 1] for j in range(1, len(names))])
    statements = [s for chain in chains for s in chain]
    ids = []
    for statement in statements:  # in order per chain, interleaved with filler from a small vocabulary
        ids += [rng.randrange(40) for _ in range(rng.randint(0, 3 * P))] + statement
    ids += [rng.randrange(40) for _ in range(rng.randint(2 * P, 4 * P))]
    question = [rng.randrange(40) for _ in range(rng.randint(0, P))] + value + [rng.randrange(40) for _ in range(3)]
    ids += question
    return ids, P, ngram


@pytest.mark.parametrize("seed", range(40))
def test_hop_scores_equal_the_set_reference(seed):
    """The kept hop scores of the prompt's question are the set reference's (near misses judged or not, and on
    `_phrase_case` texts too), a near miss they reach is none, and that window's scores are the plain ones plus
    them."""
    rng = random.Random(seed)
    if seed % 2:
        ids, P, ngram = _chain_case(seed)
        max_pages, query_tokens, n = 1000, rng.choice([P, 2 * P]), len(ids) // P
        starts, query_pages = [len(ids)], [n]
    else:
        ids, P, ngram, max_pages, starts, query_pages, n, query_tokens = _phrase_case(seed)
    hops, margin, span = rng.randint(1, 6), rng.choice([None, 0.7]), rng.choice([None, 1, P // 2, P])
    stops = rng.choice([[], rng.sample(sorted(set(ids)), rng.randint(1, 6))])  # sentence ends, or none
    table = torch.zeros(max(ids) + 1, dtype=torch.bool)
    table[stops] = True
    index = LexicalIndex(ngram, max_pages, P, query_tokens, near_miss_margin=margin, hops=hops, hop_span=span,
                         hop_stops=table if stops else None)
    index.update(torch.tensor(ids), n)
    got = index.judge_question(torch.tensor(ids), starts[-1], query_pages[-1], n)
    start = starts[-1]
    judged = min(max(max(start - query_tokens, 0) // P - 1, 0), query_pages[-1], n)
    walkless = LexicalIndex(ngram, max_pages, P, query_tokens, near_miss_margin=margin)
    walkless.update(torch.tensor(ids), n)
    walkless.judge_question(torch.tensor(ids), starts[-1], query_pages[-1], n)
    near = walkless.near_misses.tolist() if margin is not None else [False] * n
    plain_index = LexicalIndex(ngram, max_pages, P, query_tokens)
    plain_index.update(torch.tensor(ids), n)
    direct = plain_index.scores(torch.tensor(ids), torch.tensor(starts), torch.tensor(query_pages), n)[-1]
    expected, reached = reference_hop_scores(ids, ids[max(start - query_tokens, 0): start], direct.tolist(), judged,
                                             near, P, ngram, hops, hop_span=span, stops=stops)
    torch.testing.assert_close(index.hop_scores, torch.tensor(expected), rtol=1e-5, atol=1e-5)
    # a near miss a walk reaches is none
    assert index.near_misses.tolist() == [miss and not walked for miss, walked in zip(near, reached)]
    plain = torch.tensor(reference_scores(ids, starts, query_pages, n, P, ngram, max_pages, query_tokens)[-1])
    kept = [j for j in range(n) if not index.near_misses[j]]
    torch.testing.assert_close(got[kept], (plain + index.hop_scores)[kept], rtol=1e-4, atol=1e-4)


def test_hops_reach_a_chain_one_statement_per_hop():
    """A chain of statements, each naming the one before it, after a first one holding the asked value: the
    question's window matches only the first; each hop reaches the next statement's page, and nothing else."""
    P, gen = 32, torch.Generator().manual_seed(0)  # hop_span 8: a statement
    filler = lambda pages: torch.randint(0, 4, (pages * P,), generator=gen).tolist()  # noqa: E731  (common)
    names = [[100 + 5 * k + i for i in range(5)] for k in range(5)]  # a name shares three 3-grams
    statements = [[9] + names[0] + [90, 91, 92]] + [[9] + names[k] + names[k - 1] for k in range(1, 5)]
    ids, pages = filler(1), []
    for statement in statements:  # each statement in its own page, then three filler pages
        pages.append(len(ids) // P)
        ids += statement + [0] * (P - len(statement)) + filler(3)
    ids += filler(2) + [5, 6, 90, 91, 92, 7] + filler(1)[:2]  # the question, naming the value
    n = len(ids) // P
    reached = []
    for hops in range(5):
        index = LexicalIndex(3, 64, P, 2 * P, hops=hops)
        index.update(torch.tensor(ids), n)
        row = index.judge_question(torch.tensor(ids), len(ids), n, n)
        assert row[pages[0]] > 0  # the direct match
        reached.append(index.hop_scores.nonzero().flatten().tolist())
    assert reached == [pages[1:k + 1] for k in range(5)]


def test_a_page_a_hop_reaches_scores_no_higher_than_the_page_that_led_to_it():
    """A linked statement that also repeats a rarer word of the question would outrank the key's page with its hop
    idf added to its own score: its whole score stops at the key's page's."""
    P = 32
    filler = lambda pages: [0] * (pages * P)  # noqa: E731  (held by every page: no evidence)
    names = [[100 + 5 * k + i for i in range(5)] for k in range(3)]
    words = [50, 51, 52, 53, 54, 55]
    statements = [[9] + names[0] + [90, 91, 92, 93, 94], [9] + names[1] + names[0] + words, [9] + names[2] + names[1]]
    ids, pages = filler(1), []
    for _ in range(2):  # the words in two more pages: common words, not a link
        ids += words + filler(1)[len(words):]
    for statement in statements:
        pages.append(len(ids) // P)
        ids += statement + [0] * (P - len(statement)) + filler(3)
    ids += filler(2) + [5] + words + [6, 90, 91, 92, 93, 94, 7] + filler(1)[:2]  # names the value, and the words
    n = len(ids) // P
    direct = LexicalIndex(3, 4, P, 2 * P)
    direct.update(torch.tensor(ids), n)
    plain = direct.judge_question(torch.tensor(ids), len(ids), n, n)
    index = LexicalIndex(3, 4, P, 2 * P, hops=2)
    index.update(torch.tensor(ids), n)
    row = index.judge_question(torch.tensor(ids), len(ids), n, n)
    key, echo, last = pages
    judged = (len(ids) - 2 * P) // P - 1
    link_idf = 3 * math.log((judged + 1) / 2.5)  # names[0]'s three n-grams, each held by two pages
    assert index.hop_scores[echo] > 0 and 0 < plain[echo] < plain[key] < plain[echo] + link_idf
    assert row[key] == plain[key] and row[echo] == pytest.approx(float(row[key]))
    assert 0 < row[last] <= row[key]


def test_an_answer_keeps_the_prompts_hop_scores():
    """Steps after the prompt add the prompt's hop scores, whatever the answer's words; a device index too."""
    for seed in range(40):  # the first chain case whose walk reaches a page
        ids, P, ngram = _chain_case(seed, P=64)
        n = len(ids) // P
        index = LexicalIndex(ngram, 1000, P, 2 * P, hops=4)
        index.update(torch.tensor(ids), n)
        index.judge_question(torch.tensor(ids), len(ids), n, n)
        if index.hop_scores.any():
            break
    assert index.hop_scores.any()
    answer = ids + [3] * (3 * P)
    index.update(torch.tensor(answer), n + 2)
    step = (torch.tensor(answer), torch.tensor([len(answer) - 1]), torch.tensor([n + 2]), n + 2)
    plain = LexicalIndex(ngram, 1000, P, 2 * P)
    plain.update(torch.tensor(answer), n + 2)
    expected = plain.scores(*step)[0]
    expected[:n] += index.hop_scores
    torch.testing.assert_close(index.scores(*step)[0], expected)
    device = DeviceLexicalIndex(index, n + 4)
    on_device = device.scores(step[0], step[1], step[2], n + 4)[0]
    torch.testing.assert_close(on_device[: n + 2], expected)


def _model(tiny_dirs, **knobs):
    return RetroLM.from_pretrained(tiny_dirs["llama"], page_size=8, init_retriever=True, decode_mode="eager",
                                   attention_backend="reference", **knobs)


@pytest.mark.parametrize("scorer", ["trained", "attention"])
def test_with_every_page_selected_lexical_scores_keep_the_plain_model(tiny_dirs, scorer):
    base = AutoModelForCausalLM.from_pretrained(tiny_dirs["llama"]).eval()
    model = _model(tiny_dirs, top_k=64, lexical_weight=5.0, lexical_ngram=2, refresh_interval=3, scorer=scorer)
    ids = torch.randint(0, 256, (1, 45))
    expected = base.generate(ids, max_new_tokens=20, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert torch.equal(model.generate(input_ids=ids, max_new_tokens=20, do_sample=False, eos_token_id=None), expected)


def _retrieved(model, ids: torch.Tensor) -> tuple[int, list[int]]:
    """(position, pages) of the first decode step's retrieval for the prompt ids [T]."""
    model.generate(input_ids=ids[None], max_new_tokens=1, do_sample=False, eos_token_id=None)
    return model.last_cache.retrievals()[0]


def test_a_large_lexical_weight_retrieves_the_page_the_question_repeats(tiny_dirs):
    """The random retriever alone picks another page; a dominant lexical weight picks the page holding the query
    window's rare n-grams."""
    gen = torch.Generator().manual_seed(3)
    P = 8
    ids = torch.randint(0, 40, (24 * P,), generator=gen)
    fact = torch.arange(200, 208)
    ids[9 * P:10 * P] = fact  # page 9 holds the fact
    ids[-P - 1:-1] = fact.roll(2)  # the first decode step's window (before the last token) repeats its n-grams
    position, pages = _retrieved(_model(tiny_dirs, top_k=1, lexical_weight=0.0), ids)
    assert position == ids.shape[0] - 1 and 9 not in pages
    position, pages = _retrieved(_model(tiny_dirs, top_k=1, lexical_weight=1000.0, lexical_ngram=3), ids)
    assert position == ids.shape[0] - 1 and 9 in pages


def test_with_the_training_free_scorer_every_layer_retrieves_the_page_the_question_repeats(tiny_dirs):
    """The same input under the training-free scorer: without lexical scores some layer picks another page; with
    them every layer picks the page holding the query window's rare n-grams."""
    gen = torch.Generator().manual_seed(3)
    P = 8
    ids = torch.randint(0, 40, (24 * P,), generator=gen)
    fact = torch.arange(200, 208)
    ids[9 * P:10 * P] = fact
    ids[-P - 1:-1] = fact.roll(2)
    chosen = {}
    for weight in (0.0, 1.0):
        model = _model(tiny_dirs, top_k=1, lexical_weight=weight, lexical_ngram=3, scorer="attention",
                       scorer_query_tokens=P)
        model.generate(input_ids=ids[None], max_new_tokens=1, do_sample=False, eos_token_id=None)
        position, layers = model.last_cache.selection_log[0]
        assert position == ids.shape[0] - 1
        chosen[weight] = [set(layer.tolist()) - {0, 22} for layer in layers]  # less the sink and local pages
    assert any(pages != {9} for pages in chosen[0.0]) and all(pages == {9} for pages in chosen[1.0])


@pytest.mark.parametrize("scorer", ["trained", "attention"])
def test_prefill_chunking_does_not_change_lexically_chosen_pages(tiny_dirs, scorer):
    ids = torch.randint(0, 30, (1, 19 * 8 + 3))
    logits = []
    for chunk in (1, 4, 64):
        model = _model(tiny_dirs, top_k=2, lexical_weight=2.0, lexical_ngram=2, prefill_chunk_pages=chunk,
                       scorer=scorer)
        with torch.no_grad():
            logits.append(model(input_ids=ids).logits)
    assert (logits[0] - logits[1]).abs().max() <= 1e-4 and (logits[0] - logits[2]).abs().max() <= 1e-4


@pytest.mark.parametrize("scorer", ["trained", "attention"])
def test_prefill_chunking_does_not_change_the_pages_hops_reach(tiny_dirs, scorer):
    """Only the prompt's last window (its question) walks: a chunk ending earlier adds no hop scores to its last
    window, so chain prompts encode the same in chunks of one page, four or all. With filler of 4 symbols, pages
    tie exactly on lexical scores and on the training-free scorer's shares (every page holding all four has the
    same key bounds): tied pages are taken in page order, whatever width a chunk's end gives the scores."""
    for length, seed, symbols in ((200, 0, 30), (330, 2, 30), (330, 2, 4)):
        ids = chain_prompt(length, seed, symbols=symbols)
        logits, hop_scores = [], []
        for chunk in (1, 4, 64):
            model = RetroLM.from_pretrained(tiny_dirs["llama"], init_retriever=True, attention_backend="reference",
                                            top_k=2, lexical_weight=50.0, lexical_ngram=1, lexical_query_pages=2,
                                            lexical_hops=3, page_size=16, prefill_chunk_pages=chunk, scorer=scorer)
            with torch.no_grad():
                cache, out = model.encode(ids)
            logits.append(out)
            hop_scores.append(cache.lexical.hop_scores)
        assert hop_scores[0].any() and all(torch.equal(hop_scores[0], h) for h in hop_scores[1:])
        assert all((logits[0] - other).abs().max() <= 1e-4 for other in logits[1:])


@pytest.mark.parametrize("scorer", ["trained", "attention"])
def test_the_question_is_judged_where_the_prompt_ends(tiny_dirs, scorer):
    """A question inside the prompt's last page lies past every window of the prompt's groups: the judgement the
    answer applies is that of the window ending where the prompt ends, so its walk starts from the value it names."""
    ids = chain_prompt(16 * 15 + 10, seed=0, question_at=5)  # the value in the last page's tokens 5-7 of 10
    model = RetroLM.from_pretrained(tiny_dirs["llama"], init_retriever=True, attention_backend="reference", top_k=2,
                                    lexical_weight=50.0, lexical_ngram=1, lexical_query_pages=2, lexical_hops=3,
                                    lexical_near_miss_margin=0.7, page_size=16, scorer=scorer)
    model.generate(input_ids=ids, max_new_tokens=1, do_sample=False, eos_token_id=None)
    kept = model.last_cache.lexical
    end = ids.shape[1] - 1  # generate encodes all but the last prompt token first
    fresh = LexicalIndex(1, model.config.lexical_max_pages, 16, 32, near_miss_margin=0.7, hops=3)
    fresh.update(ids[0], end // 16)
    fresh.judge_question(ids[0], end, end // 16, end // 16)
    assert fresh.hop_scores.any()
    assert torch.equal(kept.hop_scores, fresh.hop_scores) and torch.equal(kept.near_misses, fresh.near_misses)


@pytest.mark.parametrize("knobs, words", [
    ({"lexical_weight": -1.0}, "lexical_weight must be a number >= 0"),
    ({"lexical_weight": True}, "lexical_weight must be a number >= 0"),
    ({"lexical_weight": float("nan")}, "lexical_weight must be a number >= 0"),
    ({"lexical_weight": 1.0, "lexical_ngram": 9, "page_size": 8}, "lexical_ngram (9) must fit in a page"),
    ({"lexical_ngram": 0}, "lexical_ngram must be an integer >= 1"),
    ({"lexical_max_pages": 0}, "lexical_max_pages must be an integer >= 1"),
    ({"lexical_near_miss_margin": -0.5}, "lexical_near_miss_margin must be a number >= 0, or null"),
    ({"lexical_near_miss_margin": "0.7"}, "lexical_near_miss_margin must be a number >= 0, or null"),
    ({"lexical_near_miss_margin": False}, "lexical_near_miss_margin must be a number >= 0, or null"),
    ({"lexical_near_miss_margin": float("inf")}, "lexical_near_miss_margin must be a number >= 0, or null"),
    ({"lexical_hops": -1}, "lexical_hops must be an integer >= 0"),
    ({"lexical_hops": 1.5}, "lexical_hops must be an integer >= 0"),
    ({"lexical_hop_span": 0}, "lexical_hop_span must be an integer >= 1"),
    ({"lexical_hop_span": 8.5}, "lexical_hop_span must be an integer >= 1"),
    ({"lexical_hop_stops": None}, "lexical_hop_stops must be a string of sentence-end characters"),
    ({"lexical_hop_stops": [".", "!"]}, "lexical_hop_stops must be a string of sentence-end characters"),
])
def test_bad_lexical_knobs_are_refused(knobs, words):
    with pytest.raises(RetroLMError) as error:
        RetroLMConfig(**knobs)
    assert words in str(error.value)


def test_more_pages_than_a_key_can_number_are_refused(monkeypatch):
    import retrolm.lexical as lexical

    monkeypatch.setattr(lexical, "PAGE_BITS", 3)  # 7 pages at most
    index = LexicalIndex(2, 4, 4)
    index.update(torch.arange(7 * 4), 7)
    with pytest.raises(RetroLMError, match="lexical page scores index at most 7 pages, 8 asked for"):
        index.update(torch.arange(8 * 4), 8)
    assert index.pages == 7


def test_the_training_free_scorer_asked_of_a_lexical_checkpoint_uses_lexical_scores_only_when_asked(capsys):
    """The default model's lexical weight was chosen for its trained scorer: asking for the training-free scorer
    drops it and says so in the scorer's log line; a lexical_weight passed with that scorer is kept."""
    assert RetroLM.from_pretrained().config.lexical_weight == 10.0
    capsys.readouterr()
    model = RetroLM.from_pretrained(scorer="attention")
    assert model.config.lexical_weight == 0.0
    assert "lexical_weight=10.0 belongs to the trained scorer: off" in capsys.readouterr().err
    assert RetroLM.from_pretrained(scorer="attention", lexical_weight=3.0).config.lexical_weight == 3.0


def test_a_near_miss_margin_needs_lexical_scores():
    """The default model's margin judges its lexical scores: turning them off drops it; asking for a margin
    without them is refused."""
    assert RetroLM.from_pretrained().config.lexical_near_miss_margin == 0.7
    assert RetroLM.from_pretrained(lexical_weight=0.0).config.lexical_near_miss_margin is None
    assert RetroLM.from_pretrained(scorer="attention").config.lexical_near_miss_margin is None
    with pytest.raises(RetroLMError, match="lexical_near_miss_margin=0.5 judges lexical page scores, which are off"):
        RetroLM.from_pretrained(lexical_weight=0.0, lexical_near_miss_margin=0.5)


def test_hops_need_lexical_scores():
    """The default model's hops follow its lexical scores: turning them off drops them; asking for hops without
    them is refused."""
    assert RetroLM.from_pretrained().config.lexical_hops == 4
    assert RetroLM.from_pretrained(lexical_weight=0.0).config.lexical_hops == 0
    assert RetroLM.from_pretrained(scorer="attention").config.lexical_hops == 0
    with pytest.raises(RetroLMError, match="lexical_hops=2 follows lexical page scores, which are off"):
        RetroLM.from_pretrained(lexical_weight=0.0, lexical_hops=2)


def test_a_hop_span_needs_hops():
    """A hop span set with hops off is refused when asked for, and dropped when it is the checkpoint's."""
    assert RetroLM.from_pretrained(lexical_hop_span=8).config.lexical_hop_span == 8
    assert RetroLM.from_pretrained(lexical_hops=0).config.lexical_hop_span is None
    with pytest.raises(RetroLMError, match="lexical_hop_span=8 sets how far hops look, and hops are off"):
        RetroLM.from_pretrained(lexical_hops=0, lexical_hop_span=8)


def test_hop_stops_need_hops():
    """Sentence ends set with hops off are refused when asked for, and dropped when they are the checkpoint's."""
    assert RetroLM.from_pretrained(lexical_hop_stops=".").config.lexical_hop_stops == "."
    assert RetroLM.from_pretrained(lexical_hops=0).config.lexical_hop_stops == ""
    with pytest.raises(RetroLMError, match="lexical_hop_stops='.' bounds what hops read, and hops are off"):
        RetroLM.from_pretrained(lexical_hops=0, lexical_hop_stops=".")


def test_a_prompts_hops_read_the_models_sentence_ends(tiny_dirs):
    """The table of lexical_hop_stops reaches the prompt's lexical index and the device decode step's copy of it; an
    index made from a config with stops and no table is refused (it would look past sentence ends without a word)."""
    model = RetroLM.from_pretrained(tiny_dirs["llama"], init_retriever=True, page_size=8, lexical_weight=1.0,
                                    lexical_ngram=3, lexical_hops=2, lexical_hop_stops=".\n")
    ids = model.tokenizer("one two. three\nfour " * 12, return_tensors="pt").input_ids
    model.generate(input_ids=ids, max_new_tokens=2, do_sample=False)
    stops = model.last_cache.lexical.hop_stops
    assert set(stops.nonzero().flatten().tolist()) == {model.tokenizer(c, add_special_tokens=False).input_ids[0]
                                                        for c in ".\n"}
    assert torch.equal(DeviceLexicalIndex(model.last_cache.lexical, 64).hop_stops, stops)
    with pytest.raises(RetroLMError, match="needs its token table"):
        LexicalIndex.from_config(model.config)


def test_the_benchmark_scripts_take_the_lexical_knobs():
    from eval.cli import method_options, parser

    args = parser("test").parse_args(["--method", "retrolm", "--out", "x", "--lexical-weight", "2.5",
                                      "--lexical-query-pages", "3", "--lexical-ngram", "5"])
    assert method_options(args).retrolm == {"lexical_weight": 2.5, "lexical_query_pages": 3, "lexical_ngram": 5}
    for value, knob in (("0.5", 0.5), ("off", None)):  # "off": the checkpoint's margin turned off
        args = parser("test").parse_args(["--method", "retrolm", "--out", "x", "--lexical-near-miss-margin", value])
        assert method_options(args).retrolm == {"lexical_near_miss_margin": knob}
    args = parser("test").parse_args(["--method", "retrolm", "--out", "x", "--lexical-hops", "0"])
    assert method_options(args).retrolm == {"lexical_hops": 0}
    args = parser("test").parse_args(["--method", "retrolm", "--out", "x", "--lexical-hop-span", "32"])
    assert method_options(args).retrolm == {"lexical_hop_span": 32}
    args = parser("test").parse_args(["--method", "retrolm", "--out", "x", "--lexical-hop-stops", ".!?\\n"])
    assert method_options(args).retrolm == {"lexical_hop_stops": ".!?\n"}
    for value, knob in (("64", 64), ("off", None)):  # "off": the checkpoint's echo judging turned off
        args = parser("test").parse_args(["--method", "retrolm", "--out", "x", "--lexical-echo-tokens", value])
        assert method_options(args).retrolm == {"lexical_echo_tokens": knob}


def test_heldout_prose_names_its_scorers():
    from bench.heldout_prose import scorer_knobs

    assert scorer_knobs("trained+lexical", 10.0, 2) == {"scorer": "trained", "lexical_weight": 10.0,
                                                        "lexical_query_pages": 2, "lexical_near_miss_margin": None,
                                                        "lexical_hops": 0}
    assert scorer_knobs("trained", 10.0) == {"scorer": "trained", "lexical_weight": 0.0}
    assert scorer_knobs("attention+lexical", 1.0, 2) == {"scorer": "attention", "lexical_weight": 1.0,
                                                         "lexical_query_pages": 2, "lexical_near_miss_margin": None,
                                                         "lexical_hops": 0}
    assert scorer_knobs("trained+lexical+near_miss", 10.0, 2, 0.5) == {
        "scorer": "trained", "lexical_weight": 10.0, "lexical_query_pages": 2, "lexical_near_miss_margin": 0.5,
        "lexical_hops": 0}
    assert scorer_knobs("trained+lexical+near_miss+hops", 10.0, 2, 0.7, 3) == {
        "scorer": "trained", "lexical_weight": 10.0, "lexical_query_pages": 2, "lexical_near_miss_margin": 0.7,
        "lexical_hops": 3}
    with pytest.raises(SystemExit, match="unknown scorer"):
        scorer_knobs("lexical", 10.0)


@pytest.mark.parametrize("seed", range(20))
def test_merging_sorted_keys_equals_sorting_them(seed):
    from retrolm.lexical import _merged

    gen = torch.Generator().manual_seed(seed)
    old = torch.randint(0, 50, (int(torch.randint(0, 30, (1,), generator=gen)),), generator=gen).sort().values
    new = torch.randint(0, 50, (int(torch.randint(0, 30, (1,), generator=gen)),), generator=gen).sort().values
    assert torch.equal(_merged(old, new), torch.cat([old, new]).sort().values)


def test_a_hop_with_stops_looks_only_inside_a_links_sentence():
    """With hop_stops, a hop's look keeps to the link's sentence: nothing past the sentence's end, all of it within
    the span before it; without, the span alone bounds it."""
    P, stop = 32, 99
    ids = [0] * P + [9, 10, 11, 12, 13, 14, stop, 20, 21, 22, 23, 24] + [0] * (3 * P - 12)
    link = torch.tensor([int(h) for h in gram_hashes(torch.tensor([9, 10, 11]), 3)])
    table = torch.zeros(100, dtype=torch.bool)
    table[stop] = True
    looks = {}
    for name, stops in (("plain", None), ("bounded", table)):
        index = LexicalIndex(3, 64, P, P, hops=1, hop_span=16, hop_stops=stops)
        looks[name] = set(index._near_links(torch.tensor(ids), torch.tensor([1]), link).tolist())
    after = {int(h) for h in gram_hashes(torch.tensor([20, 21, 22, 23, 24]), 3)}
    within = {int(h) for h in gram_hashes(torch.tensor([9, 10, 11, 12, 13, 14]), 3)}
    assert after <= looks["plain"] and within <= looks["plain"]
    assert within <= looks["bounded"] and not after & looks["bounded"]


@pytest.mark.parametrize("seed", range(30))
def test_near_in_sentence_matches_a_scan(seed):
    """`_near_in_sentence` (nearest link each side) against every pair of positions, on random rows, spans and
    sentence ends."""
    gen = torch.Generator().manual_seed(seed)
    rows, length = int(torch.randint(1, 5, (1,), generator=gen)), int(torch.randint(1, 60, (1,), generator=gen))
    span = int(torch.randint(0, 20, (1,), generator=gen))
    at = torch.rand(rows, length, generator=gen) < float(torch.rand(1, generator=gen)) * 0.3
    stop = (torch.rand(rows, length, generator=gen) < 0.1).long()
    sentence = stop.cumsum(1) - stop
    expected = torch.tensor([[any(bool(at[r, k]) and abs(i - k) <= span and sentence[r, i] == sentence[r, k]
                                  for k in range(length)) for i in range(length)] for r in range(rows)])
    assert torch.equal(_near_in_sentence(at, sentence, span), expected)
