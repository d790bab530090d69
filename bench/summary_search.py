"""The training-free store's approximate search (`index="ivf"`: a shortlist by summed bound in a faiss IVF index,
ranked by the exact rule; retrolm/store_search.py) against its exact search, on the same store and questions.

    python bench/summary_search.py --docs 1000 --questions 40 --store /tmp/store --out bench/results/collection

The store holds bench/collection_store.py's documents with their facts taken out; each question adds its document
with the fact (bench/collection_qa.py `--facts one`: one answerable document among distractors), both indexes are
rebuilt from the last one's rows (collection.store_index), and the fact-free version is put back after. The
question prompt of collection_qa.py is searched for the page budget (sink + local + top_k pages) exactly and with
each (candidates, nprobe, sample); reported: recall of the exact search's pages, how often a needle page is among
the pages found, the needle page's rank by summed bound alone (the shortlist's criterion), milliseconds per search
and seconds per index build.
`--store` keeps the store (an add is resumable; a build of 1,000 documents takes ~15-30 min on a 2-core CPU).
Writes summary_search_<docs>[_<text>].json / .md under --out.
"""
from __future__ import annotations

import argparse
import itertools
import os
import random
import shutil
import sys
import tempfile
import time

import torch
from tqdm.auto import tqdm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.collection_qa import ids_of, without_fact  # noqa: E402
from bench.collection_store import TEXTS, answer_template, collection, needle_pages, question  # noqa: E402
from bench.common import write_result_files  # noqa: E402
from retrolm.collection import attention_scaling, question_layer_queries, store_index  # noqa: E402
from retrolm.model import RetroLM  # noqa: E402
from retrolm.page_store import PageStore  # noqa: E402
from retrolm.store_search import DEFAULT_DENOMINATOR_SAMPLE, flat_summaries, summed_bound_query  # noqa: E402


def timed(search) -> tuple[list, float]:
    started = time.perf_counter()
    found = search()
    return found, 1000 * (time.perf_counter() - started)


def rank_of(needle: set, ranked: list[tuple[str, int, float]]) -> int | None:
    """1-based rank of the best needle page in `ranked`, None when none is there."""
    return next((i + 1 for i, (doc_id, page, _) in enumerate(ranked) if (doc_id, page) in needle), None)


def measure(model, store: PageStore, asked: list[str], docs: dict, fact_free: dict, facts: dict,
            configs: list[tuple[int, int, int]], nlist: int | None) -> tuple[list[dict], dict]:
    """Per question, the exact search's needle rank and time, and per (candidates, nprobe, sample) config the IVF
    search's recall, needle and time; and the setup (pages, budget, index sizes, mean build seconds)."""
    budget = model.config.sink_pages + model.config.local_pages + model.config.top_k
    scaling = attention_scaling(model)
    per_question, builds = [], {"exact_build_s": [], "ivf_build_s": []}
    for doc_id in tqdm(asked, desc="questions", unit="question"):
        fact, offset = facts[doc_id]
        store.add({doc_id: docs[doc_id]}, progress=False)
        (exact, _), build_exact_ms = timed(lambda: store_index(store, "exact"))
        (ivf, _), build_ivf_ms = timed(lambda: store_index(store, "ivf", nlist))
        builds["exact_build_s"].append(build_exact_ms / 1000)
        builds["ivf_build_s"].append(build_ivf_ms / 1000)
        needle = needle_pages(doc_id, fact, offset, model.config.page_size)
        prompt = torch.tensor(ids_of(model, answer_template(fact).replace("{question}", question(fact))))
        queries = question_layer_queries(model, prompt)
        ranked = exact.search(queries, len(exact.rows), scaling)
        _, exact_ms = timed(lambda: exact.search(queries, budget, scaling))
        wanted = {(d, p) for d, p, _ in ranked[:budget]}
        coarse = torch.cat([flat_summaries(exact.block(d)) for d in store.documents()]) @ summed_bound_query(
            queries, ivf.kv_heads, scaling)
        needle_rows = [i for i, row in enumerate(exact.rows) if row in needle]
        row = {"doc": doc_id, "exact_needle_rank": rank_of(needle, ranked), "exact_ms": exact_ms,
               "coarse_needle_rank": 1 + int((coarse > coarse[needle_rows].max()).sum())}
        for shortlist, nprobe, sample in configs:
            ivf.candidates, ivf.sample = shortlist, sample
            found, ms = timed(lambda: ivf.search(queries, budget, scaling, nprobe=nprobe))
            hits = len(wanted & {(d, p) for d, p, _ in found})
            row[f"{shortlist}/{nprobe}/{sample}"] = {"recall": hits / len(wanted),
                                                     "needle": rank_of(needle, found) is not None, "ms": ms}
        per_question.append(row)
        store.add({doc_id: fact_free[doc_id]}, progress=False)  # its shard is kept: nothing encoded again
    setup = {"pages": len(exact.rows), "budget": budget, "nlist": ivf.index.nlist, "vector_dim": ivf.index.dim,
             **{name: round(sum(times) / len(times), 2) for name, times in builds.items()}}
    return per_question, setup


