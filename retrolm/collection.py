"""Answering a question over a page store (page_store.py): pages retrieved across documents, then attended to.

1. Every stored page's bookmark key goes into an inner-product index (index.py), built once per state of the
   store and index kind, after a store change from the last index's rows plus those of the documents added or
   replaced (`document_rows`: an add to 1,000 documents reads one document's keys). Exact by default (faiss on the
   CPU, one matrix product on a GPU), or `index="ivf"`, faiss's approximate IVF index on the CPU, `nprobe` lists
   searched per question (its recall against exact search: bench/index_recall.py).
2. The question prompt (as `retrolm generate` writes it after a context) is the query: the retriever's query of
   its last page-sized window scores every page, with the score used within one input (summed per-head inner
   products, which is the flattened vectors' inner product the index computes).
   A store built with the training-free scorer (`scorer="attention"`: any model, no retriever trained) keeps no
   bookmark keys but each page's per-layer key summaries (scorer.py). Its pages are ranked by that scorer's own
   rule (`SummaryIndex`): the question is encoded alone, and in every layer the queries of its last
   `scorer_query_tokens` tokens spread one unit of estimated attention per (token, head) over all the store's
   pages; a page's score is its share summed over the layers. This is no inner product, so that search is exact
   and reads every summary (no faiss, no "ivf"): its cost grows with pages x layers (bench/collection_qa.py).
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
from .index import check_index_options, make_index
from .pager import page_windows
from .page_store import PageStore
from .prompt import PLAIN_ANSWER, QUESTION, text_after_context
from .scorer import page_scores

QUESTION_TEMPLATE = QUESTION + PLAIN_ANSWER  # the text after the pages without a chat template


@dataclass
class Answer:
    text: str
    pages: list[tuple[str, int, float]]  # (document id, page, score) of each page attended, best first
    timings: dict  # seconds: index (0 when reused), retrieve, load, generate


class StoreIndex:
    """The bookmark keys of every page of a store in one inner-product index, rows mapped to (document, page).

    blocks: doc id -> its bookmark keys [pages, heads, dim] or [pages, heads * dim], in store order, at least one
    (`document_rows`). kind: "exact" or "ivf" (index.make_index; nlist and nprobe apply to "ivf", which raises on a
    GPU). The IVF index is trained on all the keys, added at once."""

    def __init__(self, blocks: dict[str, torch.Tensor], use_gpu: bool | None = None, kind: str = "exact",
                 nlist: int | None = None, nprobe: int | None = None):
        check_index_options(kind, nlist, nprobe, use_gpu)
        self.rows = _rows({doc_id: keys.shape[0] for doc_id, keys in blocks.items()})
        self.spans = _spans(self.rows)
        dim = next(iter(blocks.values()))[0].numel()
        self.kind = kind
        self.index = make_index(dim, kind, use_gpu=use_gpu, nlist=nlist, nprobe=nprobe)
        on = self.index.device if self.index.on_gpu else "cpu"  # kept rows stay where they are, read ones move once
        self.index.add(torch.cat([keys.flatten(1).to(on, torch.float32) for keys in blocks.values()]))

    def block(self, doc_id: str) -> torch.Tensor:
        """One document's bookmark keys [pages, heads * dim] as indexed."""
        return self.index.vectors(*self.spans[doc_id])

    def search(self, query: torch.Tensor, k: int, nprobe: int | None = None) -> list[tuple[str, int, float]]:
        """The k best (document, page, score) for a retriever query [heads, dim], best first. nprobe (the "ivf"
        kind only; default the index's) lists are searched; an approximate search may find fewer than k pages."""
        k = min(k, len(self.rows))
        if nprobe is None:
            scores, ids = self.index.search(query.flatten()[None], k)
        else:
            check_index_options(self.kind, nprobe=nprobe, use_gpu=self.index.on_gpu)
            scores, ids = self.index.search(query.flatten()[None], k, nprobe=nprobe)
        return [(*self.rows[i], float(s)) for s, i in zip(scores[0], ids[0]) if i >= 0]


