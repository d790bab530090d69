"""Answering a question over a page store (page_store.py): pages retrieved across documents, then attended to.

1. Every stored page's bookmark key goes into an inner-product index (index.py), built once per state of the
   store and index kind, after a store change from the last index's rows plus those of the documents added or
   replaced (`document_rows`: an add to 1,000 documents reads one document's keys). Exact by default (faiss on the
   CPU, one matrix product on a GPU), or `index="ivf"`, faiss's approximate IVF index on the CPU, `nprobe` lists
   searched per question (its recall against exact search: bench/index_recall.py). After a store change an IVF
   index is not trained again while its lists fit the store's size: the documents deleted or replaced are taken
   out of it and those added or replaced put in (store_search.InPlaceUpdates). An IVF index saved in the store
   (`save_store_index`, `retrolm index build --index ivf`; saved_index.py) is read instead of trained in a new
   process.
2. The question prompt (as `retrolm generate` writes it after a context) is the query: the retriever's query of
   its last page-sized window scores every page, with the score used within one input (summed per-head inner
   products, which is the flattened vectors' inner product the index computes). A model with lexical_weight > 0
   adds lexical_weight x each page's lexical score, as within one input, every stored page counting as earlier
   (store_lexical.py: exact, from the key index's top pages and the pages sharing a counted n-gram with the
   question; the n-gram index is built from the stored token ids on first use, and documents added later are
   appended to it).
   A store built with the training-free scorer (`scorer="attention"`: any model, no retriever trained) keeps no
   bookmark keys but each page's per-layer key summaries (scorer.py). Its pages are ranked by that scorer's own
   rule (store_search.SummaryIndex): the question is encoded alone, and in every layer the queries of its last
   `scorer_query_tokens` tokens spread one unit of estimated attention per (token, head) over all the store's
   pages; a page's score is its share summed over the layers (with lexical_weight > 0: that sum per (layer,
   token, head) row, plus lexical_weight x the page's lexical score, exact index only). Exact by default,
   reading every summary per question (its cost grows with pages x layers); `index="ivf"` ranks a shortlist
   instead, found by summed bound in a faiss IVF index of the summaries (store_search.SummaryIVFIndex; recall:
   bench/summary_search.py).
3. The best `sink_pages + local_pages + top_k` pages, each best page bringing its neighbours in its document
   (`neighbor_pages`, `neighbor_direction`) within that budget as within one input, are loaded in the store's
   document order and page order within a document into a fresh paged cache as if they were one input. The
   question is encoded after them and decoded as by `generate`: the page budget of one query page, so every
   retrieved page is attended (positions re-packed as usual). The first page loaded plays the attention sink.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from .errors import RetroLMError
from .index import check_index_options
from .pager import window_bookmarks
from .page_store import PageStore
from .prompt import PLAIN_ANSWER, QUESTION, text_after_context
from .saved_index import check_saved_kind, load_index, save_index
from .store_lexical import StoreLexicalIndex, combined_top, near_miss_count
from .store_search import IndexCache, StoreIndex, SummaryIndex, SummaryIVFIndex

QUESTION_TEMPLATE = QUESTION + PLAIN_ANSWER  # the text after the pages without a chat template


@dataclass
class Answer:
    text: str
    pages: list[tuple[str, int, float]]  # (document id, page, score) of each page attended, best first
    timings: dict  # seconds: index (0 when reused), retrieve, load, generate


def _reader(store: PageStore):
    """What a store index holds of a document, read from the store: bookmark keys, or page summaries."""
    return store.bookmark_keys if store.model.config.scorer == "trained" else store.page_summaries


def document_rows(store: PageStore) -> dict:
    """doc id -> what the store's index holds of it (bookmark keys under the trained scorer, else page summaries),
    in store order. A document the last index built for this store holds with the same shard is taken from that
    index, not read again: after a store change only the documents added or replaced are read from disk (with
    1,000 documents, an add costs reading one document's rows, not all of them), and no second copy of the rows
    is kept beside the index."""
    if not len(store):
        raise RetroLMError(f"page store {store.path} holds no documents; add some with `retrolm index build`.")
    read = _reader(store)
    cache = store.index_cache
    return {doc_id: cache.last.block(doc_id) if cache.last_files.get(doc_id) == entry["file"] else read(doc_id)
            for doc_id, entry in store.documents().items()}


def store_index(store: PageStore, kind: str = "exact", nlist: int | None = None):
    """The store's index of `kind` (and nlist, for "ivf"), built on first use and again whenever the store's
    documents change, unchanged documents' rows taken from the last index built (`document_rows`); (index, built
    now). One index per kind and nlist is kept per store state (`store.index_cache`); nprobe is a search parameter,
    so changing it reuses the trained index. An "ivf" index is read from the store when one was saved there
    (saved_index.py) and updated in place when it can (`updated_in_place`). A training-free store's index is a
    `SummaryIndex` ("exact") or a `SummaryIVFIndex` ("ivf")."""
    check_index_options(kind, nlist, use_gpu=store.model.device.type == "cuda")  # before reading any row
    documents = store.documents()
    files = {doc_id: entry["file"] for doc_id, entry in documents.items()}
    index = store.index_cache.get(files, (kind, nlist))
    if index is not None:
        return index, False
    if kind == "ivf" and store.index_cache.earlier((kind, nlist)) is None:
        saved = load_index(store, (kind, nlist))
        if saved is not None:
            files_saved, index = saved
            store.index_cache.put(files_saved, (kind, nlist), index)
            if files_saved == files:
                return index, True
    index = updated_in_place(store, documents, (kind, nlist)) if kind == "ivf" else None
    if index is not None:
        return index, True
    if store.model.config.scorer == "trained":
        index = StoreIndex(document_rows(store), use_gpu=store.model.device.type == "cuda", kind=kind, nlist=nlist)
    elif kind == "ivf":
        index = SummaryIVFIndex(document_rows(store), nlist=nlist)
    else:
        index = SummaryIndex.from_blocks(document_rows(store), store.model.device)
    store.index_cache.put(files, (kind, nlist), index)
    return index, True


def save_store_index(store: PageStore, kind: str = "ivf", nlist: int | None = None) -> str:
    """Bring the store's index of `kind` (only "ivf" is saved) up to date and write it into the store
    (saved_index.py), so that a new process reads it instead of training it; its path."""
    check_saved_kind(kind)  # before any index is built
    index, _ = store_index(store, kind, nlist)
    files = {doc_id: entry["file"] for doc_id, entry in store.documents().items()}
    return save_index(store, (kind, nlist), files, index)


def updated_in_place(store: PageStore, documents: dict[str, dict], key: tuple):
    """Bring the last index built under `key` for an earlier state of the store to its documents now, in place
    (store_search.InPlaceUpdates: the IVF lists kept), if there is one and its lists fit the new size; that index,
    or None when it could not be. The added documents are read before the index changes, so a failed read leaves it
    as it was; an update that fails midway empties the store's index cache, so that a half-updated index is never
    searched."""
    earlier = store.index_cache.earlier(key)
    if earlier is None:
        return None
    files_then, index = earlier
    removed = [doc_id for doc_id, file in files_then.items() if documents.get(doc_id, {}).get("file") != file]
    added = [doc_id for doc_id, entry in documents.items() if files_then.get(doc_id) != entry["file"]]
    if not index.updatable(removed, sum(documents[doc_id]["pages"] for doc_id in added)):
        return None
    read = _reader(store)
    blocks = {doc_id: read(doc_id) for doc_id in added}
    try:
        index.update(removed, blocks)
    except BaseException:
        store.index_cache = IndexCache()
        raise
    store.index_cache.put({doc_id: entry["file"] for doc_id, entry in documents.items()}, key, index)
    return index


def question_query(model, question_ids: torch.Tensor) -> torch.Tensor:
    """The retriever's query [heads, dim] of the last page-sized window of `question_ids` [T]."""
    with torch.no_grad():
        queries, _ = window_bookmarks(question_ids.cpu(), model.retriever, model.base_model.get_input_embeddings(),
                                      torch.tensor([question_ids.shape[0]]), model.config.page_size)
    return queries[0]


