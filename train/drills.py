"""Recall drills: pretraining documents in which a value can only be predicted by copying it from earlier text.

Every base LM built so far copies values only in the phrasings it trained on: the shipped one answers RULER's
templates at 1x and none of bench/heldout_prose.py's needle formats, even with the needle and question alone in
its window. A drill invents its own phrasing, so no phrasing can be learned: a relation of random words and a
joining word ("pebble lantern under a", "quietly drifted to"), shared by all the facts of the drill, states
"key relation value." at several points of filler text, and later asks for each value in one of several layouts.
The value is random and the relation is shared, so the only way to predict it is to find the statement of the
same key and copy what follows the relation: the induction a needle in any format needs.

Layouts of a recall (each ends with the value):
- the statement again, after another lead (copy after an exact match of "key relation");
- a question naming the key, then an answer that restates "relation" after nothing, "It" or the key, or its words
  with another joining word ("Its pebble lantern is"): the key must be found in the question, as in "Question:
  ... of the amber orchard? Answer: It closed the year at", and the match may be loose;
- the prompt `retrolm generate` builds ("Answer the question using the text above."), same question and answer.
Words come from facts.py's word list, which leaves out every held-out phrase (tests/test_facts.py checks drills).
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from train.facts import VALUES, _digits, _word, subject

JOINS = ("is", "was", "to", "at", "as", "under a", "into", "near", "reads", "became", "equals", "=", ":", "->",
         "was set to", "came to", "ended at", "holds", "shows", "of")
LEADS = ("", "Note that ", "Remember: ", "In the end ", "By then ", "As noted, ", "Later, ", "Also, ", "Then ")
ASKS = ("What about {k}?", "And {k}?", "What did the text say of {k}?", "Which one for {k}?", "Recall {k}.",
        "How about {k}?", "{K}?")
SEPARATORS = ("-", "/", ".", "")


def _code(rng: random.Random) -> str:
    """A letter-digit code of a random shape ("QX-4821", "7/KD/03", "R2D5")."""
    parts = []
    for _ in range(rng.randint(2, 3)):
        if rng.random() < 0.5:
            parts.append("".join(rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ") for _ in range(rng.randint(1, 3))))
        else:
            parts.append(_digits(rng, 1, 5))
    return rng.choice(SEPARATORS).join(parts)


# value kinds of a drill: facts.py's and more shapes, several words long at times
DRILL_VALUES = {**VALUES,
                "long": lambda rng: _digits(rng, 5, 9),
                "mixed": _code,
                "two words": lambda rng: f"{_word(rng)} {_word(rng)}",
                "word number": lambda rng: f"{_word(rng)} {_digits(rng, 1, 4)}"}


def _capitalised(text: str) -> str:
    return text[:1].upper() + text[1:]


def _statement(lead: str, key: str, relation: str, value: str) -> str:
    return f"{lead}{key if lead else _capitalised(key)} {relation} {value}."


def invented_relation(rng: random.Random) -> str:
    """One to three random words and a joining word: the drill's own phrasing."""
    return " ".join([_word(rng) for _ in range(rng.randint(1, 3))] + [rng.choice(JOINS)])


def _rejoined(rng: random.Random, relation: str) -> str:
    """"Its <the relation's words> <another joining word>": the answer names the fact in other words, as a
    question's answer often does ("carries the label X" ... "Its label is"), so matching must be loose."""
    words = relation
    for join in sorted(JOINS, key=len, reverse=True):  # the longest joining word the relation ends with
        if relation.endswith(" " + join):
            words = relation[: -len(join) - 1]
            break
    return f"Its {words} {rng.choice([j for j in JOINS if not relation.endswith(' ' + j)])}"


def recall(rng: random.Random, key: str, relation: str, value: str) -> str:
    """A later line asking for `key`'s value, in one of the layouts of the module docstring."""
    layout = rng.randrange(3)
    if layout == 0:
        return _statement(rng.choice(LEADS), key, relation, value)
    question = rng.choice(ASKS).format(k=key, K=_capitalised(key))
    form = rng.randrange(4)
    answer = (_capitalised(relation), f"It {relation}", f"{_capitalised(key)} {relation}",
              _rejoined(rng, relation) if form == 3 else "")[form] + f" {value}."
    if layout == 1:
        return f"\nQuestion: {question}\nAnswer: {answer}\n"
    return f"\n\nAnswer the question using the text above.\nQuestion: {question}\nAnswer: {answer}\n"


@dataclass
class Drill:
    text: str
    relation: str
    stated: dict[str, tuple[int, str]]  # key -> (where its statement starts in text, value)
    asked: list[tuple[int, int, str]]  # (where a recall starts and ends in text, key)


def make_drill(rng: random.Random, length: int, filler) -> Drill:
    """About `length` characters of `filler(rng, chars)` text holding facts stated in one invented phrasing, each
    asked back later (at least 40 characters on); facts stop in the last fifth, where the pending ones are asked."""
    relation = invented_relation(rng)
    kind = rng.choice(sorted(DRILL_VALUES))
    pieces, size, pending, stated, asked = [], 0, [], {}, []
    while size < length:
        ready = [p for p in pending if p[0] <= size]
        if ready and (rng.random() < 0.35 or size > length * 0.8):
            fact = rng.choice(ready)
            pending.remove(fact)
            pieces.append(recall(rng, *fact[1:]))
            asked.append((size, size + len(pieces[-1]), fact[1]))
        elif rng.random() < 0.3 and size < length * 0.8:
            key = subject(rng)
            if key in stated:
                continue
            value = DRILL_VALUES[kind](rng)
            stated[key] = (size, value)
            pieces.append(_statement(rng.choice(LEADS), key, relation, value))
            pending.append((size + rng.randint(40, max(40, length // 2)), key, relation, value))
        else:
            pieces.append(filler(rng, rng.randint(30, 160)))
        size += len(pieces[-1]) + 1
    return Drill(" ".join(pieces), relation, stated, asked)


def drill_text(rng: random.Random, length: int, filler) -> str:
    """The text of `make_drill`."""
    return make_drill(rng, length, filler).text
