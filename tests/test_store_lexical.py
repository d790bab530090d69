"""Lexical page scores over a page store (retrolm/store_lexical.py): the two-list search against scoring every stored
page; the knob finds a fact the retriever alone misses; stores record the knobs that shape their encoding."""
import json
import os
import random
import string

import pytest
import torch
from lexical_toys import hashed, held

from retrolm import RetroLM
from retrolm.collection import (attention_scaling, question_layer_queries, question_query, search_pages, store_index,
                                store_lexical_index)
from retrolm.store_search import summed_shares
from retrolm.demo import ADJECTIVES, NOUNS
from retrolm.errors import RetroLMError
from retrolm.lexical import (NEAR_MISS_SCORE, reference_hop_scores, reference_near_misses, reference_page_grams,
                             reference_scores)
from retrolm.page_store import MANIFEST, PageStore
from retrolm.store_lexical import StoreLexicalIndex, combined_top


def _words(rng: random.Random, count: int, made_up: float = 0.0) -> str:
    """Word salad; a `made_up` share of random letter strings gives pages rare n-grams."""
    return " ".join("".join(rng.choice(string.ascii_lowercase) for _ in range(5)) if rng.random() < made_up
                    else rng.choice(NOUNS + ADJECTIVES) for _ in range(count))


def _document_starts(rows: list[tuple[str, int]]) -> list[int]:
    """The store rows that begin a document: no indexed n-gram joins it to the document before."""
    return [i for i, (_, page) in enumerate(rows) if page == 0]


def _reference_scores(store: PageStore, pages_index, model, question_ids: torch.Tensor) -> dict:
    """Every stored page's score: key score (its indexed key . the question's query) plus lexical_weight x the set
    reference's lexical score (lexical.reference_scores over the store's pages, the question as the window)."""
    config = model.config
    rows = [(doc_id, page) for doc_id, entry in store.documents().items() for page in range(entry["pages"])]
    query = question_query(model, question_ids).flatten()
    keys = torch.cat([pages_index.index.vectors(*pages_index.spans[doc_id]) for doc_id in store.documents()])
    tokens = torch.cat([store.token_ids(doc_id) for doc_id in store.documents()]).tolist()
    window = min(config.lexical_query_pages * config.page_size, question_ids.numel())
    lexical = reference_scores(tokens + question_ids.tolist(), [len(tokens) + question_ids.numel()], [len(rows)],
                               len(rows), config.page_size, config.lexical_ngram, config.lexical_max_pages, window,
                               _document_starts(rows))[0]
    combined = (keys @ query).tolist()
    return {row: score + config.lexical_weight * lex for row, score, lex in zip(rows, combined, lexical)}


def _reference_rankings(store: PageStore, pages_index, model, question_ids: torch.Tensor) -> list[dict]:
    """`_reference_scores`, with near misses judged (lexical_near_miss_margin) over every stored page: one ranking
    per page that may be the best (pages of equal lexical score: float sums may order them either way)."""
    every = _reference_scores(store, pages_index, model, question_ids)
    config = model.config
    if config.lexical_near_miss_margin is None:
        return [every]
    rows = list(every)
    tokens = torch.cat([store.token_ids(doc_id) for doc_id in store.documents()]).tolist() + question_ids.tolist()
    window = min(config.lexical_query_pages * config.page_size, question_ids.numel())
    args = (tokens, len(tokens), len(rows), len(rows), config.page_size, config.lexical_ngram, config.lexical_max_pages,
            window, config.lexical_near_miss_margin)
    lexical = reference_scores(tokens, [len(tokens)], [len(rows)], len(rows), *args[4:8], _document_starts(rows))[0]
    bests = [j for j in range(len(rows)) if lexical[j] >= max(lexical) - 1e-4]
    rankings = []
    for best in bests:
        near = reference_near_misses(*args, best=best, judged=len(rows), opens=_document_starts(rows))
        rankings.append({row: score + (config.lexical_weight * (NEAR_MISS_SCORE - lex) if miss else 0.0)
                         for (row, score), lex, miss in zip(every.items(), lexical, near)})
    return rankings


