"""Which needle pages RetroLM retrieves on RULER, and how its answers depend on them.

    python bench/ruler_pages.py --tasks niah_multikey_1,vt --factors 16,64 --samples 20 --device cuda

RULER scores one number per task; this splits it into retrieval and reading. For every sample it finds, in the
prompt's context, the sentences that carry the answer and the ones that only look like it, and checks them against
the pages RetroLM attends to for the answer's first token (and for any answer token):
- niah tasks: the values of the needles holding an asked value ("asked") and of the other keys' needles
  ("distractors"), as bench/heldout_prose.py counts a needle found when every page holding its value is attended;
- vt: the chain's statements ("VAR B = VAR A"), every one of them asked; vt has no distractor chain.
Reported per cell: RULER's score, how often every asked needle's pages were attended at the first answer token
(and at some answer token), the mean number of distractor needles attended, and the score of the samples whose
asked needles were all attended, with and without a distractor beside them. A score well under 100 where recall is
full is the LM's reading, not retrieval.
`--oracle asked` adds a score no page reaches to the pages of the asked needles (through the lexical scores, so it
needs lexical_weight > 0): retrieval made perfect, to measure what the LM reads from them; `--oracle exclusive`
also keeps the distractors' pages out (a retriever that tells keys apart): each distractor sentence's pages, and the
page before it (RetroLM brings a retrieved page's next page along). Oracle runs decode eagerly.
Where the first answer token's pages go is counted too (`first_pages`, mean pages per sample): the asked needles'
pages, the page after one (a retrieved page brings its successor), distractors' pages, the instructions before the
context (vt's one-shot example is there), the question after it, and other context pages.
Writes ruler_pages.json and .md under --out.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import time
from contextlib import contextmanager, nullcontext

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.common import environment, markdown_table, write_json, write_text  # noqa: E402
from bench.stage1_model import setting  # noqa: E402
from eval import metrics  # noqa: E402
from eval.methods import MethodOptions, build_method  # noqa: E402
from eval.ruler import postprocess, to_sample  # noqa: E402
from eval.ruler_tasks import NEEDLE, TASKS, Generator  # noqa: E402
from retrolm.lexical import LexicalIndex  # noqa: E402

NEEDLE_START = NEEDLE.split("{")[0]  # "One of the special magic "
VT_STATEMENT = re.compile(r"VAR [A-Z]+ = [^\n]*")
ORACLE_BONUS = 1e6  # lexical scores are sums of idf (< 20 each) over a window's n-grams, times lexical_weight


def needle_spans(task: str, context: str, answers: list[str]) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(asked, distractors): character spans in `context` of the needles' values (vt: of the whole statements) for
    the needles carrying an answer and for the ones of the same form that do not."""
    if TASKS[task].kind == "vt":
        return [m.span() for m in VT_STATEMENT.finditer(context)], []
    if TASKS[task].kind != "niah":
        raise SystemExit(f"{task}: only niah tasks and vt have needles to find")
    asked, distractors = [], []
    start = context.find(NEEDLE_START)
    while start >= 0:
        value = context.find(" is: ", start) + len(" is: ")
        end = context.find(".", value)
        (asked if context[value:end] in answers else distractors).append((value, end))
        start = context.find(NEEDLE_START, end)
    return asked, distractors


