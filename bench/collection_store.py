"""A page store of many documents on a CPU (issue 15): build time, answer time, needle-page recall and accuracy.

    python bench/collection_store.py --docs 1000 --doc-tokens 1024 --questions 50 --out bench/results/collection

Each document is the default model's kind of text (essay-shaped filler) holding one fact of its own ("One of the
special magic numbers for amber-river-ledger is: 5523871."), so every other document is a distractor with a fact
of the same shape under another key. The store is built with `PageStore.add` (as `retrolm index build` does),
then questions about random documents' facts go through `RetroLM.answer` with RULER's answer start (the default
model answers needles after it). Reports:
- build: seconds and tokens/s for the whole collection, and the store's size on disk;
- answer: seconds per question (index search, page loading, encoding the question and decoding), the first
  question also building the index;
- needle-page recall: the pages holding the fact are among the pages attended; accuracy: the answer starts with
  the value.
`--scorer attention` builds and asks the store of the training-free scorer (page summaries, searched exactly).
Writes collection_store.json and .md (collection_store_attention.* for the training-free scorer) under --out
(through temporary files). bench/collection_qa.py asks the same
kind of questions through the store, text-chunk RAG and RetroLM over the whole concatenation.
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.common import environment, markdown_table, write_json, write_text  # noqa: E402
from retrolm.demo import ADJECTIVES, NOUNS, Fact  # noqa: E402
from retrolm.filler import ESSAY_SHAPES  # noqa: E402
from retrolm.model import RetroLM  # noqa: E402
from retrolm.page_store import PageStore  # noqa: E402

TEXTS = ("essay", "reference")


def make_document(rng: random.Random, chars: int, fact: Fact) -> tuple[str, int]:
    """At most `chars` characters of essay filler with `fact`'s needle between two sentences; (text, needle
    offset)."""
    sentences, size = [], len(fact.needle)
    while True:
        sentence = rng.choice(ESSAY_SHAPES).format(**{k: rng.choice(NOUNS) for k in "abcd"})
        if size + 1 + len(sentence) > chars:
            break
        sentences.append(sentence)
        size += 1 + len(sentence)
    at = rng.randrange(len(sentences) + 1)
    text = " ".join(sentences[:at] + [fact.needle] + sentences[at:])
    return text, text.index(fact.needle)


# Python's language reference in ASCII: its few typographic marks, one byte = one token for the default model
ASCII_MARKS = str.maketrans({"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"', "\u2026": "...",
                             "\u2014": "--", "\u2013": "-", "\u00df": "ss", "\u00b0": " degrees"})


def reference_text() -> str:
    """Every topic of Python's language reference (`pydoc_data.topics`, PSF License 2.0, in every CPython; 465K
    characters), in ASCII: text the default model never trained on (its ASCII topics are only stage 1's recall
    validation haystacks, its other 49 topics in nothing)."""
    from pydoc_data.topics import topics

    text = "\n\n".join(body.strip() for _, body in sorted(topics.items())).translate(ASCII_MARKS)
    return text.encode("ascii", "replace").decode()


def reference_document(rng: random.Random, source: str, start: int, chars: int, fact: Fact) -> tuple[str, int]:
    """At most `chars` characters of `source` from `start` on (wrapping), cut at a line end, with `fact`'s needle
    as a line of its own at a random line end; (text, needle offset)."""
    window = (source[start:] + "\n\n" + source)[: chars - len(fact.needle) - 1]
    window = window[: window.rfind("\n") + 1]
    ends = [i + 1 for i, c in enumerate(window) if c == "\n"]
    at = rng.choice([0] + ends[:-1])
    return window[:at] + fact.needle + "\n" + window[at:], at


def collection(count: int, chars: int, seed: int, text: str = "essay"
               ) -> tuple[dict[str, str], dict[str, tuple[Fact, int]]]:
    """`count` documents (id -> text) and each one's fact and needle offset; every key is distinct. text: "essay"
    (the default model's kind of filler) or "reference" (Python's language reference, held out of its training:
    windows of it spread evenly over the whole, overlapping when `count` x `chars` exceeds its 465K characters)."""
    if text not in TEXTS:
        raise SystemExit(f"text must be one of {TEXTS}; got {text!r}")
    rng = random.Random(seed)
    keys = rng.sample([f"{a}-{n}-{m}" for a in ADJECTIVES for n in NOUNS for m in NOUNS if n != m], count)
    source = reference_text() if text == "reference" else ""
    docs, facts = {}, {}
    for i in range(count):
        fact = Fact(keys[i], str(rng.randint(10 ** 6, 10 ** 7 - 1)),
                    0.0)
        doc_id = f"doc{i:05d}.txt"
        if text == "essay":
            docs[doc_id], offset = make_document(rng, chars, fact)
        else:
            docs[doc_id], offset = reference_document(rng, source, i * len(source) // count, chars, fact)
        facts[doc_id] = (fact, offset)
    return docs, facts


def question(fact: Fact) -> str:
    return f"What is the special magic number for {fact.key} mentioned in the provided text?"


def answer_template(fact: Fact) -> str:
    """The text after the context: the question, then RULER's answer start (the default model answers after it)."""
    return "\n{question} The special magic number for " + fact.key + " mentioned in the provided text is"


