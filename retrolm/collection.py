"""Answering a question over a page store (page_store.py): pages retrieved across documents, then attended to.

1. Every stored page's bookmark key goes into an inner-product index (index.py), built once per state of the
   store and index kind: exact by default (faiss on the CPU, one matrix product on a GPU), or `index="ivf"`, faiss's
   approximate IVF index on the CPU, `nprobe` lists searched per question (its recall against exact search:
   bench/index_recall.py).
2. The question prompt (as `retrolm generate` writes it after a context) is the query: the retriever's query of
   its last page-sized window scores every page, with the score used within one input (summed per-head inner
   products, which is the flattened vectors' inner product the index computes).
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

QUESTION_TEMPLATE = "\n\nAnswer the question using the text above.\nQuestion: {question}\nAnswer:"


@dataclass
class Answer:
    text: str
    pages: list[tuple[str, int, float]]  # (document id, page, score) of each page attended, best first
    timings: dict  # seconds: index (0 when reused), retrieve, load, generate


class StoreIndex:
    """The bookmark keys of every page of a store in one inner-product index, rows mapped to (document, page).

    kind: "exact" or "ivf" (index.make_index; nlist and nprobe apply to "ivf", which raises on a GPU). The IVF index
    is trained on all the store's keys, added at once."""

    def __init__(self, store: PageStore, use_gpu: bool | None = None, kind: str = "exact", nlist: int | None = None,
                 nprobe: int | None = None):
        check_index_options(kind, nlist, nprobe, use_gpu)  # before reading any key
        self.rows: list[tuple[str, int]] = []
        keys = []
        for doc_id in store.documents():
            doc_keys = store.bookmark_keys(doc_id)  # [pages, heads, dim]
            keys.append(doc_keys.flatten(1))
            self.rows += [(doc_id, page) for page in range(doc_keys.shape[0])]
        if not keys:
            raise RetroLMError(f"page store {store.path} holds no documents; add some with `retrolm index build`.")
        self.kind = kind
        self.index = make_index(keys[0].shape[1], kind, use_gpu=use_gpu, nlist=nlist, nprobe=nprobe)
        self.index.add(torch.cat(keys))  # [pages, heads * dim]

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


def store_index(store: PageStore, kind: str = "exact", nlist: int | None = None) -> tuple[StoreIndex, bool]:
    """The store's index of `kind` (and nlist, for "ivf"), built on first use and again whenever the store's
    documents change; (index, built now). One index per kind and nlist is kept per store state; nprobe is a search
    parameter (`StoreIndex.search`), so changing it reuses the trained index."""
    state = tuple((doc_id, entry["file"]) for doc_id, entry in store.documents().items())
    cached = getattr(store, "_indexes", None)
    if cached is None or cached[0] != state:
        cached = store._indexes = (state, {})
    key = (kind, nlist)
    if key in cached[1]:
        return cached[1][key], False
    index = StoreIndex(store, use_gpu=store.model.device.type == "cuda", kind=kind, nlist=nlist)
    cached[1][key] = index
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


def with_neighbors(seeds: list[tuple[str, int, float]], offsets: tuple[int, ...], budget: int,
                   pages: dict[str, int]) -> list[tuple[str, int, float]]:
    """At most `budget` pages: each seed (document, page, score), best first, then the pages at `offsets` from it in
    its own document (RetroLMConfig.neighbor_offsets: a fact cut by a page end is read whole, as within one input),
    each page once. A neighbour carries the score of the page that brought it. `pages`: complete pages per
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
    cache = model.new_cache(token_ids.shape[0] + room)
    layers = range(len(docs[0].keys))
    cache.load_pages(token_ids, [torch.cat([d.keys[i] for d in docs], dim=1) for i in layers],
                     [torch.cat([d.values[i] for d in docs], dim=1) for i in layers],
                     torch.cat([d.page_starts for d in docs]), torch.cat([d.page_queries for d in docs]),
                     torch.cat([d.bookmark_keys for d in docs]))
    return cache, token_ids


@torch.no_grad()
def answer(model, question: str, store: PageStore | str, max_new_tokens: int = 64,
           template: str = QUESTION_TEMPLATE, index: str = "exact", nprobe: int | None = None,
           **generate_kwargs) -> Answer:
    """Answer `question` from the pages of `store` (a PageStore or its directory) most relevant to it. `template`
    is the text after the retrieved pages, "{question}" standing for the question: a start of the answer in the
    words of the question helps a small model (the default model answers RULER's needles after RULER's own
    "The special magic number for X mentioned in the provided text is"). index: "exact" (exact inner-product
    search) or "ivf" (approximate, CPU only: raises for a model on a GPU), `nprobe` lists searched per question
    (default index.DEFAULT_NPROBE; "ivf" only)."""
    if "{question}" not in template:
        raise RetroLMError(f"the answer template must hold {{question}} where the question goes; got {template!r}.")
    if model.config.scorer != "trained":
        raise RetroLMError("answering over a page store retrieves pages by bookmark keys, which needs the trained "
                           "scorer: load a model with a trained retriever (retrolm train-retriever) and build its "
                           "store with it.")
    if not question.strip():
        raise RetroLMError("the question is empty; pass the question to answer.")
    check_index_options(index, nprobe=nprobe, use_gpu=model.device.type == "cuda")
    store = store if isinstance(store, PageStore) else PageStore.open(store, model)
    started = time.perf_counter()
    pages_index, built = store_index(store, index)
    indexed = time.perf_counter()
    question_ids = model.tokenizer(template.replace("{question}", question), return_tensors="pt",
                                   add_special_tokens=False).input_ids
    config = model.config
    budget = config.sink_pages + config.local_pages + config.top_k
    seeds = pages_index.search(question_query(model, question_ids[0]), budget, nprobe=nprobe)
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
