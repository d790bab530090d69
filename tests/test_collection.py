"""Answering over a page store (retrolm/collection.py, `RetroLM.answer`, `retrolm ask`): stored pages behave as the
same text in context, and a question finds its page among other documents."""
import random

import pytest
import torch

from bench.collection_store import collection
from retrolm.cli import main as cli
from retrolm.collection import (QUESTION_TEMPLATE, attention_scaling, load_retrieved, question_layer_queries,
                                question_query, save_store_index, store_index, with_neighbors)
from retrolm.index import IVFInnerProductIndex
from retrolm.demo import NOUNS, Fact
from retrolm.errors import RetroLMError
from retrolm.filler import ESSAY_SHAPES
from retrolm.model import RetroLM
from retrolm.page_store import PageStore
from retrolm.prompt import build_prompt_ids, text_after_context
from retrolm.scorer import page_scores
from retrolm.store_search import SummaryIndex, SummaryIVFIndex, flat_summaries, summed_bound_query


@pytest.fixture(scope="module")
def model():
    return RetroLM.from_pretrained()


@pytest.fixture(scope="module")
def free_model():
    """The default model under the training-free scorer: a store of page summaries, no bookmark keys."""
    return RetroLM.from_pretrained(scorer="attention")


SCORER_MODELS = {"trained": "model", "attention": "free_model"}


def _essay(rng: random.Random, chars: int) -> str:
    sentences = []
    while sum(map(len, sentences)) < chars:
        sentences.append(rng.choice(ESSAY_SHAPES).format(**{k: rng.choice(NOUNS) for k in "abcd"}))
    return " ".join(sentences)


def _ruler_template(key: str) -> str:
    return "\n{question} The special magic number for " + key + " mentioned in the provided text is"


@pytest.mark.parametrize("scorer", sorted(SCORER_MODELS))
def test_stored_pages_give_what_the_same_text_in_context_gives(tmp_path, request, scorer):
    """A document of exactly the page budget (sink + local + top_k pages): every page is attended either way, so
    the question's logits and the answer are those of the document and question encoded together, under either
    scorer. Logits to float32 rounding, not bit for bit: the two encodes multiply matrices of different lengths, and
    a CPU's BLAS may sum them in another order per length (bit-equal on some CPUs, 2e-5 apart on AVX-512 / AMX
    ones); a wrong page, position or mask moves them by far more."""
    model = request.getfixturevalue(SCORER_MODELS[scorer])
    config = model.config
    budget = config.sink_pages + config.local_pages + config.top_k
    rng = random.Random(1)
    fact = Fact("amber-ledger", "5523871", 0.5)
    text = _essay(rng, 400) + " " + fact.needle + " " + _essay(rng, 2000)
    text = text[: budget * config.page_size]
    store = PageStore.open(str(tmp_path), model, create=True)
    store.add({"doc": text}, progress=False)
    question = f"What is the special magic number for {fact.key} mentioned in the provided text?"
    template = _ruler_template(fact.key)
    prompt = template.replace("{question}", question)
    question_ids = model.tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids
    cache, held = load_retrieved(model, store, [("doc", page, 0.0) for page in range(budget)], question_ids.shape[1])
    assert torch.equal(held, model.tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids[0])
    _, stored_logits = model.encode(question_ids, cache, progress=False)
    together = model.tokenizer(text + prompt, return_tensors="pt", add_special_tokens=False).input_ids
    _, logits = model.encode(together, progress=False)
    torch.testing.assert_close(stored_logits[0], logits[0, held.shape[0]:], rtol=1e-5, atol=1e-4)
    result = model.answer(question, store, max_new_tokens=8, template=template)
    generated = model.generate(together, max_new_tokens=8, do_sample=False)
    assert result.text == model.tokenizer.decode(generated[0, together.shape[1]:], skip_special_tokens=True).strip()
    assert result.text.startswith(fact.value)
    assert sorted(page for _, page, _ in result.pages) == list(range(budget)), "the whole budget is attended"


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "qwen3"])
def test_a_hub_model_without_a_retriever_answers_from_its_store(tmp_path, tiny_dirs, arch):
    """A model with no retriever gets the training-free scorer: its store keeps page summaries, and with every page
    of a budget-sized document retrieved the question's logits are those of the document and question together;
    over more pages than the budget, `answer` attends exactly the budget, best first."""
    model = RetroLM.from_pretrained(tiny_dirs[arch], page_size=8, top_k=3)
    assert model.config.scorer == "attention"
    budget = model.config.sink_pages + model.config.local_pages + model.config.top_k
    gen = torch.Generator().manual_seed(7)
    text = "".join(chr(c) for c in torch.randint(97, 123, (budget * 8,), generator=gen).tolist())
    store = PageStore.open(str(tmp_path / "one"), model, create=True)
    store.add({"doc": text}, progress=False)
    question_ids = model.tokenizer("\nQuestion: which?\nAnswer:", return_tensors="pt",
                                   add_special_tokens=False).input_ids
    cache, held = load_retrieved(model, store, [("doc", page, 0.0) for page in range(budget)], question_ids.shape[1])
    _, stored_logits = model.encode(question_ids, cache, progress=False)
    together = torch.cat([held[None], question_ids], dim=1)
    _, logits = model.encode(together, progress=False)
    torch.testing.assert_close(stored_logits[0], logits[0, held.shape[0]:], rtol=0, atol=1e-5)
    many = PageStore.open(str(tmp_path / "many"), model, create=True)
    many.add({f"doc{i}": text[i:] + text[:i] for i in range(4)}, progress=False)
    result = model.answer("which?", many, max_new_tokens=4)
    assert len(result.pages) == budget and len({(d, p) for d, p, _ in result.pages}) == budget