def question_layer_queries(model, question_ids: torch.Tensor) -> list[torch.Tensor]:
    """Per layer, the RoPE-free queries [<= scorer_query_tokens, heads, dim] of the last tokens of `question_ids`
    [T], encoded alone: what the training-free scorer scores pages with."""
    cache, _ = model.encode(question_ids[None], logits_to_keep=1, progress=False)
    return [summaries.recent_queries for summaries in cache.layer_summaries()]


def attention_scaling(model) -> float:
    """The softmax scaling of the model's attention (what the training-free scorer weighs its bounds by)."""
    attention = model.base_model.get_decoder().layers[0].self_attn
    return getattr(attention, "scaling", None) or attention.head_dim ** -0.5


def store_lexical_index(store: PageStore, config, hop_stops: torch.Tensor | None = None
                        ) -> tuple[StoreLexicalIndex, bool]:
    """The store's lexical index (store_lexical.py) under `config`'s lexical knobs for its documents now, built from
    their token ids on first use; after documents were only added, the last index takes the new ones; after any
    other change (a document deleted or replaced moves rows) it is built again; (index, changed now). hop_stops:
    the model's table of config.lexical_hop_stops (RetroLM._hop_stop_table())."""
    files = {doc_id: entry["file"] for doc_id, entry in store.documents().items()}
    knobs = (config.page_size, config.lexical_ngram, config.lexical_max_pages, config.lexical_query_pages,
             config.lexical_near_miss_margin, config.lexical_hops, config.lexical_hop_span, config.lexical_hop_stops,
             config.lexical_echo_tokens)
    if store.lexical_index is not None and store.lexical_index[0][1] == knobs:
        (indexed, _), index = store.lexical_index
        if indexed == files:
            return index, False
        if list(files.items())[:len(indexed)] == list(indexed.items()):
            index.extend({doc_id: store.token_ids(doc_id) for doc_id in list(files)[len(indexed):]})
            store.lexical_index = (files, knobs), index
            return index, True
    index = StoreLexicalIndex({doc_id: store.token_ids(doc_id) for doc_id in files}, config, hop_stops)
    store.lexical_index = (files, knobs), index
    return index, True


