"""Which decode query finds a needle's page: the trained retriever's view of the last page-sized window before the
answer (what RetroLM retrieves with) against views of earlier windows of the prompt, scored offline.

    python bench/query_windows.py --factors 16,64 --samples 60 --needles validation --out bench/results/query_windows

The retriever's query for the answer's first token is its view of the `page_size` tokens before it. With the
default model (64 byte-level tokens a page) that window holds the end of the question and the answer's start,
and may miss the question's key ("...close the year in Priya's ledger?\nAnswer: It closed the year at"). This
script asks whether scoring pages with more of the prompt would find the needle's page more often, before any
change to decoding is built:
- last: the window ending at the last prompt token (RetroLM today; `--check N` verifies on N short samples that
  the offline selection equals the pages the model retrieves in `generate`);
- previous: the window one page earlier;
- question: the window ending where the question ends (before "\\nAnswer:");
- max(a, b) / sum(a, b): a page's score is the larger / the sum of its two scores.
Pages are chosen as decoding chooses them (sink + local + top-k, each retrieved page bringing its neighbours:
`retriever.select_pages`); recall: every page holding the value is chosen. No LLM forward is needed, so a cell
of 60 samples at 64x takes seconds on a CPU. Haystacks and needles are bench/heldout_prose.py's; choose with
`--needles validation`, report on `test`, and keep `sealed` for final reporting only.
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.common import environment, markdown_table, write_json, write_text  # noqa: E402
from bench.heldout_prose import NEEDLE_KINDS, NEEDLE_SETS  # noqa: E402
from retrolm.lexical import LexicalIndex  # noqa: E402
from retrolm.model import RetroLM, default_model_path  # noqa: E402
from retrolm.pager import window_bookmarks  # noqa: E402
from retrolm.retriever import eligible_pages, score_pages, select_pages  # noqa: E402
from retrolm.training.needle_recall import answer_pages, build_sample, reference_topics, value_pages  # noqa: E402

SINGLE = ("last", "previous", "question")
COMBINED = {"max(last, previous)": ("max", "last", "previous"), "sum(last, previous)": ("sum", "last", "previous"),
            "max(last, question)": ("max", "last", "question"), "sum(last, question)": ("sum", "last", "question")}


@torch.no_grad()
def bookmarks(model: RetroLM, ids: torch.Tensor, ends: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The retriever's (query, key) [W, heads, dim] of the windows of up to `page_size` tokens ending before
    `ends` [W] in `ids` [T]."""
    return window_bookmarks(ids, model.retriever, model.base_model.get_input_embeddings(), ends,
                            model.config.page_size)


def question_end(model: RetroLM, text: str, question: str) -> int:
    """Token count of `text` up to the end of its last occurrence of `question`."""
    cut = text.rindex(question) + len(question)
    return len(model.tokenizer(text[:cut]).input_ids)


def choose(model: RetroLM, scores: torch.Tensor, query_page: int) -> set[int]:
    """The pages decoding would attend to for one query page given `scores` [N] over pages 0..N-1."""
    c = model.config
    chosen = select_pages(scores[None], torch.tensor([query_page], device=scores.device), c.top_k, c.sink_pages,
                          c.local_pages, neighbors=c.neighbor_offsets)
    return {int(p) for p in chosen[0] if p >= 0}


def candidate_rank(model: RetroLM, scores: torch.Tensor, query_page: int, page: int) -> int | None:
    """1-based rank of `page` among the pages that compete for the top-k slots (None: it is a sink or local page,
    attended whatever the scores)."""
    c = model.config
    _, candidates = eligible_pages(torch.tensor([query_page], device=scores.device), scores.shape[0], c.sink_pages,
                                   c.local_pages)
    if not candidates[0, page]:
        return None
    return int((scores[candidates[0]] > scores[page]).sum()) + 1


def sample_scores(model: RetroLM, ids: torch.Tensor, text: str, question: str,
                  lexical_weights: tuple[float, ...] = ()) -> tuple[dict, int]:
    """Per query variant, the scores [N] of every full page before the answer's query page; and that page.
    lexical_weights: also the lexical scores alone and added to `last` at each weight (retrolm/lexical.py)."""
    P = model.config.page_size
    last = ids.shape[0] - 1  # the position of the decode step that yields the answer's first token
    query_page = last // P
    page_ends = torch.arange(1, query_page + 1) * P
    ends = torch.tensor([last, max(last - P, 1), question_end(model, text, question)])
    queries, _ = bookmarks(model, ids, ends)
    _, keys = bookmarks(model, ids, page_ends)
    single = dict(zip(SINGLE, score_pages(queries, keys)))
    scores = dict(single)
    for name, (how, a, b) in COMBINED.items():
        scores[name] = torch.maximum(single[a], single[b]) if how == "max" else single[a] + single[b]
    if lexical_weights:
        c = model.config
        index = LexicalIndex(c.lexical_ngram, c.lexical_max_pages, P, c.lexical_query_pages * P)
        index.update(ids, query_page)
        lexical = index.scores(ids, torch.tensor([last]), torch.tensor([query_page]), query_page)[0]
        scores["lexical"] = lexical
        for weight in lexical_weights:
            scores[lexical_name(weight)] = single["last"] + weight * lexical
    return scores, query_page


def lexical_name(weight: float) -> str:
    return f"last + {weight:g} lexical"


