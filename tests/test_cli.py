"""The command line and the demo, end to end on tiny models."""
import pytest
import torch

from retrolm.cli import main
from retrolm.demo import Fact, haystack_prompt, run_demo
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


def test_generate_with_offloaded_kv_answers_as_resident(tmp_path, capsys):
    """--offload-kv on the default model (trained retriever), with few enough slots that pages are evicted (64 of the
    input's 225; one 32-page prefill chunk needs about 50 on the device)."""
    text = tmp_path / "doc.txt"
    text.write_text("Filler words go here. " * 300 + "The special magic number for amber-fox is 7741203. " +
                    "More filler words follow. " * 300)
    question = ["--question", "What is the special magic number for amber-fox?", "--max-new-tokens", "8"]
    outputs = []
    for extra in ([], ["--offload-kv", "--offload-device-pages", "64"]):
        assert main(["generate", "--input", str(text), *question, "--device", "cpu", *extra]) == 0
        outputs.append(capsys.readouterr().out)
    answers = [out.split("answer:")[1].split("\n")[0] for out in outputs]
    assert answers[0] == answers[1]
    pages = [out.split("pages retrieved")[1].split("timings:")[0] for out in outputs]
    assert pages[0] == pages[1]


def test_generate_missing_input_is_one_clear_error(tiny_dirs, tmp_path, capsys):
    code = main(["generate", "--model", tiny_dirs["llama"], "--input", str(tmp_path / "nope.txt"), "--question", "q"])
    assert code == 2
    assert "not found" in capsys.readouterr().err


def test_generate_passes_hop_stops_with_escapes_read(tiny_dirs, tmp_path, capsys):
    """--lexical-hop-stops reaches the model with its backslash escapes read: asked with hops off, the model's one
    clear error names the newline it was given."""
    text = tmp_path / "doc.txt"
    text.write_text("one two. three\n" * 20)
    code = main(["generate", "--model", tiny_dirs["llama"], "--input", str(text), "--question", "q",
                 "--lexical-hops", "0", "--lexical-hop-stops", "\\n", "--device", "cpu"])
    assert code == 2
    assert "lexical_hop_stops='\\n' bounds what hops read, and hops are off" in capsys.readouterr().err


@pytest.mark.parametrize("value, error", [
    ("48", "lexical_echo_tokens=48 judges echoes as near misses, and near misses are off"),
    ("0", "expected an integer >= 1 or 'off', got 0"),
    ("many", "expected an integer >= 1 or 'off', got 'many'"),
])
def test_generate_passes_echo_tokens(tiny_dirs, tmp_path, capsys, value, error):
    """--lexical-echo-tokens reaches the model as an integer (asked with near misses off, the model's one clear
    error names it); a bad value is refused by the parser."""
    text = tmp_path / "doc.txt"
    text.write_text("one two. three\n" * 20)
    argv = ["generate", "--model", tiny_dirs["llama"], "--input", str(text), "--question", "q",
            "--lexical-echo-tokens", value, "--device", "cpu"]
    if value.isdigit() and int(value) > 0:
        assert main(argv) == 2
    else:
        with pytest.raises(SystemExit):
            main(argv)
    assert error in capsys.readouterr().err


def test_haystack_hides_the_fact_once_where_it_says():
    tokenizer = byte_tokenizer()
    fact = Fact("quiet-river", "1234567", depth=0.3)
    ids, needle_token = haystack_prompt(tokenizer, fact, 3000, seed=1)
    text = tokenizer.decode(ids[0], skip_special_tokens=True)
    assert ids.shape[1] >= 3000 and text.count(fact.needle) == 1
    assert tokenizer.decode(ids[0, needle_token:needle_token + len(fact.needle)]) == fact.needle
    assert abs(needle_token / ids.shape[1] - 0.3) < 0.05


def test_demo_runs_and_measures(tiny_dirs, capsys):
    summary = run_demo(model_path=tiny_dirs["llama"], window=64, factor=8, num_facts=2, max_new_tokens=3)
    assert len(summary["facts"]) == 2 and all(f["prompt_tokens"] >= 512 for f in summary["facts"])
    compare = summary["compare"]
    assert compare["retrolm"]["kv_mib"] > 0 and compare["full"]["kv_mib"] > 0
    assert compare["retrolm"]["seconds"] > 0 and compare["full"]["peak_rss_mib"] > 0
    assert "full attention" in capsys.readouterr().out
    assert torch.is_grad_enabled(), "the demo must not switch gradients off for its caller"


def test_generate_with_lexical_scores_retrieves_the_page_the_question_names(tmp_path, capsys):
    """The default model's lexical scores retrieve the page holding the question's rare words in text unlike the
    retriever's training text (Python's language reference, ~16x the default model's window); --lexical-weight 0
    turns them off."""
    from pydoc_data.topics import topics

    prose = " ".join(text for _, text in sorted(topics.items()) if text.isascii())[:16_000]
    text = tmp_path / "doc.txt"
    text.write_text(prose[:8_000] + " The pass code for the amber orchard locker is 4821907. " + prose[8_000:])
    question = ["--question", "What is the pass code for the amber orchard locker?", "--max-new-tokens", "2"]
    listed = []
    for extra in (["--lexical-weight", "0"], []):  # off, then the default model's own setting (10)
        assert main(["generate", "--input", str(text), *question, "--device", "cpu", *extra]) == 0
        listed.append(capsys.readouterr().out.split("pages retrieved")[1].split("timings:")[0])
    # (the retriever alone misses it on Python 3.11's pydoc text; other releases' text differs, so only the
    # lexical run's hit and the changed selection are asserted)
    assert "amber orchard locker" in listed[1] and listed[0] != listed[1]


def test_generate_keeps_other_keys_facts_of_the_same_shape_out(tmp_path, capsys):
    """Facts of one shape under six keys in held-out prose: without near misses the question's shared words bring
    the other keys' facts in (five of them); the default model's near misses keep all but one of them out, and the
    asked fact stays."""
    import re

    from pydoc_data.topics import topics

    prose = " ".join(text for _, text in sorted(topics.items()) if text.isascii())[:16_000]
    keys = {"amber orchard": 4821907, "silver canyon": 1937250, "velvet harbor": 6605218, "quiet meadow": 3158846,
            "copper lantern": 7712094, "hollow birch": 2290563}
    text = "".join(prose[i * 2_400:(i + 1) * 2_400] + f" The pass code for the {key} locker is {code}. "
                   for i, (key, code) in enumerate(keys.items())) + prose[14_400:]
    (tmp_path / "doc.txt").write_text(text)
    fact_pages = {key: text.index(f"for the {key} locker") // 64 for key in keys}  # one token per character
    question = ["--question", "What is the pass code for the amber orchard locker?", "--max-new-tokens", "2"]
    others = {}
    for margin in ("off", "0.7"):
        assert main(["generate", "--input", str(tmp_path / "doc.txt"), *question, "--device", "cpu",
                     "--lexical-near-miss-margin", margin]) == 0
        listed = capsys.readouterr().out.split("pages retrieved")[1].split("timings:")[0]
        pages = {int(page) for page in re.findall(r"page\s+(\d+)\s+tokens", listed)}
        assert fact_pages["amber orchard"] in pages
        others[margin] = [key for key in keys if key != "amber orchard" and fact_pages[key] in pages]
    assert len(others["off"]) >= 4 and len(others["0.7"]) <= 1