@pytest.mark.parametrize("seed", range(20))
def test_the_store_search_equals_scoring_every_page(tiny_dirs, tmp_path, seed):
    """The combined top k from the key index's top k and the lexically matched pages equals ranking every stored
    page by key + lexical score, for exact and IVF (every list probed) indexes, weights small and large."""
    rng = random.Random(seed)
    knobs = dict(page_size=rng.choice([8, 16]), lexical_weight=rng.choice([0.05, 1.0, 50.0]),
                 lexical_ngram=rng.randint(2, 5), lexical_max_pages=rng.choice([3, 64]),
                 lexical_query_pages=rng.choice([1, 2]), top_k=rng.randint(1, 4),
                 lexical_near_miss_margin=None if seed % 2 else rng.choice([0.0, 0.3]))
    model = RetroLM.from_pretrained(tiny_dirs["llama"], init_retriever=True, **knobs)
    docs = {f"doc{i}": _words(rng, rng.randint(20, 60), made_up=0.3) for i in range(rng.randint(2, 6))}
    store = PageStore.open(str(tmp_path / "store"), model, create=True)
    store.add(docs, progress=False)
    donor = rng.choice(sorted(docs))  # the question ends with one stored page's tokens: its rarer n-grams match
    page = rng.randrange(store.documents()[donor]["pages"])
    P = knobs["page_size"]
    question_ids = torch.cat([model.tokenizer("Which? ", return_tensors="pt").input_ids[0],
                              store.token_ids(donor)[page * P:(page + 1) * P]])
    lexical, _ = store_lexical_index(store, model.config)
    assert lexical.scores(question_ids), "the question repeats stored words: some page must match"
    for kind in ("exact", "ivf"):
        pages_index, _ = store_index(store, kind, nlist=2 if kind == "ivf" else None)
        k = rng.randint(1, len(pages_index))
        found = search_pages(model, pages_index, question_ids, k, nprobe=2 if kind == "ivf" else None,
                             lexical=lexical)
        # a top k (pages of equal text tie: any of them may be taken), each page once with its own score
        assert len({page[:2] for page in found}) == len(found) == k
        got = torch.tensor([score for _, _, score in found])
        assert any(torch.allclose(got, torch.tensor([every[page[:2]] for page in found]), rtol=1.3e-6, atol=1e-5)
                   and torch.allclose(got, torch.tensor(sorted(every.values(), reverse=True)[:k]), rtol=1.3e-6,
                                      atol=1e-5)
                   for every in _reference_rankings(store, pages_index, model, question_ids))


@pytest.mark.parametrize("seed", range(10))
def test_the_training_free_store_search_equals_scoring_every_page(tiny_dirs, tmp_path, seed):
    """Under the training-free scorer, the combined top k equals ranking every stored page by its attention share
    per (layer, token, head) row plus lexical_weight x the set reference's lexical score; the approximate index is
    refused."""
    rng = random.Random(seed)
    P = rng.choice([8, 16])
    knobs = dict(page_size=P, scorer="attention", lexical_weight=rng.choice([0.01, 0.2, 5.0]),
                 lexical_ngram=rng.randint(2, 5), lexical_max_pages=rng.choice([3, 64]),
                 lexical_query_pages=rng.choice([1, 2]), top_k=rng.randint(1, 4))
    model = RetroLM.from_pretrained(tiny_dirs["llama"], **knobs)
    config = model.config
    store = PageStore.open(str(tmp_path / "store"), model, create=True)
    store.add({f"doc{i}": _words(rng, rng.randint(20, 60), made_up=0.3) for i in range(rng.randint(2, 6))},
              progress=False)
    donor = rng.choice(sorted(store.documents()))
    page = rng.randrange(store.documents()[donor]["pages"])
    question_ids = torch.cat([model.tokenizer("Which? ", return_tensors="pt").input_ids[0],
                              store.token_ids(donor)[page * P:(page + 1) * P]])
    lexical, _ = store_lexical_index(store, config)
    pages_index, _ = store_index(store, "exact")
    k = rng.randint(1, len(pages_index))
    found = search_pages(model, pages_index, question_ids, k, lexical=lexical)
    with torch.no_grad():
        queries = question_layer_queries(model, question_ids)
        shares = summed_shares(queries, pages_index.center, pages_index.radius, attention_scaling(model))
    shares = shares / sum(q.shape[0] * q.shape[1] for q in queries)
    tokens = torch.cat([store.token_ids(doc_id) for doc_id in store.documents()]).tolist()
    window = min(config.lexical_query_pages * P, question_ids.numel())
    reference = reference_scores(tokens + question_ids.tolist(), [len(tokens) + question_ids.numel()],
                                 [len(pages_index.rows)], len(pages_index.rows), P, config.lexical_ngram,
                                 config.lexical_max_pages, window)[0]
    every = {row: float(share) + config.lexical_weight * lex
             for row, share, lex in zip(pages_index.rows, shares, reference)}
    assert any(reference), "the question repeats stored words: some page must match"
    assert len({page[:2] for page in found}) == len(found) == k
    torch.testing.assert_close(torch.tensor([score for _, _, score in found]),
                               torch.tensor([every[page[:2]] for page in found]))
    torch.testing.assert_close(torch.tensor([score for _, _, score in found]),
                               torch.tensor(sorted(every.values(), reverse=True)[:k]))
    with pytest.raises(RetroLMError, match="training-free scorer need index='exact'"):
        model.answer("Which?", store, index="ivf", max_new_tokens=1)