def check_lexical_search(config, index: str) -> None:
    """Lexical scores in a training-free store need every page's share, which only the exact index gives."""
    if config.lexical_weight and config.scorer == "attention" and index != "exact":
        raise RetroLMError(f"lexical page scores (lexical_weight={config.lexical_weight}) in a store searched by the "
                           f"training-free scorer need index='exact' (got {index!r}); pass index='exact', or "
                           "lexical_weight=0 for the approximate index.")


def search_pages(model, pages_index, question_ids: torch.Tensor, k: int, nprobe: int | None = None,
                 lexical: StoreLexicalIndex | None = None):
    """The k best (document, page, score) of `pages_index` (`store_index`) for the question prompt's ids [T], best
    first, by the model's scorer (module docstring, step 2); with `lexical` (a model with lexical_weight > 0),
    by key score (training-free: share per query row, in [0, 1] as within one input) plus lexical_weight x lexical score
    (store_lexical.py)."""
    weight = model.config.lexical_weight
    scores = lexical.scores(question_ids) if lexical is not None else {}
    reach = k + near_miss_count(scores)  # seeds past the near misses keep the combined top k exact
    if model.config.scorer == "trained":
        query = question_query(model, question_ids)
        if lexical is None:
            return pages_index.search(query, k, nprobe=nprobe)
        seeds = pages_index.search(query, reach, nprobe=nprobe)
        return combined_top(seeds, scores, lambda pages: pages_index.page_scores(query, pages), weight, k)
    queries, scaling = question_layer_queries(model, question_ids), attention_scaling(model)
    if lexical is None:
        return pages_index.search(queries, k, scaling, nprobe=nprobe)
    check_lexical_search(model.config, pages_index.kind)
    rows = sum(q.shape[0] * q.shape[1] for q in queries)  # (token, head) rows of every layer: the share's total
    seeds = [(doc_id, page, score / rows) for doc_id, page, score in pages_index.search(queries, reach, scaling)]
    return combined_top(seeds, scores,
                        lambda pages: [s / rows for s in pages_index.page_scores(queries, pages, scaling)], weight, k)


def with_neighbors(seeds: list[tuple[str, int, float]], offsets: tuple[int, ...], budget: int,
                   pages: dict[str, int]) -> list[tuple[str, int, float]]:
    """At most `budget` pages: each seed (document, page, score), best first, then the pages at `offsets` from it in
    its own document (RetroLMConfig.neighbor_offsets: a fact cut by a page end is read whole, as within one input),
    each page once. A neighbour carries the score of the page that brought it. `pages`: pages per
    document."""
    taken: dict[tuple[str, int], float] = {}
    for doc_id, page, score in seeds:
        for at in (page, *(page + d for d in offsets)):
            if len(taken) < budget and 0 <= at < pages[doc_id] and (doc_id, at) not in taken:
                taken[(doc_id, at)] = score
    return [(doc_id, page, score) for (doc_id, page), score in taken.items()]


