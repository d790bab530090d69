"""RULER's 13 tasks, generated at any length, deterministically from a seed.

Each generator follows RULER's task configs (`synthetic.yaml`, `constants.py`) and its generator scripts
(`niah.py`, `variable_tracking.py`, `common_words_extraction.py`, `freq_words_extraction.py`, `qa.py`):
templates and answer prefixes, needle formats, haystacks and insertion rules, word sources, few-shot
examples, and the number of tokens to generate, so that a prompt equals RULER's byte for byte given the
same random draws. RULER's shuffles that use a fresh generator seeded by the run seed (so every sample of
a length gets the same permutation) are kept, with --seed as that seed.

Differences from the reference scripts (see docs/eval.md):
- random draws come from a per-sample generator seeded by (task, seed, sample index), not one stream
  for the whole run, so samples are reproducible one by one but not RULER's exact samples;
- each sample's haystack is the largest that fits the length (interpolation search with the evaluated
  tokenizer); RULER searches once per length and drops whole increments for samples that overflow, so
  its samples are often a few hundred tokens shorter (fwe: up to 1/32 of the length);
- the "essay" haystack reads Paul Graham's essays from a file in RULER's format (`PaulGrahamEssays.json`,
  {"text": ...}) when given one (`essay_path`); otherwise a built-in deterministic English text;
- sentences are split by a regular expression instead of nltk's punkt model;
- cwe beyond the wonderwords pool (RULER: its `english_words.json`, a Git LFS file not in any package)
  reads that file when given (`cwe_words_path`), else draws distinct adjective-noun words.
"""
from __future__ import annotations

import json
import math
import random
import re
import string
import uuid
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Callable

from retrolm.filler import ESSAY_SHAPES

from .errors import EvalError

NIAH_TEMPLATE = ("Some special magic {type_needle_v} are hidden within the following text. Make sure to memorize "
                 "it. I will quiz you about the {type_needle_v} afterwards.\n{context}\nWhat are all the special "
                 "magic {type_needle_v} for {query} mentioned in the provided text?")
NIAH_PREFIX = " The special magic {type_needle_v} for {query} mentioned in the provided text are"
NEEDLE = "One of the special magic {type_needle_v} for {key} is: {value}."
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
VT_TEMPLATE = ("Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{context}\n"
               "Question: Find all variables that are assigned the value {query} in the text above.")
VT_PREFIX = (" Answer: According to the chain(s) of variable assignment in the text above, {num_v} variables are "
             "assigned the value {query}, they are: ")
CWE_TEMPLATE = ("Below is a numbered list of words. In these words, some appear more often than others. Memorize "
                "the ones that appear most often.\n{context}\nQuestion: What are the 10 most common words in the "
                "above list?")
CWE_PREFIX = " Answer: The top 10 words that appear most often in the list are:"
FWE_TEMPLATE = ("Read the following coded text and track the frequency of each coded word. Find the three most "
                "frequently appeared coded words. {context}\nQuestion: Do not provide any explanation. Please "
                "ignore the dots '....'. What are the three most frequently appeared words in the above coded text?")
FWE_PREFIX = " Answer: According to the coded text above, the three most frequently appeared words are:"
FWE_NOISE = "..."  # the top-ranked coded word is noise; three dots, though the question says '....'
QA_TEMPLATE = ("Answer the question based on the given documents. Only give me the answer and do not output any "
               "other words.\n\nThe following are given documents.\n\n{context}\n\nAnswer the question based on "
               "the given documents. Only give me the answer and do not output any other words.\n\nQuestion: {query}")
QA_PREFIX = " Answer:"
DEPTHS = [round(100 * i / 39) for i in range(40)]  # RULER's 40 evenly spaced insertion depths, in percent
SHORT = 4096  # below this length RULER's cwe uses its short setting
VT_SHOT_TOKENS = 500  # RULER sizes vt's one-shot example to this many tokens of the evaluated tokenizer
VT_SHOT_VALUE = "12345"  # the one-shot's placeholder value, replaced per sample


