"""The sealed needle set: six formats used only for final reporting. Never look at their failures to shape training.

The test formats of bench/heldout_prose.py and stage 1's validation formats (retrolm/training/needle_recall.py)
have both been looked at while training data was being designed, so a result on them can flatter a recipe tuned
to them. These formats share no wording, subject or value list with either set nor with any training generator
(tests/test_sealed_needles.py checks their fixed phrases against training documents), and differ in structure:
0. the value first, the thing it names after it (a boat's name, then the boat);
1. the value in the middle of a long sentence, a clause after it (a letter-digit visitor badge);
2. a value of two or three words, set off by commas (words engraved in a watch);
3. a date (the day a fair opens), after a leading clause;
4. a quantity with its unit (the depth of a well), an adjective after it;
5. a line of dialogue, the value inside the quotation (the hook a key hangs on).
Use them as `--needles sealed` in bench/heldout_prose.py and bench/copy_probe.py, once a model is final.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

from retrolm.training.needle_recall import Needle

# key words and values of this set only: none of them is in the other sets' lists or in train/facts.py's
TOWNS = ("Ashcombe", "Brackwater", "Corrisdale", "Dunharrow", "Elmstead", "Fenwick", "Glenmorrow", "Hollinsby",
         "Kettleburn", "Larkhaven")
PEOPLE = ("Agathe", "Bartholomew", "Cressida", "Desmond", "Eulalia", "Florian", "Genevieve", "Horatio", "Isolde",
          "Lysander")
BOATS = ("Periwinkle", "Moonraker", "Gullwing", "Starling", "Bluebell", "Kingfisher", "Driftwood", "Sandpiper",
         "Halcyon", "Waterlily", "Osprey", "Merrymaid")
KEEPSAKE_WORDS = ("ember", "willow", "thimble", "sparrow", "hearth", "clover", "anchor", "bramble", "feather",
                  "candle", "acorn", "heron", "lark", "ivy")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")
DEPTH_UNITS = ("metres", "feet", "fathoms", "yards")
BADGE_LETTERS = "BCDFGHJKMNPRTVWXZ"


@dataclass(frozen=True)
class SealedForm:
    """One format: templates whose {fields} are drawn by `draw`; the field `value` is the answer."""

    sentence: str
    question: str
    answer_start: str  # ends right before the value, which follows after one space
    draw: Callable[[random.Random], dict[str, str]]


def _boat(rng: random.Random) -> dict[str, str]:
    return {"value": rng.choice(BOATS), "person": rng.choice(PEOPLE), "town": rng.choice(TOWNS)}


def _badge(rng: random.Random) -> dict[str, str]:
    # letters and digits alternate, unlike the other sets' codes ("BX-4412", "ABC123")
    value = (rng.choice(BADGE_LETTERS) + str(rng.randint(1, 9)) + rng.choice(BADGE_LETTERS)
             + str(rng.randint(10, 99)))
    return {"value": value, "person": rng.choice(PEOPLE), "town": rng.choice(TOWNS)}


def _engraving(rng: random.Random) -> dict[str, str]:
    return {"value": " ".join(rng.sample(KEEPSAKE_WORDS, rng.randint(2, 3))), "person": rng.choice(PEOPLE)}


def _fair(rng: random.Random) -> dict[str, str]:
    return {"value": f"{rng.choice(MONTHS)} {rng.randint(1, 28)}", "town": rng.choice(TOWNS)}


def _depth(rng: random.Random) -> dict[str, str]:
    number = str(rng.randint(4, 90)) if rng.random() < 0.5 else f"{rng.randint(4, 90)}.{rng.randint(1, 9)}"
    return {"value": f"{number} {rng.choice(DEPTH_UNITS)}", "town": rng.choice(TOWNS)}


def _hook(rng: random.Random) -> dict[str, str]:
    return {"value": str(rng.randint(11, 299)), "person": rng.choice(PEOPLE), "town": rng.choice(TOWNS)}


FORMS = (
    SealedForm("{value} was the name painted on the bow of the rowing boat that {person} took out on {town} lake "
               "every Sunday.",
               "What was the name of the rowing boat that {person} took out on {town} lake?",
               "The rowing boat that {person} took out on {town} lake was named", _boat),
    SealedForm("When {person} reached the observatory above {town}, the old gatekeeper wrote visitor badge {value} "
               "in the evening book and waved the guest through the iron gate.",
               "Which visitor badge did the old gatekeeper write down for {person} at the observatory above {town}?",
               "For {person}, the old gatekeeper wrote visitor badge", _badge),
    SealedForm("Engraved inside the lid of {person}'s pocket watch are the words {value}, a gift from an aunt "
               "long ago.",
               "Which words are engraved inside the lid of {person}'s pocket watch?",
               "The words engraved inside the lid of {person}'s pocket watch are", _engraving),
    SealedForm("Because of the heavy rain, the {town} harvest fair opens its gates on {value}, a week later than "
               "usual.",
               "On what date does the {town} harvest fair open its gates?",
               "The {town} harvest fair opens its gates on", _fair),
    SealedForm("Measured with a weighted rope, the old well behind the {town} coaching inn is {value} deep.",
               "How deep is the old well behind the {town} coaching inn?",
               "The old well behind the {town} coaching inn is", _depth),
    SealedForm("\"You will find the bell tower key on hook {value} behind the vestry door,\" {person} told the new "
               "sexton of {town}.",
               "On which hook will the new sexton of {town} find the bell tower key?",
               "The bell tower key hangs on hook", _hook),
)
SEALED_FORMATS = len(FORMS)


def sealed_needle(rng: random.Random, form: int) -> Needle:
    """One sealed needle of format `form` (0 .. SEALED_FORMATS - 1), with its question and value."""
    sealed = FORMS[form]
    fields = sealed.draw(rng)
    return Needle(sealed.sentence.format(**fields), sealed.question.format(**fields),
                  sealed.answer_start.format(**fields), fields["value"])