def token_pages(method, text: str, span: tuple[int, int], page_size: int) -> set[int]:
    """Pages of the prompt's tokens that hold `text[span[0]:span[1]]` (token index of a character: the count of the
    text before it, special tokens included, as the method encodes the whole prompt)."""
    first = method.count_tokens(text[:span[0]])
    last = max(first, method.count_tokens(text[:span[1]]) - 1)
    return set(range(first // page_size, last // page_size + 1))


@contextmanager
def oracle(pages: set[int], excluded: set[int]):
    """Within it, `pages` outscore every other page and `excluded` score below all: the lexical scores (which every
    scorer adds to its own) get a bonus, or a penalty, no real score reaches."""
    real = LexicalIndex.scores

    def scores(self, token_ids, starts, query_pages, n, **judging):
        out = real(self, token_ids, starts, query_pages, n, **judging)
        out[:, [p for p in excluded if p < n]] -= ORACLE_BONUS
        out[:, [p for p in pages if p < n]] += ORACLE_BONUS
        return out

    LexicalIndex.scores = scores
    try:
        yield
    finally:
        LexicalIndex.scores = real


PAGE_KINDS = ("asked", "after_asked", "distractor", "instructions", "question", "other")


def page_kinds(pages, asked: set[int], distractors: set[int], context_pages: range) -> dict[str, int]:
    """How many of `pages` are of each PAGE_KINDS kind (the first that fits, in that order)."""
    counts = dict.fromkeys(PAGE_KINDS, 0)
    for page in pages:
        kind = ("asked" if page in asked else "after_asked" if page - 1 in asked
                else "distractor" if page in distractors else "instructions" if page < context_pages.start
                else "question" if page >= context_pages.stop else "other")
        counts[kind] += 1
    return counts


def run_sample(method, sample, task: str, perfect: str | None = None) -> dict:
    """One sample's score and needle retrieval; `perfect`: None, or "asked" / "exclusive" (see `oracle`)."""
    prompt = sample.prompt
    text = prompt.text
    offset = len(prompt.before)  # the context's place in the prompt
    page = method.retrolm.config.page_size
    asked, distractors = needle_spans(task, prompt.context, sample.answers)
    if not asked:
        raise SystemExit(f"{task}: no needle holding an answer found in sample {sample.id}")
    pages_of = [token_pages(method, text, (a + offset, b + offset), page) for a, b in asked]
    distractor_pages = [token_pages(method, text, (a + offset, b + offset), page) for a, b in distractors]
    asked_pages = set().union(*pages_of)
    excluded = set()
    if perfect == "exclusive":  # each distractor's whole sentence, and the page before it, whose neighbour it is
        for a, b in distractors:
            sentence = token_pages(method, text, (prompt.context.rfind(NEEDLE_START, 0, a) + offset, b + offset), page)
            excluded |= sentence | {min(sentence) - 1}
        excluded -= asked_pages
    with oracle(asked_pages, excluded) if perfect else nullcontext():
        pred = postprocess(method.generate(prompt, sample.max_new_tokens))
    retrievals = method.retrolm.last_cache.retrievals()
    if not retrievals:
        raise SystemExit("no decode-time retrieval was logged: the prompt fits without retrieval (raise --factors)")
    first = set(retrievals[0][1])
    any_step = set().union(*(set(pages) for _, pages in retrievals))
    context_pages = range(method.count_tokens(prompt.before) // page,
                          method.count_tokens(text[:offset + len(prompt.context)]) // page + 1)
    metric = metrics.string_match_all if TASKS[task].metric == "all" else metrics.string_match_part
    return {"id": sample.id, "score": 100 * metric(pred, sample.answers), "pred": pred, "answers": sample.answers,
            "asked_found_first": sum(p <= first for p in pages_of), "asked": len(pages_of),
            "asked_found_any": sum(p <= any_step for p in pages_of),
            "distractors_first": sum(p <= first for p in distractor_pages), "distractors": len(distractor_pages),
            "first_pages": page_kinds(first, asked_pages, set().union(*distractor_pages), context_pages)}


def summarize(rows: list[dict]) -> dict:
    def mean(values):
        return round(sum(values) / len(values), 1) if values else None

    full = [r for r in rows if r["asked_found_first"] == r["asked"]]
    return {"samples": len(rows), "score": mean([r["score"] for r in rows]),
            "asked_recall_first": mean([100 * r["asked_found_first"] / r["asked"] for r in rows]),
            "all_asked_first": mean([100.0 * (r in full) for r in rows]),
            "asked_recall_any": mean([100 * r["asked_found_any"] / r["asked"] for r in rows]),
            "distractors_attended": mean([r["distractors_first"] for r in rows]),
            "distractors": mean([r["distractors"] for r in rows]),
            "score_all_asked_no_distractor": mean([r["score"] for r in full if r["distractors_first"] == 0]),
            "n_all_asked_no_distractor": sum(r["distractors_first"] == 0 for r in full),
            "score_all_asked_with_distractor": mean([r["score"] for r in full if r["distractors_first"] > 0]),
            "n_all_asked_with_distractor": sum(r["distractors_first"] > 0 for r in full),
            "first_pages": " / ".join(str(mean([r["first_pages"][kind] for r in rows])) for kind in PAGE_KINDS)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="RetroLM checkpoint (default: the embedded default model)")
    parser.add_argument("--tasks", default="niah_multikey_1,vt")
    parser.add_argument("--factors", default="16,64", help="context lengths as multiples of the model's window")
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--device", default=None)
    parser.add_argument("--set", action="append", default=[], metavar="KNOB=VALUE", type=setting,
                        help="a RetroLMConfig knob and its JSON value for this run, e.g. lexical_weight=0 or "
                             "scorer='\"attention\"' (repeatable)")
    parser.add_argument("--oracle", choices=("asked", "exclusive"),
                        help="asked: the asked needles' pages outscore all others (retrieval made perfect); "
                             "exclusive: and the distractors' pages are never attended")
    parser.add_argument("--name", default="ruler_pages", help="file names under --out")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    args = parser.parse_args()
    knobs = dict(args.set)
    if args.oracle:  # the oracle's bonus is set per sample from Python: the eager decode reads it at every refresh
        if knobs.setdefault("decode_mode", "eager") != "eager":
            raise SystemExit("--oracle runs with decode_mode=eager (a captured decode step would not see its bonus)")
    method = build_method(MethodOptions(method="retrolm", model=args.model, device=args.device, retrolm=knobs))
    if args.oracle and not method.retrolm.config.lexical_weight:
        raise SystemExit("--oracle goes through the lexical scores: run it with lexical_weight > 0")
    window = method.retrolm.base_model.config.max_position_embeddings
    record = {"settings": vars(args), "knobs": knobs, "window": window, "environment": environment(), "cells": {}}
    lines = []
    columns = ["task", "length", "samples", "score", "asked_recall_first", "all_asked_first", "asked_recall_any",
               "distractors_attended", "distractors", "score_all_asked_no_distractor", "n_all_asked_no_distractor",
               "score_all_asked_with_distractor", "n_all_asked_with_distractor", "first_pages"]

    def write() -> None:  # after every cell, so a run stopped by a time limit keeps the cells it finished
        write_json(os.path.join(args.out, f"{args.name}.json"), record)
        write_text(os.path.join(args.out, f"{args.name}.md"),
                   f"RULER needles RetroLM attends to (knobs: {knobs or 'as shipped'}"
                   f"{f'; oracle retrieval: {args.oracle}' if args.oracle else ''}; seed {args.seed}; "
                   f"window {window}).\n\n" + markdown_table(lines, columns) + "\n\n"
                   "asked_recall_first: % of asked needles attended at the first answer token; all_asked_first: % "
                   "of samples whose every asked needle's pages were attended then; asked_recall_any: % of asked needles attended at some answer token; distractors_attended: "
                   "mean distractor needles attended at the first answer token (of `distractors`); score_all_asked_*: "
                   "RULER's score over the samples with every asked needle attended, without / with a distractor "
                   "beside it (n_*: how many samples); first_pages: mean pages attended at the first answer "
                   f"token per sample that are {' / '.join(PAGE_KINDS)} (bench/ruler_pages.py).\n")

    for task in args.tasks.split(","):
        generator = Generator(task, method.count_tokens)
        for factor in (int(f) for f in args.factors.split(",")):
            started = time.perf_counter()
            rows = [run_sample(method, to_sample(generator.sample(factor * window, args.seed, index=i), i,
                                                 TASKS[task].tokens_to_generate), task, args.oracle)
                    for i in range(args.samples)]
            cell = summarize(rows)
            record["cells"][f"{task}/{factor}x"] = {**cell, "seconds": round(time.perf_counter() - started, 1),
                                                    "rows": rows}
            lines.append({"task": task, "length": f"{factor}x", **cell})
            print(f"{task} {factor}x: {cell}", flush=True)
            write()


if __name__ == "__main__":
    main()
