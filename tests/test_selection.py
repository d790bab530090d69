"""Page selection: sink, local and top-scored pages are kept; never a future page; a planted page is found."""
import pytest
import torch

from retrolm import RetroLM, RetroLMConfig
from retrolm.compat import cache_argument
from retrolm.retriever import score_pages, select_pages, topk_in_page_order


@pytest.mark.parametrize("trial", range(20))
def test_selection_contains_sink_local_top_and_no_future(trial):
    gen = torch.Generator().manual_seed(trial)
    n = int(torch.randint(1, 40, (1,), generator=gen))
    groups = int(torch.randint(1, 6, (1,), generator=gen))
    top_k, sink, local = (int(x) for x in torch.randint(0, 5, (3,), generator=gen))
    scores = torch.randn(groups, n, generator=gen)
    query_pages = torch.randint(0, n + 1, (groups,), generator=gen)
    attended = select_pages(scores, query_pages, top_k, sink, local)
    for g in range(groups):
        m = int(query_pages[g])
        row = [p for p in attended[g].tolist() if p >= 0]
        assert row == sorted(set(row)), "ascending, no duplicates"
        assert all(p < m for p in row), "never the page itself or a future page"
        always = {p for p in range(m) if p < sink or p >= m - local}
        assert always <= set(row)
        candidates = [p for p in range(m) if p not in always]
        best = sorted(candidates, key=lambda p: -float(scores[g, p]))[:top_k]
        assert set(row) == always | set(best)
        assert (attended[g, len(row):] == -1).all()


def test_score_is_sum_of_head_dot_products():
    q, k = torch.randn(3, 2, 5), torch.randn(7, 2, 5)
    expected = torch.einsum("ghd,nhd->gn", q, k)
    assert torch.allclose(score_pages(q, k), expected, atol=1e-6)


def test_planted_page_is_retrieved(tiny_dirs):
    """Plant a page whose bookmark key equals the decode query: it must be in the attended set."""
    model = RetroLM.from_pretrained(tiny_dirs["llama"], page_size=8, top_k=1, sink_pages=1, local_pages=1,
                                    init_retriever=True)
    ids = torch.randint(0, 256, (1, 100))
    cache, _ = model.encode(ids[:, :-1], logits_to_keep=1)
    planted = 5
    # the decode query is the retriever's view of the 8 tokens before position 99
    with torch.no_grad():
        embeds = model.base_model.get_input_embeddings()(ids[:, 91:99])
        query, _ = model.retriever(embeds, torch.tensor([8]))
    cache.bookmark_keys[: cache.num_complete_pages] = -query[0]  # every page scores low...
    cache.bookmark_keys[planted] = query[0]  # ...but the planted one
    cache.selection = None
    model.base_model(input_ids=ids[:, 99:], **{cache_argument(model.base_model): cache})
    attended = set(cache.selection[1].tolist())
    assert planted in attended
    assert attended == {0, planted, 11}  # sink, planted, local (page 12 is the current page)


# ------------------------------------------------------------------ neighbours (neighbor_pages)
def reference_with_neighbors(scores, m, n, top_k, sink, local, offsets):
    """Plain-Python rule: sink + local pages, then the candidates best first, each followed by its neighbours
    (page + offset), a page taken once if it is a candidate, until top_k are taken."""
    always = {p for p in range(min(m, n)) if p < sink or p >= m - local}
    candidates = [p for p in range(min(m, n)) if p not in always]
    taken = []
    for seed in sorted(candidates, key=lambda p: -float(scores[p])):
        for page in [seed] + [seed + o for o in offsets]:
            if len(taken) < top_k and page in candidates and page not in taken:
                taken.append(page)
    return sorted(always | set(taken))


def offsets_of(neighbor_pages, direction):
    return RetroLMConfig(neighbor_pages=neighbor_pages, neighbor_direction=direction).neighbor_offsets


def test_neighbor_offsets():
    assert offsets_of(0, "both") == ()
    assert offsets_of(2, "next") == (1, 2)
    assert offsets_of(2, "previous") == (-1, -2)
    assert offsets_of(2, "both") == (1, -1, 2, -2)


@pytest.mark.parametrize("fixed_width", [False, True])
@pytest.mark.parametrize("trial", range(60))
def test_neighbor_selection_equals_the_reference(trial, fixed_width):
    gen = torch.Generator().manual_seed(1000 + trial)
    n = int(torch.randint(1, 30, (1,), generator=gen))
    groups = int(torch.randint(1, 5, (1,), generator=gen))
    top_k, sink, local = (int(x) for x in torch.randint(0, 6, (3,), generator=gen))
    neighbor_pages = int(torch.randint(0, 4, (1,), generator=gen))
    direction = ("next", "previous", "both")[trial % 3]
    offsets = offsets_of(neighbor_pages, direction)
    scores = torch.randn(groups, n, generator=gen)
    query_pages = torch.randint(0, n + 2, (groups,), generator=gen)
    attended = select_pages(scores, query_pages, top_k, sink, local, fixed_width=fixed_width, neighbors=offsets)
    plain = select_pages(scores, query_pages, top_k, sink, local, fixed_width=fixed_width)
    assert attended.shape[1] == plain.shape[1] or not fixed_width
    for g in range(groups):
        m = int(query_pages[g])
        row = [p for p in attended[g].tolist() if p >= 0]
        assert row == reference_with_neighbors(scores[g], m, n, top_k, sink, local, offsets)
        assert (attended[g, len(row):] == -1).all()
        assert len(row) == int((plain[g] >= 0).sum()), "neighbours share the top_k slots, they add none"
        candidates = [p for p in range(min(m, n)) if not (p < sink or p >= m - local)]
        if top_k and candidates:  # the page the scorer ranks first is always attended
            assert max(candidates, key=lambda p: float(scores[g, p])) in row


