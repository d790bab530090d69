"""RULER's 13 tasks, generated at any length, deterministically from a seed.

Each generator follows RULER's task configs (`synthetic.yaml`, `constants.py`): the task template and
answer prefix, needle formats, haystacks, word sources, and the number of tokens to generate. The
haystack size is found by binary search so that prompt + answer prefix + tokens to generate fit the
target length: within `tolerance` tokens of it whenever the haystack unit (a sentence, a word, a
document) allows.

Differences from the reference scripts, all forced by running offline from a pip install:
- the "essay" haystack reads Paul Graham's essays from a file in RULER's format
  (`PaulGrahamEssays.json`, {"text": ...}) when given one (`essay_path`); otherwise it uses a built-in
  deterministic text of plain English sentences, so runs need no download;
- sentences are split by a regular expression instead of nltk's punkt model;
- the few-shot example of vt / cwe is generated at a small fixed size;
- cwe below 4096 tokens uses RULER's short setting (common words 2x, others 1x).
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
QA_TEMPLATE = ("Answer the question based on the given documents. Only give me the answer and do not output any "
               "other words.\n\nThe following are given documents.\n\n{context}\n\nAnswer the question based on "
               "the given documents. Only give me the answer and do not output any other words.\n\nQuestion: {query}")
QA_PREFIX = " Answer:"
DEPTHS = [round(100 * i / 39) for i in range(40)]  # RULER's 40 evenly spaced insertion depths, in percent


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
    """Single words (nouns and adjectives), for cwe and the built-in essay."""
    adjectives, nouns = adjectives_and_nouns()
    return sorted({w for w in adjectives + nouns if " " not in w})


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
class Generator:
    """Samples of one RULER task for one tokenizer. `count(text)` gives the model's token count."""

    def __init__(self, task: str, count: Callable[[str], int], qa_data: dict | None = None,
                 essay_path: str | None = None):
        if task not in TASKS:
            raise EvalError(f"unknown RULER task {task!r}; valid tasks: {', '.join(TASKS)}.")
        self.task, self.config, self.count = task, TASKS[task], count
        self.qa_data, self.essay_path = qa_data, essay_path
        if self.config.kind == "qa" and not qa_data:
            raise EvalError(f"RULER {task} needs its QA source ({self.config.args['dataset']}); load it with "
                            "ruler_tasks.load_qa.")

    # one build = one prompt for a haystack size; `size` units of haystack
    def build(self, size: int, rng: random.Random, index: int, depth: int | None, length: int) -> RulerSample:
        kind = self.config.kind
        if kind == "niah":
            return self._niah(size, rng, depth)
        if kind == "vt":
            return self._vt(size, rng)
        if kind == "cwe":
            return self._cwe(size, rng, length)
        if kind == "fwe":
            return self._fwe(size, rng)
        return self._qa(size, rng, index)

    def sample(self, length: int, seed: int, index: int = 0, depth: int | None = None,
               tolerance: int = 128) -> RulerSample:
        """The largest sample whose length (prompt + prefix + tokens to generate) is at most `length`.

        Deterministic in (task, length, seed, index, depth). depth: where the (first) needle goes, in
        percent of the haystack; None draws it from RULER's 40 depths.
        """
        def make(size):
            return self.build(size, random.Random(f"{self.task}/{seed}/{index}"), index, depth, length)

        cap = len(self.qa_data["docs"]) if self.config.kind == "qa" else 1 << 26  # QA runs out of documents
        lo, hi = 1, 2
        while hi <= cap and self._measure(make(hi)) <= length:
            lo, hi = hi, hi * 2
        if hi > cap:
            hi = cap + 1
        while hi - lo > 1:  # invariant: size lo fits (or lo == 1), size hi does not
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if self._measure(make(mid)) <= length else (lo, mid)
        best = make(lo)
        best.length = self._measure(best)
        if best.length > length:
            raise EvalError(f"RULER {self.task}: even the smallest sample has {best.length} tokens, over the "
                            f"requested {length}; ask for a longer --lengths value.")
        return best

    def shortest_length(self, seed: int = 0) -> int:
        """Tokens (prompt + prefix + tokens to generate) of this task's smallest sample: the least --lengths."""
        return self._measure(self.build(1, random.Random(f"{self.task}/{seed}/0"), 0, None, 1))

    def _measure(self, s: RulerSample) -> int:
        return self.count(s.input + s.answer_prefix) + self.config.tokens_to_generate

    # ------------------------------------------------------------------ NIAH
    def _random(self, kind: str, rng: random.Random) -> str:
        if kind == "numbers":
            return str(rng.randint(10 ** 6, 10 ** 7 - 1))
        if kind == "words":
            return random_key_word(rng)
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))

    def _niah(self, size: int, rng: random.Random, depth: int | None) -> RulerSample:
        a = self.config.args
        n_k = max(a["num_needle_k"], a["num_needle_q"])
        keys, values, needles = [], [], []
        for _ in range(n_k):
            keys.append(self._random(a["type_needle_k"], rng))
            values.append([self._random(a["type_needle_v"], rng) for _ in range(a["num_needle_v"])])
            needles += [NEEDLE.format(type_needle_v=a["type_needle_v"], key=keys[-1], value=v) for v in values[-1]]
        rng.shuffle(needles)
        depths = sorted(rng.sample(DEPTHS, len(needles)))
        if depth is not None:
            depths = sorted([depth] + depths[1:])
        if a["type_haystack"] == "essay":
            words = essay_words(self.essay_path)
            text = " ".join((words * (size // len(words) + 1))[:size])
            units = split_sentences(text)
            joiner = " "
        else:
            if a["type_haystack"] == "noise":
                units = [NOISE] * size
            else:  # "needle": the haystack is made of distractor needles with other keys
                units = [NEEDLE.format(type_needle_v=a["type_needle_v"], key=self._random(a["type_needle_k"], rng),
                                       value=self._random(a["type_needle_v"], rng)) for _ in range(size)]
            joiner = "\n"
        places = [int(len(units) * d / 100) for d in depths]
        pieces, last = [], 0
        for place, needle in zip(places, needles):
            pieces += units[last:place] + [needle]
            last = place
        pieces += units[last:]
        context = joiner.join(pieces)
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
                           length=0, context=context, query=query, depth=depths[0])

    # ------------------------------------------------------------------ variable tracking
    def _vt_text(self, noise: int, rng: random.Random, hops: int, chains: int):
        names = set()
        while len(names) < chains * (hops + 1):
            names.add("".join(rng.choices(string.ascii_uppercase, k=5)))
        names = sorted(names)
        rng.shuffle(names)
        value = str(rng.randint(10000, 99999))
        chain_vars = names[: hops + 1]
        statements = [f"VAR {chain_vars[0]} = {value}"] + [f"VAR {chain_vars[j + 1]} = VAR {chain_vars[j]} "
                                                           for j in range(hops)]
        for c in range(1, chains):  # further chains get their own values
            other = names[c * (hops + 1):(c + 1) * (hops + 1)]
            statements += [f"VAR {other[0]} = {rng.randint(10000, 99999)}"] + [
                f"VAR {other[j + 1]} = VAR {other[j]} " for j in range(hops)]
        sentences = [NOISE] * noise
        spots = sorted(rng.sample(range(noise + len(statements)), len(statements)))
        for spot, statement in zip(spots, statements):  # ascending spots keep each chain in order
            sentences.insert(spot, statement + ".")
        context = "\n".join(sentences)
        return context, value, chain_vars

    def _vt(self, size: int, rng: random.Random) -> RulerSample:
        a = self.config.args
        shot_ctx, shot_value, shot_vars = self._vt_text(5, random.Random(rng.random()), a["num_hops"], a["num_chains"])
        shot = (VT_TEMPLATE.format(context=shot_ctx, query=shot_value)
                + VT_PREFIX.format(num_v=len(shot_vars), query=shot_value) + " ".join(shot_vars) + "\n\n")
        context, value, chain_vars = self._vt_text(size, rng, a["num_hops"], a["num_chains"])
        return RulerSample(input=shot + VT_TEMPLATE.format(context=context, query=value),
                           answer_prefix=VT_PREFIX.format(num_v=len(chain_vars), query=value), outputs=chain_vars,
                           length=0, context=context, query=f"Find all variables that are assigned the value {value}")

    # ------------------------------------------------------------------ common / frequent words
    def _cwe_list(self, num_ucw: int, rng: random.Random, freq_cw: int, freq_ucw: int, num_cw: int):
        words = rng.sample(plain_words(), num_cw + num_ucw)
        common, uncommon = words[:num_cw], words[num_cw:]
        listed = common * freq_cw + uncommon * freq_ucw
        rng.shuffle(listed)
        return "\n".join(f"{i + 1}. {w}" for i, w in enumerate(listed)), common

    def _cwe(self, size: int, rng: random.Random, length: int) -> RulerSample:
        a = dict(self.config.args)
        if length < 4096:  # RULER's short setting: 30x / 3x repeats cannot fit a short context
            a.update(freq_cw=2, freq_ucw=1)
        shot_ctx, shot_common = self._cwe_list(20, random.Random(rng.random()), 3, 1, a["num_cw"])
        shot = (CWE_TEMPLATE.format(context=shot_ctx) + CWE_PREFIX + " "
                + " ".join(f"{i + 1}. {w}" for i, w in enumerate(shot_common)) + "\n\n")
        context, common = self._cwe_list(size, rng, a["freq_cw"], a["freq_ucw"], a["num_cw"])
        return RulerSample(input=shot + CWE_TEMPLATE.format(context=context), answer_prefix=CWE_PREFIX,
                           outputs=common, length=0, context=context,
                           query="What are the 10 most common words in the above list?")

    def _fwe(self, size: int, rng: random.Random) -> RulerSample:
        """Coded words with Zipf(alpha) counts: word of rank k appears size * k^-alpha / zeta(alpha) times;
        rank 1 is the '....' noise, ranks 2-4 are the answer."""
        alpha = self.config.args["alpha"]
        vocab = set()
        while len(vocab) < 2000:
            vocab.add("".join(rng.choices(string.ascii_lowercase, k=6)))
        vocab = sorted(vocab)
        rng.shuffle(vocab)
        vocab[0] = "...."
        zeta = sum(k ** -alpha for k in range(1, 100000)) + 100000 ** (1 - alpha) / (alpha - 1)
        words = []
        for k, word in enumerate(vocab, 1):
            words += [word] * math.floor(size * 10 * k ** -alpha / zeta)
        rng.shuffle(words)
        context = " ".join(words)
        return RulerSample(input=FWE_TEMPLATE.format(context=context), answer_prefix=FWE_PREFIX,
                           outputs=vocab[1:4], length=0, context=context,
                           query="What are the three most frequently appeared words in the above coded text?")

    # ------------------------------------------------------------------ QA
    def _qa(self, size: int, rng: random.Random, index: int) -> RulerSample:
        docs, questions = self.qa_data["docs"], self.qa_data["questions"]
        item = questions[index % len(questions)]
        gold = list(item["doc_ids"])
        others = [i for i in range(len(docs)) if i not in set(gold)]
        extra = rng.sample(others, min(len(others), max(0, size - len(gold))))
        chosen = gold + extra
        rng.shuffle(chosen)
        context = "\n\n".join(f"Document {i + 1}:\n{docs[d]}" for i, d in enumerate(chosen))
        return RulerSample(input=QA_TEMPLATE.format(context=context, query=item["question"]), answer_prefix=QA_PREFIX,
                           outputs=list(item["answers"]), length=0, context=context, query=item["question"])


# ----------------------------------------------------------------------------- QA sources
QA_SOURCES = {"squad": ("rajpurkar/squad_v2", None, "squad.json"),
              "hotpotqa": ("hotpotqa/hotpot_qa", "distractor", "hotpotqa.json")}


def qa_from_squad(articles: list[dict]) -> dict:
    """{docs, questions} from SQuAD's official JSON layout (data -> paragraphs -> qas); answerable only."""
    docs, questions, seen = [], [], {}
    for article in articles:
        for para in article["paragraphs"]:
            seen.setdefault(para["context"], len(docs))
            if seen[para["context"]] == len(docs):
                docs.append(para["context"])
            for qa in para["qas"]:
                answers = [a["text"] for a in qa.get("answers", [])]
                if answers and not qa.get("is_impossible", False):
                    questions.append({"question": qa["question"], "answers": answers,
                                      "doc_ids": [seen[para["context"]]]})
    return {"docs": docs, "questions": questions}


def qa_from_hotpot(items: list[dict]) -> dict:
    """{docs, questions} from HotpotQA's official JSON layout (context = [[title, [sentences]], ...])."""
    docs, questions, seen = [], [], {}
    for item in items:
        ids = []
        for title, sentences in item["context"]:
            text = f"{title}\n{''.join(sentences)}"
            if text not in seen:
                seen[text] = len(docs)
                docs.append(text)
            ids.append(seen[text])
        questions.append({"question": item["question"], "answers": [item["answer"]], "doc_ids": ids})
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
    if dataset == "squad":
        articles: dict[str, list] = {}
        for r in rows:
            articles.setdefault(r["title"], []).append(
                {"context": r["context"], "qas": [{"question": r["question"],
                                                   "answers": [{"text": t} for t in r["answers"]["text"]]}]})
        return qa_from_squad([{"paragraphs": p} for p in articles.values()])
    return qa_from_hotpot([{"question": r["question"], "answer": r["answer"],
                            "context": list(zip(r["context"]["title"], r["context"]["sentences"]))} for r in rows])
