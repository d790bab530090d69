"""How long a stretch of the question each kind of page repeats: what `lexical_echo_tokens` is set against.

    python bench/echo_runs.py --factors 16,64 --samples 10      # writes echo_runs.json and .md under --out

For each prompt (RULER tasks through the eval harness; held-out prose with the test and validation needle formats,
bench/heldout_prose.py) the question window is the last `lexical_query_pages` pages of the prompt, as the lexical
index judges it, and a page's run is the longest stretch of consecutive window tokens whose every n-gram the page or
a neighbour holds (retrolm/lexical.py, echoes), counted in plain Python sets (`lexical.reference_repeated_runs`).
Reported per kind of judged page (the pages before the one before the window): the needle's pages (RULER's asked
needles, vt's chain statements, the held-out value's page), the pages before the context (vt's one-shot example is
there), and all other pages.
The sealed needle formats are not measured here: they are for final reports, not for setting knobs.
"""
from __future__ import annotations

import argparse
import os
import random
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.common import environment, markdown_table, write_json, write_text  # noqa: E402
from bench.heldout_prose import NEEDLE_SETS  # noqa: E402
from bench.ruler_pages import needle_spans, token_pages  # noqa: E402
from eval.methods import MethodOptions, build_method  # noqa: E402
from eval.ruler import to_sample  # noqa: E402
from eval.ruler_tasks import Generator  # noqa: E402
from retrolm.lexical import reference_repeated_runs  # noqa: E402
from retrolm.training.needle_recall import build_sample, reference_topics  # noqa: E402

KINDS = ("needle", "before_context", "other")


def page_runs(ids: list[int], page_size: int, ngram: int, window_tokens: int) -> dict[int, int]:
    """{judged page: its run in tokens} for the question window ending where `ids` ends (0: none held)."""
    start = max(len(ids) - window_tokens, 0)
    judged = max(start // page_size - 1, 0)
    return dict(enumerate(reference_repeated_runs(ids, ids[start:], judged, page_size, ngram)))


def by_kind(runs: dict[int, int], needle: set[int], before_context: int) -> dict[str, int]:
    """The longest run among each KINDS kind of page."""
    out = dict.fromkeys(KINDS, 0)
    for page, run in runs.items():
        kind = "needle" if page in needle else "before_context" if page < before_context else "other"
        out[kind] = max(out[kind], run)
    return out


def ruler_rows(method, task: str, factor: int, window: int, samples: int, seed: int, config) -> list[dict]:
    generator = Generator(task, method.count_tokens)
    P = config.page_size
    rows = []
    for i in range(samples):
        sample = to_sample(generator.sample(window * factor, seed, index=i), i, 32)
        prompt, text = sample.prompt, sample.prompt.text
        offset = len(prompt.before)
        asked, _ = needle_spans(task, prompt.context, sample.answers)
        needle = set().union(*(token_pages(method, text, (a + offset, b + offset), P) for a, b in asked))
        runs = page_runs(method.encode(text), P, config.lexical_ngram, config.lexical_query_pages * P)
        rows.append(by_kind(runs, needle, method.count_tokens(prompt.before) // P))
    return rows


def heldout_rows(model, needles: str, factor: int, window: int, samples: int, seed: int) -> list[dict]:
    make, formats = NEEDLE_SETS[needles]
    topics, config, rows = reference_topics(), model.config, []
    P = config.page_size
    for i in range(samples):
        rng = random.Random(f"echo-runs/{needles}/{seed}/{factor}/{i}")
        sample = build_sample(model.tokenizer, rng, factor * window, topics, make(rng, i % formats))
        first, last = sample.value_tokens
        runs = page_runs(sample.ids[0].tolist(), P, config.lexical_ngram, config.lexical_query_pages * P)
        rows.append(by_kind(runs, set(range(first // P, last // P + 1)), 0))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="RetroLM checkpoint (default: the embedded default model)")
    parser.add_argument("--tasks", default="vt,niah_single_1,niah_single_2,niah_single_3,niah_multikey_1,"
                                           "niah_multivalue")
    parser.add_argument("--needles", default="test,validation", help="held-out needle sets (not sealed)")
    parser.add_argument("--factors", default="16,64")
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "echo_run"))
    args = parser.parse_args()
    if "sealed" in args.needles.split(","):
        raise SystemExit("the sealed needle formats are for final reports, not for setting knobs")
    method = build_method(MethodOptions(method="retrolm", model=args.model, device="cpu"))
    model, window = method.retrolm, method.retrolm.base_model.config.max_position_embeddings
    cells, lines = {}, []
    for factor in (int(f) for f in args.factors.split(",")):
        sets = [(f"ruler/{t}", lambda t=t: ruler_rows(method, t, factor, window, args.samples, args.seed,
                                                      model.config)) for t in args.tasks.split(",") if t]
        sets += [(f"heldout/{n}", lambda n=n: heldout_rows(model, n, factor, window, args.samples, args.seed))
                 for n in args.needles.split(",") if n]
        for name, rows_of in sets:
            rows = rows_of()
            cells[f"{name}/{factor}x"] = rows
            lines.append({"set": name, "length": f"{factor}x", "samples": len(rows),
                          **{f"max_{kind}": max(r[kind] for r in rows) for kind in KINDS}})
            print(lines[-1], flush=True)
    write_json(os.path.join(args.out, "echo_runs.json"),
               {"settings": vars(args), "environment": environment(), "cells": cells})
    write_text(os.path.join(args.out, "echo_runs.md"),
               "Longest stretch of the question window (tokens) a page repeats with its neighbours, the most over "
               f"the samples, per kind of judged page (seed {args.seed}; bench/echo_runs.py). needle: RULER's "
               "asked needles (vt: the chain's statements) or the held-out value's page; before_context: the "
               "pages before RULER's context (vt's one-shot example); other: the rest.\n\n"
               + markdown_table(lines, list(lines[0])) + "\n")


if __name__ == "__main__":
    main()
