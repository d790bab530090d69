"""Fact-recall lessons in many formats, none of them an evaluated one.

A lesson hides facts ("subject, attribute, value") in text and asks about some of them at the end, in the
phrasing of one of many statement, question and prompt templates, with values of several kinds. The model
must learn to find the fact a question is about, whatever its wording, rather than one template: RULER's
evaluated templates ("special magic number", "VAR X = ..."), the held-out needle formats of
bench/heldout_prose.py and the validation needles of retrolm/training/needle_recall.py never appear
(HELD_OUT_PHRASES, checked by a test).

Lesson kinds, each also in RULER's task structures but worded differently:
- single: one fact asked, others around it (other subjects and attributes);
- multikey: distractors with the same attribute and similar subjects;
- multivalue: one subject with several values of an attribute, all asked;
- multiquery: several subjects asked at once;
- chain: a value passed from name to name ("the blue slot copies the red slot"), all holders asked.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from functools import lru_cache

from eval.ruler_tasks import plain_words

# phrases of the evaluated formats: never in a training lesson
HELD_OUT_PHRASES = ("magic number", "special magic", "VAR ", "pass code", "locker", "spare key", "cottage",
                    "shipment", "tracking label", "depot", "ledger", "crowns", "password", "server", "uuid",
                    "variable", "assigned the value", "ferry", "pier", "invoice", "bakery", "greenhouse",
                    "top shelf")
HELD_OUT_WORDS = {w for phrase in HELD_OUT_PHRASES for w in phrase.lower().split()}


def held_out_hits(text: str) -> list[str]:
    """The held-out phrases in `text`, as whole words ("VAR " in capitals only, as RULER writes it)."""
    return [p for p in HELD_OUT_PHRASES
            if re.search(r"\b" + re.escape(p.strip()) + r"\b", text, 0 if p.isupper() else re.IGNORECASE)]

FIRST = ("Ada", "Bram", "Celia", "Dov", "Elin", "Farid", "Gwen", "Hugo", "Ines", "Jonas", "Kaia", "Levi", "Mira",
         "Nils", "Orla", "Pavel", "Quinn", "Rosa", "Soren", "Thea", "Umar", "Vera", "Wren", "Xavi", "Yara", "Zeno")
LAST = ("Abbott", "Brandt", "Castell", "Dunmore", "Eriksen", "Fairley", "Grove", "Hale", "Ivers", "Jarvik",
        "Kestrel", "Lund", "Marsh", "Novak", "Okafor", "Pryce", "Quade", "Rourke", "Stroud", "Tamsin", "Ueda",
        "Voss", "Whitlock", "Yoder")
COLOURS = ("red", "blue", "green", "yellow", "violet", "orange", "teal", "grey", "white", "black", "brown", "pink")


def _digits(rng: random.Random, low: int, high: int) -> str:
    n = rng.randint(low, high)
    return str(rng.randint(10 ** (n - 1), 10 ** n - 1))


@lru_cache(maxsize=1)
def _words() -> tuple[str, ...]:
    return tuple(w for w in plain_words() if w.isalpha() and w.isascii() and 3 <= len(w) <= 10
                 and w.lower() not in HELD_OUT_WORDS)


def _word(rng: random.Random) -> str:
    return rng.choice(_words())


def _name(rng: random.Random) -> str:
    return f"{rng.choice(FIRST)} {rng.choice(LAST)}"


# value kinds: how a value of an attribute is drawn
VALUES = {
    "number": lambda rng: _digits(rng, 3, 8),
    "short": lambda rng: _digits(rng, 2, 4),
    "year": lambda rng: str(rng.randint(1850, 2030)),
    "word": _word,
    "name": lambda rng: rng.choice(FIRST),
    "code": lambda rng: "".join(rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ") for _ in range(rng.randint(2, 3)))
    + "-" + _digits(rng, 2, 5),
    "time": lambda rng: f"{rng.randint(1, 12)}:{rng.choice(('00', '15', '30', '45'))}",
    "colour": lambda rng: rng.choice(COLOURS),
}
# (attribute, its plural, value kind)
ATTRIBUTES = (("room number", "room numbers", "short"), ("phone extension", "phone extensions", "number"),
              ("lucky number", "lucky numbers", "number"), ("favourite word", "favourite words", "word"),
              ("codename", "codenames", "word"), ("serial", "serials", "code"), ("founding year", "founding years", "year"),
              ("badge number", "badge numbers", "number"), ("meeting time", "meeting times", "time"),
              ("best friend", "best friends", "name"), ("signal colour", "signal colours", "colour"),
              ("catalogue code", "catalogue codes", "code"), ("order number", "order numbers", "number"),
              ("secret word", "secret words", "word"), ("postal code", "postal codes", "number"),
              ("reference", "references", "code"), ("motto word", "motto words", "word"))


def subject(rng: random.Random) -> str:
    """A fact's subject: a person, a thing described by two words, or a labelled unit."""
    kind = rng.randrange(3)
    if kind == 0:
        return _name(rng)
    if kind == 1:
        return f"the {_word(rng)} {_word(rng)}"
    return f"{rng.choice(('unit', 'project', 'team', 'station', 'bay', 'lab'))} {_word(rng).capitalize()}"