def test_combined_top_takes_matched_pages_the_key_search_left_out():
    seeds = [("a", 0, 3.0), ("a", 1, 2.0)]
    lexical = {("b", 4): 1.0, ("a", 1): 0.5}
    asked = []

    def key_scores(pages):
        asked.extend(pages)
        return [-1.0] * len(pages)

    assert combined_top(seeds, lexical, key_scores, 5.0, 2) == [("a", 1, 4.5), ("b", 4, 4.0)]
    assert asked == [("b", 4)]  # only the page the key search did not return is scored again


def _hidden_fact(rng: random.Random) -> tuple[dict, str, str]:
    """Documents of word salad, one holding a fact in a format the default model never trained on; (documents,
    question, its document)."""
    docs = {f"doc{i}": _words(rng, 450) for i in range(6)}
    code = f"{rng.choice('KLMNP')}{rng.randint(100, 999)}"
    fact = f" The pass code for the {rng.choice(ADJECTIVES)} orchard locker is {code}. "
    target = f"doc{rng.randrange(6)}"
    words = docs[target].split()
    cut = rng.randrange(50, len(words) - 50)
    docs[target] = " ".join(words[:cut]) + fact + " ".join(words[cut:])
    question = f"What is the pass code for the {fact.split(' the ')[1].split(' is ')[0]}?"
    return docs, question, target


