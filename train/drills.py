"""Recall drills: pretraining documents in which a value can only be predicted by copying it from earlier text.

Every base LM built so far copies values only in the phrasings it trained on: the shipped one answers RULER's
templates at 1x and none of bench/heldout_prose.py's needle formats, even with the needle and question alone in
its window. A drill invents its own phrasing, so no phrasing can be learned: a relation of random words and a
joining word ("pebble lantern under a", "quietly drifted to"), shared by all the facts of the drill, states
"key relation value." at several points of filler text, and later asks for each value in one of several layouts.
The value is random and the relation is shared, so the only way to predict it is to find the statement of the
same key and copy what follows the relation: the induction a needle in any format needs.

A drill's facts also share a statement shape, so that the value is not always the sentence's last word nor the
key its first ones:
- plain: "Ada Brandt pebble lantern under a 4821.";
- trailing: words follow the value ("Ada Brandt pebble lantern under a 4821 gravel cove.");
- attribute: the relation's words name an attribute of the key ("The pebble lantern of Ada Brandt was set to 4821.");
- bare: no joining word before the value ("Ada Brandt pebble lantern 4821.").

Layouts of a recall (the value ends each answer; a restatement ends as the statement does):
- the statement again, after another lead (copy after an exact match of "key relation");
- a question naming the key (half the time the relation's words too: "What is the pebble lantern of Ada Brandt?"),
  then an answer that restates the relation after nothing, "It" or the key, or its words with another joining word
  ("Its pebble lantern is"; with `DrillStyle.partial`, at times only its last words: "Its lantern is", as "Its
  tracking label is" answers "carries the tracking label X"): the key must be found in the question, as in
  "Question: ... of the amber orchard? Answer: It closed the year at", the match may be loose, and the nearest
  match of the answer's words may be the question's, which no value follows;
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
# questions that restate the fact's words, as real questions do ("What is the pass code for ..."): the answer's
# words then match the question too, where no value follows, and the copy must come from the statement
NAMING_ASKS = ("What {w} did the text give {k}?", "Which {w} goes with {k}?", "What is the {w} of {k}?",
               "{K}: which {w}?", "Tell me the {w} for {k}.", "What {w} was noted for {k}?")
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


SHAPES = ("plain", "trailing", "attribute", "bare")
# share of recall answers that restate the relation with another joining word (`Phrasing.rejoined`); 0.25 is the
# mix of the first drill runs (a bare statement's "It <words>" answer is rejoined too, so its share is higher)
REJOINED = 0.25
# share of rejoined answers that keep only the relation's last words (`DrillStyle.partial`); 0, the runs before
# 2026-12-05, draws nothing more from the generator, so their corpora stay byte for byte
PARTIAL = 0.0


@dataclass(frozen=True)
class DrillStyle:
    """What a drill may look like: its statement `shapes`, the share of answers that are `rejoined`, and the share
    of those that keep only the relation's last words (`partial`; relations of two or three words)."""

    shapes: tuple[str, ...] = SHAPES
    rejoined: float = REJOINED
    partial: float = PARTIAL

    def __post_init__(self):
        unknown = sorted(set(self.shapes) - set(SHAPES))
        if not self.shapes or unknown:
            raise ValueError(f"drill shapes must be some of {', '.join(SHAPES)}; "
                             f"got {', '.join(self.shapes) or 'none'}")
        for name in ("rejoined", "partial"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"the share of {name} answers must be in [0, 1]; got {getattr(self, name)}")


@dataclass(frozen=True)
class Phrasing:
    """How a drill states its facts: random `words`, a joining word (`join`, empty in the bare shape) and, in the
    trailing shape, words after the value (`trail`)."""

    shape: str
    words: str
    join: str
    trail: str = ""

    @property
    def relation(self) -> str:
        """What stands between a key and its value (plain, trailing and bare shapes)."""
        return f"{self.words} {self.join}" if self.join else self.words

    def statement(self, lead: str, key: str, value: str) -> str:
        if self.shape == "attribute":
            return f"{lead}{'the' if lead else 'The'} {self.words} of {key} {self.join} {value}."
        tail = f" {self.trail}" if self.trail else ""
        return f"{lead}{key if lead else _capitalised(key)} {self.relation} {value}{tail}."

    def answer_start(self, rng: random.Random, key: str, style: DrillStyle = DrillStyle()) -> str:
        """The start of an answer about `key`, which the value completes: with probability `style.rejoined` the
        relation restated with another joining word (`style.partial` of those with its last words only), else the
        statement's own words."""
        if rng.random() < style.rejoined:
            return self.rejoined(rng, style.partial)
        if self.shape == "attribute":
            return rng.choice((f"It {self.join}", f"The {self.words} {self.join}",
                               f"The {self.words} of {key} {self.join}"))
        form = rng.randrange(3)
        if form == 1 and not self.join:  # "It pebble lantern" says nothing: name the words
            return self.rejoined(rng, style.partial)
        return (_capitalised(self.relation), f"It {self.relation}", f"{_capitalised(key)} {self.relation}")[form]

    def rejoined(self, rng: random.Random, partial: float = PARTIAL) -> str:
        """"Its <words> <another joining word>": the answer names the fact in other words, as a question's answer
        often does ("carries the label X" ... "Its label is"), so matching must be loose. With probability
        `partial` (and two or more words) only the relation's last words are kept."""
        words = self.words.split()
        if partial and len(words) > 1 and rng.random() < partial:
            words = words[rng.randint(1, len(words) - 1):]
        return f"Its {' '.join(words)} {rng.choice([j for j in JOINS if j != self.join])}"