# statements of (subject s, attribute a, value v)
STATEMENTS = ("The {a} of {s} is {v}.", "{S} has the {a} {v}.", "For the record, the {a} of {s} is {v}.",
              "Note: {s}, {a}: {v}.", "It turned out that the {a} of {s} was {v}.", "{S} uses {v} as {own} {a}.",
              "Everyone knows that {s} goes by the {a} {v}.", "Write it down: {a} of {s} = {v}.",
              "The {a} assigned to {s} is {v}.", "We later learned {s} had {v} for a {a}.",
              "Among other things, {s} lists {v} as {own} {a}.", "[{a} | {s}] {v}")
# (question, answer start) about one fact
QUESTIONS = (("What is the {a} of {s}?", "The {a} of {s} is"), ("Which {a} does {s} have?", "{S} has the {a}"),
             ("Tell me the {a} of {s}.", "The {a} of {s} is"), ("What {a} was given for {s}?", "The {a} given for {s} is"),
             ("Recall the {a} of {s}.", "It is"), ("{S}: what is the {a}?", "The {a} is"),
             ("Find the {a} of {s} in the text.", "The text gives the {a} of {s} as"))
MULTI_STATEMENTS = ("One {a} of {s} is {v}.", "{S} also has the {a} {v}.", "Another {a} of {s}: {v}.",
                    "{v} is among the {as_} of {s}.")
MULTI_QUESTIONS = (("What are all the {as_} of {s}?", "The {as_} of {s} are"),
                   ("List every {a} of {s}.", "The {as_} of {s} are"))
CHAIN_START = ("The {n} slot holds {v}.", "Put {v} into the {n} slot.", "Slot {n} starts with {v}.")
CHAIN_LINK = ("The {n} slot copies the {m} slot.", "Slot {n} takes whatever slot {m} holds.",
              "Copy the {m} slot into the {n} slot.", "Slot {n} now equals slot {m}.")
CHAIN_QUESTIONS = (("Which slots end up holding {v}?", "The slots holding {v} are"),
                   ("Name every slot that holds {v}.", "They are"))
INTROS = ("Read the text below; some details in it will be asked about.", "Some facts are hidden in this text.",
          "Below is a document. Remember its details.", "Keep track of the facts in the following passage.")


def _fill(template: str, s: str = "", a: str = "", v: str = "", as_: str = "", n: str = "", m: str = "") -> str:
    own = "their" if s and s.split()[0] in FIRST else "its"
    return template.format(s=s, S=s[:1].upper() + s[1:], a=a, v=v, as_=as_, own=own, n=n, m=m)


def listed(values: list[str]) -> str:
    return values[0] if len(values) == 1 else ", ".join(values[:-1]) + " and " + values[-1]


@dataclass
class Lesson:
    needles: list[str]  # sentences to hide, in order
    question: str
    answer_start: str
    answer: str


