"""Needle-page recall on held-out prose: does the page scorer find a fact in text it was not trained on?

Stage 1 learns from the LLM's attention on the training text; users need the page that answers a question about
text of another kind. A sample hides one needle sentence in natural prose (Python's language reference as
`pydoc` shows it: `pydoc_data.topics`, PSF License 2.0, part of every CPython), asks its question at the end,
and counts a hit when every page holding the value is among those retrieved for the answer's first token: the
first decode step of `RetroLM.generate`, as a user's question gets it.

Three needle sets share this haystack text and nothing else:
- VALIDATION formats (here): measured while training (`needle_eval_samples`); `keep="needle_recall"` keeps the
  retriever of the evaluation where they were found most often;
- the test formats of bench/heldout_prose.py: measured once, after training;
- the sealed formats of bench/sealed_needles.py: used only for final reporting, never to shape training.
Their wording, subjects and value kinds differ, so a retriever chosen on one set is measured on needles it was
not chosen by. train/facts.py keeps the phrases of the first two out of training lessons (a test checks it);
tests/test_sealed_needles.py checks that the sealed set's phrases are in no training document.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch

PLACES = ("north", "east", "old", "lower", "upper", "west", "south", "little", "high", "far")
SITES = ("quarry", "mill", "bridge", "abbey", "garrison", "market", "wharf", "foundry", "college", "chapel")
GROWERS = ("Alba", "Benedek", "Corin", "Dagny", "Emeric", "Fenna", "Gideon", "Hedda", "Ivo", "Jorunn")
SEEDS = ("fennel", "borage", "sorrel", "chervil", "lovage", "mallow", "tansy", "yarrow", "skirret", "orache")
LETTERS = "ABCDEFGHJKLMNPQRSTUVWXYZ"
VALIDATION_FORMATS = 3


@dataclass
class Needle:
    sentence: str  # hidden in the haystack
    question: str
    answer_start: str  # written after "Answer:", so the next tokens are the value
    value: str


@dataclass
class NeedleSample:
    ids: torch.Tensor  # [1, T]: haystack with the needle, then the question and the answer's start
    value_tokens: tuple[int, int]  # first and last token of the value
    value: str


def validation_needle(rng: random.Random, form: int) -> Needle:
    """One validation needle of format `form` (0 .. VALIDATION_FORMATS - 1)."""
    place = f"{rng.choice(PLACES)} {rng.choice(SITES)}"
    if form == 0:
        value = str(rng.randint(10, 999))
        return Needle(f"The night ferry to the {place} leaves from pier {value}.",
                      f"From which pier does the night ferry to the {place} leave?",
                      "The night ferry leaves from pier", value)
    if form == 1:
        value = "".join(rng.choice(LETTERS) for _ in range(3)) + str(rng.randint(100, 999))
        return Needle(f"Invoice {value} was settled by the {place} bakery last spring.",
                      f"Which invoice did the {place} bakery settle last spring?",
                      f"The {place} bakery settled invoice", value)
    grower, value = rng.choice(GROWERS), rng.choice(SEEDS)
    return Needle(f"{grower} keeps the {value} seeds on the top shelf of the {place} greenhouse.",
                  f"Which seeds does {grower} keep on the top shelf of the {place} greenhouse?",
                  f"{grower} keeps the", value)


def reference_topics() -> list[str]:
    """The language reference topics, ASCII only (the byte tokenizer maps other characters to several tokens)."""
    from pydoc_data.topics import topics

    return [text.strip() for _, text in sorted(topics.items()) if text.isascii()]


def haystack(rng: random.Random, chars: int, topics: list[str]) -> str:
    """About `chars` characters of consecutive reference topics from a random one on, cut at a line end."""
    start = rng.randrange(len(topics))
    parts, size, i = [], 0, start
    while size < chars:
        parts.append(topics[i % len(topics)])
        size += len(parts[-1]) + 2
        i += 1
    text = "\n\n".join(parts)[:chars]
    return text[: text.rfind("\n") + 1] if "\n" in text else text


def hide(text: str, needle: str, depth: float) -> str:
    """`needle` inserted at the first line end after `depth` of `text`."""
    at = text.find("\n", int(len(text) * depth))
    at = len(text) if at < 0 else at + 1
    return text[:at] + needle + "\n" + text[at:]


def build_sample(tokenizer, rng: random.Random, target_tokens: int, topics: list[str], needle: Needle) -> NeedleSample:
    """`needle` hidden at a random depth of a haystack, the prompt about `target_tokens` tokens long in all."""
    tail = f"\n\nAnswer the question using the text above.\nQuestion: {needle.question}\nAnswer: {needle.answer_start}"
    chars = max(200, target_tokens - len(tokenizer(needle.sentence + tail, add_special_tokens=False).input_ids))
    context = hide(haystack(rng, chars, topics), needle.sentence, rng.uniform(0.05, 0.95))
    text = context + tail
    ids = tokenizer(text, return_tensors="pt").input_ids
    value_at = text.index(needle.sentence) + needle.sentence.index(needle.value)
    first = len(tokenizer(text[:value_at]).input_ids)
    last = len(tokenizer(text[: value_at + len(needle.value)]).input_ids) - 1
    return NeedleSample(ids, (first, last), needle.value)


def validation_samples(tokenizer, lengths: list[int], count: int, seed: int) -> dict[int, list[NeedleSample]]:
    """`count` validation samples per prompt length (tokens), formats taking turns; the same for a given seed."""
    topics = reference_topics()
    samples = {}
    for length in lengths:
        samples[length] = []
        for i in range(count):
            rng = random.Random(f"needle-validation/{seed}/{length}/{i}")
            samples[length].append(build_sample(tokenizer, rng, length, topics,
                                                validation_needle(rng, i % VALIDATION_FORMATS)))
    return samples


def answer_pages(model, prompt_tokens: int) -> set[int]:
    """The pages retrieved for the first new token of `model`'s last generate call (every page when the prompt
    was short enough to attend to all of it, so no retrieval was logged)."""
    retrievals = model.last_cache.retrievals()
    if retrievals:
        return set(retrievals[0][1])
    return set(range(prompt_tokens // model.config.page_size + 1))


def value_pages(sample: NeedleSample, page_size: int) -> set[int]:
    first, last = sample.value_tokens
    return set(range(first // page_size, last // page_size + 1))


@torch.no_grad()
def needle_found(model, sample: NeedleSample) -> bool:
    """Whether every page holding the sample's value is retrieved for its answer's first token."""
    ids = sample.ids.to(model.device)
    model.generate(input_ids=ids, max_new_tokens=1, do_sample=False, progress=False)
    return value_pages(sample, model.config.page_size) <= answer_pages(model, ids.shape[1])
