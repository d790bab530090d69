"""Retrieval on text and needle formats the default model never trained on: natural-prose haystacks, 1x-64x.

    python bench/heldout_prose.py --device cuda --samples 40 --out bench/results

The default model trained on the standard library's docstrings, essay-like filler and RULER's templates
(train/corpus.py). Here everything is outside that:
- haystacks: Python's language reference as `pydoc` shows it (`pydoc_data.topics`, PSF License 2.0), a kind of
  text kept out of training, from a random topic onwards;
- needles: five sentence formats unlike RULER's ("The pass code for the amber orchard locker is 4821907."),
  with values of several kinds (digits, words, letter-digit codes), asked with their own questions;
  `--needles validation` uses stage 1's validation formats instead (retrolm/training/needle_recall.py: what
  `keep="needle_recall"` chooses a retriever by), to compare the two sets; `--needles sealed` uses the six
  sealed formats of bench/sealed_needles.py, used only for final reporting: never look at its failures to shape
  training;
- the prompt: the one `retrolm generate` builds (text, the question, "Answer:") plus the start of the answer.
For each context length (a multiple of the model's window) and page scorer, a sample hides one needle at a
random depth and reports:
- needle-page recall: every page holding the value is among those retrieved for the answer (the first decode
  step's retrieval; under the attention scorer, the pages most layers chose);
- accuracy: the value appears in the first generated tokens.
Writes heldout_prose.json, .md and .png under --out (heldout_prose_validation.* with --needles validation,
heldout_prose_sealed.* with --needles sealed).
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import time

import torch
from transformers import LogitsProcessorList

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.common import environment, markdown_table, write_json, write_text  # noqa: E402
from bench.default_model_quality import plot  # noqa: E402
from bench.sealed_needles import SEALED_FORMATS, sealed_needle  # noqa: E402
from retrolm.model import RetroLM, default_model_path  # noqa: E402
from retrolm.training.needle_recall import (VALIDATION_FORMATS, Needle, answer_pages, build_sample,  # noqa: E402
                                            reference_topics, validation_needle, value_pages)

ADJECTIVES = ("amber", "brisk", "hollow", "crimson", "frozen", "golden", "quiet", "rapid", "silver", "velvet")
NOUNS = ("orchard", "harbor", "lantern", "meadow", "compass", "falcon", "ledger", "canyon", "saddle", "tunnel")
NAMES = ("Maren", "Tobias", "Ilse", "Rafael", "Odette", "Yusuf", "Greta", "Anselm", "Priya", "Konrad")
WORDS = ("pelican", "juniper", "tangerine", "obsidian", "marigold", "sapphire", "walnut", "cobalt", "thistle", "quartz")


def _digits(rng: random.Random, n: int) -> str:
    return str(rng.randint(10 ** (n - 1), 10 ** n - 1))


def _code(rng: random.Random) -> str:
    return rng.choice("BCDFGHJKLMNPRSTVWXZ") + rng.choice("BCDFGHJKLMNPRSTVWXZ") + "-" + _digits(rng, 4)


def make_needle(rng: random.Random, form: int) -> Needle:
    """One needle of format `form` (0-4), with its question and value."""
    place = f"{rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}"
    name = rng.choice(NAMES)
    if form == 0:
        value = _digits(rng, 7)
        stated = f"the pass code for the {place} locker is"
        return Needle(f"Remember that {stated} {value}.", f"What is the pass code for the {place} locker?",
                      stated[0].upper() + stated[1:], value)
    if form == 1:
        value = rng.choice(WORDS)
        return Needle(f"{name} hid the spare key of the {place} cottage under a {value} pot.",
                      f"Under which pot did {name} hide the spare key of the {place} cottage?",
                      f"{name} hid it under a", value)
    if form == 2:
        value = _code(rng)
        return Needle(f"Shipment for the {place} depot carries the tracking label {value}.",
                      f"Which tracking label does the shipment for the {place} depot carry?",
                      "Its tracking label is", value)
    if form == 3:
        value = _digits(rng, 4)
        return Needle(f"In {name}'s ledger, the {place} account closed the year at {value} crowns.",
                      f"At how many crowns did the {place} account close the year in {name}'s ledger?",
                      "It closed the year at", value)
    value = f"{rng.choice(WORDS)} {_digits(rng, 3)}"
    return Needle(f"The password of the {place} server was changed to {value} on Monday.",
                  f"What was the password of the {place} server changed to?",
                  "It was changed to", value)


FORMATS = 5
# --needles: the test formats above, stage 1's validation needles (retrolm/training/needle_recall.py) or the sealed
# formats (bench/sealed_needles.py), kept for final reporting so that no training choice is fitted to them
NEEDLE_SETS = {"test": (make_needle, FORMATS), "validation": (validation_needle, VALIDATION_FORMATS),
               "sealed": (sealed_needle, SEALED_FORMATS)}
NEEDLE_KINDS = {"test": "five test formats",
                "validation": "stage 1's three validation formats (retrolm/training/needle_recall.py)",
                "sealed": "six sealed formats (bench/sealed_needles.py), for final reporting only"}


@torch.no_grad()
def run_cell(model: RetroLM, factor: int, window: int, samples: int, seed: int, topics: list[str],
             needles: str = "test", reader=None) -> dict:
    """reader: None (the model's own answers), or a callable given each sample's cache that returns a
    `transformers` LogitsProcessor to answer through (bench/copy_reader_ceiling.py)."""
    make, formats = NEEDLE_SETS[needles]
    P = model.config.page_size
    rows = []
    for i in range(samples):
        rng = random.Random(seed * 1_000_003 + factor * 1009 + i)  # same haystacks and needles for every scorer
        needle = make(rng, i % formats)
        sample = build_sample(model.tokenizer, rng, factor * window, topics, needle)
        ids = sample.ids.to(model.device)
        new_tokens = len(needle.value) + 6
        cache = model.new_cache(ids.shape[1] + new_tokens)
        processors = {"logits_processor": LogitsProcessorList([reader(cache)])} if reader else {}
        out = model.generate_after(cache, ids, new_tokens, do_sample=False, **processors)
        answer = model.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        pages = answer_pages(model, ids.shape[1])
        needle_pages = value_pages(sample, P)
        rows.append({"format": i % formats, "tokens": ids.shape[1], "needle_pages": sorted(needle_pages),
                     "recalled": needle_pages <= pages, "correct": needle.value in answer, "answer": answer,
                     "value": needle.value})
    return {"recall": 100 * sum(r["recalled"] for r in rows) / samples,
            "accuracy": 100 * sum(r["correct"] for r in rows) / samples, "rows": rows}


SCORERS = ("trained", "trained+lexical", "trained+lexical+near_miss", "trained+lexical+near_miss+hops", "attention",
           "attention+lexical", "attention+lexical+near_miss", "attention+lexical+near_miss+hops")


def scorer_knobs(name: str, lexical_weight: float, lexical_query_pages: int = 2, near_miss_margin: float = 0.7,
                 hops: int = 4) -> dict:
    """from_pretrained knobs of a --scorers entry (each sets every lexical knob it depends on, whatever the
    checkpoint's)."""
    if name not in SCORERS:
        raise SystemExit(f"unknown scorer {name!r}: use one of {', '.join(SCORERS)}")
    scorer, *parts = name.split("+")
    if not parts:
        return {"scorer": scorer, "lexical_weight": 0.0}
    return {"scorer": scorer, "lexical_weight": lexical_weight, "lexical_query_pages": lexical_query_pages,
            "lexical_near_miss_margin": near_miss_margin if "near_miss" in parts else None,
            "lexical_hops": hops if "hops" in parts else 0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="RetroLM checkpoint (default: the embedded default model)")
    parser.add_argument("--scorers", default="trained,attention",
                        help="page scorers to compare: trained (the retriever alone), trained+lexical (plus lexical "
                             "page scores at --lexical-weight, retrolm/lexical.py), trained+lexical+near_miss (and "
                             "near misses judged at --near-miss-margin), trained+lexical+near_miss+hops (and lexical "
                             "hops --hops deep), attention (training-free), attention+lexical, "
                             "attention+lexical+near_miss, attention+lexical+near_miss+hops")
    parser.add_argument("--lexical-weight", type=float, default=10.0, help="lexical_weight of trained+lexical "
                        "(10: chosen on the validation needles, bench/results/lexical/)")
    parser.add_argument("--lexical-query-pages", type=int, default=2, help="lexical_query_pages of trained+lexical")
    parser.add_argument("--near-miss-margin", type=float, default=0.7, help="lexical_near_miss_margin of the "
                        "+near_miss scorers (0.7: the shipped model's)")
    parser.add_argument("--hops", type=int, default=4, help="lexical_hops of the +hops scorers (4: the shipped "
                        "model's)")
    parser.add_argument("--factors", default="1,4,16,64", help="context lengths as multiples of the window")
    parser.add_argument("--samples", type=int, default=40, help="samples per cell (formats take turns)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--needles", default="test", choices=sorted(NEEDLE_SETS),
                        help="the five test formats, stage 1's three validation formats, or the six sealed formats "
                             "(used only for final reporting: never look at its failures to shape training); "
                             "each set but test has its own result files")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    args = parser.parse_args()
    topics = reference_topics()
    factors = [int(x) for x in args.factors.split(",")]
    scores, details, seconds, window = {}, {}, {}, None
    for scorer in args.scorers.split(","):
        model = RetroLM.from_pretrained(args.model, device=args.device,
                                        **scorer_knobs(scorer, args.lexical_weight, args.lexical_query_pages,
                                                       args.near_miss_margin, args.hops))
        window = model.base_model.config.max_position_embeddings
        started = time.perf_counter()
        scores[scorer] = {"needle-page recall": {}, "accuracy": {}}
        for factor in factors:
            cell = run_cell(model, factor, window, args.samples, args.seed, topics, args.needles)
            length = str(factor * window)
            scores[scorer]["needle-page recall"][length] = cell["recall"]
            scores[scorer]["accuracy"][length] = cell["accuracy"]
            details[f"{scorer}@{factor}x"] = cell["rows"]
            print(f"{scorer:>10} {factor:>3}x: recall {cell['recall']:5.1f}  accuracy {cell['accuracy']:5.1f}",
                  flush=True)
        seconds[scorer] = round(time.perf_counter() - started, 1)
    lengths = [f * window for f in factors]
    record = {"model": args.model or default_model_path(), "window": window, "factors": factors,
              "samples": args.samples, "seed": args.seed, "device": args.device, "environment": environment(),
              "haystack": "pydoc_data.topics (Python language reference), held out of training",
              "needles": args.needles, "needle_formats": NEEDLE_SETS[args.needles][1], "scores": scores,
              "lexical": {"weight": args.lexical_weight, "query_pages": args.lexical_query_pages,
                          "near_miss_margin": args.near_miss_margin}
              if any("lexical" in s for s in scores) else None,
              "seconds": seconds, "samples_detail": details}
    prefix = os.path.join(args.out, "heldout_prose" + ("" if args.needles == "test" else f"_{args.needles}"))
    write_json(prefix + ".json", record)
    table = [{"scorer": s, "metric": m, **{f"{f}x": f"{scores[s][m][str(f * window)]:.0f}" for f in factors}}
             for s in scores for m in scores[s]]
    text = (f"# Held-out prose and needle formats ({args.samples} samples per cell, {args.device})\n\n"
            f"Haystacks: Python's language reference (`pydoc_data.topics`), not in training. Needles: "
            f"{NEEDLE_KINDS[args.needles]}, "
            "not in training. Recall: the value's page(s) among those retrieved for the answer.\n\n"
            + markdown_table(table, ["scorer", "metric"] + [f"{f}x" for f in factors]))
    write_text(prefix + ".md", text)
    plot(scores, lengths, window, prefix + ".png", methods=list(scores), highlight=list(scores)[-1])
    print(text)


if __name__ == "__main__":
    main()
