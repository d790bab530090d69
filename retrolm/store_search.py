"""The indexes a page store's pages are searched with (collection.py), rows mapped to (document, page), and the
cache that keeps them per store state.

- `StoreIndex`: the trained scorer's bookmark keys in an inner-product index (index.py: exact, or "ivf").
- `SummaryIndex`: the training-free scorer's page summaries (per layer, centre and radius of each page's RoPE-free
  keys), searched exactly with that scorer's rule (scorer.page_scores, as within one input): the question's
  queries of its last tokens spread one unit of estimated attention per (token, head) over all pages in every
  layer, and a page's score is its share summed over the layers. It reads every summary per question.
- `SummaryIVFIndex` (kind "ivf"): the same rule over a shortlist. A page's bound for query q in layer l and KV head h
  is q.c + |q|.r, linear in [q, |q|]: summed over the question's query rows, layers and heads it is one inner
  product, of the page's summaries flattened into one vector with the question's summed [q, |q|] per (layer, head).
  A faiss IVF index over those vectors finds the `candidates` pages of largest summed bound among its `nprobe`
  lists, and the exact rule ranks them. In its softmax the pages left out are represented by a uniform sample of
  `sample` of them, each weighted by how many pages it represents (an unbiased estimate of the full softmax's
  denominator: a softmax over the shortlist alone overrates the pages of query rows whose attention is spread).
  The vectors are the summaries, so nothing is held twice. Its recall against `SummaryIndex` is measured by
  bench/summary_search.py.
- `InPlaceUpdates` (a base of `StoreIndex` and `SummaryIVFIndex`): after a store change, an IVF index takes the
  documents removed out and puts those added in (`update`), its trained lists kept while they fit the store's
  size; so an add to a store of 1,000 documents costs that document's rows, not a training of the lists.
- `IndexCache`: each kind's index with the store state it was built for, and the last index built, whose rows of
  unchanged documents the next one takes instead of reading them again (collection.document_rows).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .errors import RetroLMError
from .index import IVFInnerProductIndex, check_index_options, make_index
from .scorer import page_scores

# Defaults of the training-free store's IVF search (bench/results/collection/summary_search.md, 14,880 pages): the
# share of lists probed, the pages handed to the exact rule, and the pages sampled from the rest to stand for them in
# its softmax. Summed bound is a coarse criterion, so it needs far more lists probed than bookmark keys do
# (index.DEFAULT_NPROBE): 16 of 488 lists held 28% of the exact search's pages, half of them 80%.
DEFAULT_SUMMARY_PROBED_SHARE = 0.5
DEFAULT_SUMMARY_CANDIDATES = 1024
DEFAULT_DENOMINATOR_SAMPLE = 1024


class InPlaceUpdates:
    """Documents added, replaced and deleted in an index in place, the trained lists of an IVF index kept
    (`updatable`, `update`). `rows` maps row numbers to (document, page), None where a document was taken out;
    `live` [rows] marks the numbers in use, `spans` each document's (start, end)."""

    rows: list[tuple[str, int] | None]
    spans: dict[str, tuple[int, int]]
    live: torch.Tensor
    index: object  # index.py's InnerProductIndex or IVFInnerProductIndex
    SAVED: tuple[str, ...] = ()  # the attributes a subclass saves beside its IVF index (`saved`)

    def __len__(self) -> int:
        """Pages in the index."""
        return len(self.index)

    def _number_rows(self, pages: dict[str, int]) -> None:
        self.rows = rows_of(pages)
        self.spans = spans_of(self.rows)
        self.live = torch.ones(len(self.rows), dtype=torch.bool)

    def updatable(self, removed: list[str], added_pages: int) -> bool:
        """Whether `update` may bring the index to the store with the documents `removed` taken out and
        `added_pages` pages added: an IVF index whose lists suit its new size (IVFInnerProductIndex.lists_fit), with
        no more unused row numbers than pages in use after the change (past that, an index built afresh numbers the
        rows without gaps again)."""
        if self.index.kind != "ivf":
            return False
        pages = len(self) + added_pages - sum(end - start for start, end in (self.spans[d] for d in removed))
        return self.index.lists_fit(pages) and len(self.rows) + added_pages - pages <= pages

    def update(self, removed: list[str], added: dict) -> None:
        """Take the documents `removed` out, then add `added` (doc id -> what the store reads of it, as the
        constructor takes), numbered after every row so far; a replaced document is in both."""
        for doc_id in removed:
            start, end = self.spans.pop(doc_id)
            self.index.remove(start, end)
            self.rows[start:end] = [None] * (end - start)
            self.live[start:end] = False
        if not added:
            return
        first, rows = len(self.rows), rows_of({doc_id: self._pages(block) for doc_id, block in added.items()})
        self.index.add(torch.cat([self._vectors(block) for block in added.values()]))
        self.spans.update({doc_id: (first + start, first + end) for doc_id, (start, end) in spans_of(rows).items()})
        self.rows += rows
        self.live = torch.cat([self.live, torch.ones(len(rows), dtype=torch.bool)])

    def saved(self) -> tuple[dict[str, torch.Tensor], dict]:
        """An IVF index as saved_index.py writes it: tensors (the faiss index's bytes, each row's document number
        and page, -1 where unused) and JSON settings (the documents' names, the IVF index's and the subclass's
        `SAVED` settings); `restored` builds it back."""
        data, index_settings = self.index.state()
        docs = sorted(self.spans)
        number = {doc_id: i for i, doc_id in enumerate(docs)}
        row_doc = torch.tensor([number[row[0]] if row else -1 for row in self.rows], dtype=torch.int32)
        row_page = torch.tensor([row[1] if row else -1 for row in self.rows], dtype=torch.int32)
        return ({"faiss": torch.from_numpy(data), "row_doc": row_doc, "row_page": row_page},
                {"docs": docs, "index": index_settings, **{name: getattr(self, name) for name in self.SAVED}})

    @classmethod
    def restored(cls, tensors: dict[str, torch.Tensor], settings: dict):
        """The index `saved` returned, as it was (trained lists, row numbers and gaps)."""
        self = cls.__new__(cls)
        for name in cls.SAVED:
            setattr(self, name, settings[name])
        self.index = IVFInnerProductIndex.restored(tensors["faiss"].numpy(), settings["index"])
        docs = settings["docs"]
        self.rows = [(docs[d], p) if d >= 0 else None
                     for d, p in zip(tensors["row_doc"].tolist(), tensors["row_page"].tolist())]
        self.spans = spans_of(self.rows)
        self.live = tensors["row_doc"] >= 0
        return self