def invented_phrasing(rng: random.Random, shapes: tuple[str, ...] = SHAPES) -> Phrasing:
    """One to three random words, a joining word and a statement shape among `shapes`: the drill's own phrasing."""
    shape = rng.choice(shapes)
    words = " ".join(_word(rng) for _ in range(rng.randint(1, 3)))
    join = "" if shape == "bare" else rng.choice(JOINS)
    trail = " ".join(_word(rng) for _ in range(rng.randint(1, 2))) if shape == "trailing" else ""
    return Phrasing(shape, words, join, trail)


def recall(rng: random.Random, key: str, phrasing: Phrasing, value: str, style: DrillStyle = DrillStyle()) -> str:
    """A later line asking for `key`'s value, in one of the layouts of the module docstring (`style`: the shares
    of rejoined and partial answers)."""
    layout = rng.randrange(3)
    if layout == 0:
        return phrasing.statement(rng.choice(LEADS), key, value)
    question = rng.choice(rng.choice((ASKS, NAMING_ASKS))).format(k=key, K=_capitalised(key), w=phrasing.words)
    answer = f"{phrasing.answer_start(rng, key, style)} {value}."
    if layout == 1:
        return f"\nQuestion: {question}\nAnswer: {answer}\n"
    return f"\n\nAnswer the question using the text above.\nQuestion: {question}\nAnswer: {answer}\n"


@dataclass
class Drill:
    text: str
    phrasing: Phrasing
    stated: dict[str, tuple[int, str]]  # key -> (where its statement starts in text, value)
    asked: list[tuple[int, int, str]]  # (where a recall starts and ends in text, key)


def make_drill(rng: random.Random, length: int, filler, style: DrillStyle = DrillStyle()) -> Drill:
    """About `length` characters of `filler(rng, chars)` text holding facts stated in one invented phrasing (its
    shape one of `style.shapes`), each asked back later (at least 40 characters on); facts stop in the last fifth,
    where the pending ones are asked."""
    phrasing = invented_phrasing(rng, style.shapes)
    kind = rng.choice(sorted(DRILL_VALUES))
    pieces, size, pending, stated, asked = [], 0, [], {}, []
    while size < length:
        ready = [p for p in pending if p[0] <= size]
        if ready and (rng.random() < 0.35 or size > length * 0.8):
            fact = rng.choice(ready)
            piece = recall(rng, *fact[1:], style)
            if size + len(piece) > length:
                break
            pending.remove(fact)
            asked.append((size, size + len(piece), fact[1]))
        elif rng.random() < 0.3 and size < length * 0.8:
            key = subject(rng)
            if key in stated:
                continue
            value = DRILL_VALUES[kind](rng)
            piece = phrasing.statement(rng.choice(LEADS), key, value)
            if size + len(piece) > length:
                break
            stated[key] = (size, value)
            pending.append((size + rng.randint(40, max(40, length // 2)), key, phrasing, value))
        else:
            piece = filler(rng, rng.randint(30, 160))
        pieces.append(piece)
        size += len(piece) + 1
    # A fact or a recall that would run past the end is left out and filler ends the document instead: a recall
    # cut after "Answer:" would teach that the text may end where a value is due (the end-of-text token is likelier
    # there the later the position: 0.35 at token 921 after 6,000 steps, 0.98 after 10,000).
    text = " ".join(pieces)
    while len(text) < length:
        text += " " + filler(rng, max(30, length - len(text)))
    return Drill(text, phrasing, stated, asked)


def drill_text(rng: random.Random, length: int, filler, style: DrillStyle = DrillStyle()) -> str:
    """The text of `make_drill`."""
    return make_drill(rng, length, filler, style).text
