"""Retrieval supervision from the LLM itself (and, optionally, from copies in the text), the contrastive loss,
and recall@k.

No annotation is needed: the pages the LLM reads most while encoding page m are the pages a retriever
should fetch for page m. Two labels come from the same full causal attention:
- `mass` (m, j): the attention the tokens of page m put on page j, averaged over layers, heads and tokens;
- `focused` (m, j): the same, but each (layer, head, token) weighted by the share of its attention that goes
  to retrieval candidates (pages beyond the sink and local ones). Most tokens of real text look only at
  nearby tokens; averaging them drowns the few tokens that look far (a recalled fact), so the mean label of
  a page is mostly noise. Weighting by far-looking share keeps the signal of exactly the tokens that need
  retrieval. The row total (sum over j) says how much page m needs retrieval at all; recall is reported on
  the rows that need it more than the average page does.
A third label needs no model at all: `copy_labels` points each page at the earlier pages whose rare n-grams
it repeats (a fact's value, a name). It is right where the LLM does not yet attend where it should (formats it
never saw); `mixed_labels` blends it with the attention label (`copy_label_weight`).
"""
from __future__ import annotations

import torch

from ..retriever import eligible_pages


class PageMassObserver:
    """Accumulates full attention's page-to-page mass over the layers of one forward.

    Passed to the LLM as `retrolm_observer=`; RetroLM's registered attention calls it once per layer with the
    layer's (rotated) queries and keys. The sequence must hold whole pages.
    """

    def __init__(self, page_size: int, max_chunk_elements: int = 1 << 27, sink_pages: int = 1, local_pages: int = 1):
        self.page_size = page_size
        self.max_chunk_elements = max_chunk_elements  # bounds the [heads, rows, T] score block held at once
        self.sink_pages, self.local_pages = sink_pages, local_pages
        self.mass = None  # [N, N] summed over layers, heads and query tokens
        self.focused = None  # [N, N] candidate mass weighted by each (layer, head, token)'s far share
        self.layers = 0
        self.heads = 0

    @torch.no_grad()
    def __call__(self, module, query: torch.Tensor, key: torch.Tensor, scaling: float) -> None:
        """query: [1, H, T, D]; key: [1, kv_heads, T, D] (HF layout, RoPE applied)."""
        heads, tokens = query.shape[1], query.shape[2]
        P = self.page_size
        pages = tokens // P
        keys = key[0].float().repeat_interleave(heads // key.shape[1], dim=0)  # [H, T, D], HF's repeat_kv order
        if self.mass is None:
            self.mass = torch.zeros(pages, pages, device=query.device)  # [N, N]
            self.focused = torch.zeros(pages, pages, device=query.device)
        page_ids = torch.arange(pages, device=query.device)
        _, candidates = eligible_pages(page_ids, pages, self.sink_pages, self.local_pages)  # [N, N]
        rows_per_chunk = max(P, (self.max_chunk_elements // (heads * tokens)) // P * P)
        key_pos = torch.arange(tokens, device=query.device)
        for start in range(0, tokens, rows_per_chunk):
            end = min(start + rows_per_chunk, tokens)
            scores = query[0, :, start:end].float() @ keys.transpose(1, 2) * scaling  # [H, rows, T]
            future = key_pos[None, :] > torch.arange(start, end, device=query.device)[:, None]  # [rows, T]
            probs = scores.masked_fill(future, float("-inf")).softmax(dim=-1)  # [H, rows, T]
            token_pages = probs.view(heads, end - start, pages, P).sum(dim=3)  # [H, rows, N]
            self.mass[start // P : end // P] += token_pages.sum(dim=0).view(-1, P, pages).sum(dim=1)
            far = token_pages * candidates[start // P : end // P].repeat_interleave(P, dim=0)  # [H, rows, N]
            weighted = far * far.sum(dim=2, keepdim=True)
            self.focused[start // P : end // P] += weighted.sum(dim=0).view(-1, P, pages).sum(dim=1)
        self.layers += 1
        self.heads = heads

    def page_mass(self) -> torch.Tensor:
        """[N, N]: row m is the mean attention distribution of page m's tokens over pages (sums to 1)."""
        return self.mass / (self.layers * self.heads * self.page_size)

    def focused_mass(self) -> torch.Tensor:
        """[N, N]: the far-share weighted candidate mass (zero off the candidates); its row sums rank need."""
        return self.focused / (self.layers * self.heads * self.page_size)


@torch.no_grad()
def page_attention_mass(llm, input_ids: torch.Tensor, page_size: int, sink_pages: int = 1,
                        local_pages: int = 1) -> PageMassObserver:
    """Full attention of `llm` (attn_implementation "retrolm") on input_ids [1, N*P], observed page-wise."""
    observer = PageMassObserver(page_size, sink_pages=sink_pages, local_pages=local_pages)
    llm(input_ids=input_ids, retrolm_observer=observer, use_cache=False, logits_to_keep=1)
    return observer


def ngram_hashes(ids: torch.Tensor, ngram: int) -> torch.Tensor:
    """[T] int64: a hash of the `ngram` tokens ending at each position of ids [T]; positions with fewer tokens
    before them get distinct negative values, so they never match (int64 arithmetic wraps, which is fine here)."""
    T = ids.shape[0]
    hashes = -1 - torch.arange(T, device=ids.device)
    if T >= ngram:
        powers = torch.tensor([pow(1_000_003, i, 2 ** 61 - 1) for i in range(ngram)], dtype=torch.int64,
                              device=ids.device)
        windows = ids.long().unfold(0, ngram, 1)  # [T - ngram + 1, ngram]
        hashes[ngram - 1:] = (windows * powers).sum(dim=1).abs()
    return hashes


@torch.no_grad()
def copy_labels(ids: torch.Tensor, page_size: int, ngram: int, max_chunk_elements: int = 1 << 26) -> torch.Tensor:
    """[N, N]: which earlier pages each page of ids [N*P] copies from, read off the text itself.

    A token of page m whose `ngram` tokens up to it also end somewhere in an earlier page j points at j; a
    token pointing at several pages gives each an equal share, so n-grams that recur everywhere (boilerplate,
    a repeated filler) say little and a rare one (a fact's value, a name) says much. Entry (m, j) sums these
    shares over page m's tokens. This is the retrieval a page needs to reproduce text seen before, whatever
    the LLM attends to; it labels what a model cannot copy yet as well as what it can.
    """
    P = page_size
    T = ids.shape[0]
    pages = T // P
    hashes = ngram_hashes(ids, ngram)
    labels = torch.zeros(pages, pages, device=ids.device)
    rows_per_chunk = max(P, (max_chunk_elements // T) // P * P)
    positions = torch.arange(T, device=ids.device)
    for start in range(0, T, rows_per_chunk):
        end = min(start + rows_per_chunk, T)
        earlier = positions[None, :] < positions[start:end, None]  # [rows, T]
        matches = (hashes[start:end, None] == hashes[None, :]) & earlier
        in_page = matches.view(end - start, pages, P).any(dim=2).float()  # [rows, N]: pages holding the n-gram
        shares = in_page / in_page.sum(dim=1, keepdim=True).clamp(min=1.0)
        labels[start // P: end // P] += shares.view(-1, P, pages).sum(dim=1)
    return labels


def mixed_labels(attention: torch.Tensor, copies: torch.Tensor, candidates: torch.Tensor,
                 weight: float) -> torch.Tensor:
    """[M, N]: per row, (1 - weight) x the attention label + weight x the copy label, each first normalised to
    sum 1 over the row's candidates; a row with no copy (or no attention) mass on its candidates keeps the other
    label alone, so rows where nothing is copied are still supervised by the LLM."""
    def normalised(label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        label = label.float() * candidates
        totals = label.sum(dim=1, keepdim=True)
        return label / totals.clamp(min=1e-12), totals > 0

    attention, has_attention = normalised(attention)
    copies, has_copies = normalised(copies)
    copy_share = torch.where(has_copies, torch.where(has_attention, weight, 1.0), 0.0)
    return (1 - copy_share) * attention + copy_share * copies


def retrieval_need(label: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """[M]: how much each row needs retrieval: its label total on candidates over the mean of rows with any."""
    totals = (label * candidates).sum(dim=1)
    has = candidates.any(dim=1)
    mean = totals[has].mean() if bool(has.any()) else totals.new_tensor(1.0)
    return torch.where(has, totals / mean.clamp(min=1e-12), 0.0)


def retrieval_loss(scores: torch.Tensor, mass: torch.Tensor, candidates: torch.Tensor, temperature: float,
                   label_temperature: float = 1.0) -> torch.Tensor:
    """Listwise contrastive loss: the retriever's softmax over each query's candidate pages against the LLM's.

    scores, mass: [M, N] (retriever scores, attention mass) for M query pages; candidates: [M, N] bool, the
    pages retrieval chooses among (sink and local pages are always attended, so they are not candidates).
    Targets are mass ** (1 / label_temperature), renormalised over the candidates; rows with fewer than two
    candidates, or no label mass on them, rank nothing and are skipped. Rows count equally: weighting them
    by their need for retrieval favours pages whose query window cannot know what they need (the first
    page of a new topic), which measurably hurt on the planted task. Returns a scalar (0 with a graph when
    no row qualifies).
    """
    rows = (candidates.sum(dim=1) >= 2) & (mass * candidates).sum(dim=1).gt(0)
    if not bool(rows.any()):
        return scores.sum() * 0.0
    scores, mass, candidates = scores[rows], mass[rows].float(), candidates[rows]
    log_probs = (scores / temperature).masked_fill(~candidates, float("-inf")).log_softmax(dim=-1)
    target = mass.clamp(min=1e-12).pow(1.0 / label_temperature).masked_fill(~candidates, 0.0)
    target = target / target.sum(dim=-1, keepdim=True)
    return -(target * log_probs.masked_fill(~candidates, 0.0)).sum(dim=-1).mean()


def top_pages(mass: torch.Tensor, candidates: torch.Tensor, k: int) -> torch.Tensor:
    """[M, N] bool: each row's k candidates with the most mass (the pages a perfect retriever fetches)."""
    masked = mass.float().masked_fill(~candidates, float("-inf"))
    k = min(k, mass.shape[1])
    values, index = masked.topk(k, dim=1)
    relevant = torch.zeros_like(candidates)
    relevant.scatter_(1, index, values > 0)
    return relevant


def recall_at_k(scores: torch.Tensor, relevant: torch.Tensor, candidates: torch.Tensor, k: int,
                rows: torch.Tensor | None = None) -> tuple[float, int]:
    """Mean over rows of |top-k by score ∩ relevant| / min(k, |relevant|), and the number of rows counted.

    Only rows where retrieval has a choice (more than k candidates) and something is relevant count: with k
    or fewer candidates every candidate is fetched and recall is 1 whatever the scores. rows [M] bool:
    count only these rows (e.g. the pages that need retrieval).
    """
    chosen = (candidates.sum(dim=1) > k) & relevant.any(dim=1)
    rows = chosen if rows is None else chosen & rows
    if not bool(rows.any()):
        return float("nan"), 0
    scores, relevant, candidates = scores[rows], relevant[rows], candidates[rows]
    picked = torch.zeros_like(candidates)
    picked.scatter_(1, scores.float().masked_fill(~candidates, float("-inf")).topk(k, dim=1).indices, True)
    hits = (picked & relevant).sum(dim=1).float()
    return float((hits / relevant.sum(dim=1).clamp(max=k)).mean()), int(rows.sum())
