"""bench/query_windows.py: offline page selection for other decode queries, checked against what generate retrieves."""
import json
import random

import pytest
import torch

from bench.heldout_prose import make_needle
from bench.query_windows import (bookmarks, candidate_rank, choose, main, question_end, run_cell, sample_scores)
from retrolm.model import RetroLM
from retrolm.retriever import score_pages
from retrolm.training.needle_recall import build_sample, reference_topics


@pytest.fixture(scope="module")
def model():
    # the embedded default model (a trained retriever); the offline rule is the plain lexical one: no near misses,
    # no hops
    return RetroLM.from_pretrained(scorer="trained", lexical_near_miss_margin=None, lexical_hops=0)


def test_the_offline_last_query_chooses_the_pages_generate_retrieves(model):
    cell = run_cell(model, factor=3, window=1024, samples=3, seed=1, topics=reference_topics(),
                    needles="test", check=3, lexical_weights=(2.0,))
    assert cell["checked"] == 3 and cell["mismatches"] == 0  # 'last' and 'last + 2 lexical', each against generate
    assert set(cell["recall"]) == {"last", "previous", "question", "max(last, previous)", "sum(last, previous)",
                                   "max(last, question)", "sum(last, question)", "lexical", "last + 2 lexical"}
    assert model.config.lexical_weight == 0.0  # the check leaves the model as it found it


def test_scores_ranks_and_combinations_follow_their_definitions(model):
    rng = random.Random(3)
    needle = make_needle(rng, 3)
    sample = build_sample(model.tokenizer, rng, 3 * 1024, reference_topics(), needle)
    ids = sample.ids[0]
    text = model.tokenizer.decode(ids, skip_special_tokens=True)
    scores, query_page = sample_scores(model, ids, text, needle.question)
    P = model.config.page_size
    assert query_page == (ids.shape[0] - 1) // P and scores["last"].shape == (query_page,)
    # the question window ends right after the question's "?"
    end = question_end(model, text, needle.question)
    assert model.tokenizer.decode(ids[end - 1]) == "?" and model.tokenizer.decode(ids[end:end + 8]) == "\nAnswer:"
    # sum of two scores is the score of the summed query (inner products are linear)
    queries, _ = bookmarks(model, ids, torch.tensor([ids.shape[0] - 1, ids.shape[0] - 1 - P]))
    _, keys = bookmarks(model, ids, torch.arange(1, query_page + 1) * P)
    summed = score_pages(queries.sum(0, keepdim=True), keys)[0]
    torch.testing.assert_close(scores["sum(last, previous)"], summed, rtol=1e-4, atol=1e-4)
    assert torch.equal(scores["max(last, previous)"], torch.maximum(scores["last"], scores["previous"]))
    # rank: one more than the candidates scored above the page; sink and local pages have none
    s = scores["last"]
    chosen = choose(model, s, query_page)
    candidates = [j for j in range(model.config.sink_pages, query_page - model.config.local_pages)]
    best = max(candidates, key=lambda j: float(s[j]))
    assert candidate_rank(model, s, query_page, best) == 1 and best in chosen
    assert candidate_rank(model, s, query_page, 0) is None and 0 in chosen  # the sink page
    assert len(chosen) <= model.config.sink_pages + model.config.local_pages + model.config.top_k


def test_the_script_writes_its_json_and_table(tmp_path):
    assert main(["--factors", "2", "--samples", "3", "--check", "1", "--needles", "test", "--device", "cpu",
                 "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "query_windows_test.json").read_text())
    assert record["cells"]["2x"]["checked"] == 1 and len(record["cells"]["2x"]["rows"]) == 3
    assert "| max(last, question) |" in (tmp_path / "query_windows_test.md").read_text()