@pytest.mark.parametrize("scorer", sorted(SCORER_MODELS))
@pytest.mark.parametrize("seed", [0, 3])
def test_a_question_finds_its_page_among_other_documents(tmp_path, request, scorer, seed):
    """Either scorer: by the trained retriever's bookmark keys, or (training-free) by the page summaries."""
    model = request.getfixturevalue(SCORER_MODELS[scorer])
    rng = random.Random(seed)
    docs = {f"doc{i}": _essay(rng, 2500) for i in range(8)}
    fact = Fact(f"amber-{rng.choice(NOUNS)}", str(rng.randint(10 ** 6, 10 ** 7 - 1)), 0.5)
    target = f"doc{rng.randrange(8)}"
    sentences = docs[target].split(". ")
    at = rng.randrange(3, len(sentences) - 3)
    docs[target] = ". ".join(sentences[:at] + [fact.needle[:-1]] + sentences[at:])
    store = PageStore.open(str(tmp_path), model, create=True)
    store.add(docs, progress=False)
    question = f"What is the special magic number for {fact.key} mentioned in the provided text?"
    result = model.answer(question, store, max_new_tokens=10, template=_ruler_template(fact.key))
    start = docs[target].index(fact.needle[:-1])
    needle_pages = {start // 64, (start + len(fact.needle) - 2) // 64}
    # the best page is a needle page, and the needle's pages are among the first three attended (the best page
    # brings its next page along, neighbor_pages=1)
    assert result.pages[0][:2] in {(target, p) for p in needle_pages}
    assert {(target, p) for p in needle_pages} <= {(doc, page) for doc, page, _ in result.pages[:3]}
    assert result.text.startswith(fact.value), result.text
    assert [score for _, _, score in result.pages] == sorted((s for _, _, s in result.pages), reverse=True)
    assert result.timings["index_s"] > 0
    again = model.answer(question, store, max_new_tokens=10, template=_ruler_template(fact.key))
    assert again.timings["index_s"] == 0 and again.text == result.text, "the index is built once per store state"


@pytest.mark.parametrize("scorer", sorted(SCORER_MODELS))
def test_a_needle_in_a_documents_last_partial_page_is_found(tmp_path, request, scorer):
    """Documents are stored padded to whole pages: a fact in the text after a document's last whole page is
    retrieved and answered like any other (a store of version 1 never held that text)."""
    model = request.getfixturevalue(SCORER_MODELS[scorer])
    rng = random.Random(7)
    P = model.config.page_size
    docs = {f"doc{i}": _essay(rng, 2000)[:20 * P + 10] for i in range(6)}
    fact = Fact("amber-harbor", "8306417", 0.5)
    docs["doc4"] = docs["doc4"][:20 * P - 1] + " " + fact.needle  # page 20 holds the needle alone, 62 of 64 tokens
    assert len(docs["doc4"]) % P and (len(docs["doc4"]) - len(fact.needle)) // P == 20
    store = PageStore.open(str(tmp_path), model, create=True)
    store.add(docs, progress=False)
    assert store.documents()["doc4"]["pages"] == 21
    question = f"What is the special magic number for {fact.key} mentioned in the provided text?"
    result = model.answer(question, store, max_new_tokens=10, template=_ruler_template(fact.key))
    assert ("doc4", 20) in {(doc, page) for doc, page, _ in result.pages[:2]}
    assert result.text.startswith(fact.value), result.text


def test_a_model_that_offloads_its_kv_builds_and_answers_the_same_store(tmp_path, model):
    """offload_kv changes where a long input's pages live, not their values: a store's documents and retrieved pages
    are held resident either way, so an offloading model writes the same shards and gives the same answer."""
    offloading = RetroLM.from_pretrained(offload_kv=True, offload_device_pages=16)
    rng = random.Random(4)
    docs = {f"doc{i}": _essay(rng, 2500) for i in range(3)}
    fact = Fact("amber-lake", "4455667", 0.5)
    docs["doc1"] = docs["doc1"][:900] + " " + fact.needle + " " + docs["doc1"][900:]
    for name, built_by in (("resident", model), ("offloaded", offloading)):
        PageStore.open(str(tmp_path / name), built_by, create=True).add(docs, progress=False)
    shards = {name: {p.name: p.read_bytes() for p in (tmp_path / name / "pages").iterdir()}
              for name in ("resident", "offloaded")}
    assert shards["resident"] == shards["offloaded"]
    question = f"What is the special magic number for {fact.key} mentioned in the provided text?"
    answers = [m.answer(question, str(tmp_path / "offloaded"), max_new_tokens=9, template=_ruler_template(fact.key))
               for m in (model, offloading)]
    assert answers[0].text == answers[1].text and answers[0].text.startswith(fact.value)
    assert answers[0].pages == answers[1].pages


@pytest.mark.parametrize("scorer", sorted(SCORER_MODELS))
def test_ivf_index_probing_every_list_attends_the_exact_pages(tmp_path, request, scorer):
    """With every list probed (and for a training-free store a shortlist of every page) the "ivf" index attends the
    exact search's pages with their scores and answers the same; nprobe is a search parameter of the index built."""
    model = request.getfixturevalue(SCORER_MODELS[scorer])
    rng = random.Random(2)
    store = PageStore.open(str(tmp_path), model, create=True)
    store.add({f"doc{i}": _essay(rng, 2500) for i in range(4)}, progress=False)
    ivf, _ = store_index(store, "ivf")
    assert ivf.index.kind == "ivf" and 1 < ivf.index.nlist < len(ivf.rows)
    assert len(ivf.index) == len(ivf.rows) == sum(entry["pages"] for entry in store.documents().values())
    if scorer == "attention":
        assert isinstance(ivf, SummaryIVFIndex) and ivf.index.nprobe == -(-ivf.index.nlist // 2), "half the lists"
        ivf.candidates = len(ivf.rows)
    question = "What is the special magic number for quiet-orchard mentioned in the provided text?"
    exact = model.answer(question, store, max_new_tokens=4)
    approximate = model.answer(question, store, max_new_tokens=4, index="ivf", nprobe=ivf.index.nlist)
    assert [(d, p) for d, p, _ in approximate.pages] == [(d, p) for d, p, _ in exact.pages]
    assert [s for *_, s in approximate.pages] == pytest.approx([s for *_, s in exact.pages], rel=1e-4, abs=1e-4)
    assert approximate.text == exact.text and approximate.timings["index_s"] == 0, "the ivf index built above"
    again = model.answer(question, store, max_new_tokens=4, index="ivf", nprobe=1)
    assert again.timings["index_s"] == 0 and len(again.pages) <= len(exact.pages), "nprobe reuses the trained index"
    with pytest.raises(RetroLMError, match="unknown index kind 'hnsw'"):
        model.answer(question, store, index="hnsw")
    with pytest.raises(RetroLMError, match="nprobe only apply to the approximate index"):
        model.answer(question, store, nprobe=4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; run on the GPU host")
@pytest.mark.parametrize("scorer", sorted(SCORER_MODELS))
def test_a_model_on_a_gpu_answers_from_its_store_as_on_the_cpu(tmp_path, request, scorer):
    """The question's ids come from the tokenizer on the CPU; the model and its store's index are on the GPU."""
    rng = random.Random(9)
    docs = {f"doc{i}": _essay(rng, 2500) for i in range(4)}
    fact = Fact("amber-harbor", "4821907", 0.5)
    sentences = docs["doc2"].split(". ")
    docs["doc2"] = ". ".join(sentences[:5] + [fact.needle[:-1]] + sentences[5:])
    question = f"What is the special magic number for {fact.key} mentioned in the provided text?"
    results = []
    for model in (request.getfixturevalue(SCORER_MODELS[scorer]), RetroLM.from_pretrained(scorer=scorer,
                                                                                          device="cuda")):
        store = PageStore.open(str(tmp_path / model.device.type), model, create=True)
        store.add(docs, progress=False)
        results.append(model.answer(question, store, max_new_tokens=10, template=_ruler_template(fact.key)))
    on_cpu, on_gpu = results
    assert [page[:2] for page in on_gpu.pages] == [page[:2] for page in on_cpu.pages]
    assert on_gpu.text.startswith(fact.value) and on_cpu.text.startswith(fact.value), (on_cpu.text, on_gpu.text)


def test_training_free_store_keeps_summaries_not_bookmark_keys(tmp_path, free_model):
    store = PageStore.open(str(tmp_path / "free"), free_model, create=True)
    store.add({"doc0": _essay(random.Random(4), 1000)}, progress=False)
    with pytest.raises(RetroLMError, match="keeps no bookmark keys"):
        store.bookmark_keys("doc0")
    assert store.read_pages("doc0", [0]).bookmark_keys is None
    for bad in ({"candidates": 0}, {"sample": -1}, {"candidates": 2.5}):
        with pytest.raises(RetroLMError, match="must be an integer >= "):
            SummaryIVFIndex({"doc0": store.page_summaries("doc0")}, nlist=2, **bad)


@pytest.mark.parametrize("scorer,kind", [("trained", "exact"), ("trained", "ivf"), ("attention", "exact"),
                                         ("attention", "ivf")])
def test_an_index_after_store_changes_matches_one_built_afresh(tmp_path, request, monkeypatch, scorer, kind):
    """After documents are added, replaced and deleted, the store's index is brought up to date reading only the
    documents added or replaced (an exact index is built again, the others' rows taken from the last index; an IVF
    index is updated in place, its lists kept), and holds and finds exactly what an index built from a freshly
    opened store does."""
    model = request.getfixturevalue(SCORER_MODELS[scorer])
    rng = random.Random(5)
    store = PageStore.open(str(tmp_path), model, create=True)
    store.add({f"doc{i}": _essay(rng, 1500 + 300 * i) for i in range(5)}, progress=False)
    first, _ = store_index(store, kind)
    store.add({"doc1": _essay(rng, 1700), "doc9": _essay(rng, 900)}, progress=False)
    store.delete(["doc3"])
    read = []
    name = "bookmark_keys" if scorer == "trained" else "page_summaries"
    reader = getattr(store, name)
    monkeypatch.setattr(store, name, lambda doc_id: read.append(doc_id) or reader(doc_id))
    updated, built = store_index(store, kind)
    assert built and sorted(read) == ["doc1", "doc9"], "only the changed documents are read again"
    assert (updated is first) == (kind == "ivf")
    fresh, _ = store_index(PageStore.open(str(tmp_path), model), kind)
    assert len(updated) == len(fresh) == len(fresh.rows)
    assert sorted(row for row in updated.rows if row) == sorted(fresh.rows)
    for doc_id in store.documents():
        for kept, new in zip(_flat(updated.block(doc_id)), _flat(fresh.block(doc_id))):
            assert torch.equal(kept, new), doc_id
    question_ids = model.tokenizer("What is the special magic number for quiet-orchard?", return_tensors="pt",
                                   add_special_tokens=False).input_ids[0]
    if scorer == "trained":
        query = question_query(model, question_ids)
        assert updated.search(query, 7, **_all_lists(updated)) == fresh.search(query, 7, **_all_lists(fresh))
    else:
        queries, scaling = question_layer_queries(model, question_ids), attention_scaling(model)
        assert updated.search(queries, 7, scaling, **_all_lists(updated)) == \
            fresh.search(queries, 7, scaling, **_all_lists(fresh))


@pytest.mark.parametrize("scorer", sorted(SCORER_MODELS))
def test_an_ivf_index_is_trained_again_when_the_store_outgrows_its_lists(tmp_path, request, scorer):
    """An IVF index is updated in place while the store's pages stay within LIST_REUSE_FACTOR of those its lists
    were trained on, and while its unused row numbers are fewer than its pages; past either it is built afresh."""
    model = request.getfixturevalue(SCORER_MODELS[scorer])
    rng = random.Random(7)
    store = PageStore.open(str(tmp_path), model, create=True)
    store.add({f"doc{i}": _essay(rng, 1500) for i in range(4)}, progress=False)
    first, _ = store_index(store, "ivf")
    trained_on = first.index.trained_on
    store.add({"doc4": _essay(rng, 1500)}, progress=False)
    assert store_index(store, "ivf") == (first, True) and first.index.trained_on == trained_on
    store.add({f"doc{i}": _essay(rng, 1500) for i in range(5, 9)}, progress=False)  # past twice the trained pages
    rebuilt, built = store_index(store, "ivf")
    assert built and rebuilt is not first and rebuilt.index.trained_on == len(rebuilt) > 2 * trained_on
    for replaced in range(2):  # each replace leaves the old rows unused, until they outnumber the pages
        store.add({f"doc{i}": _essay(rng, 1500) for i in range(5)}, progress=False)
        updated, _ = store_index(store, "ivf")
        assert (updated is rebuilt) == (replaced == 0), replaced
    assert len(updated.rows) == len(updated) == sum(entry["pages"] for entry in store.documents().values())


@pytest.mark.parametrize("scorer", sorted(SCORER_MODELS))
def test_a_saved_ivf_index_is_read_in_a_new_process_not_trained(tmp_path, request, monkeypatch, scorer):
    """`save_store_index` writes the IVF index into the store; a store opened again (as by a new `retrolm ask`)
    reads it, trained lists, row numbers and gaps as they were, and finds the same pages; after a store change it
    is updated in place from there, still without training, and finds what an index built afresh does."""
    model = request.getfixturevalue(SCORER_MODELS[scorer])
    rng = random.Random(10)
    store = PageStore.open(str(tmp_path), model, create=True)
    store.add({f"doc{i}": _essay(rng, 1500 + 200 * i) for i in range(5)}, progress=False)
    store_index(store, "ivf")
    store.add({"doc2": _essay(rng, 1400)}, progress=False)  # a replace: the saved index has a gap of unused rows
    path = save_store_index(store, "ivf")
    original, _ = store_index(store, "ivf")
    assert None in original.rows and path.endswith("indexes/ivf-auto.safetensors")

    def no_training(*_):
        raise AssertionError("a saved index is read, not trained again")

    monkeypatch.setattr(IVFInnerProductIndex, "_train", no_training)
    reopened = PageStore.open(str(tmp_path), model)
    loaded, built = store_index(reopened, "ivf")
    assert built and loaded is not original and loaded.rows == original.rows
    assert torch.equal(loaded.live, original.live) and loaded.index.nprobe == original.index.nprobe
    question_ids = model.tokenizer("What is the special magic number for quiet-orchard?", return_tensors="pt",
                                   add_special_tokens=False).input_ids[0]
    if scorer == "trained":
        search = lambda index, **kw: index.search(question_query(model, question_ids), 7, **kw)  # noqa: E731
    else:
        queries, scaling = question_layer_queries(model, question_ids), attention_scaling(model)
        search = lambda index, **kw: index.search(queries, 7, scaling, **kw)  # noqa: E731
    assert search(loaded) == search(original)
    reopened.add({"doc3": _essay(rng, 1300), "doc7": _essay(rng, 1100)}, progress=False)  # a replace and an add
    updated, _ = store_index(reopened, "ivf")
    assert updated is loaded
    monkeypatch.undo()
    fresh, _ = store_index(PageStore.open(str(tmp_path), model), "exact" if scorer == "trained" else "ivf")
    if scorer == "trained":
        assert search(updated, **_all_lists(updated)) == search(fresh)
    else:
        assert search(updated, **_all_lists(updated)) == search(fresh, **_all_lists(fresh))


def test_a_damaged_saved_index_is_a_clear_error(tmp_path, model):
    rng = random.Random(11)
    store = PageStore.open(str(tmp_path), model, create=True)
    store.add({f"doc{i}": _essay(rng, 1500) for i in range(3)}, progress=False)
    path = save_store_index(store, "ivf")
    with open(path, "r+b") as f:
        f.truncate(200)
    with pytest.raises(RetroLMError, match=r"is unreadable \(.*\); delete .*ivf-auto\.safetensors"):
        store_index(PageStore.open(str(tmp_path), model), "ivf")
    with pytest.raises(RetroLMError, match="only IVF indexes are saved"):
        save_store_index(store, "exact")


def test_an_update_that_fails_midway_leaves_no_half_updated_index(tmp_path, model, monkeypatch):
    rng = random.Random(8)
    store = PageStore.open(str(tmp_path), model, create=True)
    store.add({f"doc{i}": _essay(rng, 1500) for i in range(4)}, progress=False)
    first, _ = store_index(store, "ivf")
    store.add({"doc1": _essay(rng, 1600)}, progress=False)

    def fail_after_removing(removed, added):
        first.index.remove(*first.spans[removed[0]])
        raise RuntimeError("interrupted")

    monkeypatch.setattr(first, "update", fail_after_removing)
    with pytest.raises(RuntimeError, match="interrupted"):
        store_index(store, "ivf")
    assert store.index_cache.last is None and not store.index_cache.built
    rebuilt, built = store_index(store, "ivf")
    assert built and rebuilt is not first and len(rebuilt) == sum(e["pages"] for e in store.documents().values())


def _assert_same_ranking(found: list[tuple[str, int, float]], expected: list[tuple[str, int, float]]) -> None:
    assert [(d, p) for d, p, _ in found] == [(d, p) for d, p, _ in expected]
    assert [s for *_, s in found] == pytest.approx([s for *_, s in expected], rel=1e-5)


def _flat(block) -> list[torch.Tensor]:
    return [block] if isinstance(block, torch.Tensor) else [t for pair in block for t in pair]


def _all_lists(index) -> dict:
    return {"nprobe": index.index.nlist} if index.kind == "ivf" else {}


def test_index_rows_must_hold_each_document_together():
    center = [torch.zeros(3, 1, 4)]
    with pytest.raises(RetroLMError, match="'a' is split at row 2"):
        SummaryIndex([("a", 0), ("b", 0), ("a", 1)], center, center)


@pytest.mark.parametrize("seed", range(8))
def test_retrieved_pages_bring_their_neighbours_within_the_budget(seed):
    rng = random.Random(seed)
    pages = {f"d{i}": rng.randint(1, 6) for i in range(rng.randint(1, 4))}
    every = [(d, p) for d, n in pages.items() for p in range(n)]
    seeds = [(d, p, -float(rank)) for rank, (d, p) in enumerate(rng.sample(every, rng.randint(1, len(every))))]
    offsets = rng.choice([(), (1,), (-1,), (1, -1), (1, 2)])
    budget = rng.randint(1, 10)
    picks = with_neighbors(seeds, offsets, budget, pages)
    expected = []  # reference: the seed, then each offset, skipping pages outside the document or taken already
    for d, p, score in seeds:
        for q in [p] + [p + o for o in offsets]:
            if 0 <= q < pages[d] and (d, q) not in [(e[0], e[1]) for e in expected] and len(expected) < budget:
                expected.append((d, q, score))
    assert picks == expected
    assert len(picks) == min(budget, len({(d, q) for d, p, _ in seeds for q in [p] + [p + o for o in offsets]
                                          if 0 <= q < pages[d]}))


CHAT_TEMPLATE = ("{% for m in messages %}<|user|>{{ m['content'] }}<|end|>{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def test_the_question_follows_the_pages_in_the_chat_template(tmp_path, model, monkeypatch):
    """With a chat template, the text after the retrieved pages is the rest of the user message `retrolm generate`
    starts with the context, then the assistant's turn; without one, QUESTION_TEMPLATE."""
    assert text_after_context(model.tokenizer) == QUESTION_TEMPLATE
    monkeypatch.setattr(model.tokenizer, "chat_template", CHAT_TEMPLATE, raising=False)
    after = text_after_context(model.tokenizer)
    assert after == "\n\nAnswer the question using the text above.\nQuestion: {question}<|end|><|assistant|>"
    question, context = "Which lake is amber?", "Some context."
    in_context = model.tokenizer.decode(build_prompt_ids(model.tokenizer, context, question)[0])
    assert in_context == "<|user|>" + context + after.replace("{question}", question), "as generate asks it"
    store = PageStore.open(str(tmp_path), model, create=True)
    store.add({"doc": _essay(random.Random(0), 1000)}, progress=False)
    prompts = []
    generate_after = model.generate_after
    monkeypatch.setattr(model, "generate_after", lambda cache, prompt, *a, **k: prompts.append(prompt) or
                        generate_after(cache, prompt, *a, **k))
    model.answer(question, store, max_new_tokens=2)
    asked = model.tokenizer(after.replace("{question}", question), add_special_tokens=False).input_ids
    assert prompts[0][0, -len(asked):].tolist() == asked
    monkeypatch.setattr(model.tokenizer, "chat_template", "{{ 'no message here' }}")
    with pytest.raises(RetroLMError, match="chat template does not show a user message"):
        model.answer(question, store, max_new_tokens=2)


def test_answer_refuses_what_it_cannot_do(tmp_path, model):
    store = PageStore.open(str(tmp_path / "store"), model, create=True)
    with pytest.raises(RetroLMError, match="holds no documents"):
        model.answer("Anything?", store)
    store.add({"doc": _essay(random.Random(0), 1000)}, progress=False)
    with pytest.raises(RetroLMError, match="must hold {question}"):
        model.answer("Anything?", store, template="Answer:")
    with pytest.raises(RetroLMError, match="the question is empty"):
        model.answer("  ", store)
    with pytest.raises(RetroLMError, match="trained scorer, which keeps bookmark keys, not page summaries"):
        store.page_summaries("doc")


@pytest.mark.parametrize("layers,pages,heads,kv_heads,dim,tokens", [
    (1, 1, 1, 1, 4, 1), (2, 7, 4, 2, 8, 3), (3, 40, 6, 6, 16, 5), (2, 25, 8, 1, 8, 16)])
def test_summed_bound_is_the_inner_product_of_flattened_summaries(layers, pages, heads, kv_heads, dim, tokens):
    """The IVF shortlist's criterion: a page's bound q.c + |q|.r summed over every query row (token and head, each
    against its KV head h // (H / kvh)) and layer, times the scaling, is its flattened summaries' inner product with
    `summed_bound_query`, on random summaries of many shapes."""
    gen = torch.Generator().manual_seed(layers * 100 + pages)
    summaries = [(torch.randn(pages, kv_heads, dim, generator=gen), torch.rand(pages, kv_heads, dim, generator=gen))
                 for _ in range(layers)]
    queries = [torch.randn(tokens, heads, dim, generator=gen) for _ in range(layers)]
    expected = torch.zeros(pages, dtype=torch.float64)
    for rows, (c, r) in zip(queries, summaries):
        for token in range(tokens):
            for head in range(heads):
                q, g = rows[token, head].double(), head // (heads // kv_heads)
                expected += c[:, g].double() @ q + r[:, g].double() @ q.abs()
    found = flat_summaries(summaries) @ summed_bound_query(queries, kv_heads, 0.25)
    torch.testing.assert_close(found.double(), expected * 0.25, rtol=1e-4, atol=1e-4)


def test_ivf_shortlist_is_ranked_by_the_exact_rule_over_its_pages():
    """SummaryIVFIndex on random summaries: with every list probed, the pages it returns are the exact rule's
    ranking over the `candidates` pages of largest summed bound (the softmax over them alone); with a shortlist of
    every page, exactly SummaryIndex's ranking."""
    gen = torch.Generator().manual_seed(11)
    layers, pages, heads, kv_heads, dim = 2, 60, 4, 2, 8
    blocks = {f"doc{d}": [(torch.randn(20, kv_heads, dim, generator=gen), torch.rand(20, kv_heads, dim, generator=gen))
                          for _ in range(layers)] for d in range(3)}
    queries = [torch.randn(5, heads, dim, generator=gen) for _ in range(layers)]
    exact = SummaryIndex.from_blocks(blocks, torch.device("cpu"))
    every = dict(nprobe=8)
    ivf = SummaryIVFIndex(blocks, nlist=8, candidates=pages)
    _assert_same_ranking(ivf.search(queries, 10, 0.3, **every), exact.search(queries, 10, 0.3))
    ivf.candidates, ivf.sample = 12, 0
    coarse = flat_summaries([(torch.cat([b[i][0] for b in blocks.values()]),
                              torch.cat([b[i][1] for b in blocks.values()])) for i in range(layers)])
    shortlist = sorted((coarse @ summed_bound_query(queries, kv_heads, 0.3)).topk(12).indices.tolist())
    over_shortlist = SummaryIndex([exact.rows[i] for i in shortlist], [c[shortlist] for c in exact.center],
                                  [r[shortlist] for r in exact.radius])
    _assert_same_ranking(ivf.search(queries, 5, 0.3, **every), over_shortlist.search(queries, 5, 0.3))
    for doc_id, block in blocks.items():
        assert all(torch.equal(a, b) for a, b in zip(_flat(ivf.block(doc_id)), _flat(block)))
    ivf.sample = pages  # every page left out stands for itself: the shortlist's pages get their exact shares
    in_shortlist = {exact.rows[i] for i in shortlist}
    _assert_same_ranking(ivf.search(queries, 5, 0.3, **every),
                         [row for row in exact.search(queries, pages, 0.3) if row[:2] in in_shortlist][:5])
    ivf.sample = 20  # a sample stands for the 48 left out: the shortlist's shares move towards the exact ones
    sampled = {(d, p): s for d, p, s in ivf.search(queries, 12, 0.3, **every)}
    alone = {(d, p): s for d, p, s in over_shortlist.search(queries, 12, 0.3)}
    full = {(d, p): s for d, p, s in exact.search(queries, pages, 0.3)}
    error = lambda found: sum(abs(found[row] - full[row]) for row in in_shortlist)  # noqa: E731
    assert error(sampled) < error(alone)


def test_a_page_weight_counts_as_that_many_copies_in_the_softmax():
    """scorer.page_scores' log_weight: a page of weight w takes the share w copies of it would take together, and
    leaves the other pages theirs."""
    gen = torch.Generator().manual_seed(3)
    center, radius = torch.randn(5, 2, 8, generator=gen), torch.rand(5, 2, 8, generator=gen)
    rows, valid = torch.randn(1, 3, 4, 8, generator=gen), torch.ones(1, 3, dtype=torch.bool)
    copies = torch.tensor([1, 3, 1, 2, 1])
    scored = torch.tensor([[True, False, True, True, False]])
    weighted = page_scores(rows, valid, center, radius, ~scored, scored, 0.4, copies.float().log())
    repeated = page_scores(rows, valid, center.repeat_interleave(copies, 0), radius.repeat_interleave(copies, 0),
                           ~scored.repeat_interleave(copies, 1), scored.repeat_interleave(copies, 1), 0.4)
    expected = torch.zeros(1, 5).index_add_(1, torch.arange(5).repeat_interleave(copies), repeated)
    torch.testing.assert_close(weighted, expected)


def _reference_summary_scores(queries, center, radius, scaling):
    """Per page, the estimated attention share summed over layers, tokens and heads, one (token, head) at a time:
    each spreads a softmax over every page of its bound q.c + |q|.r (query head h reads KV head h // (H / kvh))."""
    pages = center[0].shape[0]
    total = torch.zeros(pages, dtype=torch.float64)
    for rows, c, r in zip(queries, center, radius):
        heads, kv_heads = rows.shape[1], c.shape[1]
        for token in range(rows.shape[0]):
            for head in range(heads):
                q = rows[token, head].double()
                g = head // (heads // kv_heads)
                bound = torch.tensor([float(q @ c[p, g].double() + q.abs() @ r[p, g].double()) for p in range(pages)])
                total += (bound * scaling).softmax(dim=0)
    return total


@pytest.mark.parametrize("layers,pages,heads,kv_heads,dim,tokens", [
    (1, 1, 1, 1, 4, 1), (2, 7, 4, 2, 8, 3), (3, 40, 6, 6, 16, 5), (2, 25, 8, 1, 8, 16), (4, 13, 4, 4, 32, 2)])
def test_summary_search_ranks_pages_as_the_reference(layers, pages, heads, kv_heads, dim, tokens):
    """SummaryIndex (the training-free scorer's cross-document search) against a per-(token, head) reference on
    random summaries of many shapes: the same scores, best first, across documents."""
    gen = torch.Generator().manual_seed(layers * 1000 + pages)
    center = [torch.randn(pages, kv_heads, dim, generator=gen) for _ in range(layers)]
    radius = [torch.rand(pages, kv_heads, dim, generator=gen) for _ in range(layers)]
    queries = [torch.randn(tokens, heads, dim, generator=gen) for _ in range(layers)]
    rows = sorted((f"doc{i % 3}", i // 3) for i in range(pages))  # each document's rows together
    scaling = dim ** -0.5
    expected = _reference_summary_scores(queries, center, radius, scaling)
    for k in (1, pages, pages + 5):
        found = SummaryIndex(rows, center, radius).search(queries, k, scaling)
        order = expected.argsort(descending=True)[: min(k, pages)]
        assert [score for *_, score in found] == pytest.approx(expected[order].tolist(), rel=1e-4)
        assert [(d, p) for d, p, _ in found] == [rows[i] for i in order.tolist()]
    assert sum(score for *_, score in SummaryIndex(rows, center, radius).search(queries, pages, scaling)) == \
        pytest.approx(layers * tokens * heads, rel=1e-4), "each (token, head) of each layer spreads one unit"
    with pytest.raises(RetroLMError, match="nprobe only apply to the approximate index"):
        SummaryIndex(rows, center, radius).search(queries, 1, scaling, nprobe=2)


def test_ask_command_answers_and_cites_pages(tmp_path, capsys, monkeypatch):
    rng = random.Random(5)
    fact = Fact("quiet-orchard", "3051187", 0.5)
    (tmp_path / "a.txt").write_text(_essay(rng, 1200) + " " + fact.needle + " " + _essay(rng, 1200))
    (tmp_path / "b.txt").write_text(_essay(rng, 2000))
    monkeypatch.chdir(tmp_path)
    assert cli(["index", "build", "a.txt", "b.txt", "--out", "store", "--device", "cpu"]) == 0
    capsys.readouterr()
    question = f"What is the special magic number for {fact.key} mentioned in the provided text?"
    assert cli(["ask", question, "--store", "store", "--device", "cpu", "--max-new-tokens", "9",
                "--template", _ruler_template(fact.key)]) == 0
    out = capsys.readouterr().out
    assert f"answer: {fact.value}" in out, out
    assert "pages attended (15), best first:" in out and "a.txt page" in out and "index (exact)" in out
    assert cli(["ask", question, "--store", "store", "--device", "cpu", "--max-new-tokens", "9", "--index", "ivf",
                "--nprobe", "1000", "--template", _ruler_template(fact.key)]) == 0
    ivf_out = capsys.readouterr().out
    assert "index (ivf, nprobe 1000)" in ivf_out and ivf_out.split("timings:")[0] == out.split("timings:")[0]
    assert cli(["index", "build", "b.txt", "--out", "store", "--device", "cpu", "--index", "ivf"]) == 0
    assert "saved the ivf index of" in capsys.readouterr().out and (tmp_path / "store" / "indexes").is_dir()
    with monkeypatch.context() as patched:
        patched.setattr(IVFInnerProductIndex, "_train", lambda *_: pytest.fail("ask reads the saved index"))
        assert cli(["ask", question, "--store", "store", "--device", "cpu", "--max-new-tokens", "9", "--index",
                    "ivf", "--nprobe", "1000", "--template", _ruler_template(fact.key)]) == 0
    assert capsys.readouterr().out.split("timings:")[0] == out.split("timings:")[0]
    (tmp_path / "c.txt").write_text(_essay(rng, 1800))
    assert cli(["index", "build", "c.txt", "--out", "store", "--device", "cpu"]) == 0  # keeps the saved index current
    assert "saved the ivf index of" in capsys.readouterr().out
    assert cli(["index", "delete", "--store", "store", "c.txt"]) == 0
    assert "saved ivf index still holds them" in capsys.readouterr().out
    assert cli(["ask", question, "--store", "store", "--device", "cpu", "--max-new-tokens", "9", "--index", "ivf",
                "--nprobe", "1000", "--template", _ruler_template(fact.key)]) == 0
    assert capsys.readouterr().out.split("timings:")[0] == out.split("timings:")[0]
    assert cli(["ask", question, "--store", "missing", "--device", "cpu"]) == 2
    assert "not a page store" in capsys.readouterr().err
    assert QUESTION_TEMPLATE.count("{question}") == 1


def test_ask_command_with_the_training_free_scorer(tmp_path, capsys, monkeypatch):
    """`--scorer attention` builds a store of page summaries (what a model without a trained retriever gets) and
    answers from it; the same store asked with the trained scorer is refused, naming the difference."""
    rng = random.Random(6)
    fact = Fact("still-harbor", "8801264", 0.5)
    (tmp_path / "a.txt").write_text(_essay(rng, 2000))
    (tmp_path / "b.txt").write_text(_essay(rng, 1200) + " " + fact.needle + " " + _essay(rng, 1200))
    monkeypatch.chdir(tmp_path)
    assert cli(["index", "build", "a.txt", "b.txt", "--out", "store", "--device", "cpu", "--scorer", "attention"]) == 0
    capsys.readouterr()
    question = f"What is the special magic number for {fact.key} mentioned in the provided text?"
    ask = ["ask", question, "--store", "store", "--device", "cpu", "--max-new-tokens", "9", "--template",
           _ruler_template(fact.key)]
    assert cli(ask + ["--scorer", "attention"]) == 0
    out = capsys.readouterr().out
    assert f"answer: {fact.value}" in out and "b.txt page" in out.split("best first:")[1].split("\n")[1], out
    assert cli(ask) == 2
    assert "scorer ('attention' in the store, 'trained' now)" in capsys.readouterr().err


def test_benchmark_collection_holds_one_distinct_fact_per_document():
    docs, facts = collection(40, 1024, seed=3)
    assert len({fact.key for fact, _ in facts.values()}) == 40 == len(docs)
    for doc_id, text in docs.items():
        fact, offset = facts[doc_id]
        assert len(text) <= 1024 and text.isascii() and text[offset:].startswith(fact.needle)
        assert text.count("special magic number") == 1, "each document holds its own fact only"