def test_lexical_scores_find_in_a_store_the_fact_the_retriever_misses(tmp_path):
    """Held-out wording in a store of the default model: the trained retriever alone does not bring the fact's page;
    with lexical scores it is the best page."""
    docs, question, target = _hidden_fact(random.Random(5))
    found = {}
    for weight in (0.0, 10.0):
        model = RetroLM.from_pretrained(lexical_weight=weight)
        store = PageStore.open(str(tmp_path / f"w{weight}"), model, create=True)
        store.add(docs, progress=False)
        result = model.answer(question, store, max_new_tokens=1)
        start = docs[target].index("The pass code")
        fact_pages = {(target, start // 64), (target, (start + 40) // 64)}
        found[weight] = fact_pages & {(doc_id, page) for doc_id, page, _ in result.pages}
        if weight:
            assert result.pages[0][:2] in fact_pages
    assert not found[0.0] and found[10.0]


def test_the_lexical_index_follows_the_store(tmp_path):
    """Built once per store state: a second question reuses it, an added document is searched."""
    rng = random.Random(2)
    docs, question, target = _hidden_fact(rng)
    model = RetroLM.from_pretrained(lexical_weight=10.0)
    store = PageStore.open(str(tmp_path), model, create=True)
    store.add({doc_id: text for doc_id, text in docs.items() if doc_id != target}, progress=False)
    first = model.answer(question, store, max_new_tokens=1)
    again = model.answer(question, store, max_new_tokens=1)
    assert first.timings["index_s"] > 0 and again.timings["index_s"] == 0
    assert target not in {doc_id for doc_id, _, _ in first.pages}
    store.add({target: docs[target]}, progress=False)
    after = model.answer(question, store, max_new_tokens=1)
    assert after.timings["index_s"] > 0 and after.pages[0][0] == target


@pytest.mark.parametrize("seed", range(4))
def test_documents_added_later_are_appended_to_the_lexical_index(tiny_dirs, tmp_path, seed):
    """After adds the index is the last one extended, equal (keys, rows, scores) to one built from scratch; a deleted
    or replaced document builds a new one, equal to one built from scratch as well."""
    rng = random.Random(seed)
    model = RetroLM.from_pretrained(tiny_dirs["llama"], init_retriever=True, page_size=8, lexical_weight=1.0,
                                    lexical_ngram=rng.randint(2, 4), lexical_max_pages=rng.choice([2, 64]))
    store = PageStore.open(str(tmp_path / "store"), model, create=True)
    question_ids = model.tokenizer(_words(rng, 12), return_tensors="pt").input_ids[0]

    def check(expect_same: bool, previous):
        index, changed = store_lexical_index(store, model.config)
        fresh = StoreLexicalIndex({doc_id: store.token_ids(doc_id) for doc_id in store.documents()}, model.config)
        assert changed and (index is previous) == expect_same
        assert index.rows == fresh.rows and torch.equal(index.index.keys, fresh.index.keys)
        assert index.scores(question_ids) == fresh.scores(question_ids)
        return index

    store.add({f"a{i}": _words(rng, rng.randint(10, 40)) for i in range(3)}, progress=False)
    index = check(False, None)
    for batch in range(2):
        store.add({f"b{batch}{i}": _words(rng, rng.randint(10, 40)) for i in range(rng.randint(1, 3))},
                  progress=False)
        index = check(True, index)
    store.delete(["a1"])
    index = check(False, index)
    store.add({"a0": _words(rng, 30)}, progress=False)  # replaced: its rows change length
    check(False, index)


def test_store_hop_scores_equal_the_set_reference(tiny_dirs, tmp_path):
    """With lexical_hops, a store's page scores are the plain ones plus the set reference's hop scores over the
    stored pages' text (documents of words from a small made-up vocabulary: words link a few pages), on stores of
    several seeds, some page reached by a hop in some of them; the index holds the n-grams ending in each page, none
    joining two documents."""
    reached = 0
    for seed in range(6):
        rng = random.Random(seed)
        hops, span, stops = rng.randint(1, 4), rng.choice([None, 4, 8]), rng.choice(["", "ae"])
        knobs = dict(init_retriever=True, page_size=8, lexical_weight=1.0, lexical_ngram=3)
        model = RetroLM.from_pretrained(tiny_dirs["llama"], lexical_hops=hops, lexical_hop_span=span,
                                        lexical_hop_stops=stops, **knobs)
        store = PageStore.open(str(tmp_path / f"store{seed}"), model, create=True)
        vocabulary = ["".join(rng.choice(string.ascii_lowercase) for _ in range(4)) for _ in range(200)]
        docs = {f"d{i}": rng.choices(vocabulary, k=rng.randint(20, 50)) for i in range(4)}
        store.add({doc_id: " ".join(words) for doc_id, words in docs.items()}, progress=False)
        question_ids = model.tokenizer(" ".join(rng.choices(vocabulary, k=4)), return_tensors="pt").input_ids[0]
        plain = StoreLexicalIndex({doc_id: store.token_ids(doc_id) for doc_id in store.documents()},
                                  RetroLM.from_pretrained(tiny_dirs["llama"], **knobs).config)
        index, _ = store_lexical_index(store, model.config, model._hop_stop_table())
        rows = index.rows
        tokens = torch.cat([store.token_ids(doc_id) for doc_id in store.documents()]).tolist()
        direct = [plain.scores(question_ids).get(row, 0.0) for row in rows]
        window = question_ids[-min(2 * 8, question_ids.numel()):].tolist()
        expected, _ = reference_hop_scores(tokens, window, direct, len(rows), [False] * len(rows), 8, 3, hops,
                                           _document_starts(rows), hop_span=span,
                                           stops=[model.tokenizer(c, add_special_tokens=False).input_ids[0]
                                                  for c in stops])
        got = index.scores(question_ids)
        assert len(index.page_ids) == len(tokens)
        assert held(index.index) == hashed(reference_page_grams(tokens, len(rows), 8, 3, _document_starts(rows)))
        torch.testing.assert_close(torch.tensor([got.get(row, 0.0) for row in rows]),
                                   torch.tensor(direct) + torch.tensor(expected), rtol=1e-5, atol=1e-5)
        reached += sum(score > 0 for score in expected)
    assert reached


def test_a_store_records_the_lexical_knobs_its_encoding_used(tmp_path):
    """Lexical scores change which pages a long document's encoding attends: a store built without them is refused
    to a model with them and the other way round; a store written before the knobs existed reads as built without
    them."""
    without, with_them = RetroLM.from_pretrained(lexical_weight=0.0), RetroLM.from_pretrained(lexical_weight=10.0)
    store = PageStore.open(str(tmp_path / "without"), without, create=True)
    store.add({"doc": _words(random.Random(1), 300)}, progress=False)
    with pytest.raises(RetroLMError, match=r"lexical_weight \(0.0 in the store, 10.0 now\)"):
        PageStore.open(str(tmp_path / "without"), with_them)
    PageStore.open(str(tmp_path / "with"), with_them, create=True).add({"doc": _words(random.Random(1), 300)},
                                                                       progress=False)
    with pytest.raises(RetroLMError, match=r"lexical_weight \(10.0 in the store, 0.0 now\)"):
        PageStore.open(str(tmp_path / "with"), without)
    path = os.path.join(str(tmp_path / "without"), MANIFEST)
    manifest = json.load(open(path))
    for knob in ("lexical_weight", "lexical_ngram", "lexical_max_pages", "lexical_query_pages",
                 "lexical_near_miss_margin", "lexical_hops", "lexical_hop_span", "lexical_hop_stops",
                 "lexical_echo_tokens"):
        del manifest["identity"]["retrolm"][knob]
    json.dump(manifest, open(path, "w"))
    assert len(PageStore.open(str(tmp_path / "without"), without)) == 1
    with pytest.raises(RetroLMError, match=r"lexical_weight \(0.0 in the store, 10.0 now\)"):
        PageStore.open(str(tmp_path / "without"), with_them)