def make_lesson(rng: random.Random, kind: str) -> Lesson:
    """The needles, question and answer of one lesson of `kind` (see the module docstring)."""
    attribute, plural, value_kind = rng.choice(ATTRIBUTES)
    value = VALUES[value_kind]
    if kind == "chain":
        names = rng.sample(_words(), rng.randint(3, 5))
        v = value(rng)
        needles = [_fill(rng.choice(CHAIN_START), v=v, n=names[0])]
        needles += [_fill(rng.choice(CHAIN_LINK), n=n, m=m) for m, n in zip(names, names[1:])]
        question, start = rng.choice(CHAIN_QUESTIONS)
        return Lesson(needles, _fill(question, v=v), _fill(start, v=v), listed(names))
    if kind == "multivalue":
        s = subject(rng)
        values = [value(rng) for _ in range(rng.randint(2, 4))]
        needles = [_fill(rng.choice(MULTI_STATEMENTS), s=s, a=attribute, v=v, as_=plural) for v in values]
        question, start = rng.choice(MULTI_QUESTIONS)
        return Lesson(needles, _fill(question, s=s, a=attribute, as_=plural), _fill(start, s=s, a=attribute, as_=plural),
                      listed(values))
    asked = rng.randint(2, 3) if kind == "multiquery" else 1
    subjects = [subject(rng) for _ in range(asked + rng.randint(1, 4))]
    facts = []
    for i, s in enumerate(subjects):
        a, _, kind_of_value = (attribute, plural, value_kind) if kind in ("multikey", "multiquery") or i < asked \
            else rng.choice(ATTRIBUTES)
        facts.append((s, a, VALUES[kind_of_value](rng)))
    needles = [_fill(rng.choice(STATEMENTS), s=s, a=a, v=v) for s, a, v in facts]
    if kind == "multiquery":
        names = listed([s for s, _, _ in facts[:asked]])
        return Lesson(needles, f"What are the {plural} of {names}?", "In that order, they are",
                      listed([v for _, _, v in facts[:asked]]))
    s, a, v = facts[0]
    question, start = rng.choice(QUESTIONS)
    return Lesson(needles, _fill(question, s=s, a=a), _fill(start, s=s, a=a), v)


KINDS = ("single", "single", "multikey", "multivalue", "multiquery", "chain")


def prompt_parts(rng: random.Random, lesson: Lesson) -> tuple[str, str]:
    """(text before the context, text after it through the answer) in one of several prompt layouts."""
    layout = rng.randrange(4)
    answer = f" {lesson.answer}."
    if layout == 0:  # what `retrolm generate` builds
        return "", (f"\n\nAnswer the question using the text above.\nQuestion: {lesson.question}\nAnswer: "
                    f"{lesson.answer_start}{answer}")
    if layout == 1:
        return rng.choice(INTROS) + "\n", f"\n{lesson.question} {lesson.answer_start}{answer}"
    if layout == 2:
        return "", f"\n\nQ: {lesson.question}\nA: {lesson.answer_start}{answer}"
    return "Document:\n", f"\n\n{lesson.question}\n{lesson.answer_start}{answer}"


def word_boundary(text: str, at: int) -> int:
    """The first position at or after `at` that follows a space or line end (or the end): no word is split."""
    while at < len(text) and at > 0 and not text[at - 1].isspace():
        at += 1
    return at


def fact_task_text(rng: random.Random, length: int, filler) -> str:
    """A lesson of about `length` characters: `filler(rng, chars)` text with the needles hidden in order at random
    depths, wrapped in a prompt layout, the answer last."""
    lesson = make_lesson(rng, rng.choice(KINDS))
    head, tail = prompt_parts(rng, lesson)
    room = length - len(head) - len(tail) - sum(len(n) + 1 for n in lesson.needles)
    text = filler(rng, max(room, 0))
    cuts = sorted(word_boundary(text, rng.randrange(len(text) + 1)) for _ in lesson.needles)
    pieces, last = [], 0
    for cut, needle in zip(cuts, lesson.needles):
        pieces += [text[last:cut], needle]
        last = cut
    pieces.append(text[last:])
    return head + " ".join(p for p in pieces if p) + tail


def dense_fact_text(rng: random.Random, length: int, gap: int, filler) -> str:
    """About `length` characters of text with facts, each asked about (question + answer) at least `gap`
    characters after it: many retrieval lessons per document, in varied phrasing."""
    pieces, size, pending = [], 0, []  # pending: (ready at size, question, answer start, answer)
    while size < length:
        if rng.random() < 0.08:
            lesson = make_lesson(rng, "single")
            pieces.append(lesson.needles[0])  # the asked fact; the others are distractors elsewhere
            pieces += lesson.needles[1:2]
            pending.append((size + gap, lesson))
        elif pending and pending[0][0] <= size and rng.random() < 0.3:
            _, lesson = pending.pop(rng.randrange(sum(1 for p in pending if p[0] <= size)))
            pieces.append(f"{lesson.question} {lesson.answer_start} {lesson.answer}.")
        else:
            pieces.append(filler(rng, rng.randint(60, 240)))
        size += len(pieces[-1]) + 1
    return " ".join(pieces)