def load_retrieved(model, store: PageStore, picks: list[tuple[str, int, float]], room: int):
    """A paged cache holding the `picks` (document, page, score) in store order, with `room` tokens to spare; and
    the token ids [N] it holds."""
    order = {doc_id: i for i, doc_id in enumerate(store.documents())}
    by_doc: dict[str, list[int]] = {}
    for doc_id, page, _ in sorted(picks, key=lambda pick: (order[pick[0]], pick[1])):
        by_doc.setdefault(doc_id, []).append(page)
    docs = [store.read_pages(doc_id, pages) for doc_id, pages in by_doc.items()]
    token_ids = torch.cat([doc.token_ids for doc in docs])
    cache = model.new_cache(token_ids.shape[0] + room, resident=True)  # a page budget: no need to offload
    layers = range(len(docs[0].keys))
    trained = docs[0].bookmark_keys is not None  # else the cache summarises the pages from their keys
    cache.load_pages(token_ids, [torch.cat([d.keys[i] for d in docs], dim=1) for i in layers],
                     [torch.cat([d.values[i] for d in docs], dim=1) for i in layers],
                     torch.cat([d.page_starts for d in docs]),
                     torch.cat([d.page_queries for d in docs]) if trained else None,
                     torch.cat([d.bookmark_keys for d in docs]) if trained else None)
    return cache, token_ids


@torch.no_grad()
def answer(model, question: str, store: PageStore | str, max_new_tokens: int = 64,
           template: str | None = None, index: str = "exact", nprobe: int | None = None,
           **generate_kwargs) -> Answer:
    """Answer `question` from the pages of `store` (a PageStore or its directory) most relevant to it. `template`
    is the text after the retrieved pages, "{question}" standing for the question; None: the question as
    `retrolm generate` asks it after a context, in the tokenizer's chat template when it has one
    (prompt.text_after_context: the template's text before the user's message is left out), else ending in
    "Answer:" (QUESTION_TEMPLATE). A start of the answer in the words of the question helps a small model (the
    default model answers RULER's needles after RULER's own "The special magic number for X mentioned in the
    provided text is"). index: "exact" (exact search) or "ivf" (approximate, CPU only: raises for a model on a
    GPU), `nprobe` lists searched per question ("ivf" only; default index.DEFAULT_NPROBE). Under the training-free
    scorer, "ivf" shortlists pages by summed bound and ranks the shortlist by that scorer's rule (module
    docstring, step 2), and nprobe defaults to half the lists (store_search.DEFAULT_SUMMARY_PROBED_SHARE)."""
    template = text_after_context(model.tokenizer) if template is None else template
    if "{question}" not in template:
        raise RetroLMError(f"the answer template must hold {{question}} where the question goes; got {template!r}.")
    if not question.strip():
        raise RetroLMError("the question is empty; pass the question to answer.")
    check_index_options(index, nprobe=nprobe, use_gpu=model.device.type == "cuda")
    check_lexical_search(model.config, index)
    config = model.config
    store = store if isinstance(store, PageStore) else PageStore.open(store, model)
    started = time.perf_counter()
    pages_index, built = store_index(store, index)
    lexical, lexical_built = (store_lexical_index(store, config, model._hop_stop_table()) if config.lexical_weight
                              else (None, False))
    indexed = time.perf_counter()
    question_ids = model.tokenizer(template.replace("{question}", question), return_tensors="pt",
                                   add_special_tokens=False).input_ids
    budget = config.sink_pages + config.local_pages + config.top_k
    seeds = search_pages(model, pages_index, question_ids[0], budget, nprobe, lexical)
    picks = with_neighbors(seeds, config.neighbor_offsets, budget,
                           {doc_id: entry["pages"] for doc_id, entry in store.documents().items()})
    retrieved = time.perf_counter()
    cache, token_ids = load_retrieved(model, store, picks, question_ids.shape[1] + max_new_tokens)
    loaded = time.perf_counter()
    prompt = torch.cat([token_ids, question_ids[0]])[None].to(model.device)
    output = model.generate_after(cache, prompt, max_new_tokens, progress=False, **generate_kwargs)
    text = model.tokenizer.decode(output[0, prompt.shape[1]:], skip_special_tokens=True).strip()
    return Answer(text, picks, {"index_s": (indexed - started) if built or lexical_built else 0.0,
                                "retrieve_s": retrieved - indexed, "load_s": loaded - retrieved,
                                "generate_s": time.perf_counter() - loaded})
