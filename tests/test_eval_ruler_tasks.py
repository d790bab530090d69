"""RULER generators: needles once at the requested depth, lengths within one page, determinism."""
import json
import os
import random

import pytest

from eval.errors import EvalError
from eval.ruler import parse_lengths
from eval.ruler_tasks import (CWE_TEMPLATE, DEPTHS, FWE_NOISE, NEEDLE, NOISE, TASKS, VT_PREFIX, Generator,
                              cwe_words, load_qa)
from retrolm.tiny import byte_tokenizer

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "eval", "ruler")
PAGE = 128


@pytest.fixture(scope="module")
def count():
    tok = byte_tokenizer()  # one token per byte, so lengths are exact and cheap to check
    return lambda text: len(tok(text).input_ids)


@pytest.fixture(scope="module")
def qa():
    return {name: load_qa(name, FIXTURES) for name in ("squad", "hotpotqa")}


@pytest.mark.parametrize("task", [t for t, c in TASKS.items() if c.kind != "qa"])
@pytest.mark.parametrize("length", [2048, 3072])
def test_synthetic_lengths_within_one_page(task, length, count):
    sample = Generator(task, count).sample(length, seed=7)
    assert length - PAGE < sample.length <= length
    assert sample.length == count(sample.input + sample.answer_prefix) + TASKS[task].tokens_to_generate


@pytest.mark.parametrize("task", ["qa_1", "qa_2"])
def test_qa_lengths_within_one_page(task, count, qa):
    source = qa[TASKS[task].args["dataset"]]
    sample = Generator(task, count, qa_data=source).sample(700, seed=7, index=1)
    assert 700 - PAGE < sample.length <= 700
    question = source["questions"][1]
    assert question["question"] in sample.input and sample.outputs == question["answers"]
    for doc in question["doc_ids"]:  # the gold documents are always in the context
        assert source["docs"][doc] in sample.context


@pytest.mark.parametrize("depth", [0, 25, 50, 100])
def test_needle_once_at_requested_depth(depth, count):
    sample = Generator("niah_single_1", count).sample(4096, seed=3, depth=depth)
    (value,) = sample.outputs
    assert sample.context.count(value) == 1
    assert sample.input.count(value) == 1
    at = sample.context.index(value) / len(sample.context)
    assert abs(at - depth / 100) < 0.05
    assert sample.depth == depth


@pytest.mark.parametrize("task", [t for t, c in TASKS.items() if c.kind == "niah"])
def test_every_answer_is_a_needle_in_the_context_once(task, count):
    sample = Generator(task, count).sample(3072, seed=5)
    args = TASKS[task].args
    assert len(sample.outputs) == args["num_needle_v"] * args["num_needle_q"]
    for value in sample.outputs:
        assert sample.context.count(value) == 1
    assert NEEDLE.split("{")[0] in sample.context


def test_same_seed_same_sample_other_seed_other_sample(count, qa):
    for task, config in TASKS.items():
        source = qa.get(config.args.get("dataset"))
        a = Generator(task, count, qa_data=source).sample(2048, seed=11, index=2)
        b = Generator(task, count, qa_data=source).sample(2048, seed=11, index=2)
        c = Generator(task, count, qa_data=source).sample(2048, seed=12, index=2)
        assert (a.input, a.outputs, a.answer_prefix) == (b.input, b.outputs, b.answer_prefix), task
        assert a.input != c.input, task


def test_variable_tracking_chain_is_in_order(count):
    sample = Generator("vt", count).sample(2048, seed=1)
    names = sample.outputs
    assert len(names) == TASKS["vt"].args["num_hops"] + 1
    positions = [sample.context.index(f"VAR {n} =") for n in names]
    assert positions == sorted(positions)


def test_frequent_words_answer_is_the_three_most_frequent(count):
    sample = Generator("fwe", count).sample(3072, seed=2)
    words = sample.context.split()
    assert FWE_NOISE == "..." and words.count("...") > words.count("....") == 0  # RULER's noise is three dots
    counts = {w: words.count(w) for w in set(words) if w != FWE_NOISE}
    top = sorted(counts, key=lambda w: -counts[w])
    assert set(top[:3]) == set(sample.outputs)
    assert counts[top[2]] > counts[top[3]]
    assert len(set(words)) <= (3072 - TASKS["fwe"].tokens_to_generate) // 50  # RULER's vocabulary: length / 50