@torch.no_grad()
def run_cell(model: RetroLM, factor: int, window: int, samples: int, seed: int, topics: list[str],
             needles: str, check: int = 0, lexical_weights: tuple[float, ...] = ()) -> dict:
    """Recall and needle ranks of every query variant over `samples` haystacks of `factor` windows; with `check`,
    the first `check` samples also run `generate` and the model's own pages must equal the offline `last` (and,
    with the model's lexical_weight set to each of `lexical_weights`, the offline `last + w lexical`)."""
    make, formats = NEEDLE_SETS[needles]
    P = model.config.page_size
    rows, mismatches = [], 0
    for i in range(samples):
        rng = random.Random(seed * 1_000_003 + factor * 1009 + i)  # bench/heldout_prose.py's haystacks and needles
        needle = make(rng, i % formats)
        sample = build_sample(model.tokenizer, rng, factor * window, topics, needle)
        ids = sample.ids[0]
        text = model.tokenizer.decode(ids, skip_special_tokens=True)
        scores, query_page = sample_scores(model, ids, text, needle.question, lexical_weights)
        needle_pages = value_pages(sample, P)
        row = {"format": i % formats, "needle_pages": sorted(needle_pages), "recalled": {}, "rank": {}}
        for name, s in scores.items():
            row["recalled"][name] = needle_pages <= choose(model, s, query_page)
            row["rank"][name] = candidate_rank(model, s, query_page, min(needle_pages))
        if i < check:
            try:
                for weight, name in [(0.0, "last")] + [(w, lexical_name(w)) for w in lexical_weights]:
                    model.config.lexical_weight = weight
                    model.generate(input_ids=sample.ids.to(model.device), max_new_tokens=1, do_sample=False,
                                   progress=False)
                    mismatches += answer_pages(model, ids.shape[0]) != choose(model, scores[name], query_page)
            finally:
                model.config.lexical_weight = 0.0
        rows.append(row)
    names = list(rows[0]["recalled"])
    recall = {n: 100 * sum(r["recalled"][n] for r in rows) / samples for n in names}
    ranks = {n: [r["rank"][n] for r in rows if r["rank"][n] is not None] for n in names}
    median = {n: statistics.median(v) if v else None for n, v in ranks.items()}
    return {"recall": recall, "median_rank": median, "checked": min(check, samples), "mismatches": mismatches,
            "rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="RetroLM checkpoint with a trained retriever (default: the "
                                                      "embedded default model)")
    parser.add_argument("--factors", default="16,64", help="context lengths as multiples of the window")
    parser.add_argument("--samples", type=int, default=60, help="samples per cell (formats take turns)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--needles", default="validation", choices=sorted(NEEDLE_SETS),
                        help="needle formats (bench/heldout_prose.py); choose variants on validation")
    parser.add_argument("--check", type=int, default=2, help="samples per cell also run through generate, whose "
                                                             "retrieved pages must equal the offline 'last' ones")
    parser.add_argument("--lexical-weights", default="", help="comma-separated weights: also score pages by the "
                                                           "lexical scores alone and added to 'last' at each weight")
    parser.add_argument("--lexical-query-pages", type=int, default=2,
                        help="lexical_query_pages: pages of tokens before the query that lexical scores read")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "query_windows"))
    args = parser.parse_args(argv)
    model = RetroLM.from_pretrained(args.model, device=args.device, scorer="trained", lexical_weight=0.0,
                                    lexical_query_pages=args.lexical_query_pages, decode_mode="eager")
    lexical_weights = tuple(float(w) for w in args.lexical_weights.split(",") if w)
    window = model.base_model.config.max_position_embeddings
    topics = reference_topics()
    cells = {}
    for factor in (int(x) for x in args.factors.split(",")):
        cell = run_cell(model, factor, window, args.samples, args.seed, topics, args.needles, args.check,
                        lexical_weights)
        if cell["mismatches"]:
            raise SystemExit(f"{factor}x: an offline selection differs from generate's in "
                             f"{cell['mismatches']} of {cell['checked']} samples; the comparison would be unfair")
        cells[f"{factor}x"] = cell
        print(f"{factor}x: " + ", ".join(f"{n} {r:.0f}" for n, r in cell["recall"].items()), flush=True)
    os.makedirs(args.out, exist_ok=True)
    lexical = f"_lexical_q{args.lexical_query_pages}" if lexical_weights else ""
    prefix = os.path.join(args.out, f"query_windows_{args.needles}{lexical}")
    record = {"model": args.model or default_model_path(), "window": window, "samples": args.samples,
              "seed": args.seed, "needles": args.needles, "device": args.device, "lexical": {
                  "weights": lexical_weights, "ngram": model.config.lexical_ngram,
                  "max_pages": model.config.lexical_max_pages, "query_pages": model.config.lexical_query_pages},
              "environment": environment(),
              "cells": cells}
    write_json(prefix + ".json", record)
    table = [{"query": name, **{f"{f} recall": f"{c['recall'][name]:.0f}" for f, c in cells.items()},
              **{f"{f} median rank": str(c["median_rank"][name]) for f, c in cells.items()}}
             for name in next(iter(cells.values()))["recall"]]
    columns = ["query"] + [f"{f} recall" for f in cells] + [f"{f} median rank" for f in cells]
    text = (f"# Decode query windows ({args.samples} samples per cell, {NEEDLE_KINDS[args.needles]}, "
            f"{args.device})\n\nNeedle-page recall (every value page among sink + local + top-k with neighbours) "
            "and the needle page's median rank among the top-k candidates, per query the pages are scored with. "
            f"The offline 'last' selection{' and each last + w lexical one' if lexical_weights else ''} matched "
            f"generate's on {sum(c['checked'] for c in cells.values())} checked samples.\n\n"
            + markdown_table(table, columns))
    write_text(prefix + ".md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
