"""How often stage 1's labels point at the right page: the LLM's attention label against copy labels.

    python bench/label_accuracy.py --samples 12 --out bench/results/label_accuracy

Stage 1 teaches the retriever to rank pages as its label does (retrolm/training/supervision.py), so a label
that misses the page a question needs teaches the miss. Here the right page is known: a needle sentence hidden
in held-out prose (bench/heldout_prose.py's haystacks), its question at the end and its value written after
the answer's start, as a training document would hold it. For the row of the page where the value is answered
(page m, whose label ranks the pages for page m-1's query) a label is right when every page holding the
needle's value is among its top-k candidates (k = the default model's top_k). Labels compared, all on the
default model's base LM (the frozen LLM of stage 1):
- attention: the far-focused attention mass stage 1 uses by default;
- copy n=8 and copy n=4: copy labels (`copy_labels`) with 8- and 4-token n-grams;
- mixed 0.5: `mixed_labels` of attention and copy n=8, half each (`copy_label_weight: 0.5`).
Needle sets: `ruler` (RULER's own needle sentence, the format the default model trained on), `validation`
(stage 1's validation formats) and `test` (bench/heldout_prose.py's five formats), none of them in training
as held-out prose. Writes label_accuracy.json and .md under --out.
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.common import environment, markdown_table, write_json, write_text  # noqa: E402
from bench.heldout_prose import make_needle  # noqa: E402
from eval.ruler_tasks import random_key_word  # noqa: E402
from retrolm.config import RetroLMConfig  # noqa: E402
from retrolm.model import RetroLM, default_model_path  # noqa: E402
from retrolm.retriever import eligible_pages  # noqa: E402
from retrolm.training.needle_recall import (VALIDATION_FORMATS, Needle, build_sample, reference_topics,  # noqa: E402
                                            validation_needle, value_pages)
from retrolm.training.supervision import copy_labels, mixed_labels, page_attention_mass, top_pages  # noqa: E402


def ruler_needle(rng: random.Random, form: int) -> Needle:
    """RULER's needle sentence and question (the default model's training format), in held-out prose."""
    key, value = random_key_word(rng), str(rng.randint(10 ** 6, 10 ** 7 - 1))
    return Needle(f"One of the special magic numbers for {key} is: {value}.",
                  f"What is the special magic number for {key} mentioned in the provided text?",
                  f"The special magic number for {key} mentioned in the provided text is", value)


NEEDLE_SETS = {"ruler": (ruler_needle, 1), "validation": (validation_needle, VALIDATION_FORMATS),
               "test": (make_needle, 5)}


def labels_of(model: RetroLM, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every compared label [N, N] of ids [1, N*P] (row m: the pages page m needs)."""
    config = model.config
    attention = page_attention_mass(model.base_model, ids, config.page_size, config.sink_pages,
                                    config.local_pages).focused_mass()
    pages = attention.shape[0]
    _, candidates = eligible_pages(torch.arange(pages), pages, config.sink_pages, config.local_pages)
    copies = {n: copy_labels(ids[0], config.page_size, n) for n in (8, 4)}
    return {"attention": attention, "copy n=8": copies[8], "copy n=4": copies[4],
            "mixed 0.5": mixed_labels(attention, copies[8], candidates, 0.5)}


def measure(model: RetroLM, needles: str, samples: int, tokens: int, seed: int, topics: list[str]) -> dict:
    make, formats = NEEDLE_SETS[needles]
    config = model.config
    P, k = config.page_size, config.top_k
    hits, rows = {}, []
    for i in range(samples):
        rng = random.Random(seed * 1_000_003 + i)
        needle = make(rng, i % formats)
        sample = build_sample(model.tokenizer, rng, tokens - len(needle.value) - P, topics, needle)
        answer = model.tokenizer(" " + needle.value + ".", add_special_tokens=False, return_tensors="pt").input_ids
        ids = torch.cat([sample.ids, answer], dim=1)
        answer_page = (sample.ids.shape[1] + 1) // P  # the page holding the value's first token (after a space)
        newline = model.tokenizer("\n", add_special_tokens=False).input_ids[0]
        ids = torch.cat([ids, torch.full((1, -ids.shape[1] % P), newline)], dim=1)  # whole pages
        wanted = value_pages(sample, P)
        pages = ids.shape[1] // P
        _, candidates = eligible_pages(torch.arange(pages), pages, config.sink_pages, config.local_pages)
        if not all(bool(candidates[answer_page, j]) for j in wanted):
            continue  # the needle is in the sink or local pages: no retrieval needed
        row = {"format": i % formats, "tokens": ids.shape[1], "needle_pages": sorted(wanted), "answer_page": answer_page}
        for name, label in labels_of(model, ids).items():
            top = top_pages(label[answer_page][None], candidates[answer_page][None], k)[0]
            row[name] = all(bool(top[j]) for j in wanted)
            hits[name] = hits.get(name, 0) + int(row[name])
        rows.append(row)
    counted = len(rows)
    return {"samples": counted, "right": {name: 100 * n / counted for name, n in hits.items()} if counted else {},
            "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="a RetroLM model whose base is labelled (default: the "
                                                       "embedded default model)")
    parser.add_argument("--samples", type=int, default=12, help="samples per needle set")
    parser.add_argument("--tokens", type=int, default=8192, help="document length (stage 1's sequence length)")
    parser.add_argument("--needles", default="ruler,validation,test")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "label_accuracy"))
    args = parser.parse_args()
    shipped = args.model or default_model_path()
    pages = RetroLMConfig.load(shipped)  # the shipped page size, top-k, sink and local pages
    model = RetroLM.from_pretrained(os.path.join(shipped, "base"), init_retriever=True, page_size=pages.page_size,
                                   top_k=pages.top_k, sink_pages=pages.sink_pages, local_pages=pages.local_pages)
    model.eval()
    topics = reference_topics()
    started = time.perf_counter()
    results = {}
    for needles in args.needles.split(","):
        results[needles] = measure(model, needles, args.samples, args.tokens, args.seed, topics)
        print(needles, results[needles]["samples"], results[needles]["right"], flush=True)
    names = list(next(r["right"] for r in results.values() if r["right"]))
    table = markdown_table([{"needles": needles, "samples": r["samples"],
                             **{n: f"{r['right'].get(n, 0):.0f}" for n in names}} for needles, r in results.items()],
                           ["needles", "samples"] + names)
    record = {"tokens": args.tokens, "top_k": model.config.top_k, "page_size": model.config.page_size,
              "seed": args.seed, "seconds": round(time.perf_counter() - started, 1), "environment": environment(),
              "results": results}
    os.makedirs(args.out, exist_ok=True)
    write_json(os.path.join(args.out, "label_accuracy.json"), record)
    write_text(os.path.join(args.out, "label_accuracy.md"), (
        f"# Which page stage 1's labels point at ({args.tokens}-token documents, top-{model.config.top_k} of each "
        f"label, {args.samples} samples per needle set)\n\n% of samples whose answer page's label ranks every page "
        f"holding the needle's value among its top {model.config.top_k} candidates "
        f"(`python bench/label_accuracy.py`):\n\n{table}\n"))
    print(table)


if __name__ == "__main__":
    main()