class SummaryIndex:
    """The training-free scorer's page summaries (per layer, centre and radius of each page's RoPE-free keys) of
    every page of a store, rows mapped to (document, page), searched exactly with that scorer's rule
    (scorer.page_scores, as within one input; module docstring, step 2)."""

    kind = "exact"

    def __init__(self, rows: list[tuple[str, int]], center: list[torch.Tensor], radius: list[torch.Tensor]):
        """rows: (document, page) of each summary row, each document's rows together; center, radius: per layer
        [rows, kv_heads, dim]."""
        self.rows, self.center, self.radius = rows, center, radius
        self.spans = _spans(rows)

    @classmethod
    def from_blocks(cls, blocks: dict[str, list[tuple[torch.Tensor, torch.Tensor]]],
                    device: torch.device) -> "SummaryIndex":
        """blocks: doc id -> its per-layer (centre, radius) [pages, kv_heads, dim], in store order, at least one
        (`document_rows`)."""
        rows = _rows({doc_id: summaries[0][0].shape[0] for doc_id, summaries in blocks.items()})
        per_doc = list(blocks.values())
        layers = range(len(per_doc[0]))
        return cls(rows, [torch.cat([doc[i][0].to(device) for doc in per_doc]) for i in layers],
                   [torch.cat([doc[i][1].to(device) for doc in per_doc]) for i in layers])

    def block(self, doc_id: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """One document's per-layer (centre, radius) [pages, kv_heads, dim] as indexed."""
        start, end = self.spans[doc_id]
        return [(center[start:end], radius[start:end]) for center, radius in zip(self.center, self.radius)]

    def search(self, queries: list[torch.Tensor], k: int, scaling: float) -> list[tuple[str, int, float]]:
        """The k best (document, page, score) for per-layer RoPE-free queries [tokens, heads, dim], best first: a
        page's score is its estimated attention share summed over the layers."""
        n = len(self.rows)
        every = torch.ones(1, n, dtype=torch.bool, device=self.center[0].device)
        total = torch.zeros(n, device=every.device)
        for layer, rows in enumerate(queries):
            valid = torch.ones(1, rows.shape[0], dtype=torch.bool, device=every.device)
            total += page_scores(rows[None].to(every.device), valid, self.center[layer], self.radius[layer],
                                 ~every, every, scaling)[0]
        scores, ids = total.topk(min(k, n))
        return [(*self.rows[i], float(s)) for s, i in zip(scores.tolist(), ids.tolist())]


def _rows(pages: dict[str, int]) -> list[tuple[str, int]]:
    """(document, page) of each index row, for documents' page counts in index order."""
    return [(doc_id, page) for doc_id, count in pages.items() for page in range(count)]


def _spans(rows: list[tuple[str, int]]) -> dict[str, tuple[int, int]]:
    """Each document's index rows (start, end): its rows must lie together."""
    spans: dict[str, tuple[int, int]] = {}
    for i, (doc_id, _) in enumerate(rows):
        start, end = spans.get(doc_id, (i, i))
        if end != i:
            raise RetroLMError(f"an index holds each document's rows together; {doc_id!r} is split at row {i}.")
        spans[doc_id] = (start, i + 1)
    return spans


def document_rows(store: PageStore) -> dict:
    """doc id -> what the store's index holds of it (bookmark keys under the trained scorer, else page summaries),
    in store order. A document the last index built for this store holds with the same shard is taken from that
    index, not read again: after a store change only the documents added or replaced are read from disk (with
    1,000 documents, an add costs reading one document's rows, not all of them), and no second copy of the rows
    is kept beside the index."""
    if not len(store):
        raise RetroLMError(f"page store {store.path} holds no documents; add some with `retrolm index build`.")
    read = store.bookmark_keys if store.model.config.scorer == "trained" else store.page_summaries
    files, last = getattr(store, "_last_index", ({}, None))
    return {doc_id: last.block(doc_id) if files.get(doc_id) == entry["file"] else read(doc_id)
            for doc_id, entry in store.documents().items()}


def store_index(store: PageStore, kind: str = "exact", nlist: int | None = None):
    """The store's index of `kind` (and nlist, for "ivf"), built on first use and again whenever the store's
    documents change, unchanged documents' rows taken from the last index built (`document_rows`); (index, built
    now). One index per kind and nlist is kept per store state; nprobe is a search parameter
    (`StoreIndex.search`), so changing it reuses the trained index. A training-free store's index is a
    `SummaryIndex` (exact only)."""
    check_index_options(kind, nlist, use_gpu=store.model.device.type == "cuda")  # before reading any row
    files = {doc_id: entry["file"] for doc_id, entry in store.documents().items()}
    cached = getattr(store, "_indexes", None)
    if cached is None or cached[0] != files:
        cached = store._indexes = (files, {})
    key = (kind, nlist)
    if key in cached[1]:
        return cached[1][key], False
    if store.model.config.scorer == "trained":
        index = StoreIndex(document_rows(store), use_gpu=store.model.device.type == "cuda", kind=kind, nlist=nlist)
    else:
        index = SummaryIndex.from_blocks(document_rows(store), store.model.device)
    cached[1][key] = index
    store._last_index = (files, index)
    return index, True


def question_query(model, question_ids: torch.Tensor) -> torch.Tensor:
    """The retriever's query [heads, dim] of the last page-sized window of `question_ids` [T]."""
    P, total = model.config.page_size, question_ids.shape[0]
    ends = torch.tensor([total])
    ids, lengths = page_windows(question_ids.cpu(), (ends - P).clamp(min=0), ends, P)
    embed = model.base_model.get_input_embeddings()
    with torch.no_grad():
        queries, _ = model.retriever(embed(ids.to(model.device)), lengths.to(model.device))
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


def search_pages(model, pages_index, question_ids: torch.Tensor, k: int, nprobe: int | None = None):
    """The k best (document, page, score) of `pages_index` (`store_index`) for the question prompt's ids [T], best
    first, by the model's scorer (module docstring, step 2)."""
    if model.config.scorer == "trained":
        return pages_index.search(question_query(model, question_ids), k, nprobe=nprobe)
    return pages_index.search(question_layer_queries(model, question_ids), k, attention_scaling(model))


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
    provided text is"). index: "exact" (exact inner-product
    search) or "ivf" (approximate, CPU only: raises for a model on a GPU), `nprobe` lists searched per question
    (default index.DEFAULT_NPROBE; "ivf" only). A store of the training-free scorer is searched exactly with that
    scorer's rule (module docstring, step 2): "ivf" raises for it."""
    template = text_after_context(model.tokenizer) if template is None else template
    if "{question}" not in template:
        raise RetroLMError(f"the answer template must hold {{question}} where the question goes; got {template!r}.")
    if not question.strip():
        raise RetroLMError("the question is empty; pass the question to answer.")
    trained = model.config.scorer == "trained"
    if not trained and (index != "exact" or nprobe is not None):
        raise RetroLMError(f"index={index!r}{'' if nprobe is None else f', nprobe={nprobe}'}: a store of the "
                           "training-free scorer is searched exactly by its page summaries (no inner-product index "
                           "to approximate); leave index='exact' and nprobe unset, or use a model with a trained "
                           "retriever (retrolm train-retriever).")
    check_index_options(index, nprobe=nprobe, use_gpu=model.device.type == "cuda")
    store = store if isinstance(store, PageStore) else PageStore.open(store, model)
    started = time.perf_counter()
    pages_index, built = store_index(store, index)
    indexed = time.perf_counter()
    question_ids = model.tokenizer(template.replace("{question}", question), return_tensors="pt",
                                   add_special_tokens=False).input_ids
    config = model.config
    budget = config.sink_pages + config.local_pages + config.top_k
    seeds = search_pages(model, pages_index, question_ids[0], budget, nprobe)
    picks = with_neighbors(seeds, config.neighbor_offsets, budget,
                           {doc_id: entry["pages"] for doc_id, entry in store.documents().items()})
    retrieved = time.perf_counter()
    cache, token_ids = load_retrieved(model, store, picks, question_ids.shape[1] + max_new_tokens)
    loaded = time.perf_counter()
    prompt = torch.cat([token_ids, question_ids[0]])[None].to(model.device)
    output = model.generate_after(cache, prompt, max_new_tokens, progress=False, **generate_kwargs)
    text = model.tokenizer.decode(output[0, prompt.shape[1]:], skip_special_tokens=True).strip()
    return Answer(text, picks, {"index_s": (indexed - started) if built else 0.0, "retrieve_s": retrieved - indexed,
                                "load_s": loaded - retrieved, "generate_s": time.perf_counter() - loaded})