@dataclass(frozen=True)
class TaskConfig:
    kind: str  # niah, vt, cwe, fwe, qa
    tokens_to_generate: int
    metric: str  # "all" (string_match_all) or "part" (string_match_part)
    args: dict


def _niah(haystack, k, v, n_k=1, n_v=1, n_q=1):
    return TaskConfig("niah", 128, "all", dict(type_haystack=haystack, type_needle_k=k, type_needle_v=v,
                                               num_needle_k=n_k, num_needle_v=n_v, num_needle_q=n_q))


TASKS: dict[str, TaskConfig] = {
    "niah_single_1": _niah("noise", "words", "numbers"),
    "niah_single_2": _niah("essay", "words", "numbers"),
    "niah_single_3": _niah("essay", "words", "uuids"),
    "niah_multikey_1": _niah("essay", "words", "numbers", n_k=4),
    "niah_multikey_2": _niah("needle", "words", "numbers"),
    "niah_multikey_3": _niah("needle", "uuids", "uuids"),
    "niah_multivalue": _niah("essay", "words", "numbers", n_v=4),
    "niah_multiquery": _niah("essay", "words", "numbers", n_q=4),
    "vt": TaskConfig("vt", 30, "all", dict(num_chains=1, num_hops=4)),
    "cwe": TaskConfig("cwe", 120, "all", dict(freq_cw=30, freq_ucw=3, num_cw=10)),
    "fwe": TaskConfig("fwe", 50, "all", dict(alpha=2.0)),
    "qa_1": TaskConfig("qa", 32, "part", dict(dataset="squad")),
    "qa_2": TaskConfig("qa", 32, "part", dict(dataset="hotpotqa")),
}


@dataclass
class RulerSample:
    """input: the prompt without the answer prefix; answer_prefix: appended after it (RULER puts it in the
    prompt so base models answer in a fixed form); outputs: the references; length: prompt + prefix +
    tokens to generate, in the model's tokens; depth: insertion depth (%) of the first needle, if any."""

    input: str
    answer_prefix: str
    outputs: list[str]
    length: int
    context: str
    query: str
    depth: int | None = None


# ----------------------------------------------------------------------------- word sources
def _word_list(name: str) -> list[str]:
    path = resources.files("wonderwords.assets").joinpath(name)
    return sorted({w.strip() for w in path.read_text(encoding="utf-8").splitlines() if w.strip()})


@lru_cache(maxsize=1)
def adjectives_and_nouns() -> tuple[list[str], list[str]]:
    """The wonderwords adjective and noun lists RULER draws its "adjective-noun" keys from."""
    return _word_list("adjectivelist.txt"), _word_list("nounlist.txt")


def random_key_word(rng: random.Random) -> str:
    """A uniform draw from RULER's adjective-noun pairs (drawn per part, not by listing all pairs)."""
    adjectives, nouns = adjectives_and_nouns()
    return f"{rng.choice(adjectives)}-{rng.choice(nouns)}"


@lru_cache(maxsize=1)
def plain_words() -> list[str]:
    """Single words (nouns and adjectives), for the built-in essay."""
    adjectives, nouns = adjectives_and_nouns()
    return sorted({w for w in adjectives + nouns if " " not in w})


@lru_cache(maxsize=1)
def cwe_words() -> list[str]:
    """RULER's cwe pool: the wonderwords nouns, adjectives and verbs, distinct."""
    adjectives, nouns = adjectives_and_nouns()
    return sorted(set(nouns + adjectives + _word_list("verblist.txt")))


@lru_cache(maxsize=2)
def large_cwe_words(path: str | None) -> tuple[str, ...] | None:
    """The pool RULER's cwe switches to when it needs more words than `cwe_words()`: the values of its
    `english_words.json` at `path`; None without a path (then distinct adjective-noun words are drawn)."""
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return tuple(str(w) for w in json.load(f).values())
    except (OSError, AttributeError, json.JSONDecodeError) as error:
        raise EvalError(f"cannot read the cwe word list {path} ({type(error).__name__}); it must be RULER's "
                        "english_words.json (a JSON object whose values are words), or drop --cwe-words.") from error


