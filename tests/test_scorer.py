"""The training-free page scorer against plain references, and the rule that no untrained retriever is ever
used by accident."""
from types import SimpleNamespace

import pytest
import torch

import retrolm.retriever as retriever_module
from retrolm import RetroLM, RetroLMError
from retrolm.cli import main
from retrolm.compat import cache_argument
from retrolm.retriever import eligible_pages
from retrolm.rope import shift_keys
from retrolm.scorer import page_bounds, page_scores, query_windows


def rope(dim):
    return 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim))


@pytest.mark.parametrize("kv_heads, pages, page_size, dim", [(1, 3, 4, 8), (2, 7, 8, 16), (4, 5, 16, 32)])
def test_page_bounds_are_the_channel_range_of_rope_free_keys(kv_heads, pages, page_size, dim):
    torch.manual_seed(pages)
    inv_freq = rope(dim)
    starts = torch.randint(0, 5000, (pages + 2,))
    raw = torch.randn(kv_heads, pages * page_size, dim)
    positions = (starts[:pages, None] + torch.arange(page_size)).flatten()
    pool = shift_keys(raw, positions[None], inv_freq)[None]  # as the cache holds them: rotated where encoded
    chosen = torch.tensor([p for p in range(pages) if p % 2 == 0])
    center, radius = page_bounds(pool, chosen, starts, inv_freq, page_size)
    expected = raw.view(kv_heads, pages, page_size, dim)[:, chosen]  # [kvh, n, P, D]
    torch.testing.assert_close(center + radius, expected.amax(2).transpose(0, 1), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(center - radius, expected.amin(2).transpose(0, 1), atol=1e-4, rtol=1e-4)


def test_the_bound_is_never_below_the_best_key_of_a_page():
    torch.manual_seed(0)
    keys = torch.randn(6, 2, 8, 16)  # [pages, kvh, P, D]
    center, radius = (keys.amax(2) + keys.amin(2)) / 2, (keys.amax(2) - keys.amin(2)) / 2
    q = torch.randn(50, 2, 16)
    bound = torch.einsum("qhd,nhd->qhn", q, center) + torch.einsum("qhd,nhd->qhn", q.abs(), radius)
    best = torch.einsum("qhd,nhtd->qhnt", q, keys).amax(-1)
    assert (bound >= best - 1e-5).all()


def test_a_page_holding_what_the_queries_look_for_scores_highest():
    torch.manual_seed(1)
    pages, kv_heads, dim = 12, 2, 16
    keys = torch.randn(pages, kv_heads, 8, dim)
    target = torch.randn(dim)
    keys[7, :, 3] = 6 * target  # one token of page 7 matches the queries strongly
    center, radius = (keys.amax(2) + keys.amin(2)) / 2, (keys.amax(2) - keys.amin(2)) / 2
    rows = target.expand(1, 4, 4, dim) + 0.1 * torch.randn(1, 4, 4, dim)  # [G, W, H, D], 2 heads per KV head
    always, candidates = eligible_pages(torch.tensor([pages]), pages, 1, 1)
    scores = page_scores(rows, torch.ones(1, 4, dtype=torch.bool), center, radius, always, candidates, dim ** -0.5)
    assert int(scores.argmax()) == 7
    assert (scores[~candidates] == 0).all()


@pytest.mark.parametrize("t0, new, window", [(0, 64, 8), (21, 40, 16), (37, 1, 8), (40, 1, 4), (5, 3, 16)])
def test_query_windows_never_reach_a_later_token(t0, new, window):
    """Multi-token groups see the `window` tokens before their first token; a single new token sees itself too."""
    P = 8
    positions = torch.arange(t0, t0 + new)
    first_page = t0 // P
    plan = SimpleNamespace(new_tokens=(t0, t0 + new), page_size=P,
                           query_pages=torch.arange(first_page, (t0 + new - 1) // P + 1),
                           q_group=positions // P - first_page)
    recent = torch.arange(max(0, t0 - window), t0).float()[:, None, None].expand(-1, 1, 1)
    queries = positions.float()[:, None, None]  # each query row holds its own position
    rows, valid = query_windows(plan, queries, window, recent if t0 else None)
    for g, page in enumerate(plan.query_pages.tolist()):
        start = max(page * P, t0)
        single = int((plan.q_group == g).sum()) == 1
        end = start + 1 if single else start
        expected = list(range(max(0, end - window), end))
        assert rows[g, valid[g], 0, 0].long().tolist() == expected


@pytest.mark.parametrize("scorer", ["attention", "trained"])
def test_no_token_is_encoded_with_help_from_a_later_one(tiny_dirs, scorer):
    """Selections use only earlier tokens: changing the end of the input leaves earlier logits unchanged."""
    model = RetroLM.from_pretrained(tiny_dirs["qwen2"], page_size=8, top_k=2, prefill_chunk_pages=3,
                                    scorer=scorer, init_retriever=scorer == "trained")
    ids = torch.randint(0, 250, (1, 150))
    changed = ids.clone()
    changed[0, 101:] = torch.randint(0, 250, (49,))
    with torch.no_grad():
        a, b = model(input_ids=ids).logits, model(input_ids=changed).logits
    torch.testing.assert_close(a[:, :101], b[:, :101], rtol=1e-5, atol=1e-5)
    assert (a[:, 101:] - b[:, 101:]).abs().max() > 1e-3


def test_attention_scorer_retrieves_different_pages_per_layer_on_long_inputs(tiny_dirs):
    model = RetroLM.from_pretrained(tiny_dirs["llama"], page_size=8, top_k=2)
    model.generate(input_ids=torch.randint(0, 250, (1, 300)), max_new_tokens=4, do_sample=False)
    first_step = model.last_cache.selection_log[0][1]
    assert len(first_step) == 2  # one selection per layer
    assert all(s.shape == (4,) and (s >= 0).all() for s in first_step)  # sink + local + top-2
    pages = model.last_cache.retrievals()[0][1]
    assert len(pages) == 4 and pages == sorted(pages) and max(pages) < 299 // 8



@pytest.mark.parametrize("interval", [1, 3, 16])
def test_decode_keeps_each_layers_selection_for_the_refresh_interval_within_a_page(tiny_dirs, interval):
    """As with the trained scorer: a decode step reuses its layer's pages until `refresh_interval` tokens have
    passed or a new page starts, and scores afresh otherwise."""
    model = RetroLM.from_pretrained(tiny_dirs["llama"], page_size=8, top_k=2, refresh_interval=interval,
                                    refresh_on="")  # no trigger tokens: the interval alone
    model.generate(input_ids=torch.randint(0, 250, (1, 300)), max_new_tokens=14, do_sample=False)
    log = model.last_cache.selection_log  # [(position, [per-layer attended pages])], decode steps mid-page
    assert len(log) >= 10
    made_at, selection, previous = None, 0, None  # selection: which fresh selection a step uses
    for position, layers in log:
        if previous is not None and position // 8 != previous[0] // 8:
            made_at, selection = position // 8 * 8, selection + 1  # the page's first token (not logged) selects
        if made_at is None or position - made_at >= interval:
            made_at, selection = position, selection + 1
        if previous is not None:
            same = [a.data_ptr() == b.data_ptr() for a, b in zip(layers, previous[1])]
            assert same == [selection == previous[2]] * len(layers), (position, made_at)
        previous = (position, layers, selection)


def test_queries_of_reused_decode_steps_join_the_window_rope_free_in_order():
    """Reused decode steps keep their RoPE'd queries aside; the next scoring sees them un-rotated, in order."""
    from retrolm.scorer import LayerSummaries, _rope_free_recent

    inv_freq = rope(16)
    earlier = torch.randn(3, 4, 16)
    steps = [(torch.randn(1, 4, 16), torch.tensor([p])) for p in (40, 41, 42)]
    state = LayerSummaries(recent_queries=earlier, pending_queries=list(steps))
    expected = torch.cat([earlier] + [shift_keys(q, -p[:, None], inv_freq) for q, p in steps])
    torch.testing.assert_close(_rope_free_recent(state, inv_freq), expected)
    assert state.pending_queries == [] and state.recent_queries is not None


@pytest.mark.parametrize("groups, n, top_k, sink, local", [(1, 40, 4, 1, 1), (5, 12, 3, 2, 2), (3, 3, 8, 1, 1),
                                                            (4, 30, 0, 1, 2)])
def test_fixed_width_selection_holds_the_same_pages(groups, n, top_k, sink, local):
    """The scorer's sync-free selection (width known in advance) picks exactly the pages of the plain one."""
    from retrolm.retriever import select_pages

    scores = torch.randn(groups, n)
    query_pages = torch.randint(0, n + 2, (groups,))
    plain = select_pages(scores, query_pages, top_k, sink, local)
    fixed = select_pages(scores, query_pages, top_k, sink, local, fixed_width=True)
    assert fixed.shape[1] == min(n, sink + local + top_k) >= plain.shape[1]
    for a, b in zip(plain, fixed):
        assert a[a >= 0].tolist() == b[b >= 0].tolist()


def _lexical_scores(n: int, m: int, seed: int) -> torch.Tensor:
    """Weighted lexical scores [1, n] as the planner gives them: some earlier pages matched, on the scale of a
    page's share per query row (so both decide the ranking), pages >= m at 0."""
    gen = torch.Generator().manual_seed(seed)
    scores = torch.rand(1, n, generator=gen) * (2 / m) * (torch.rand(1, n, generator=gen) < 0.5)
    scores[:, m:] = 0
    return scores


@pytest.mark.parametrize("lexical", [False, True])
@pytest.mark.parametrize("neighbors", [(), (1,), (-1,), (1, -1), (1, 2, 3)])
@pytest.mark.parametrize("m, extra, window, heads, kv_heads, dim, sink, local, top_k", [
    (40, 0, 16, 4, 2, 8, 1, 1, 4), (40, 1, 5, 8, 8, 16, 2, 3, 6), (12, 0, 1, 4, 1, 8, 1, 2, 9),
    (300, 1, 16, 32, 8, 32, 1, 1, 16), (7, 0, 3, 2, 1, 4, 0, 0, 7), (9, 0, 4, 2, 1, 4, 1, 1, 1)])
def test_decode_shortcut_selects_what_the_general_scorer_selects(m, extra, window, heads, kv_heads, dim, sink, local,
                                                                top_k, neighbors, lexical):
    """The few-kernel selection of a decode token equals the general one (windows, masks, top-k, neighbours,
    lexical scores read from the plan or, as the device step passes them, padded to the reserved rows) on random
    data."""
    from retrolm.scorer import _has_decode_shortcut, decode_selection, group_selection

    torch.manual_seed(m + dim)
    n = m + extra  # the decode token may complete its own page
    center, radius = torch.randn(n + 1, kv_heads, dim), torch.rand(n + 1, kv_heads, dim)  # + a spare row
    rows = torch.randn(window, heads, dim)
    scores = _lexical_scores(n, m, m + dim) if lexical else None
    plan = SimpleNamespace(decode_token=(m, 3), query_pages=torch.tensor([m]), sink_pages=sink, local_pages=local,
                           top_k=top_k, neighbors=neighbors, lexical=scores)
    assert _has_decode_shortcut(plan)
    general = group_selection(plan, rows[None], torch.ones(1, window, dtype=torch.bool), center, radius, n, 0.3)
    assert decode_selection(plan, rows, center, radius, 0.3).tolist() == general.tolist()
    if lexical:
        device_plan = SimpleNamespace(**{**vars(plan), "lexical": None})
        padded = torch.nn.functional.pad(scores[0], (0, 1))
        on_device = decode_selection(device_plan, rows, center, radius, 0.3, page=torch.tensor([m]), lexical=padded)
        assert on_device.tolist() == general.tolist()


@pytest.mark.parametrize("seed", range(8))
def test_tied_pages_are_taken_in_page_order_at_decode_whatever_the_reserved_rows(seed):
    """Pages with the same key bounds tie exactly on their shares: a decode step takes them in page order, so the
    reserved rows (the cache's size, set by max_new_tokens) do not change the pages, and the general scorer agrees."""
    from retrolm.scorer import decode_selection, group_selection

    gen = torch.Generator().manual_seed(seed)
    m, kv_heads, heads, dim, window = 30, 2, 4, 8, 6
    kinds = torch.randn(3, kv_heads, dim, generator=gen), torch.rand(3, kv_heads, dim, generator=gen)
    pick = torch.randint(0, 3, (m + 40,), generator=gen)  # three kinds of page, each many times: ties
    center, radius = kinds[0][pick], kinds[1][pick]
    rows = torch.randn(window, heads, dim, generator=gen)
    plan = SimpleNamespace(decode_token=(m, 3), query_pages=torch.tensor([m]), sink_pages=1, local_pages=1,
                           top_k=5, neighbors=(), lexical=None)
    chosen = [decode_selection(plan, rows, center[: m + spare], radius[: m + spare], 0.3).tolist()
              for spare in (1, 7, 40)]
    assert chosen[0] == chosen[1] == chosen[2]
    general = group_selection(plan, rows[None], torch.ones(1, window, dtype=torch.bool), center, radius, m, 0.3)
    assert chosen[0] == general.tolist()


@pytest.mark.parametrize("seed", range(12))
def test_with_lexical_scores_a_layer_ranks_by_share_per_query_row_plus_lexical_score(seed):
    """group_selection with the plan's lexical scores picks the top-k of (attention share / (heads x valid window
    tokens) + lexical score), the share computed here from plain softmaxes over each query row."""
    from retrolm.retriever import select_pages
    from retrolm.scorer import group_selection

    gen = torch.Generator().manual_seed(seed)
    heads, kv_heads, dim, window, n, top_k = 4, 2, 8, 6, 20, 3
    query_pages = torch.tensor([5, 12, 20])
    rows = torch.randn(3, window, heads, dim, generator=gen)
    valid = torch.rand(3, window, generator=gen) < 0.5  # windows cut short: the share is per valid row
    valid[:, -1] = True
    center, radius = torch.randn(n, kv_heads, dim, generator=gen), torch.rand(n, kv_heads, dim, generator=gen)
    lexical = torch.rand(3, n, generator=gen) * 0.2 * (torch.rand(3, n, generator=gen) < 0.5)  # a share's scale
    plan = SimpleNamespace(query_pages=query_pages, sink_pages=1, local_pages=1, top_k=top_k, neighbors=(),
                           lexical=lexical)
    expected = torch.zeros(3, n)
    for g in range(3):
        m = int(query_pages[g])
        reachable = [j for j in range(n) if j < m]
        for w in range(window):
            if not valid[g, w]:
                continue
            for h in range(heads):
                q = rows[g, w, h]
                kv = h // (heads // kv_heads)
                bounds = torch.stack([(q @ center[j, kv] + q.abs() @ radius[j, kv]) * 0.5 for j in reachable])
                expected[g, reachable] += bounds.softmax(0)
        expected[g] = expected[g] / (heads * valid[g].sum()) + lexical[g]
    chosen = group_selection(plan, rows, valid, center, radius, n, 0.5)
    reference = select_pages(expected, query_pages, top_k, 1, 1, fixed_width=True)
    assert chosen.tolist() == reference.tolist()


@pytest.mark.parametrize("scorer", ["attention", "trained"])
def test_a_refresh_trigger_token_refreshes_retrieval_and_another_token_does_not(tiny_dirs, scorer):
    """Mid-page decode steps keep their selection (refresh_interval is long), except the step that reads a trigger."""
    model = RetroLM.from_pretrained(tiny_dirs["llama"], page_size=8, top_k=1, refresh_interval=100, refresh_on=",;",
                                    scorer=scorer, init_retriever=scorer == "trained")
    comma, semicolon, letter = (model.tokenizer(c, add_special_tokens=False).input_ids[0] for c in ",;a")
    ids = torch.randint(0, 250, (1, 58))
    ids[(ids == comma) | (ids == semicolon)] = letter
    cache, _ = model.encode(ids, logits_to_keep=1)
    cache.selection = None

    def made_at(token):  # feed one decode token; the position of the selection in force after it
        model.base_model(input_ids=torch.tensor([[token]]), **{cache_argument(model.base_model): cache})
        return cache.selection[2] if scorer == "trained" else cache.layers[0].summaries.decode_selection[3]

    # positions 58..63 lie inside page 7: only the first step, and steps reading a trigger, select afresh
    assert [made_at(t) for t in (letter, letter, comma, letter, semicolon, letter)] == [58, 58, 60, 60, 62, 62]
    if scorer == "attention":  # every layer refreshed together
        assert {layer.summaries.decode_selection[3] for layer in cache.layers} == {62}


def test_no_trigger_characters_means_interval_refreshes_only(tiny_dirs):
    model = RetroLM.from_pretrained(tiny_dirs["llama"], page_size=8, top_k=1, refresh_interval=100, refresh_on="",
                                    init_retriever=True)
    assert model._refresh_table() is None
    comma = model.tokenizer(",", add_special_tokens=False).input_ids[0]
    cache, _ = model.encode(torch.randint(0, 250, (1, 58)), logits_to_keep=1)
    cache.selection = None
    for token in (comma, comma, comma):
        model.base_model(input_ids=torch.tensor([[token]]), **{cache_argument(model.base_model): cache})
    assert cache.selection[2] == 58


def test_decode_shortcut_needs_enough_candidates():
    from retrolm.scorer import _has_decode_shortcut

    plan = SimpleNamespace(decode_token=(6, 1), sink_pages=1, local_pages=1, top_k=5)
    assert not _has_decode_shortcut(plan)  # 4 candidates for 5 slots: the general path pads with -1
    assert not _has_decode_shortcut(SimpleNamespace(decode_token=None, sink_pages=1, local_pages=1, top_k=1))

# ------------------------------------------------------------------ never an untrained retriever by accident
def test_a_plain_model_uses_the_training_free_scorer_and_says_so(tiny_dirs, capsys):
    model = RetroLM.from_pretrained(tiny_dirs["llama"], page_size=8)
    assert model.config.scorer == "attention" and model.retriever is None
    assert "page scorer: attention (training-free" in capsys.readouterr().err


def test_asking_for_the_trained_scorer_without_weights_says_how_to_train(tiny_dirs):
    with pytest.raises(RetroLMError, match="retrolm train-retriever --model MODEL"):
        RetroLM.from_pretrained(tiny_dirs["llama"], scorer="trained")


def test_a_checkpoint_with_a_retriever_uses_it(tiny_dirs, tmp_path, capsys):
    RetroLM.from_pretrained(tiny_dirs["llama"], page_size=8, init_retriever=True).save_pretrained(str(tmp_path / "c"))
    loaded = RetroLM.from_pretrained(str(tmp_path / "c"))
    assert loaded.config.scorer == "trained" and loaded.retriever is not None
    assert "page scorer: trained (the checkpoint's trained page retriever)" in capsys.readouterr().err
    assert RetroLM.from_pretrained(str(tmp_path / "c"), scorer="attention").retriever is None


def test_attention_scorer_checkpoint_round_trip(tiny_dirs, tmp_path):
    model = RetroLM.from_pretrained(tiny_dirs["mistral"], page_size=8, top_k=1)
    model.save_pretrained(str(tmp_path / "c"))
    assert not (tmp_path / "c" / "retriever.safetensors").exists()
    loaded = RetroLM.from_pretrained(str(tmp_path / "c"))
    ids = torch.randint(0, 250, (1, 90))
    assert torch.equal(loaded.generate(input_ids=ids, max_new_tokens=5, do_sample=False),
                       model.generate(input_ids=ids, max_new_tokens=5, do_sample=False))


def test_no_code_path_builds_a_retriever_without_the_opt_in(tiny_dirs, tmp_path, monkeypatch):
    built = []
    original = retriever_module.PageRetriever.__init__

    def spy(self, *args, **kwargs):
        built.append(args)
        original(self, *args, **kwargs)

    monkeypatch.setattr(retriever_module.PageRetriever, "__init__", spy)
    model = RetroLM.from_pretrained(tiny_dirs["qwen3"], page_size=8, top_k=2)
    ids = torch.randint(0, 250, (1, 100))
    model(input_ids=ids)
    model.generate(input_ids=ids, max_new_tokens=3)
    model.save_pretrained(str(tmp_path / "c"))
    RetroLM.from_pretrained(str(tmp_path / "c")).generate(input_ids=ids, max_new_tokens=2)
    (tmp_path / "doc.txt").write_text("The code is 12. " * 40)
    assert main(["generate", "--model", tiny_dirs["qwen3"], "--input", str(tmp_path / "doc.txt"), "--question", "code?",
                 "--max-new-tokens", "2", "--device", "cpu"]) == 0
    assert built == [], "an untrained retriever was built without init_retriever=True"
    RetroLM.from_pretrained(tiny_dirs["qwen3"], init_retriever=True)
    assert len(built) == 1
