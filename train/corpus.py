"""Training documents of the default model: offline English text and synthetic long-context tasks.

Text: the docstrings of the running Python's standard library (PSF License 2.0), the English prose every
Python installation carries, so no download is needed. Tasks: RULER's templates from `eval.ruler_tasks`
(NIAH variants and variable tracking), drawn from seeds the evaluation never uses (evaluation: seed 42 by
default, indices 0..N-1; training: seeds from TRAIN_SEED_BASE on), with the answer written after the prompt.

Every document is ASCII and exactly `length` characters, which is `length` tokens for the byte-level
tokenizer: prepare_data packs [bos] + document + [eos], so a document of seq_len - 2 characters is exactly
one training sequence and no task is ever cut across two sequences. The task sits at the end of the
document, after as much text as is needed to fill it.
"""
from __future__ import annotations

import ast
import json
import os
import random
import sysconfig
from dataclasses import dataclass, replace
from functools import lru_cache
from multiprocessing import Pool

from eval.errors import EvalError
from eval.ruler_tasks import NOISE, TASKS, Generator, essay_words, random_key_word, split_sentences
from train.drills import DrillStyle, drill_text
from train.facts import dense_fact_text, fact_task_text

TRAIN_SEED_BASE = 1_000_000
TASK_MIX = ("niah_single_1", "niah_single_2", "niah_single_3", "niah_multikey_1", "niah_multikey_2",
            "niah_multikey_3", "niah_multivalue", "niah_multiquery", "vt")
SKIPPED_STDLIB_DIRS = {"test", "tests", "idlelib", "site-packages", "dist-packages", "lib2to3", "__pycache__"}


def byte_count(text: str) -> int:
    """Tokens of `text` for the byte-level tokenizer, the bos token included."""
    return len(text.encode("utf-8")) + 1


@lru_cache(maxsize=1)
def stdlib_docstrings(min_chars: int = 120) -> tuple[str, ...]:
    """Module, class and function docstrings of the running Python's standard library, ASCII only, sorted by file."""
    root = sysconfig.get_paths()["stdlib"]
    texts = []
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d not in SKIPPED_STDLIB_DIRS)
        for name in sorted(f for f in files if f.endswith(".py")):
            try:
                with open(os.path.join(directory, name), encoding="utf-8") as f:
                    tree = ast.parse(f.read())
            except (SyntaxError, UnicodeDecodeError, ValueError):
                continue
            for node in ast.walk(tree):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    doc = ast.get_docstring(node)
                    if doc and len(doc) >= min_chars and doc.isascii():
                        texts.append(doc.strip())
    if not texts:
        raise RuntimeError(f"no docstrings found under {root}: this Python has no standard library sources.")
    return tuple(texts)


def text_filler(rng: random.Random, chars: int) -> str:
    """`chars` characters of consecutive docstrings from a random starting point, blank-line separated."""
    docs = stdlib_docstrings()
    i, pieces, size = rng.randrange(len(docs)), [], -2  # size: length of the joined text so far
    while size < chars:
        pieces.append(docs[i % len(docs)])
        size += len(pieces[-1]) + 2
        i += 1
    return "\n\n".join(pieces)[:chars]


def answer_text(task: str, outputs: list[str]) -> str:
    """The answer as the prompt's prefix expects it to continue (RULER's few-shot format for vt)."""
    if TASKS[task].kind == "vt":
        return " ".join(outputs)
    return " " + (outputs[0] if len(outputs) == 1 else ", ".join(outputs[:-1]) + ", and " + outputs[-1]) + "."


@lru_cache(maxsize=None)
def _generator(task: str) -> Generator:
    return Generator(task, byte_count)


