"""Varied-format training lessons: answerable, of exact size, and never in an evaluated format."""
import json
import random
import re

import pytest

from bench.heldout_prose import FORMATS, make_needle
from retrolm.training.needle_recall import VALIDATION_FORMATS, validation_needle
from train import corpus, drills, facts


def _lesson_text(lesson: facts.Lesson, head: str, tail: str) -> str:
    return " ".join([head, *lesson.needles, tail])


@pytest.mark.parametrize("kind", sorted(set(facts.KINDS)))
def test_lessons_are_answerable_and_avoid_every_held_out_phrase(kind):
    for seed in range(300):
        rng = random.Random(seed)
        lesson = facts.make_lesson(rng, kind)
        head, tail = facts.prompt_parts(rng, lesson)
        text = _lesson_text(lesson, head, tail)
        assert not facts.held_out_hits(text), text
        assert tail.endswith(f" {lesson.answer}."), "the answer closes the lesson"
        stated = " ".join(lesson.needles)
        if kind == "chain":
            assert all(name in stated for name in lesson.answer.replace(" and ", ", ").split(", "))
        else:
            assert all(value in stated for value in lesson.answer.replace(" and ", ", ").split(", "))


def test_every_held_out_needle_format_is_guarded():
    """Each needle format of the held-out evaluation and of the validation set contains a phrase training lessons
    may not use, and no phrase is shared between the two sets."""
    test = [make_needle(random.Random(form), form) for form in range(FORMATS)]
    validation = [validation_needle(random.Random(form), form) for form in range(VALIDATION_FORMATS)]
    hits = {}
    for name, needles in (("test", test), ("validation", validation)):
        hits[name] = set()
        for needle in needles:
            found = facts.held_out_hits(f"{needle.sentence} {needle.question}")
            assert found, needle.sentence
            hits[name].update(found)
    assert not hits["test"] & hits["validation"], "a checkpoint chosen on validation needles is tested on others"


def test_fact_documents_are_exact_and_hold_no_ruler_template():
    for seed in range(60):
        spec = corpus.DocumentSpec(seed, 1022, 0.0, 300, dense_fraction=0.3, fact_fraction=1.0)
        text = corpus.document(spec)
        assert len(text) == 1022 and text.isascii()
        assert "special magic" not in text and "VAR " not in text
    dense = facts.dense_fact_text(random.Random(3), 20000, 2048, corpus.varied_filler)
    assert dense.count("?") >= 3, "a dense text asks several questions"


def test_needles_are_never_cut_inside_a_word():
    for seed in range(50):
        text = facts.fact_task_text(random.Random(seed), 900, lambda rng, n: ("xxxxxxxx " * 200)[:n])
        runs = re.findall(r"\bx+\b", text)[:-1]  # the filler's last word may be cut by its own length
        assert len(runs) > 20 and all(len(run) == 8 for run in runs), text


def test_short_documents_in_a_row_fill_a_long_one():
    spec = corpus.DocumentSpec(11, 8190, 0.0, 300, fact_fraction=1.0, short_fraction=1.0, short_length=1022)
    text = corpus.document(spec)
    assert len(text) == 8190
    parts = text.split("\n\n")
    assert len(parts) >= 8 and text.count("Answer") + text.count("A: ") + text.count("\n") >= 8
    first = corpus.document(corpus.DocumentSpec(11 * 64 + 1, 1022, 0.0, 300, fact_fraction=1.0))
    assert text.startswith(first), "the first short document comes first, unchanged"


