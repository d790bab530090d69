"""Answering a question over a page store (page_store.py): pages retrieved across documents, then attended to.

1. Every stored page's bookmark key goes into an exact inner-product index (index.py: faiss on the CPU, one
   matrix product on a GPU), built once per state of the store.
2. The question prompt (as `retrolm generate` writes it after a context) is the query: the retriever's query of
   its last page-sized window scores every page, with the score used within one input (summed per-head inner
   products, which is the flattened vectors' inner product the index computes).
3. The best `sink_pages + local_pages + top_k` pages, in the store's document order and page order within a
   document, are loaded into a fresh paged cache as if they were one input, and the question is encoded after
   them and decoded as by `generate`: the page budget of one query page, so every retrieved page is attended
   (positions re-packed as usual). The first page loaded plays the attention sink.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from .errors import RetroLMError
from .index import InnerProductIndex
from .pager import page_windows
from .page_store import PageStore

QUESTION_TEMPLATE = "\n\nAnswer the question using the text above.\nQuestion: {question}\nAnswer:"


@dataclass
class Answer:
    text: str
    pages: list[tuple[str, int, float]]  # (document id, page, score) of each page attended, best first
    timings: dict  # seconds: index (0 when reused), retrieve, load, generate


class StoreIndex:
    """The bookmark keys of every page of a store in one inner-product index, rows mapped to (document, page)."""

    def __init__(self, store: PageStore, use_gpu: bool | None = None):
        self.rows: list[tuple[str, int]] = []
        keys = []
        for doc_id in store.documents():
            doc_keys = store.bookmark_keys(doc_id)  # [pages, heads, dim]
            keys.append(doc_keys.flatten(1))
            self.rows += [(doc_id, page) for page in range(doc_keys.shape[0])]
        if not keys:
            raise RetroLMError(f"page store {store.path} holds no documents; add some with `retrolm index build`.")
        self.index = InnerProductIndex(keys[0].shape[1], use_gpu=use_gpu)
        self.index.add(torch.cat(keys))

    def search(self, query: torch.Tensor, k: int) -> list[tuple[str, int, float]]:
        """The k best (document, page, score) for a retriever query [heads, dim], best first."""
        scores, ids = self.index.search(query.flatten()[None], min(k, len(self.rows)))
        return [(*self.rows[i], float(s)) for s, i in zip(scores[0], ids[0]) if i >= 0]


def store_index(store: PageStore) -> tuple[StoreIndex, bool]:
    """The store's index, built on first use and again whenever its documents change; (index, built now)."""
    state = tuple((doc_id, entry["file"]) for doc_id, entry in store.documents().items())
    cached = getattr(store, "_index", None)
    if cached is not None and cached[0] == state:
        return cached[1], False
    index = StoreIndex(store, use_gpu=store.model.device.type == "cuda")
    store._index = (state, index)
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
           template: str = QUESTION_TEMPLATE, **generate_kwargs) -> Answer:
    """Answer `question` from the pages of `store` (a PageStore or its directory) most relevant to it. `template`
    is the text after the retrieved pages, "{question}" standing for the question: a start of the answer in the
    words of the question helps a small model (the default model answers RULER's needles after RULER's own
    "The special magic number for X mentioned in the provided text is")."""
    if "{question}" not in template:
        raise RetroLMError(f"the answer template must hold {{question}} where the question goes; got {template!r}.")
    if model.config.scorer != "trained":
        raise RetroLMError("answering over a page store retrieves pages by bookmark keys, which needs the trained "
                           "scorer: load a model with a trained retriever (retrolm train-retriever) and build its "
                           "store with it.")
    if not question.strip():
        raise RetroLMError("the question is empty; pass the question to answer.")
    store = store if isinstance(store, PageStore) else PageStore.open(store, model)
    started = time.perf_counter()
    index, built = store_index(store)
    indexed = time.perf_counter()
    question_ids = model.tokenizer(template.replace("{question}", question), return_tensors="pt",
                                   add_special_tokens=False).input_ids
    config = model.config
    picks = index.search(question_query(model, question_ids[0]), config.sink_pages + config.local_pages + config.top_k)
    retrieved = time.perf_counter()
    cache, token_ids = load_retrieved(model, store, picks, question_ids.shape[1] + max_new_tokens)
    loaded = time.perf_counter()
    prompt = torch.cat([token_ids, question_ids[0]])[None].to(model.device)
    output = model.generate_after(cache, prompt, max_new_tokens, progress=False, **generate_kwargs)
    text = model.tokenizer.decode(output[0, prompt.shape[1]:], skip_special_tokens=True).strip()
    return Answer(text, picks, {"index_s": (indexed - started) if built else 0.0, "retrieve_s": retrieved - indexed,
                                "load_s": loaded - retrieved, "generate_s": time.perf_counter() - loaded})
