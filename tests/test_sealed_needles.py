"""bench/sealed_needles.py: well-formed needles whose fixed wording appears neither in training nor in the other
needle sets, so a result on them is one no training choice was fitted to."""
import random
import re
import string

import pytest

from bench import heldout_prose, sealed_needles
from bench.sealed_needles import FORMS, SEALED_FORMATS, sealed_needle
from retrolm.training import needle_recall
from train import corpus, facts

NEEDLES_PER_FORMAT = 200
TRAINING_DOCUMENTS = 300


def _needles(form: int, count: int = NEEDLES_PER_FORMAT):
    return [sealed_needle(random.Random(f"sealed-test/{form}/{i}"), form) for i in range(count)]


def _phrases(template: str) -> list[str]:
    """The runs of 2+ fixed words of `template`, split at its fields and punctuation ("'s" after a field
    belongs to it)."""
    phrases = []
    for literal, _, _, _ in string.Formatter().parse(template):
        for chunk in re.split(r"[^A-Za-z' ]+", literal):
            words = [w for w in chunk.split() if not w.startswith("'")]
            if len(words) >= 2:
                phrases.append(" ".join(words))
    return phrases


def _sealed_phrases() -> dict[str, int]:
    """Every fixed phrase of the sealed templates (sentence, question, answer start) -> its format."""
    return {phrase: form for form, sealed in enumerate(FORMS)
            for template in (sealed.sentence, sealed.question, sealed.answer_start) for phrase in _phrases(template)}


def _found(phrases, text: str) -> set[str]:
    """The phrases occurring in `text` as whole words, whatever the case and the spacing between words."""
    found = set()
    for phrase in phrases:
        pattern = r"(?<![A-Za-z])" + r"\s+".join(map(re.escape, phrase.split())) + r"(?![A-Za-z])"
        if re.search(pattern, text, re.IGNORECASE):
            found.add(phrase)
    return found


def test_there_are_six_formats_and_the_set_is_registered():
    assert SEALED_FORMATS == len(FORMS) == 6
    assert heldout_prose.NEEDLE_SETS["sealed"] == (sealed_needle, SEALED_FORMATS)


@pytest.mark.parametrize("form", range(SEALED_FORMATS))
def test_needles_are_ascii_and_answerable_from_the_sentence_alone(form):
    needles = _needles(form)
    for needle in needles:
        fields = (needle.sentence, needle.question, needle.answer_start, needle.value)
        assert all(text.isascii() for text in fields), needle
        assert needle.sentence.count(needle.value) == 1, needle  # the value's tokens are located by its first match
        at = needle.sentence.index(needle.value)
        end = at + len(needle.value)
        assert not needle.sentence[at - 1:at].isalnum() and not needle.sentence[end:end + 1].isalnum(), needle
        assert needle.value not in needle.question and needle.value not in needle.answer_start, needle
        assert needle.answer_start and needle.answer_start == needle.answer_start.strip(), needle
    assert len({n.value for n in needles}) >= 10, "values vary"
    assert len({n.question for n in needles}) >= 10, "questions name different subjects"
    assert sealed_needle(random.Random(5), form) == sealed_needle(random.Random(5), form), "reproducible"


def test_formats_differ_in_where_the_value_sits():
    """The value first, after a comma, or followed by words: no two formats share a sentence skeleton."""
    skeletons = set()
    for form in range(SEALED_FORMATS):
        needle = _needles(form, 1)[0]
        skeletons.add(needle.sentence.replace(needle.value, "<V>"))
        assert not needle.sentence.endswith(needle.value + "."), "words follow the value in every sealed format"
    assert len(skeletons) == SEALED_FORMATS
    first = _needles(0, 1)[0]
    assert first.sentence.startswith(first.value), "format 0 names the value before the thing it names"


def test_the_word_lists_are_this_sets_own():
    sealed = {w.lower() for words in (sealed_needles.TOWNS, sealed_needles.PEOPLE, sealed_needles.BOATS,
                                      sealed_needles.KEEPSAKE_WORDS) for w in words}
    others = [heldout_prose.ADJECTIVES, heldout_prose.NOUNS, heldout_prose.NAMES, heldout_prose.WORDS,
              needle_recall.PLACES, needle_recall.SITES, needle_recall.GROWERS, needle_recall.SEEDS, facts.FIRST,
              facts.LAST, facts.COLOURS]
    assert not sealed & {w.lower() for words in others for w in words}


def test_fixed_phrases_are_in_no_training_document_and_no_other_needle_set():
    phrases = _sealed_phrases()
    assert set(phrases.values()) == set(range(SEALED_FORMATS)), "every format has fixed phrases"
    training = "\n".join(corpus.document(corpus.DocumentSpec(seed, 1022, 0.25, 340, dense_fraction=0.5,
                                                             fact_fraction=1.0, drill_fraction=0.5))
                         for seed in range(TRAINING_DOCUMENTS))
    assert _found(["answer the  question using"], training), "the search finds a phrase training does use"
    assert not _found(phrases, training)
    other_sets = [heldout_prose.make_needle(random.Random(i), i % heldout_prose.FORMATS) for i in range(100)]
    other_sets += [needle_recall.validation_needle(random.Random(i), i % needle_recall.VALIDATION_FORMATS)
                   for i in range(60)]
    other_text = "\n".join(f"{n.sentence}\n{n.question}\n{n.answer_start}" for n in other_sets)
    assert not _found(phrases, other_text)
    for form in range(SEALED_FORMATS):
        for needle in _needles(form, 20):  # and no phrase the other sets keep out of training
            assert not facts.held_out_hits(f"{needle.sentence} {needle.question} {needle.answer_start}"), needle