class StoreIndex(InPlaceUpdates):
    """The bookmark keys of every page of a store in one inner-product index, rows mapped to (document, page).

    blocks: doc id -> its bookmark keys [pages, heads, dim] or [pages, heads * dim], in store order, at least one
    (collection.document_rows). kind: "exact" or "ivf" (index.make_index; nlist and nprobe apply to "ivf", which
    raises on a GPU). The IVF index is trained on all the keys, added at once."""

    SAVED = ("kind",)

    def __init__(self, blocks: dict[str, torch.Tensor], use_gpu: bool | None = None, kind: str = "exact",
                 nlist: int | None = None, nprobe: int | None = None):
        check_index_options(kind, nlist, nprobe, use_gpu)
        self._number_rows({doc_id: self._pages(keys) for doc_id, keys in blocks.items()})
        dim = next(iter(blocks.values()))[0].numel()
        self.kind = kind
        self.index = make_index(dim, kind, use_gpu=use_gpu, nlist=nlist, nprobe=nprobe)
        on = self.index.device if self.index.on_gpu else "cpu"  # kept rows stay where they are, read ones move once
        self.index.add(torch.cat([self._vectors(keys).to(on) for keys in blocks.values()]))

    @staticmethod
    def _pages(keys: torch.Tensor) -> int:
        return keys.shape[0]

    @staticmethod
    def _vectors(keys: torch.Tensor) -> torch.Tensor:
        return keys.flatten(1).float()

    def block(self, doc_id: str) -> torch.Tensor:
        """One document's bookmark keys [pages, heads * dim] as indexed."""
        return self.index.vectors(*self.spans[doc_id])

    def page_scores(self, query: torch.Tensor, pages: list[tuple[str, int]]) -> list[float]:
        """The exact scores of (document, page)s for a retriever query [heads, dim] (store_lexical: pages the key
        search did not rank high enough to return), each document's keys read from the index once."""
        wanted: dict[str, list[int]] = {}
        for doc_id, page in pages:
            index_row(self.spans, doc_id, page)
            wanted.setdefault(doc_id, []).append(page)
        scores = {}
        for doc_id, doc_pages in wanted.items():
            keys = self.index.vectors(*self.spans[doc_id])[torch.tensor(doc_pages)]
            values = keys @ query.flatten().to(keys.device, torch.float32)
            scores.update(zip(((doc_id, page) for page in doc_pages), values.tolist()))
        return [scores[page] for page in pages]

    def search(self, query: torch.Tensor, k: int, nprobe: int | None = None) -> list[tuple[str, int, float]]:
        """The k best (document, page, score) for a retriever query [heads, dim], best first. nprobe (the "ivf"
        kind only; default the index's) lists are searched; an approximate search may find fewer than k pages."""
        k = min(k, len(self))
        if nprobe is None:
            scores, ids = self.index.search(query.flatten()[None], k)
        else:
            check_index_options(self.kind, nprobe=nprobe, use_gpu=self.index.on_gpu)
            scores, ids = self.index.search(query.flatten()[None], k, nprobe=nprobe)
        return [(*self.rows[i], float(s)) for s, i in zip(scores[0], ids[0]) if i >= 0]