@pytest.mark.parametrize("trial", range(20))
def test_tied_pages_are_taken_in_page_order_whatever_the_width(trial):
    """Scores with ties (few distinct values): the pages taken are those a stable rank by (score, page) gives, and
    the same when the score matrix runs past the query pages (a chunk ending later gives it more columns)."""
    gen = torch.Generator().manual_seed(trial)
    n = int(torch.randint(4, 40, (1,), generator=gen))
    groups = int(torch.randint(1, 6, (1,), generator=gen))
    top_k, sink, local = int(torch.randint(1, 5, (1,), generator=gen)), 1, 1
    scores = torch.randint(0, 3, (groups, n), generator=gen).float()
    query_pages = torch.randint(0, n + 1, (groups,), generator=gen)
    wider = torch.cat([scores, torch.randint(0, 3, (groups, 25), generator=gen).float()], dim=1)
    for offsets in ((), (1,)):
        narrow = select_pages(scores, query_pages, top_k, sink, local, fixed_width=True, neighbors=offsets)
        wide = select_pages(wider, query_pages, top_k, sink, local, fixed_width=True, neighbors=offsets)
        assert torch.equal(narrow, wide[:, :narrow.shape[1]]) and (wide[:, narrow.shape[1]:] == -1).all()
    attended = select_pages(scores, query_pages, top_k, sink, local)
    for g in range(groups):
        m = int(query_pages[g])
        always = {p for p in range(m) if p < sink or p >= m - local}
        ranked = sorted((p for p in range(m) if p not in always), key=lambda p: (-float(scores[g, p]), p))
        assert {p for p in attended[g].tolist() if p >= 0} == always | set(ranked[:top_k])


@pytest.mark.parametrize("m, top_k, sink, local, offsets, best, expected", [
    (10, 2, 1, 1, (1,), 3, [0, 3, 4, 9]),  # the best page and its successor
    (10, 2, 1, 1, (-1,), 3, [0, 2, 3, 9]),  # ... its predecessor
    (10, 2, 1, 1, (1,), 8, [0, 1, 8, 9]),  # successor 9 is the local page, attended anyway: the next best (1) fills
    (10, 2, 1, 1, (-1,), 1, [0, 1, 2, 9]),  # predecessor 0 is the sink: the next best (2) fills
    (10, 1, 1, 1, (1, 2), 3, [0, 3, 9]),  # budget smaller than the neighbours: the best page alone
    (10, 2, 0, 0, (1,), 9, [0, 9]),  # the last earlier page: its successor is the page itself, never taken
    (3, 4, 1, 1, (1, -1), 1, [0, 1, 2]),  # fewer candidates than top_k
])
def test_neighbor_edge_cases(m, top_k, sink, local, offsets, best, expected):
    scores = -torch.arange(m, dtype=torch.float)[None] * 0.01  # ties broken towards low pages ...
    scores[0, best] = 10.0  # ... and one clear winner
    attended = select_pages(scores, torch.tensor([m]), top_k, sink, local, neighbors=offsets)
    assert [p for p in attended[0].tolist() if p >= 0] == expected


@pytest.mark.parametrize("trial", range(30))
def test_topk_in_page_order_equals_a_rank_by_score_then_page(trial):
    """Random scores with ties, negatives, zeros of both signs and -inf, at several widths and k: the pages and
    values are those of a plain rank by (score descending, page ascending)."""
    gen = torch.Generator().manual_seed(trial)
    rows, n = int(torch.randint(1, 5, (1,), generator=gen)), int(torch.randint(1, 70, (1,), generator=gen))
    k = int(torch.randint(1, n + 1, (1,), generator=gen))
    palette = torch.tensor([float("-inf"), -3.5, -1e-30, -0.0, 0.0, 1e-30, 0.25, 2.0, 7e5])
    scores = palette[torch.randint(0, len(palette), (rows, n), generator=gen)]
    if trial % 3 == 0:  # untied values too
        scores = torch.where(torch.rand(rows, n, generator=gen) < 0.5, torch.randn(rows, n, generator=gen), scores)
    values, indices = topk_in_page_order(scores, k)
    for r in range(rows):
        ranked = sorted(range(n), key=lambda p: (-float(scores[r, p]), p))[:k]
        assert indices[r].tolist() == ranked
        assert torch.equal(values[r], scores[r, ranked])