def summarise(per_question: list[dict], configs: list[tuple[int, int, int]], budget: int) -> list[dict]:
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    coarse = sorted(r["coarse_needle_rank"] for r in per_question)
    rows = [{"search": "exact", "candidates": "all", "nprobe": "-", "sample": "-", "recall": 1.0,
             "needle_found": round(100 * mean([(r["exact_needle_rank"] or budget + 1) <= budget
                                               for r in per_question]), 1),
             "ms_per_search": round(mean([r["exact_ms"] for r in per_question]), 1),
             "median_coarse_needle_rank": coarse[len(coarse) // 2]}]
    for shortlist, nprobe, sample in configs:
        cells = [r[f"{shortlist}/{nprobe}/{sample}"] for r in per_question]
        rows.append({"search": "ivf", "candidates": shortlist, "nprobe": nprobe, "sample": sample,
                     "recall": round(mean([c["recall"] for c in cells]), 4),
                     "needle_found": round(100 * mean([c["needle"] for c in cells]), 1),
                     "ms_per_search": round(mean([c["ms"] for c in cells]), 1), "median_coarse_needle_rank": ""})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="RetroLM checkpoint (default: the embedded default model)")
    parser.add_argument("--docs", type=int, default=1000)
    parser.add_argument("--doc-tokens", type=int, default=1024, help="characters = tokens for the default model")
    parser.add_argument("--questions", type=int, default=40)
    parser.add_argument("--text", default="reference", choices=TEXTS)
    parser.add_argument("--candidates", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--nprobe", type=int, nargs="+", default=[16, 64],
                        help="lists probed (the index's nlist or more: every list, a shortlist by exact summed bound)")
    parser.add_argument("--sample", type=int, nargs="+", default=[0, DEFAULT_DENOMINATOR_SAMPLE],
                        help="pages sampled from those left out of the shortlist to stand for them in the softmax")
    parser.add_argument("--nlist", type=int, default=None, help="IVF lists (default: 4 sqrt(pages))")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--store", default=None, help="store directory, kept (default: a temporary one, removed)")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "collection"))
    args = parser.parse_args(argv)
    model = RetroLM.from_pretrained(args.model, device="cpu", scorer="attention")
    docs, facts = collection(args.docs, args.doc_tokens, args.seed, args.text)
    asked = random.Random(args.seed + 1).sample(sorted(docs), min(args.questions, len(docs)))
    path = args.store or tempfile.mkdtemp(prefix="retrolm-store-")
    try:
        store = PageStore.open(path, model, create=True)
        fact_free = {d: without_fact(text, *facts[d]) for d, text in docs.items()}
        store.add(fact_free)
        configs = list(itertools.product(args.candidates, args.nprobe, args.sample))
        per_question, setup = measure(model, store, asked, docs, fact_free, facts, configs, args.nlist)
    finally:
        if args.store is None:
            shutil.rmtree(path, ignore_errors=True)
    summary = summarise(per_question, configs, setup["budget"])
    name = f"summary_search_{args.docs}" + ("" if args.text == "essay" else f"_{args.text}")
    table = write_result_files(
        args.out, name, {"args": vars(args), "setup": setup, "questions": per_question}, summary,
        f"Training-free store search: exact against IVF shortlists, {len(asked)} questions, {args.docs} documents of "
        f"{args.text} text, the asked one holding its fact ({setup['pages']} pages), {args.model or 'default model'}, "
        f"CPU ({torch.get_num_threads()} threads)",
        f"Setup: {setup}. recall: the exact search's best {setup['budget']} pages among those found; needle_found: a "
        "needle page among them (%); median_coarse_needle_rank: the needle page's rank by summed bound over every "
        "page, the shortlist's criterion.")
    print(table, flush=True)


if __name__ == "__main__":
    main()
