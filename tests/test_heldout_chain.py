"""bench/heldout_chain.py: well-formed chains, their names located in the prompt, formats kept out of training."""
import random

import pytest

from bench.heldout_chain import FORMATS, build_chain_sample, make_chain, worked_example
from retrolm.tiny import byte_tokenizer
from retrolm.training.needle_recall import reference_topics
from train import corpus

TRAINING_DOCUMENTS = 300
# each format's fixed wording (statement, link, question, answer start)
PHRASES = ("register hold", "Those registers are the", "is worth as much as ticket", "Which tickets are worth",
           "signal means what the", "Which signals mean", "Those signals are the")


@pytest.mark.parametrize("form", range(FORMATS))
def test_each_statement_names_the_one_before(form):
    for seed in range(50):
        length = 2 + seed % 5
        chain = make_chain(random.Random(seed), form, length)
        assert len(set(chain.names)) == length == len(chain.statements)
        value = chain.question.split()[-1 if form != 1 else -2].rstrip("?")
        assert value.isdigit() and value in chain.statements[0] and chain.names[0] in chain.statements[0]
        for k in range(1, length):
            statement = chain.statements[k]
            assert chain.names[k] in statement and chain.names[k - 1] in statement and value not in statement
            assert statement.index(chain.names[k]) < statement.index(chain.names[k - 1])


def test_the_sample_locates_every_name_in_chain_order():
    tokenizer, topics = byte_tokenizer(), reference_topics()
    for seed in range(12):
        rng = random.Random(seed)
        chain = make_chain(rng, seed % FORMATS, 5)
        sample = build_chain_sample(tokenizer, rng, 4000, topics, chain)
        ids = sample.ids[0].tolist()
        assert abs(len(ids) - 4000) < 200
        assert tokenizer.decode(ids).endswith(f"Question: {chain.question}\nAnswer: {chain.answer_start}")
        for (first, last), name in zip(sample.name_tokens, chain.names):
            assert tokenizer.decode(ids[first:last + 1]) == name
        assert [first for first, _ in sample.name_tokens] == sorted(first for first, _ in sample.name_tokens)


def test_a_worked_example_echoes_the_question_about_another_value():
    """The worked example repeats the question's wording and the answer's start, about another value and other
    names; the sample's names are still located in its own chain, after the example."""
    tokenizer, topics = byte_tokenizer(), reference_topics()
    for seed in range(12):
        rng = random.Random(seed)
        chain = make_chain(rng, seed % FORMATS, 5)
        example = worked_example(random.Random(seed + 100), chain, seed % FORMATS)
        wording = chain.question.rsplit(" ", 2 if seed % FORMATS == 1 else 1)[0]  # the question less its value
        assert wording in example and chain.answer_start in example and chain.question not in example
        assert not [name for name in chain.names if name in example]
        sample = build_chain_sample(tokenizer, rng, 4000, topics, chain, example)
        text = tokenizer.decode(sample.ids[0].tolist())
        assert text.startswith(example) and abs(sample.ids.shape[1] - 4000) < 200
        for (first, last), name in zip(sample.name_tokens, chain.names):
            assert first >= len(example) and tokenizer.decode(sample.ids[0, first:last + 1].tolist()) == name


def test_the_formats_are_in_no_training_document():
    training = "\n".join(corpus.document(corpus.DocumentSpec(seed, 1022, 0.25, 340, dense_fraction=0.5,
                                                             fact_fraction=1.0, drill_fraction=0.5))
                         for seed in range(TRAINING_DOCUMENTS))
    lowered = " ".join(training.lower().split())
    assert "slot" in lowered, "training's own chain lessons are in the sample searched"
    assert not [phrase for phrase in PHRASES if phrase.lower() in lowered]
