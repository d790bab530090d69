"""The command line and the demo, end to end on tiny models."""
import pytest

from retrolm.cli import main
from retrolm.demo import build_haystack, run_demo
from retrolm.tiny import byte_tokenizer


def test_generate_prints_answer_pages_and_timings(tiny_dirs, tmp_path, capsys):
    text = tmp_path / "doc.txt"
    text.write_text("The vault code is 4312. " + "Filler words go here. " * 200)
    code = main(["generate", "--model", tiny_dirs["llama"], "--input", str(text), "--question", "What is the code?",
                 "--max-new-tokens", "5", "--page-size", "32", "--top-k", "2", "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0
    assert "answer:" in out and "pages retrieved for the question (4):" in out  # sink + 2 + local
    assert "5 tokens generated" in out


def test_generate_missing_input_is_one_clear_error(tiny_dirs, tmp_path, capsys):
    code = main(["generate", "--model", tiny_dirs["llama"], "--input", str(tmp_path / "nope.txt"), "--question", "q"])
    assert code == 2
    assert "not found" in capsys.readouterr().err


def test_haystack_hides_each_fact_once():
    text, facts = build_haystack(byte_tokenizer(), 3000, 3, seed=1)
    assert len(byte_tokenizer()(text).input_ids) >= 3000
    for fact in facts:
        assert text.count(fact.sentence) == 1 and text.index(fact.sentence) == fact.char_start
    assert [f.char_start for f in facts] == sorted(f.char_start for f in facts)


def test_demo_runs_and_measures(tiny_dirs, capsys):
    summary = run_demo(model_path=tiny_dirs["llama"], window=64, factor=8, num_facts=2, max_new_tokens=3)
    assert summary["prompt_tokens"] >= 512
    assert summary["retrolm"]["keys_read_per_token"] < summary["full"]["keys_read_per_token"]
    assert len(summary["facts"]) == 2
    assert "full attention" in capsys.readouterr().out