@lru_cache(maxsize=4)
def essay_words(essay_path: str | None) -> tuple[str, ...]:
    """The essay haystack as words: Paul Graham's essays from `essay_path`, or the built-in text."""
    if essay_path:
        try:
            with open(essay_path, encoding="utf-8") as f:
                text = json.load(f)["text"]
        except (OSError, KeyError, json.JSONDecodeError) as error:
            raise EvalError(f"cannot read the essay haystack {essay_path} ({type(error).__name__}); it must be "
                            "RULER's PaulGrahamEssays.json ({\"text\": ...}), or drop --essay to use the built-in "
                            "text.") from error
        return tuple(re.sub(r"\s+", " ", text).split(" "))
    rng = random.Random(1234)  # fixed: the built-in essay is the same text for every run and seed
    nouns, words = plain_words(), []
    for _ in range(4000):
        fill = {k: rng.choice(nouns) for k in "abcd"}
        words += rng.choice(ESSAY_SHAPES).format(**fill).split(" ")
    return tuple(words)


def split_sentences(text: str) -> list[str]:
    """Sentences ending in . ! or ? followed by a space (a stand-in for nltk's sent_tokenize)."""
    return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]


# ----------------------------------------------------------------------------- generators
def fixed_shuffle(items: list, seed: int) -> list:
    """RULER's `random.Random(seed).shuffle(items)` with the run seed: a fresh generator each time, so every
    sample of a length gets the same permutation (the common words of cwe sit at the same places)."""
    random.Random(seed).shuffle(items)
    return items


def zeta(alpha: float) -> float:
    """The Riemann zeta function (scipy.special.zeta, which RULER's fwe uses), exact for alpha = 2."""
    if alpha == 2:
        return math.pi ** 2 / 6
    n = 100000  # partial sum plus the Euler-Maclaurin tail
    return sum(k ** -alpha for k in range(1, n)) + n ** (1 - alpha) / (alpha - 1) + n ** -alpha / 2