def needle_pages(doc_id: str, fact: Fact, offset: int, page_size: int) -> set[tuple[str, int]]:
    """(document, page) of every page the needle's characters (= tokens for the default model) fall in."""
    return {(doc_id, p) for p in range(offset // page_size, (offset + len(fact.needle) - 1) // page_size + 1)}


def ask(model, store, doc_id: str, fact: Fact, offset: int) -> dict:
    started = time.perf_counter()
    result = model.answer(question(fact), store, max_new_tokens=len(fact.value) + 2, template=answer_template(fact),
                          do_sample=False)
    seconds = time.perf_counter() - started
    needle = needle_pages(doc_id, fact, offset, model.config.page_size)
    attended = {(d, p) for d, p, _ in result.pages}
    return {"doc": doc_id, "value": fact.value, "answer": result.text, "seconds": seconds,
            "timings": result.timings, "recalled": needle <= attended,
            "correct": result.text.startswith(fact.value)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="RetroLM checkpoint (default: the embedded default model)")
    parser.add_argument("--docs", type=int, default=1000)
    parser.add_argument("--doc-tokens", type=int, default=1024, help="characters = tokens for the default model")
    parser.add_argument("--questions", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scorer", default="trained", choices=("trained", "attention"),
                        help="page scorer: the model's trained retriever (bookmark keys) or the training-free one "
                             "(page summaries); result files of the latter end in _attention")
    parser.add_argument("--store", default=None, help="store directory (default: a temporary one, removed after)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "collection"))
    args = parser.parse_args()
    model = RetroLM.from_pretrained(args.model, device=args.device, scorer=args.scorer)
    docs, facts = collection(args.docs, args.doc_tokens, args.seed)
    path = args.store or tempfile.mkdtemp(prefix="retrolm-store-")
    try:
        store = PageStore.open(path, model, create=True)
        started = time.perf_counter()
        store.add(docs)
        build_s = time.perf_counter() - started
        tokens = sum(entry["tokens"] for entry in store.documents().values())
        disk = sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)
        rng = random.Random(args.seed + 1)
        asked = [ask(model, store, d, *facts[d]) for d in rng.sample(sorted(docs), args.questions)]
    finally:
        if args.store is None:
            shutil.rmtree(path, ignore_errors=True)
    later = asked[1:] or asked
    summary = {"documents": len(docs), "tokens": tokens, "build_s": round(build_s, 1),
               "build_tokens_per_s": round(tokens / build_s), "store_gib": round(disk / 2 ** 30, 3),
               "first_answer_s": round(asked[0]["seconds"], 2),
               "answer_s_mean": round(sum(a["seconds"] for a in later) / len(later), 3),
               "answer_s_max": round(max(a["seconds"] for a in later), 3),
               "needle_page_recall": round(100 * sum(a["recalled"] for a in asked) / len(asked), 1),
               "accuracy": round(100 * sum(a["correct"] for a in asked) / len(asked), 1)}
    name = "collection_store" + ("" if args.scorer == "trained" else f"_{args.scorer}")
    write_json(os.path.join(args.out, f"{name}.json"),
               {"args": vars(args), "summary": summary, "questions": asked, "environment": environment(),
                "threads": torch.get_num_threads()})
    table = markdown_table([summary], list(summary))
    write_text(os.path.join(args.out, f"{name}.md"),
               f"# Page store of {len(docs)} documents ({tokens} tokens), {args.model or 'default model'}, "
               f"{args.scorer} scorer, {args.device}\n\n"
               f"{table}\n\nAnswer times exclude the first question (which also builds the index); "
               f"{args.questions} questions, each about one document's fact among {len(docs)} facts of the same "
               "shape.\n")
    print(table)


if __name__ == "__main__":
    main()