def test_too_short_length_is_a_clear_error(count):
    with pytest.raises(EvalError, match="longer --lengths"):
        Generator("vt", count).sample(256, seed=0)


def test_parse_lengths():
    assert parse_lengths("4k, 8192,1m") == [4096, 8192, 1 << 20]
    with pytest.raises(EvalError, match="--lengths"):
        parse_lengths("4kb")


# ----------------------------------------------------------------------------- long contexts
def byte_count(text: str) -> int:
    """The byte tokenizer's count without running it over a megabyte: one token per UTF-8 byte."""
    return len(text.encode("utf-8"))


def test_byte_count_is_the_byte_tokenizers_count(count):
    sample = Generator("niah_multikey_1", byte_count).sample(4096, seed=1)
    assert byte_count(sample.input + "é") == count(sample.input + "é")


@pytest.mark.parametrize("length", [4096, 128 * 1024, 1 << 20])
@pytest.mark.parametrize("task", list(TASKS))
def test_every_task_generates_at_4k_128k_and_1m(task, length, qa):
    """RULER's lengths up to 1M: each task fills the length to within one haystack unit (a document for QA)."""
    sample = Generator(task, byte_count, qa_data=qa.get(TASKS[task].args.get("dataset"))).sample(length, seed=42)
    assert sample.length == byte_count(sample.input + sample.answer_prefix) + TASKS[task].tokens_to_generate
    unit = 400 if TASKS[task].kind == "qa" else PAGE  # the longest fixture document is under 400 bytes
    assert length - unit < sample.length <= length
    assert sample.outputs and sample.context in sample.input


# ----------------------------------------------------------------------------- RULER's formats
def test_cwe_format_matches_rulers(count):
    """Entries "1. w 2. w" joined by spaces; one example of 40 words (10x / 3x) at 4K+, of 20 words (3x / 1x)
    and common words 6x below; the example, a newline, then the task; words from nouns, adjectives and verbs."""
    for length, shot_words, shot_reps, main_reps in ((8192, 40, (10, 3), (30, 3)), (2048, 20, (3, 1), (6, 1))):
        sample = Generator("cwe", count).sample(length, seed=3)
        shot, task = sample.input.split("\n" + CWE_TEMPLATE.split("\n")[0])
        shot_list = shot.split("\n")[1]
        assert shot_list.startswith("1. ") and "\n" not in sample.context
        entries = sample.context.split(" ")
        assert entries[:2] == ["1.", entries[1]] and entries[2] == "2."
        words = entries[1::2]
        for listed, reps, n in ((shot_list.split(" ")[1::2], shot_reps, shot_words), (words, main_reps, None)):
            counts = sorted({w: listed.count(w) for w in listed}.values(), reverse=True)
            assert counts[:10] == [reps[0]] * 10 and set(counts[10:]) == {reps[1]}
            assert n is None or len(counts) == n
        assert set(sample.outputs) <= set(words) and set(words) <= set(cwe_words())
    assert any(w in cwe_words() for w in ("accept", "run", "eat"))  # verbs are in the pool


def test_cwe_four_k_fits_bytes_with_the_short_setting():
    """RULER's long setting cannot fit 4K byte tokens (RULER itself loops forever there): the short one is used."""
    sample = Generator("cwe", byte_count).sample(4096, seed=0)
    words = sample.context.split(" ")[1::2]
    assert sorted({w: words.count(w) for w in words}.values(), reverse=True)[:10] == [6] * 10


def test_cwe_past_the_wonderwords_pool():
    sample = Generator("cwe", byte_count).sample(1 << 20, seed=0)
    words = sample.context.split(" ")[1::2]
    assert len(set(words)) > len(cwe_words())