class SummaryIndex:
    """The training-free scorer's page summaries of every page of a store, searched exactly with that scorer's rule
    (module docstring)."""

    kind = "exact"

    def __init__(self, rows: list[tuple[str, int]], center: list[torch.Tensor], radius: list[torch.Tensor]):
        """rows: (document, page) of each summary row, each document's rows together; center, radius: per layer
        [rows, kv_heads, dim]."""
        self.rows, self.center, self.radius = rows, center, radius
        self.spans = spans_of(rows)

    def __len__(self) -> int:
        """Pages in the index."""
        return len(self.rows)

    @classmethod
    def from_blocks(cls, blocks: dict[str, list[tuple[torch.Tensor, torch.Tensor]]],
                    device: torch.device) -> "SummaryIndex":
        """blocks: doc id -> its per-layer (centre, radius) [pages, kv_heads, dim], in store order, at least one
        (collection.document_rows)."""
        rows = rows_of({doc_id: summaries[0][0].shape[0] for doc_id, summaries in blocks.items()})
        per_doc = list(blocks.values())
        layers = range(len(per_doc[0]))
        return cls(rows, [torch.cat([doc[i][0].to(device) for doc in per_doc]) for i in layers],
                   [torch.cat([doc[i][1].to(device) for doc in per_doc]) for i in layers])

    def block(self, doc_id: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """One document's per-layer (centre, radius) [pages, kv_heads, dim] as indexed."""
        start, end = self.spans[doc_id]
        return [(center[start:end], radius[start:end]) for center, radius in zip(self.center, self.radius)]

    def search(self, queries: list[torch.Tensor], k: int, scaling: float,
               nprobe: int | None = None) -> list[tuple[str, int, float]]:
        """The k best (document, page, score) for per-layer RoPE-free queries [tokens, heads, dim], best first: a
        page's score is its estimated attention share summed over the layers. nprobe: None (exact search probes
        nothing; given, it raises as for any exact index)."""
        check_index_options(self.kind, nprobe=nprobe)
        total = summed_shares(queries, self.center, self.radius, scaling)
        scores, ids = total.topk(min(k, len(self.rows)))
        return [(*self.rows[i], float(s)) for s, i in zip(scores.tolist(), ids.tolist())]

    def page_scores(self, queries: list[torch.Tensor], pages: list[tuple[str, int]], scaling: float) -> list[float]:
        """The scores `search` gives (document, page)s (store_lexical: pages it did not rank high enough to
        return)."""
        total = summed_shares(queries, self.center, self.radius, scaling)
        rows = [index_row(self.spans, doc_id, page) for doc_id, page in pages]
        return total[torch.tensor(rows, dtype=torch.long, device=total.device)].tolist() if rows else []


def summed_shares(queries: list[torch.Tensor], center: list[torch.Tensor], radius: list[torch.Tensor],
                  scaling: float, scored: int | None = None, log_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Each page's estimated attention share summed over the layers [scored]: per layer, every query row [tokens,
    heads, dim] spreads a softmax over all N summarised pages (center, radius [N, kv_heads, dim]). scored: only the
    first `scored` pages get a score (default all); the others take part in the softmax alone. log_weight [N]: see
    scorer.page_scores."""
    n = center[0].shape[0]
    scored = n if scored is None else scored
    device = center[0].device
    candidates = (torch.arange(n, device=device) < scored)[None]
    total = torch.zeros(n, device=device)
    for layer, rows in enumerate(queries):
        valid = torch.ones(1, rows.shape[0], dtype=torch.bool, device=device)
        total += page_scores(rows[None].to(device), valid, center[layer], radius[layer], ~candidates, candidates,
                             scaling, log_weight)[0]
    return total[:scored]


class SummaryIVFIndex(InPlaceUpdates):
    """The training-free scorer's page summaries in a faiss IVF index (CPU only): a shortlist of `candidates` pages
    by summed bound, ranked by the exact rule with `sample` pages standing for the rest (module docstring). nlist,
    nprobe: as IVFInnerProductIndex's, but nprobe defaults to DEFAULT_SUMMARY_PROBED_SHARE of the lists (nprobe >=
    nlist shortlists by exact summed bound); candidates >= the store's pages ranks every page as SummaryIndex does,
    and so does a sample of every page left out."""

    kind = "ivf"
    SAVED = ("sample", "candidates", "layers", "kv_heads", "dim")

    def __init__(self, blocks: dict[str, list[tuple[torch.Tensor, torch.Tensor]]], nlist: int | None = None,
                 nprobe: int | None = None, candidates: int = DEFAULT_SUMMARY_CANDIDATES,
                 sample: int = DEFAULT_DENOMINATOR_SAMPLE):
        for name, value, least in (("candidates", candidates, 1), ("sample", sample, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise RetroLMError(f"the summary index's {name} must be an integer >= {least}; got {value!r}.")
        self.sample = sample
        self._number_rows({doc_id: self._pages(summaries) for doc_id, summaries in blocks.items()})
        first = next(iter(blocks.values()))
        self.layers, (_, self.kv_heads, self.dim) = len(first), first[0][0].shape
        self.candidates = candidates
        self.index = IVFInnerProductIndex(self.layers * self.kv_heads * 2 * self.dim, nlist=nlist, nprobe=nprobe,
                                          use_gpu=False)
        self.index.add(torch.cat([self._vectors(summaries) for summaries in blocks.values()]))
        if nprobe is None:
            self.index.nprobe = math.ceil(self.index.nlist * DEFAULT_SUMMARY_PROBED_SHARE)

    @staticmethod
    def _pages(summaries: list[tuple[torch.Tensor, torch.Tensor]]) -> int:
        return summaries[0][0].shape[0]

    @staticmethod
    def _vectors(summaries: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        return flat_summaries(summaries)

    def block(self, doc_id: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """One document's per-layer (centre, radius) [pages, kv_heads, dim] as indexed."""
        return self._unflattened(self.index.vectors(*self.spans[doc_id]))

    def search(self, queries: list[torch.Tensor], k: int, scaling: float,
               nprobe: int | None = None) -> list[tuple[str, int, float]]:
        """The k best (document, page, score) among the shortlist for per-layer RoPE-free queries [tokens, heads,
        dim], best first; nprobe: lists searched (default the index's). Fewer than k when the probed lists hold
        fewer pages."""
        shortlist = max(k, min(self.candidates, len(self)))
        _, ids = self.index.search(summed_bound_query(queries, self.kv_heads, scaling)[None], shortlist,
                                   nprobe=nprobe)
        ids = torch.from_numpy(ids[0][ids[0] >= 0])
        if not ids.numel():
            return []
        left_out = self.live.clone()
        left_out[ids] = False
        left_out = left_out.nonzero()[:, 0]  # [N - m]
        generator = torch.Generator().manual_seed(0)  # the same question gets the same pages
        sample = left_out[torch.randperm(left_out.numel(), generator=generator)[: self.sample]]
        log_weight = torch.zeros(ids.numel() + sample.numel())
        if sample.numel():
            log_weight[ids.numel():] = math.log(left_out.numel() / sample.numel())
        summaries = self._unflattened(self.index.take(torch.cat([ids, sample])))
        total = summed_shares(queries, [c for c, _ in summaries], [r for _, r in summaries], scaling,
                              scored=ids.numel(), log_weight=log_weight)
        scores, best = total.topk(min(k, ids.numel()))
        return [(*self.rows[i], float(s)) for s, i in zip(scores.tolist(), ids[best].tolist())]

    def _unflattened(self, vectors: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per-layer (centre, radius) [n, kv_heads, dim] of flattened summaries [n, layers * kv_heads * 2 * dim]."""
        parts = vectors.view(-1, self.layers, self.kv_heads, 2, self.dim)
        return [(parts[:, layer, :, 0], parts[:, layer, :, 1]) for layer in range(self.layers)]


def flat_summaries(summaries: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Per-layer (centre, radius) [n, kv_heads, dim] as one float32 vector per page [n, layers * kv_heads * 2 * dim],
    laid out (layer, kv head, centre or radius, channel)."""
    return torch.stack([torch.stack([c, r], dim=2) for c, r in summaries], dim=1).flatten(1).float()


def summed_bound_query(queries: list[torch.Tensor], kv_heads: int, scaling: float) -> torch.Tensor:
    """The vector whose inner product with a page's `flat_summaries` row is the page's bound summed over every query
    row (token and query head, each against its KV head), layer and head, times `scaling`: per (layer, KV head) the
    rows' summed q beside their summed |q|. queries: per layer [tokens, heads, dim]."""
    parts = []
    for rows in queries:
        grouped = rows.float().reshape(rows.shape[0], kv_heads, -1, rows.shape[-1])  # HF's repeat_kv order
        parts.append(torch.stack([grouped.sum(dim=(0, 2)), grouped.abs().sum(dim=(0, 2))], dim=1))  # [kvh, 2, D]
    return torch.stack(parts).flatten().cpu() * scaling


@dataclass
class IndexCache:
    """A store's indexes: the last one built under each key (kind, nlist) with the store state it was built for
    (`files`: doc id -> shard), which serves that state and is updated in place for the next one when it can
    (collection.store_index); and the last index built under any key, with its files (collection.document_rows
    reads unchanged documents' rows from it)."""

    built: dict[tuple, tuple[dict[str, str], object]] = field(default_factory=dict)
    last_files: dict[str, str] = field(default_factory=dict)
    last: object | None = None

    def get(self, files: dict[str, str], key: tuple):
        """The index built under `key` for the store state `files`, or None."""
        files_built, index = self.built.get(key, (None, None))
        return index if files_built == files else None

    def earlier(self, key: tuple) -> tuple[dict[str, str], object] | None:
        """(files, index) of the last index built under `key`, for whichever state, or None."""
        return self.built.get(key)

    def put(self, files: dict[str, str], key: tuple, index) -> None:
        self.built[key] = files, index
        self.last_files, self.last = files, index


def index_row(spans: dict[str, tuple[int, int]], doc_id: str, page: int) -> int:
    """The index row of a document's page (`spans`: each document's rows, `spans_of`), checked to be in it."""
    start, end = spans[doc_id]
    if not 0 <= page < end - start:
        raise RetroLMError(f"document {doc_id!r} has {end - start} pages in the index; asked for page {page}.")
    return start + page


def rows_of(pages: dict[str, int]) -> list[tuple[str, int]]:
    """(document, page) of each index row, for documents' page counts in index order."""
    return [(doc_id, page) for doc_id, count in pages.items() for page in range(count)]


def spans_of(rows: list[tuple[str, int] | None]) -> dict[str, tuple[int, int]]:
    """Each document's index rows (start, end): its rows must lie together; unused rows (None) are skipped."""
    spans: dict[str, tuple[int, int]] = {}
    for i, row in enumerate(rows):
        if row is None:
            continue
        doc_id = row[0]
        start, end = spans.get(doc_id, (i, i))
        if end != i:
            raise RetroLMError(f"an index holds each document's rows together; {doc_id!r} is split at row {i}.")
        spans[doc_id] = (start, i + 1)
    return spans