def _short_vt(max_tokens: int, seed: int, index: int):
    """A vt sample under RULER's shortest one (1,424 byte tokens, most of it the one-shot example): the same
    template and chains without the example, so variable tracking is trained inside a short window too."""
    generator = _generator("vt")
    noise = max(1, (max_tokens - 450) // 90)  # ~90 characters per noise sentence, ~450 of template and chains
    sample = generator.build(noise, random.Random(f"vt/{TRAIN_SEED_BASE + seed}/{index}"), index, None, max_tokens)
    sample.input = sample.input[sample.input.index("Memorize", 1):]
    return sample


def task_text(task: str, max_tokens: int, seed: int, index: int) -> str:
    """A RULER task prompt + answer prefix + answer of at most `max_tokens` byte tokens.

    Raises EvalError when the task's shortest prompt does not fit (vt falls back to its short form).
    """
    config = TASKS[task]
    try:
        # the generator sizes prompt + prefix + tokens_to_generate; the answer replaces the generation budget
        sample = _generator(task).sample(max_tokens + config.tokens_to_generate - 64, TRAIN_SEED_BASE + seed, index)
    except EvalError:
        if task != "vt":
            raise
        sample = _short_vt(max_tokens, seed, index)
    text = sample.input + sample.answer_prefix + answer_text(task, sample.outputs)
    if byte_count(text) - 1 > max_tokens:
        raise EvalError(f"{task}: the shortest sample has {byte_count(text) - 1} tokens, over {max_tokens}")
    return text


def dense_recall_text(rng: random.Random, length: int, gap: int) -> str:
    """About `length` characters of RULER-style haystack with needles, and a question + answer about each needle
    at least `gap` characters after it: many retrieval lessons per document, in RULER's own phrasing."""
    essay = rng.random() < 0.7
    words = essay_words(None)
    start = rng.randrange(len(words))
    filler = split_sentences(" ".join(words[start:start + length // 5])) if essay else [NOISE] * (length // 88 + 1)
    pieces, size, pending = [], 0, []  # pending: (ready at size, key, value) for questions to ask
    while size < length:
        if rng.random() < 0.08:
            key, value = random_key_word(rng), str(rng.randint(10 ** 6, 10 ** 7 - 1))
            pieces.append(f"One of the special magic numbers for {key} is: {value}.")
            pending.append((size + gap, key, value))
        elif pending and pending[0][0] <= size and rng.random() < 0.3:
            _, key, value = pending.pop(rng.randrange(sum(1 for p in pending if p[0] <= size)))
            pieces.append(f"What is the special magic number for {key} mentioned in the provided text? The special "
                          f"magic number for {key} mentioned in the provided text is {value}.")
        else:
            pieces.append(filler[len(pieces) % len(filler)])
        size += len(pieces[-1]) + 1
    return (" " if essay else "\n").join(pieces)


def essay_filler(rng: random.Random, chars: int) -> str:
    """About `chars` characters of the built-in essay from a random word on."""
    words = essay_words(None)
    start = rng.randrange(len(words))
    return " ".join(words[start:start + chars // 4 + 1])[:chars]


def varied_filler(rng: random.Random, chars: int) -> str:
    """Docstrings or essay text, half and half."""
    return text_filler(rng, chars) if rng.random() < 0.5 else essay_filler(rng, chars)


@dataclass(frozen=True)
class DocumentSpec:
    """How one training document is drawn (see `document`)."""

    seed: int
    length: int  # characters, = byte tokens
    text_fraction: float  # plain text
    min_task: int  # shortest task, characters
    dense_fraction: float = 0.0  # of the rest: a dense recall text, else a task
    fact_fraction: float = 0.0  # of dense texts and tasks: varied formats (train/facts.py), else RULER's templates
    short_fraction: float = 0.0  # the document is short documents of `short_length` in a row instead
    short_length: int = 0
    # dense texts are drawn a little long and cut to length: at the front (the shipped corpus; a needle can be cut
    # off while its question stays, about one document in five) or, with cut_end, at the end (a question can go,
    # never a needle whose question stays)
    cut_end: bool = False
    drill_fraction: float = 0.0  # the document is a recall drill (train/drills.py) instead
    drill_style: DrillStyle = DrillStyle()  # what its drills may look like


def document(spec: DocumentSpec) -> str:
    """One training document of exactly `spec.length` characters: text, a dense recall text, text then a task,
    (probability `drill_fraction`) a recall drill, or (probability `short_fraction`) consecutive short documents
    drawn the same way, so a long-context stage also keeps practising what fits in the window.

    Non-ASCII characters (a few word-list entries) become '?', keeping one character = one token."""
    rng = random.Random(f"doc/{spec.seed}/short")
    drill_rng = random.Random(f"doc/{spec.seed}/drill")  # its own draws: at 0 the other documents stay as they were
    if spec.drill_fraction and drill_rng.random() < spec.drill_fraction:
        text = drill_text(drill_rng, spec.length, varied_filler, spec.drill_style)
    elif spec.short_fraction and rng.random() < spec.short_fraction:
        count = (spec.length + 2) // (spec.short_length + 2)
        shorts = [document(replace(spec, seed=spec.seed * 64 + i + 1, length=spec.short_length, short_fraction=0.0,
                                   min_task=min(spec.min_task, spec.short_length // 3))) for i in range(count)]
        text = "\n\n".join(shorts)
    else:
        text = _document(spec.seed, spec.length, spec.text_fraction, spec.min_task, spec.dense_fraction,
                         spec.fact_fraction, spec.cut_end)
    return (text[:spec.length] + " " * (spec.length - len(text))).encode("ascii", "replace").decode("ascii")


def _document(seed: int, length: int, text_fraction: float, min_task: int, dense_fraction: float,
              fact_fraction: float, cut_end: bool = False) -> str:
    rng = random.Random(f"doc/{seed}")
    if rng.random() < text_fraction:
        return text_filler(rng, length)
    varied = fact_fraction > 0 and rng.random() < fact_fraction  # no draw at 0: the shipped model's corpus stays
    if rng.random() < dense_fraction:
        if varied:
            text = dense_fact_text(rng, length + 200, min(2048, length // 4), varied_filler)
        else:
            text = dense_recall_text(rng, length + 200, gap=min(2048, length // 4))
        return text[:length] if cut_end else text[-length:]
    if varied:
        text = fact_task_text(rng, rng.randint(min(min_task, length), length), varied_filler)[-length:]
        lead = length - len(text)
        return (text_filler(rng, lead - 2) + "\n\n" if lead >= 2 else " " * lead) + text
    task = rng.choice(TASK_MIX)
    try:
        text = task_text(task, rng.randint(min(min_task, length), length), seed, 0)
    except EvalError:  # this task's shortest prompt is longer than the draw: give it the whole document
        try:
            text = task_text(task, length, seed, 0)
        except EvalError:  # longer than the document itself (tiny test windows): text only
            return text_filler(rng, length)
    lead = length - len(text)
    return (text_filler(rng, lead - 2) + "\n\n" if lead >= 2 else " " * lead) + text


def window_lengths(count: int, length: int, split_fraction: float, seed: int) -> list[int]:
    """Document lengths filling `count` windows of `length + 2` tokens (a document between its begin and end
    tokens): one document of `length`, or (probability `split_fraction`) two, the first a quarter to three quarters
    of the window, whose lengths with their own begin and end tokens fill it exactly. A base trained on windows of
    one document each meets the end of text only at the window's last position and learns to expect it late in
    the window, where RetroLM packs a question after its retrieved pages (bench/results/drills/drills.md)."""
    if not split_fraction:
        return [length] * count
    rng = random.Random(f"split/{seed}")
    lengths = []
    for _ in range(count):
        if rng.random() < split_fraction:
            first = rng.randint(length // 4, length - 2 - length // 4)
            lengths += [first, length - 2 - first]
        else:
            lengths.append(length)
    return lengths


def write_documents(path: str, count: int, length: int, seed: int, text_fraction: float, min_task_tokens: int,
                    dense_fraction: float = 0.0, workers: int | None = None, fact_fraction: float = 0.0,
                    short_fraction: float = 0.0, short_length: int = 0, cut_end: bool = False,
                    drill_fraction: float = 0.0, drill_style: DrillStyle = DrillStyle(),
                    split_fraction: float = 0.0) -> str:
    """Write documents for `count` windows of `length + 2` tokens to `path` (jsonl, {"text": ...}), atomically:
    one document of exactly `length` characters per window, or two that fill it (`window_lengths`,
    `split_fraction`); the other options are `DocumentSpec`'s."""
    stdlib_docstrings()  # read once in the parent: forked workers inherit it
    specs = [DocumentSpec(seed + i, size, text_fraction, min_task_tokens, dense_fraction, fact_fraction,
                          short_fraction, short_length, cut_end, drill_fraction, drill_style)
             for i, size in enumerate(window_lengths(count, length, split_fraction, seed))]
    tmp = path + ".tmp"
    with Pool(workers or os.cpu_count()) as pool, open(tmp, "w") as f:
        for spec, text in zip(specs, pool.imap(document, specs, chunksize=64)):
            if len(text) != spec.length or not text.isascii():
                raise ValueError(f"document of {len(text)} characters (want {spec.length}, ASCII)")
            f.write(json.dumps({"text": text}) + "\n")
    os.replace(tmp, path)
    return path
