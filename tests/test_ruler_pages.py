"""bench/ruler_pages.py: where RULER's needles are, which pages hold them, and the oracle that forces them in."""
import json
import sys
from types import SimpleNamespace

import pytest
import torch

from bench import ruler_pages
from bench.ruler_pages import PAGE_KINDS, needle_spans, oracle, page_kinds, token_pages
from eval.ruler import to_sample
from eval.ruler_tasks import TASKS, Generator
from retrolm.lexical import LexicalIndex


def _sample(task: str, length: int = 4096, index: int = 0):
    return to_sample(Generator(task, len).sample(length, 42, index=index), index, TASKS[task].tokens_to_generate)


def test_multikey_spans_are_the_asked_value_and_the_other_keys_values():
    for index in range(3):
        sample = _sample("niah_multikey_1", index=index)
        context = sample.prompt.context
        asked, distractors = needle_spans("niah_multikey_1", context, sample.answers)
        assert [context[a:b] for a, b in asked] == sample.answers
        assert len(distractors) == TASKS["niah_multikey_1"].args["num_needle_k"] - 1
        for a, b in distractors:
            assert context[a:b].isdigit() and context[a:b] not in sample.answers


def test_vt_spans_are_the_chain_statements_in_order():
    sample = _sample("vt", length=8192)
    context = sample.prompt.context
    asked, distractors = needle_spans("vt", context, sample.answers)
    statements = [context[a:b] for a, b in asked]
    assert distractors == [] and len(statements) == len(sample.answers)
    first, *rest = sample.answers
    assert statements[0].startswith(f"VAR {first} = ") and statements[0].split("= ")[1].isdigit()
    for before, name, statement in zip(sample.answers, rest, statements[1:]):
        assert statement.strip() == f"VAR {name} = VAR {before}"


def test_token_pages_counts_the_special_tokens_before_the_span():
    method = SimpleNamespace(count_tokens=lambda text: len(text) + 1)  # one token a character, after a BOS
    text = "x" * 200
    assert token_pages(method, text, (63, 65), 64) == {1}  # tokens 64 and 65
    assert token_pages(method, text, (62, 64), 64) == {0, 1}  # tokens 63 and 64
    assert token_pages(method, text, (0, 1), 64) == {0}


def test_oracle_lifts_the_asked_pages_drops_the_excluded_and_restores_the_scores():
    index = LexicalIndex(ngram=2, max_pages=8, page_size=4)
    ids = torch.tensor([1, 2, 3, 4, 5, 6, 1, 2, 7, 8, 9, 10, 1, 2, 3, 4, 11, 12, 13, 14])
    index.update(ids, 5)
    args = (ids, torch.tensor([20]), torch.tensor([5]), 5)
    plain = index.scores(*args)
    real = LexicalIndex.scores
    with oracle({3}, {0}):
        forced = index.scores(*args)
    assert LexicalIndex.scores is real
    assert torch.equal(index.scores(*args), plain)
    assert forced[0, 3] >= ruler_pages.ORACLE_BONUS and forced[0, 0] <= plain[0, 0] - ruler_pages.ORACLE_BONUS + 1
    assert torch.equal(forced[:, [1, 2, 4]], plain[:, [1, 2, 4]])


def test_an_exclusive_oracle_run_attends_the_asked_needle_and_no_distractor(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["ruler_pages.py", "--tasks", "niah_multikey_1", "--factors", "4", "--samples",
                                      "2", "--oracle", "exclusive", "--out", str(tmp_path), "--name", "run"])
    ruler_pages.main()
    cell = json.loads((tmp_path / "run.json").read_text())["cells"]["niah_multikey_1/4x"]
    assert cell["samples"] == 2 and cell["all_asked_first"] == 100.0 and cell["distractors_attended"] == 0.0
    assert cell["distractors"] == 3.0 and "oracle retrieval: exclusive" in (tmp_path / "run.md").read_text()
    for row in cell["rows"]:  # the forced needle's pages are counted as asked ones, no distractor's
        assert row["first_pages"]["asked"] >= 1 and row["first_pages"]["distractor"] == 0
    assert json.loads((tmp_path / "run.json").read_text())["knobs"] == {"decode_mode": "eager"}


def test_an_oracle_refuses_a_captured_decode_step(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["ruler_pages.py", "--oracle", "asked", "--set", 'decode_mode="auto"', "--out",
                                      str(tmp_path)])
    with pytest.raises(SystemExit, match="decode_mode=eager"):
        ruler_pages.main()
    assert not list(tmp_path.iterdir())


def test_page_kinds_counts_each_page_once_by_the_first_kind_that_fits():
    counts = page_kinds([0, 2, 5, 6, 7, 9, 12, 20], asked={5, 9}, distractors={6, 12}, context_pages=range(3, 15))
    assert counts == {"asked": 2, "after_asked": 1, "distractor": 1, "instructions": 2, "question": 1, "other": 1}
    assert list(counts) == list(PAGE_KINDS)