class Generator:
    """Samples of one RULER task for one tokenizer. `count(text)` gives the model's token count."""

    def __init__(self, task: str, count: Callable[[str], int], qa_data: dict | None = None,
                 essay_path: str | None = None, cwe_words_path: str | None = None):
        if task not in TASKS:
            raise EvalError(f"unknown RULER task {task!r}; valid tasks: {', '.join(TASKS)}.")
        self.task, self.config, self.count = task, TASKS[task], count
        self.qa_data, self.essay_path, self.cwe_words_path = qa_data, essay_path, cwe_words_path
        self._vt_shots: dict[int, str] = {}  # seed -> vt's one-shot example before renaming
        self._cwe_fits: dict[tuple[int, int], bool] = {}  # (length, seed) -> the long cwe setting fits
        if self.config.kind == "qa" and not qa_data:
            raise EvalError(f"RULER {task} needs its QA source ({self.config.args['dataset']}); load it with "
                            "ruler_tasks.load_qa.")

    # one build = one prompt for a haystack size; `size` units of haystack
    def build(self, size: int, rng: random.Random, index: int, depth: int | None, length: int,
              seed: int = 0) -> RulerSample:
        kind = self.config.kind
        if kind == "niah":
            return self._niah(size, rng, depth, seed)
        if kind == "vt":
            return self._vt(size, rng, seed)
        if kind == "cwe":
            return self._cwe(size, rng, length, seed)
        if kind == "fwe":
            return self._fwe(size, rng, length, seed)
        return self._qa(size, rng, index, seed)

    def sample(self, length: int, seed: int, index: int = 0, depth: int | None = None) -> RulerSample:
        """The largest sample whose length (prompt + prefix + tokens to generate) is at most `length`.

        Deterministic in (task, length, seed, index, depth). depth: where the (first) needle goes, in
        percent of the haystack; None draws it as RULER does. The haystack size is found by interpolation
        (token counts grow almost linearly with it), falling back to bisection, in a handful of builds.
        """
        def measure(size):
            return self._measure(self.build(size, random.Random(f"{self.task}/{seed}/{index}"), index, depth,
                                            length, seed))

        lo, m_lo = 1, measure(1)
        if m_lo > length:
            raise EvalError(f"RULER {self.task}: even the smallest sample has {m_lo} tokens, over the requested "
                            f"{length}; ask for a longer --lengths value.")
        hi, m_hi = 2, measure(2)
        while m_hi <= length:  # gallop just past the linear estimate (doubling while sizes add nothing)
            slope = (m_hi - m_lo) / (hi - lo)
            step = int((length - m_hi) / slope * 1.05) + 1 if slope > 0 else hi
            lo, m_lo, hi = hi, m_hi, hi + min(step, 64 * hi)
            m_hi = measure(hi)
        bisect = False
        while hi - lo > 1:  # invariant: size lo fits, size hi does not
            width = hi - lo
            mid = (lo + hi) // 2 if bisect else lo + int((length - m_lo) * width / max(m_hi - m_lo, 1))
            mid = min(max(mid, lo + 1), hi - 1)
            m = measure(mid)
            lo, m_lo, hi, m_hi = (mid, m, hi, m_hi) if m <= length else (lo, m_lo, mid, m)
            bisect = hi - lo > width // 2  # interpolation gained little: bisect once
        best = self.build(lo, random.Random(f"{self.task}/{seed}/{index}"), index, depth, length, seed)
        best.length = m_lo
        return best

    def shortest_length(self, seed: int = 0) -> int:
        """Tokens (prompt + prefix + tokens to generate) of this task's smallest sample: the least --lengths."""
        return self._measure(self.build(1, random.Random(f"{self.task}/{seed}/0"), 0, None, 1, seed))

    def _measure(self, s: RulerSample) -> int:
        return self.count(s.input + s.answer_prefix) + self.config.tokens_to_generate

    # ------------------------------------------------------------------ NIAH
    def _random(self, kind: str, rng: random.Random) -> str:
        if kind == "numbers":
            return str(rng.randint(10 ** 6, 10 ** 7 - 1))
        if kind == "words":
            return random_key_word(rng)
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))

    def _niah(self, size: int, rng: random.Random, depth: int | None, seed: int) -> RulerSample:
        a = self.config.args
        n_k = max(a["num_needle_k"], a["num_needle_q"])
        keys, values, needles = [], [], []
        for _ in range(n_k):
            keys.append(self._random(a["type_needle_k"], rng))
            values.append([self._random(a["type_needle_v"], rng) for _ in range(a["num_needle_v"])])
            needles += [NEEDLE.format(type_needle_v=a["type_needle_v"], key=keys[-1], value=v) for v in values[-1]]
        fixed_shuffle(needles, seed)
        if a["type_haystack"] == "essay":
            context, first = self._essay_haystack(size, needles, rng, depth)
        else:
            context, first = self._line_haystack(size, needles, rng, depth, a)
        chosen = rng.sample(range(n_k), a["num_needle_q"])
        queries = [keys[i] for i in chosen]
        answers = [v for i in chosen for v in values[i]]
        query = queries[0] if len(queries) == 1 else ", ".join(queries[:-1]) + ", and " + queries[-1]
        template, prefix, type_v = NIAH_TEMPLATE, NIAH_PREFIX, a["type_needle_v"]
        if a["num_needle_q"] * a["num_needle_v"] == 1:  # singular phrasing, as RULER rewrites it
            template = template.replace("Some", "A").replace("are all", "is").replace("are", "is")
            prefix = prefix.replace("are", "is")
            type_v = type_v[:-1]
        return RulerSample(input=template.format(type_needle_v=type_v, context=context, query=query),
                           answer_prefix=prefix.format(type_needle_v=type_v, query=query), outputs=answers,
                           length=0, context=context, query=query, depth=first)

    def _essay_haystack(self, size, needles, rng, depth) -> tuple[str, int]:
        """`size` essay words cut into sentences; the needles go between sentences at RULER's 40 depths,
        each stretch of sentences and each needle joined by one space (an empty stretch leaves two)."""
        words = essay_words(self.essay_path)
        sentences = split_sentences(" ".join((words * (size // len(words) + 1))[:size]))
        depths = sorted(rng.sample(DEPTHS, len(needles)))
        if depth is not None:
            depths = sorted([depth] + depths[1:])
        cuts = [0] + [int(len(sentences) * (d / 100)) for d in depths] + [len(sentences)]
        pieces = []
        for i in range(1, len(cuts)):
            pieces.append(" ".join(sentences[cuts[i - 1]:cuts[i]]))
            if i - 1 < len(needles):
                pieces.append(needles[i - 1])
        return " ".join(pieces), depths[0]

    def _line_haystack(self, size, needles, rng, depth, a) -> tuple[str, int]:
        """Noise sentences or distractor needles, one per line; each needle goes before a uniformly drawn
        line (RULER draws positions, not depths, for these haystacks), so never after the last one."""
        size = max(size, len(needles))
        if a["type_haystack"] == "noise":
            lines = [NOISE] * size
        else:  # "needle": the haystack is made of distractor needles with other keys
            lines = [NEEDLE.format(type_needle_v=a["type_needle_v"], key=self._random(a["type_needle_k"], rng),
                                   value=self._random(a["type_needle_v"], rng)) for _ in range(size)]
        spots = sorted(rng.sample(range(size), len(needles)), reverse=True)
        if depth is not None:  # pinned (tests, depth sweeps): the first needle at `depth` percent
            spots = sorted(spots[:-1] + [int(size * depth / 100)], reverse=True)
        for spot, needle in zip(spots, needles):  # from the back, so earlier spots stay valid
            lines.insert(spot, needle)
        return "\n".join(lines), depth if depth is not None else round(100 * spots[-1] / size)

    # ------------------------------------------------------------------ variable tracking
    def _vt_chains(self, rng: random.Random, shot: bool) -> tuple[list[list[str]], list[list[str]]]:
        """Names and statements of RULER's chains: "VAR A = 12345", then "VAR B = VAR A " (trailing space,
        no period). The one-shot example uses 3-letter names and the placeholder value."""
        hops, chains = self.config.args["num_hops"], self.config.args["num_chains"]
        names: list[str] = []
        while len(names) < chains * (hops + 1):  # distinct (RULER's clash handling would crash here)
            name = "".join(rng.choices(string.ascii_uppercase, k=3 if shot else 5))
            if name not in names:
                names.append(name)
        groups = [names[i:i + hops + 1] for i in range(0, len(names), hops + 1)]
        statements = []
        for group in groups:
            value = VT_SHOT_VALUE if shot else str(rng.randrange(10000, 99999))
            statements.append([f"VAR {group[0]} = {value}"] +
                              [f"VAR {group[j + 1]} = VAR {group[j]} " for j in range(hops)])
        return groups, statements

    def _vt_context(self, noise: int, rng: random.Random, statements: list[list[str]]) -> str:
        """Noise lines with each chain's statements inserted in order at uniformly drawn lines. RULER never
        has fewer lines than statements; such short texts (training, tiny lengths) put them among them all."""
        lines = [NOISE] * noise
        for chain in statements:
            spots = sorted(rng.sample(range(max(len(lines), len(chain))), len(chain)))
            for j, spot in enumerate(spots):
                lines.insert(spot + j, chain[j])
        return "\n".join(lines)

    def _vt_text(self, noise: int, rng: random.Random, shot: bool) -> tuple[str, str, str, str, list[str]]:
        """(prompt, its answer prefix, the context, the chain's value, the first chain's names)."""
        groups, statements = self._vt_chains(rng, shot)
        value = statements[0][0].split("=")[-1].strip()
        context = self._vt_context(noise, rng, statements)
        prefix = VT_PREFIX.format(num_v=self.config.args["num_hops"] + 1, query=value)
        return VT_TEMPLATE.format(context=context, query=value), prefix, context, value, groups[0]

    def _vt_shot(self, seed: int) -> str:
        """RULER's one-shot example, made once per run: as much noise as keeps its prompt (answer prefix
        included) within 500 tokens of the evaluated tokenizer, at least 5 lines; then a space and the answer."""
        if seed not in self._vt_shots:
            def make(noise):
                prompt, prefix, _, _, names = self._vt_text(noise, random.Random(f"vt-shot/{seed}"), shot=True)
                return prompt + prefix, names

            noise = 5
            while self.count(make(noise + 1)[0]) <= VT_SHOT_TOKENS:
                noise += 1
            text, names = make(noise)
            self._vt_shots[seed] = text + " " + " ".join(names) + "\n"
        return self._vt_shots[seed]

    def _vt(self, size: int, rng: random.Random, seed: int) -> RulerSample:
        hops = self.config.args["num_hops"]
        prompt, prefix, context, value, names = self._vt_text(size, rng, shot=False)
        shot = self._vt_shot(seed)
        for name in shot.strip().split()[-(hops + 1):]:  # RULER renames by plain text replacement
            shot = shot.replace(name, "".join(rng.choices(string.ascii_uppercase, k=len(name))))
        shot = shot.replace(VT_SHOT_VALUE, str(rng.randrange(10000, 99999)))
        return RulerSample(input=shot + "\n" + prompt, answer_prefix=prefix, outputs=names, length=0,
                           context=context, query=f"Find all variables that are assigned the value {value}")

    # ------------------------------------------------------------------ common / frequent words
    def _cwe_draw(self, count: int, rng: random.Random) -> list[str]:
        """`count` distinct words: from RULER's wonderwords pool while it suffices, then from its large list
        (`cwe_words_path`) or, without it, distinct adjective-noun words."""
        pool = cwe_words()
        if count <= len(pool):
            return rng.sample(pool, count)
        large = large_cwe_words(self.cwe_words_path)
        if large is not None:
            if count > len(large):
                raise EvalError(f"RULER cwe needs {count} distinct words at this length, more than "
                                f"{self.cwe_words_path} holds; ask for a shorter --lengths value.")
            return rng.sample(large, count)
        seen: set[str] = set()
        drawn = []
        while len(drawn) < count:
            word = random_key_word(rng)
            if word not in seen:
                seen.add(word)
                drawn.append(word)
        return drawn

    def _cwe_list(self, num_words: int, rng, seed: int, common_repeats: int, uncommon_repeats: int):
        """RULER's "1. word 2. word ..." list: the first num_cw drawn words repeated common_repeats times,
        the others uncommon_repeats times, in the run's fixed permutation."""
        num_cw = self.config.args["num_cw"]
        words = self._cwe_draw(num_words, rng)
        common, uncommon = words[:num_cw], words[num_cw:]
        listed = fixed_shuffle(common * common_repeats + uncommon * uncommon_repeats, seed)
        return " ".join(f"{i + 1}. {w}" for i, w in enumerate(listed)), common

    def _cwe_short(self, length: int, seed: int) -> bool:
        """Whether `length` gets RULER's short cwe setting: below 4096 tokens, as RULER, and also where even
        the smallest sample of the long one does not fit (bytes as tokens at 4K), where RULER loops forever."""
        if length < SHORT:
            return True
        if (length, seed) not in self._cwe_fits:
            smallest = self._cwe_sample(self.config.args["num_cw"], random.Random(f"cwe-fit/{seed}"), False, seed)
            self._cwe_fits[length, seed] = self._measure(smallest) <= length
        return not self._cwe_fits[length, seed]

    def _cwe(self, size: int, rng: random.Random, length: int, seed: int) -> RulerSample:
        return self._cwe_sample(max(size, self.config.args["num_cw"]), rng, self._cwe_short(length, seed), seed)

    def _cwe_sample(self, size: int, rng: random.Random, short: bool, seed: int) -> RulerSample:
        a = self.config.args
        if short:  # RULER's short setting: 20-word example (3x / 1x), then common words 6x, others 1x
            shot_ctx, shot_common = self._cwe_list(20, rng, seed, 3, 1)
            context, common = self._cwe_list(size, rng, seed, 6, 1)
        else:
            shot_ctx, shot_common = self._cwe_list(40, rng, seed, 10, 3)
            context, common = self._cwe_list(size, rng, seed, a["freq_cw"], a["freq_ucw"])
        shot = (CWE_TEMPLATE.format(context=shot_ctx) + CWE_PREFIX + " "
                + " ".join(f"{i + 1}. {w}" for i, w in enumerate(shot_common)))
        return RulerSample(input=shot + "\n" + CWE_TEMPLATE.format(context=context), answer_prefix=CWE_PREFIX,
                           outputs=common, length=0, context=context,
                           query="What are the 10 most common words in the above list?")

    def _fwe(self, size: int, rng: random.Random, length: int, seed: int) -> RulerSample:
        """`size` x Zipf(alpha) counts: the word of rank k appears int(size * k^-alpha / zeta(alpha)) times;
        rank 1 is the "..." noise, ranks 2-4 are the answer. RULER's vocabulary is 1/50 of the length (at
        least the noise and three answers here)."""
        alpha = self.config.args["alpha"]
        vocab_size = max(4, (length - self.config.tokens_to_generate) // 50)
        vocab = ["".join(rng.choices(string.ascii_lowercase, k=6)) for _ in range(vocab_size)]
        while len(set(vocab)) < vocab_size:
            vocab.append("".join(rng.choices(string.ascii_lowercase, k=6)))
        vocab = fixed_shuffle(sorted(set(vocab)), seed)
        vocab[0] = FWE_NOISE
        z = zeta(alpha)
        words = []
        for k, word in enumerate(vocab, 1):
            words += [word] * int(size * k ** -alpha / z)
        context = " ".join(fixed_shuffle(words, seed))
        return RulerSample(input=FWE_TEMPLATE.format(context=context), answer_prefix=FWE_PREFIX,
                           outputs=vocab[1:4], length=0, context=context,
                           query="What are the three most frequently appeared words in the above coded text?")

    # ------------------------------------------------------------------ QA
    def _qa(self, size: int, rng: random.Random, index: int, seed: int) -> RulerSample:
        """The gold documents, then (SQuAD) other paragraphs of the gold article, then random others; past
        the whole collection RULER repeats it. Shuffled by the run's fixed permutation."""
        docs, questions = self.qa_data["docs"], self.qa_data["questions"]
        item = questions[index % len(questions)]
        gold, more = list(item["doc_ids"]), list(item.get("more_ids", []))
        size = max(size, len(gold))
        if size >= len(docs):
            chosen = (list(range(len(docs))) * math.ceil(size / len(docs)))[:size]
        elif size - len(gold) > len(more):
            taken = set(gold + more)
            others = [i for i in range(len(docs)) if i not in taken]
            chosen = gold + more + rng.sample(others, size - len(gold) - len(more))
        else:
            chosen = gold + rng.sample(more, size - len(gold))
        texts = fixed_shuffle([docs[i] for i in chosen], seed)
        context = "\n\n".join(f"Document {i + 1}:\n{d}" for i, d in enumerate(texts))
        return RulerSample(input=QA_TEMPLATE.format(context=context, query=item["question"]), answer_prefix=QA_PREFIX,
                           outputs=list(item["answers"]), length=0, context=context, query=item["question"])


# ----------------------------------------------------------------------------- QA sources
QA_SOURCES = {"squad": ("rajpurkar/squad_v2", None, "squad.json"),
              "hotpotqa": ("hotpotqa/hotpot_qa", "distractor", "hotpotqa.json")}


def qa_from_squad(articles: list[dict]) -> dict:
    """{docs, questions} from SQuAD's official JSON layout (data -> paragraphs -> qas), as RULER reads it:
    the distinct paragraphs sorted; answerable questions only, each with its paragraph (`doc_ids`) and the
    other paragraphs of its article (`more_ids`, RULER's first distractors)."""
    docs = sorted({p["context"] for a in articles for p in a["paragraphs"]})
    number = {d: i for i, d in enumerate(docs)}
    questions = []
    for article in articles:
        in_article = [number[p["context"]] for p in article["paragraphs"]]
        for para in article["paragraphs"]:
            own = number[para["context"]]
            for qa in para["qas"]:
                answers = [a["text"] for a in qa.get("answers", [])]
                if not qa.get("is_impossible", not answers):
                    questions.append({"question": qa["question"], "answers": answers, "doc_ids": [own],
                                      "more_ids": [i for i in in_article if i != own]})
    return {"docs": docs, "questions": questions}


def qa_from_hotpot(items: list[dict]) -> dict:
    """{docs, questions} from HotpotQA's official JSON layout (context = [[title, [sentences]], ...]): the
    distinct "title\\nsentences" documents sorted, each question with all of its documents."""
    text = lambda title, sentences: f"{title}\n{''.join(sentences)}"  # noqa: E731
    docs = sorted({text(t, s) for item in items for t, s in item["context"]})
    number = {d: i for i, d in enumerate(docs)}
    questions = [{"question": item["question"], "answers": [item["answer"]],
                  "doc_ids": [number[text(t, s)] for t, s in item["context"]]} for item in items]
    return {"docs": docs, "questions": questions}


def load_qa(dataset: str, data_dir: str | None) -> dict:
    """RULER's QA source: `<data_dir>/squad.json` / `hotpotqa.json` in the official layouts, else the hub
    via `datasets` (SQuAD v2 and HotpotQA distractor, validation splits)."""
    repo, config, filename = QA_SOURCES[dataset]
    how = (f"Either let `datasets` download {repo} from the Hugging Face hub (check your network / HF_ENDPOINT), "
           f"or pass --data-dir DIR with {filename} in the official {dataset} JSON layout.")
    if data_dir is not None:
        path = f"{data_dir}/{filename}"
        try:
            with open(path, encoding="utf-8") as f:
                raw = json.load(f)
        except FileNotFoundError as error:
            raise EvalError(f"RULER qa ({dataset}): {path} does not exist. {how}") from error
        return qa_from_squad(raw["data"]) if dataset == "squad" else qa_from_hotpot(raw)
    try:
        from datasets import load_dataset

        rows = load_dataset(repo, config, split="validation")
    except (OSError, ConnectionError, ValueError, ImportError) as error:
        raise EvalError(f"cannot load RULER qa source {dataset} ({type(error).__name__}: {str(error)[:200]}). "
                        f"{how}") from error
    if dataset == "squad":  # one row per question: regroup into articles -> paragraphs -> qas
        articles: dict[str, dict[str, list]] = {}
        for r in rows:
            articles.setdefault(r["title"], {}).setdefault(r["context"], []).append(
                {"question": r["question"], "answers": [{"text": t} for t in r["answers"]["text"]]})
        return qa_from_squad([{"paragraphs": [{"context": c, "qas": q} for c, q in paras.items()]}
                              for paras in articles.values()])
    return qa_from_hotpot([{"question": r["question"], "answer": r["answer"],
                            "context": list(zip(r["context"]["title"], r["context"]["sentences"]))} for r in rows])