def test_drills_ask_only_what_they_stated_and_avoid_every_held_out_phrase():
    """Each recall comes after the statement of its key, in the drill's own phrasing, and ends with the stated
    value: copying is the only way to predict it. No held-out phrase appears in a drill's own words (its filler
    is the shipped corpus's text)."""
    asked = rejoined = worded_questions = 0
    shapes = set()
    for seed in range(200):
        drill = drills.make_drill(random.Random(seed), 1022, corpus.varied_filler)
        own_words = drills.make_drill(random.Random(seed), 1022, lambda rng, n: "x " * (n // 2)).text
        assert not facts.held_out_hits(own_words), own_words
        phrasing = drill.phrasing
        shapes.add(phrasing.shape)
        for start, end, key in drill.asked:
            stated_at, value = drill.stated[key]
            assert stated_at < start
            assert phrasing.statement("", key, value)[1:] in drill.text[stated_at:start]
            answer = drill.text[start:end].rstrip("\n").split("\n")[-1]
            if not answer.startswith("Answer: "):  # the statement again, after another lead
                assert answer.endswith(phrasing.statement("", key, value)[1:]), answer
            else:  # a question's answer ends with the value and names the fact by its words or its join
                assert answer.endswith(f" {value}."), drill.text[start:end]
                named = answer[len("Answer: "):-len(f" {value}.")]
                assert phrasing.words.lower() in named.lower() or named == f"It {phrasing.join}", named
                rejoined += named.startswith("Its ")
                question = drill.text[start:end].split("Question: ")[1].split("\n")[0]
                assert key.lower() in question.lower(), question
                worded_questions += f" {phrasing.words}" in question
            asked += 1
    assert asked > 300, "drills ask several questions each"
    assert rejoined > 20, "some answers name the fact with another joining word"
    assert 0.3 < worded_questions / asked < 0.5, "about half the questions (two layouts in three) restate the words"
    assert shapes == set(drills.SHAPES)


@pytest.mark.parametrize("shape", drills.SHAPES)
def test_drill_statements_share_one_phrasing_of_their_shape(shape):
    rng = random.Random(0)
    while (phrasing := drills.invented_phrasing(rng)).shape != shape:
        pass
    statement = phrasing.statement("", "Ada Brandt", "4821")
    head, value, tail = statement.partition(" 4821")
    assert value and (tail == "." or (shape == "trailing" and tail == f" {phrasing.trail}."))
    if shape == "bare":
        assert head == f"Ada Brandt {phrasing.words}", "no joining word before the value"
    elif shape == "attribute":
        assert head == f"The {phrasing.words} of Ada Brandt {phrasing.join}"
    else:
        assert head == f"Ada Brandt {phrasing.words} {phrasing.join}"
    drill = drills.make_drill(random.Random(5), 4000, lambda rng, n: "filler " * (n // 7))
    assert len(drill.stated) >= 3
    for key, (_, value) in drill.stated.items():
        assert drill.phrasing.statement("", key, value)[1:] in drill.text


def test_drill_shapes_can_be_restricted():
    """`DrillStyle.shapes` limits the statement shapes a drill document may take (plain alone: the first drills)."""
    shapes = {drills.make_drill(random.Random(seed), 1022, corpus.varied_filler,
                                drills.DrillStyle(("plain", "bare"))).phrasing.shape for seed in range(40)}
    assert shapes == {"plain", "bare"}
    with pytest.raises(ValueError, match="drill shapes must be some of"):
        drills.DrillStyle(("plain", "sideways"))
    spec = corpus.DocumentSpec(3, 1022, 0.25, 340, drill_fraction=1.0, drill_style=drills.DrillStyle(("attribute",)))
    assert " of " in corpus.document(spec) and corpus.document(spec) != corpus.document(
        corpus.DocumentSpec(3, 1022, 0.25, 340, drill_fraction=1.0, drill_style=drills.DrillStyle(("plain",))))


def _rejoined_share(style) -> float:
    """The share of question answers in drills of `style` that restate the relation after "Its"."""
    answers = [line for seed in range(150)
               for line in drills.make_drill(random.Random(seed), 1022, corpus.varied_filler, style).text.split("\n")
               if line.startswith("Answer: ")]
    return sum(a.startswith("Answer: Its ") for a in answers) / len(answers)


def test_drill_style_sets_the_share_of_rejoined_answers():
    """`DrillStyle.rejoined` is the share of answers naming the fact with another joining word; the default keeps
    the first drill runs' mix (one answer in four in the plain shape), and a bad share is refused."""
    assert 0.18 < _rejoined_share(drills.DrillStyle(("plain",))) < 0.32
    assert 0.6 < _rejoined_share(drills.DrillStyle(("plain",), rejoined=0.7)) < 0.8
    assert _rejoined_share(drills.DrillStyle(("plain",), rejoined=0.0)) == 0.0
    with pytest.raises(ValueError, match="rejoined answers must be in"):
        drills.DrillStyle(rejoined=1.5)


def test_partial_rejoined_answers_keep_only_the_relations_last_words():
    """`DrillStyle.partial`: that share of rejoined answers names the fact by the relation's last words alone ("Its
    lantern is" for "pebble lantern under a"), never by other words; at 0 every rejoined answer restates the
    relation's words whole."""
    def kept_words(partial: float) -> list[int]:
        """Per rejoined answer of a relation of 2+ words, how many of its words it starts with dropped (0: all kept)."""
        dropped = []
        for seed in range(150):
            drill = drills.make_drill(random.Random(seed), 1022, corpus.varied_filler,
                                      drills.DrillStyle(("plain",), rejoined=1.0, partial=partial))
            words = drill.phrasing.words.split()
            if len(words) < 2:
                continue
            for line in drill.text.split("\n"):
                if line.startswith("Answer: Its "):
                    named = line[len("Answer: Its "):]
                    dropped.append(next(i for i in range(len(words)) if named.startswith(" ".join(words[i:]) + " ")))
        return dropped

    whole, half = kept_words(0.0), kept_words(0.5)
    assert whole and set(whole) == {0}
    assert 0.35 < sum(d > 0 for d in half) / len(half) < 0.65
    with pytest.raises(ValueError, match="partial answers must be in"):
        drills.DrillStyle(partial=-0.1)


@pytest.mark.parametrize("shapes", [("plain",), drills.SHAPES])
def test_drills_end_in_filler_never_inside_a_fact_or_a_recall(shapes):
    """A drill is cut to its document's length; a statement or a recall running past that end would be cut, and a
    recall cut after "Answer:" teaches that the text may end where a value is due. Every statement and recall ends
    inside the length, and the text reaches it (filler last)."""
    for seed in range(150):
        drill = drills.make_drill(random.Random(seed), 1022, corpus.varied_filler, drills.DrillStyle(shapes))
        assert len(drill.text) >= 1022, "filler fills the document to its length"
        for start, end, _ in drill.asked:
            assert end <= 1022, drill.text[start:]
        for key, (start, value) in drill.stated.items():
            assert drill.text.index(value, start) + len(value) < 1022, drill.text[start:]


def test_drill_documents_are_exact_and_leave_the_other_documents_unchanged():
    drilled = 0
    for seed in range(200):
        mixed = corpus.document(corpus.DocumentSpec(seed, 1022, 0.25, 340, drill_fraction=0.3))
        plain = corpus.document(corpus.DocumentSpec(seed, 1022, 0.25, 340))
        assert len(mixed) == 1022 and mixed.isascii()
        drilled += mixed != plain
    assert 35 <= drilled <= 85, "about 30% of documents become drills, the rest stay the shipped corpus's"


def test_split_windows_hold_two_whole_documents_and_leave_the_default_corpus_unchanged(tmp_path):
    """`split_fraction` of the windows hold two documents that fill them exactly, each between its own begin and
    end tokens, so the end of text is no longer always at a window's last position; at 0 the documents are the
    shipped corpus's, byte for byte."""
    from retrolm.tiny import byte_tokenizer
    from retrolm.training.data import pack_documents

    tokenizer = byte_tokenizer()
    window = 256
    split = corpus.write_documents(str(tmp_path / "split.jsonl"), 40, window - 2, seed=3, text_fraction=0.25,
                                   min_task_tokens=window // 3, workers=1, split_fraction=0.5)
    texts = [json.loads(line)["text"] for line in open(split)]
    assert 50 < len(texts) < 75, "about half the 40 windows hold two documents"
    packed = pack_documents([tokenizer(t, add_special_tokens=False).input_ids for t in texts], window,
                            tokenizer.eos_token_id, tokenizer.bos_token_id)
    assert packed.shape == (40, window), "the documents fill the windows exactly, none left over"
    assert (packed[:, 0] == tokenizer.bos_token_id).all() and (packed[:, -1] == tokenizer.eos_token_id).all()
    inner_ends = [(row, int(p)) for row in packed for p in (row[:-1] == tokenizer.eos_token_id).nonzero()[0]]
    assert len(inner_ends) == len(texts) - 40 and len({p for _, p in inner_ends}) > 10, "ends at many positions"
    for row, end in inner_ends:  # the second document starts right after the first one's end
        assert window // 4 <= end < window - window // 4 and row[end + 1] == tokenizer.bos_token_id
    default = corpus.write_documents(str(tmp_path / "one.jsonl"), 12, window - 2, seed=3, text_fraction=0.25,
                                     min_task_tokens=window // 3, workers=1)
    unsplit = corpus.write_documents(str(tmp_path / "zero.jsonl"), 12, window - 2, seed=3, text_fraction=0.25,
                                     min_task_tokens=window // 3, workers=1, split_fraction=0.0)
    assert open(default).read() == open(unsplit).read()
    assert corpus.window_lengths(12, window - 2, 0.0, 3) == [window - 2] * 12
