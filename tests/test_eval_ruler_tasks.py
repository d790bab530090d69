"""RULER generators: needles once at the requested depth, lengths within one page, determinism."""
import os

import pytest

from eval.errors import EvalError
from eval.ruler import parse_lengths
from eval.ruler_tasks import NEEDLE, TASKS, Generator, load_qa
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
    counts = {w: words.count(w) for w in set(words) if w != "...."}
    top = sorted(counts, key=lambda w: -counts[w])
    assert set(top[:3]) == set(sample.outputs)
    assert counts[top[2]] > counts[top[3]]


def test_too_short_length_is_a_clear_error(count):
    with pytest.raises(EvalError, match="longer --lengths"):
        Generator("vt", count).sample(256, seed=0)


def test_parse_lengths():
    assert parse_lengths("4k, 8192,1m") == [4096, 8192, 1 << 20]
    with pytest.raises(EvalError, match="--lengths"):
        parse_lengths("4kb")
