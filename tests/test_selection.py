"""Page selection: sink, local and top-scored pages are kept; never a future page; a planted page is found."""
import pytest
import torch

from retrolm import RetroLM
from retrolm.compat import cache_argument
from retrolm.retriever import score_pages, select_pages


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
    model = RetroLM.from_pretrained(tiny_dirs["llama"], page_size=8, top_k=1, sink_pages=1, local_pages=1)
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