def test_cwe_words_file_supplies_the_words_past_the_pool(tmp_path):
    """With --cwe-words (RULER's english_words.json: an object whose values are words) the long lengths draw
    from that file; a file too small for the length, or not such an object, is a clear error."""
    path = tmp_path / "english_words.json"
    path.write_text(json.dumps({str(i): f"zq{i:06d}" for i in range(200000)}))
    sample = Generator("cwe", byte_count, cwe_words_path=str(path)).sample(1 << 20, seed=0)
    words = set(sample.context.split(" ")[1::2])
    assert len(words) > len(cwe_words()) and all(w.startswith("zq") for w in words)
    assert set(sample.outputs) <= words
    small = tmp_path / "small.json"
    small.write_text(json.dumps({str(i): f"zq{i}" for i in range(len(cwe_words()) + 10)}))
    with pytest.raises(EvalError, match="more than .*small.json holds"):
        Generator("cwe", byte_count, cwe_words_path=str(small)).sample(1 << 20, seed=0)
    bad = tmp_path / "list.json"
    bad.write_text(json.dumps(["a", "b"]))
    with pytest.raises(EvalError, match="cannot read the cwe word list .*list.json.*english_words.json"):
        Generator("cwe", byte_count, cwe_words_path=str(bad)).sample(1 << 20, seed=0)


def test_vt_format_matches_rulers(count):
    """Statements without a trailing period ("VAR B = VAR A " keeps its space); a one-shot example with
    3-letter names, its own 5-digit value, RULER's noise lines and two spaces after "they are:"."""
    sample = Generator("vt", count).sample(8192, seed=4)
    shot, task = sample.input.split("\n\nMemorize", 1)
    lines = sample.context.split("\n")
    statements = [line for line in lines if line.startswith("VAR ")]
    assert statements[0] == f"VAR {sample.outputs[0]} = {statements[0].split(' = ')[1]}"
    assert statements[1:] == [f"VAR {b} = VAR {a} " for a, b in zip(sample.outputs, sample.outputs[1:])]
    assert set(lines) - set(statements) == {NOISE}
    shot_names = shot.split("they are:  ")[1].split(" ")
    assert len(shot_names) == 5 and all(len(n) == 3 and n.isupper() for n in shot_names)
    shot_value = shot.split("assigned the value ")[1].split(" ")[0]
    assert len(shot_value) == 5 and shot_value != "12345" and f"VAR {shot_names[0]} = {shot_value}\n" in shot
    assert shot.count(NOISE) == 5  # bytes: no more noise fits RULER's 500-token example
    assert VT_PREFIX.split("{")[0] in shot and not statements[-1].endswith(".")


def test_vt_one_shot_noise_fills_five_hundred_tokens():
    """With a tokenizer of ~4 characters per token the example takes as many noise lines as fit 500 tokens."""
    sample = Generator("vt", lambda text: len(text) // 4).sample(8192, seed=4)
    shot = sample.input.split("\n\nMemorize", 1)[0]
    prompt = shot[:shot.index("they are: ") + len("they are: ")]
    assert 500 - 90 // 4 < len(prompt) // 4 <= 500 and shot.count(NOISE) > 5


def test_qa_distractors_come_first_from_the_gold_article(count, qa):
    source = qa["squad"]
    question = source["questions"][0]
    gen = Generator("qa_1", count, qa_data=source)
    article = [question["doc_ids"][0]] + question["more_ids"]
    assert len(article) >= 3
    for seed in range(5):  # room for the gold paragraph and two more: both from its own article
        docs = gen.build(3, random.Random(seed), 0, None, 4096).context.split("\n\nDocument ")
        assert {source["docs"].index(d.split(":\n", 1)[1]) for d in docs} <= set(article)


def test_noise_needles_go_to_uniform_positions_essay_needles_to_rulers_depths(count):
    lines_seen = set()
    for seed in range(60):
        context = Generator("niah_single_1", count).build(400, random.Random(seed), 0, None, 1 << 20).context
        lines_seen.add(next(i for i, line in enumerate(context.split("\n")) if line != NOISE))
    assert len(lines_seen) > 45  # more places than RULER's 40 depths
    for seed in range(10):
        assert Generator("niah_single_2", count).build(2000, random.Random(seed), 0, None, 1 << 20).depth in DEPTHS


def test_essay_needle_at_depth_zero_keeps_rulers_leading_space(count):
    """RULER joins an empty stretch of sentences too, so a needle at depth 0 follows a space."""
    context = Generator("niah_single_2", count).build(300, random.Random(0), 0, 0, 4096).context
    assert context.startswith(" One of the special magic numbers")
