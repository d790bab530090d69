"""Prompts, chat wrapping, scorers and defaults as the official LongBench / InfiniteBench / RULER code has them.

Fixtures are in each benchmark's hub layout: InfiniteBench's sentence-form inputs (Code.Run, Math.Find), nested
Math.Calc labels; predictions as byte-level BPE tokenizers decode them (a leading space).
"""
import json
import os

import pytest

from eval import infinitebench, longbench, metrics as M, ruler
from eval.errors import EvalError
from eval.methods import MethodOptions, build_method
from eval.prompting import Prompt
from eval.ruler_tasks import TASKS as RULER_TASKS, Generator
from retrolm.tiny import build_tiny_model

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "eval")
LB, IB, RU = (os.path.join(FIXTURES, d) for d in ("longbench", "infinitebench", "ruler"))
CHAT = ("{% for m in messages %}<|user|>{{ m['content'] }}<|end|>{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(str(tmp_path_factory.mktemp("fidelity") / "llama"), "llama", seed=1)


def _rows(task):
    with open(os.path.join(IB, f"{task}.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


# ----------------------------------------------------------------------------- InfiniteBench prompts
def test_code_run_prompt_takes_the_call_out_of_the_sentence():
    row = _rows("code_run")[0]
    assert row["input"].startswith("Please give me the exact number of the return value of func_3(-12).")
    text = infinitebench.make_sample("code_run", row, 0).prompt.text
    assert text.startswith("There is a function called func_3 in the following Python code.\n\n")
    assert text.endswith("\n\nPlease compute the exact value of func_3(-12). The value of func_3(-12) is")
    with pytest.raises(EvalError, match="code_run sample 0.*func_"):
        infinitebench.make_sample("code_run", {**row, "input": "What does it return?"}, 0)


def test_math_find_prefix_names_each_of_the_seven_questions():
    asked = ["largest", "second largest", "third largest", "smallest", "second smallest", "third smallest",
             "median"]
    for row, what in zip(_rows("math_find"), asked, strict=True):
        text = infinitebench.make_sample("math_find", row, 0).prompt.text
        assert text.startswith(f"What is the {what} number in the following list?\n\n[")
        assert text.endswith(f"\n\n{row['input']}")


def test_retrieval_templates_keep_their_two_official_wordings():
    passkey = infinitebench.make_sample("passkey", _rows("passkey")[0], 0).prompt
    assert passkey.before == ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize "
                              "it. I will quiz you about the important information.\n\n")
    assert passkey.after == "\n\nWhat is the pass key?\n\nThe pass key is"
    number = infinitebench.make_sample("number_string", _rows("number_string")[0], 0).prompt
    assert number.before == ("There is an important info hidden inside a lot of irrelevant text. Find it. I will quiz "
                             "you about the important information there.\n\n")


def test_every_infinitebench_task_loads_and_is_never_chat_wrapped():
    for task in infinitebench.TASKS:
        for sample in infinitebench.load_samples(task, IB):
            assert sample.prompt.chat is False and "{" + "context}" not in sample.prompt.text


# ----------------------------------------------------------------------------- InfiniteBench scoring
def test_option_scorers_strip_the_prediction_and_take_the_option_text():
    debug = infinitebench.load_samples("code_debug", IB)[0]
    assert debug.answers == ["beta", "B"]
    assert infinitebench.task_score("code_debug", [debug], [" B. beta"]) == 100.0
    assert M.ib_code_debug("\nB: beta", ["beta", "B"]) == 1.0
    assert M.ib_code_debug("The correct option is: B", ["beta", "B"]) == 1.0
    assert M.ib_code_debug(" C. gamma", ["beta", "B"]) == 0.0
    choice = infinitebench.load_samples("longbook_choice_eng", IB)[0]
    assert infinitebench.task_score("longbook_choice_eng", [choice], [" B. a copper candle"]) == 100.0
    assert M.ib_choice(" a copper candle ", ["a copper candle", "B"]) == 1.0  # the exact option text
    assert M.ib_choice("  ", ["a copper candle", "B"]) == 0.0
    assert M.ib_choice(" D", ["a copper candle", "B"]) == 0.0


def test_math_calc_scores_the_hubs_nested_labels():
    sample = infinitebench.load_samples("math_calc", IB)[0]
    values = sample.answers[0]
    assert isinstance(values, list) and len(values) > 4
    good = ", ".join(map(str, values[:4])) + ", -1"
    assert infinitebench.task_score("math_calc", [sample], [good]) == round(100 * 4 / len(values), 2)
    assert M.ib_math_calc("1, 4, 8", [[1, 4, 8]]) == M.ib_math_calc("1, 4, 8", [1, 4, 8]) == 1.0


def test_infinitebench_refuses_a_chat_template(model, tmp_path):
    with pytest.raises(EvalError, match="no chat template; drop --chat-template"):
        infinitebench.main(["--model", model, "--method", "full", "--chat-template", "--tasks", "passkey",
                            "--data-dir", IB, "--out", str(tmp_path)])


# ----------------------------------------------------------------------------- LongBench
def test_narrativeqa_template_keeps_the_official_typo():
    template = longbench.TASKS["narrativeqa"].template
    assert template.count("asconcisely as you can") == 2 and "as concisely" not in template


def test_published_average_is_the_mean_of_category_means():
    scores = {t: 10.0 for t in longbench.TASKS}
    scores.update(narrativeqa=40.0, lcc=70.0, multifieldqa_zh=100.0)
    published = longbench.published_average(scores)
    # en: Single-Doc (40+10+10)/3 = 20, Code (70+10)/2 = 40, four categories at 10 -> (20+40+40)/6 = 16.67
    assert published["en"]["Single-Doc QA"] == 20.0 and published["en"]["Code Completion"] == 40.0
    assert published["en"]["Avg"] == 16.67 and published["en"]["tasks"] == "16/16"
    # zh: Single-Doc 100, Code 40, four categories at 10 -> 180 / 6 = 30
    assert published["zh"]["Avg"] == 30.0 and published["zh"]["tasks"] == "7/7"
    partial = longbench.published_average({"trec": 50.0})
    assert partial == {"en": {"Avg": 50.0, "Few-shot Learning": 50.0, "tasks": "1/16"}}


def test_model2maxlen_rule():
    assert [longbench.official_max_length(w) for w in (4096, 8192, 16384, 32768)] == [3500, 7500, 15500, 31500]
    with pytest.raises(EvalError, match="--max-length"):
        longbench.official_max_length(512)


def test_official_defaults_and_comparability_notes(model, tmp_path):
    out = str(tmp_path / "lb")
    scores = longbench.main(["--model", model, "--method", "full", "--official-defaults", "--tasks", "trec,lcc",
                             "--data-dir", LB, "--out", out])
    assert scores["settings"]["max_length"] == 1023500  # the tiny model's 1M window by the model2maxlen rule
    assert set(scores["published_average"]["en"]) == {"Avg", "Few-shot Learning", "Code Completion", "tasks"}
    table = open(os.path.join(out, "scores.md")).read()
    assert "Published-style averages" in table and "Settings that change comparability" in table
    assert "1023500 tokens" in table and "python-Levenshtein" in table
    ib = infinitebench.main(["--model", model, "--method", "full", "--official-defaults", "--tasks", "passkey",
                             "--limit", "1", "--data-dir", IB, "--out", str(tmp_path / "ib")])
    assert ib["settings"]["max_length"] == 131072 and "131072 tokens" in ib["notes"][0]


# ----------------------------------------------------------------------------- chat wrapping
@pytest.fixture(scope="module")
def chat_full(model):
    method = build_method(MethodOptions(method="full", model=model, chat_template=True, full_window=4096))
    method.tokenizer.chat_template = CHAT
    return method


def test_ruler_answer_prefix_follows_the_assistant_header(chat_full):
    generated = Generator("niah_single_1", chat_full.count_tokens).sample(1024, seed=0)
    prompt = ruler.to_sample(generated, 0, 128).prompt
    text = chat_full.tokenizer.decode(chat_full.prompt_ids(prompt, 128, None))
    assert text == f"<|user|>{generated.input}<|end|><|assistant|>{generated.answer_prefix}"
    prompt.chat = False  # unwrapped: the prefix right after the prompt
    raw = chat_full.tokenizer.decode(chat_full.prompt_ids(prompt, 128, None))
    assert raw == generated.input + generated.answer_prefix


def test_longbench_truncates_then_wraps(chat_full):
    sample = longbench.load_samples("narrativeqa", LB)[0]
    assert sample.prompt.chat and len(chat_full.encode(sample.prompt.text)) > 300
    ids = chat_full.prompt_ids(sample.prompt, 128, 300)
    overhead = len(chat_full.encode("<|user|><|end|><|assistant|>", special=False))
    assert len(ids) == 300 + overhead  # the benchmark's 300 tokens, then the chat markup on top
    text = chat_full.tokenizer.decode(ids)
    assert text.startswith("<|user|>You are given a story") and text.endswith("Answer:<|end|><|assistant|>")
    # the method's window still holds, markup included: 4096 - 3000 to generate
    assert len(chat_full.prompt_ids(sample.prompt, 3000, 100000)) == 4096 - 3000


def test_chat_wrap_keeps_untouched_tasks_raw(chat_full):
    trec = longbench.load_samples("trec", LB)[0]
    assert chat_full.tokenizer.decode(chat_full.prompt_ids(trec.prompt, 64, None)) == trec.prompt.text
    plain = Prompt(before="Q: ", context="ctx", after="?", query="q", answer_prefix=" A:", chat=False)
    assert chat_full.tokenizer.decode(chat_full.prompt_ids(plain, 8, None)) == "Q: ctx? A:"


def test_ruler_official_defaults_sample_count(model, tmp_path, monkeypatch):
    seen = {}

    def fake_runs(tasks, lengths, count, num_samples, *rest):
        seen["n"] = num_samples
        raise KeyboardInterrupt  # stop before generating 500 samples

    monkeypatch.setattr(ruler, "make_runs", fake_runs)
    for extra, want in (([], ruler.DEFAULT_SAMPLES), (["--official-defaults"], 500),
                        (["--official-defaults", "--num-samples", "3"], 3)):
        with pytest.raises(KeyboardInterrupt):
            ruler.main(["--model", model, "--method", "full", "--tasks", "vt", "--lengths", "4k", "--out",
                        str(tmp_path)] + extra)
        assert seen["n"] == want
    assert RULER_TASKS["vt"].tokens_to_generate == 30


def test_ruler_cli_passes_the_cwe_words_and_essay_files_and_notes_them(model, tmp_path, monkeypatch):
    essay, words = tmp_path / "essays.json", tmp_path / "english_words.json"
    essay.write_text(json.dumps({"text": "The quokka sat in the sun. It smiled at nobody. " * 200}))
    words.write_text(json.dumps({"0": "zqword"}))
    real, seen = ruler.make_runs, {}

    def spy(*args):
        seen["essay"], seen["cwe_words"] = args[6:8]
        seen["runs"] = real(*args)
        return seen["runs"]

    monkeypatch.setattr(ruler, "make_runs", spy)
    out = str(tmp_path / "ruler")
    scores = ruler.main(["--model", model, "--method", "full", "--tasks", "niah_single_2", "--lengths", "1k",
                         "--num-samples", "1", "--out", out, "--cwe-words", str(words), "--essay", str(essay)])
    assert (seen["essay"], seen["cwe_words"]) == (str(essay), str(words))
    assert "quokka sat in the sun" in seen["runs"][0].samples[0].prompt.context
    assert scores["settings"]["cwe_words"] == str(words) and scores["settings"]["essay"] == str(essay)
    table = open(os.path.join(out, "scores.md")).read()
    assert "RULER: 500" in table and "increment shorter" in table and str(essay) in table
