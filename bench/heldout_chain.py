"""Multi-hop retrieval on text and chain formats the default model never trained on (lexical hops, issue 14).

    python bench/heldout_chain.py --device cuda --samples 20 --out bench/results/hops

RULER's vt (a chain "VAR B = VAR A" after "VAR A = 12345", asked by its value) is one of the default model's
training formats. Here the haystack is Python's language reference (`pydoc_data.topics`, PSF License 2.0, kept out
of training) and the chains are in three formats of our own, each statement naming the one before it:
- "Let the amber orchard register hold 4821907." / "Let the quiet harbor register hold the amber orchard register.";
- "Ticket QX-4821 is worth 318 points." / "Ticket BT-7730 is worth as much as ticket QX-4821.";
- "The crimson lantern signal means 58213." / "The frozen meadow signal means what the crimson lantern signal means.";
asked "Which registers hold 4821907?" (and the like), the statements at random depths in chain order. Their fixed
phrases are in no training document and unlike train/facts.py's chain lessons ("the blue slot copies the red slot";
tests/test_heldout_chain.py).
For each context length (a multiple of the model's window) and page scorer (bench/heldout_prose.py's names) a
sample reports, at the first answer token:
- chain recall: the share of the chain's statements whose name's pages are all among those retrieved;
- names written: the share of the chain's names the answer writes (the LM's limit as much as retrieval's).
--worked-example opens each prompt with a worked example, as RULER vt's one-shot prompt does: a chain of the same
format about another value, its question and its answer listing the names. It repeats the question's wording, not
its value: an echo of the question that page selection must not rank above the asked chain (docs/decisions.md,
the rejected echo rule). The samples' chains and haystacks are the same with and without it.
Writes heldout_chain.json and .md (heldout_chain_example.* with --worked-example) under --out.
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import time
from dataclasses import dataclass

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.common import environment, markdown_table, write_json, write_text  # noqa: E402
from bench.heldout_prose import ADJECTIVES, NOUNS, SCORERS, scorer_knobs  # noqa: E402
from retrolm.model import RetroLM, default_model_path  # noqa: E402
from retrolm.training.needle_recall import answer_pages, haystack, reference_topics  # noqa: E402

FORMATS = 3
LETTERS = "BCDFGHJKLMNPQRSTVWXZ"


@dataclass
class Chain:
    statements: list[str]  # in chain order: the first sets the value, each next one names the one before
    names: list[str]  # the name each statement sets
    question: str
    answer_start: str


def make_chain(rng: random.Random, form: int, length: int) -> Chain:
    """A chain of `length` statements in format `form` (0 .. FORMATS - 1), names all distinct."""
    if form == 1:
        names = set()
        while len(names) < length:
            names.add(rng.choice(LETTERS) + rng.choice(LETTERS) + "-" + str(rng.randint(1000, 9999)))
    else:
        places = [f"{a} {b}" for a in ADJECTIVES for b in NOUNS]
        names = rng.sample(places, length)
    names = list(names)
    rng.shuffle(names)
    if form == 0:
        value = str(rng.randint(1_000_000, 9_999_999))
        statements = [f"Let the {names[0]} register hold {value}."] + [
            f"Let the {names[k]} register hold the {names[k - 1]} register." for k in range(1, length)]
        return Chain(statements, names, f"Which registers hold {value}?", "Those registers are the")
    if form == 1:
        value = str(rng.randint(100, 999))
        statements = [f"Ticket {names[0]} is worth {value} points."] + [
            f"Ticket {names[k]} is worth as much as ticket {names[k - 1]}." for k in range(1, length)]
        return Chain(statements, names, f"Which tickets are worth {value} points?", "Tickets")
    value = str(rng.randint(10_000, 99_999))
    statements = [f"The {names[0]} signal means {value}."] + [
        f"The {names[k]} signal means what the {names[k - 1]} signal means." for k in range(1, length)]
    return Chain(statements, names, f"Which signals mean {value}?", "Those signals are the")


def worked_example(rng: random.Random, chain: Chain, form: int) -> str:
    """A worked example for `chain`'s question: a chain of format `form` with other names and another value, then
    its question and its answer, names in chain order."""
    while True:
        example = make_chain(rng, form, len(chain.names))
        if not set(example.names) & set(chain.names) and example.question != chain.question:
            break
    return ("An example of the task:\n" + "\n".join(example.statements)
            + f"\nQuestion: {example.question}\nAnswer: {example.answer_start} {', '.join(example.names)}.\n\n")


@dataclass
class ChainSample:
    ids: torch.Tensor  # [1, T]: haystack with the chain, then the question and the answer's start
    name_tokens: list[tuple[int, int]]  # first and last token of each statement's name, in chain order


def build_chain_sample(tokenizer, rng: random.Random, target_tokens: int, topics: list[str],
                       chain: Chain, example: str = "") -> ChainSample:
    """`chain`'s statements at sorted random depths of a haystack after `example` (a worked example, or none), the
    prompt about `target_tokens` tokens long."""
    tail = f"\n\nAnswer the question using the text above.\nQuestion: {chain.question}\nAnswer: {chain.answer_start}"
    chars = max(200, target_tokens - len(tokenizer(example + " ".join(chain.statements) + tail,
                                                   add_special_tokens=False).input_ids))
    text = haystack(rng, chars, topics)
    line_ends = (text.find("\n", int(len(text) * rng.uniform(0.05, 0.95))) for _ in chain.statements)
    pieces, last = [], 0
    for at, statement in zip(sorted(len(text) if end < 0 else end + 1 for end in line_ends), chain.statements):
        pieces += [text[last:at], statement + "\n"]
        last = at
    text = example + "".join(pieces) + text[last:] + tail
    ids = tokenizer(text, return_tensors="pt").input_ids
    spans = []
    searched = len(example)
    for statement, name in zip(chain.statements, chain.names):
        at = text.index(statement, searched)
        searched = at + len(statement)
        name_at = at + statement.index(name)
        spans.append((len(tokenizer(text[:name_at]).input_ids),
                      len(tokenizer(text[: name_at + len(name)]).input_ids) - 1))
    return ChainSample(ids, spans)


@torch.no_grad()
def run_cell(model: RetroLM, factor: int, window: int, samples: int, seed: int, topics: list[str],
             chain_length: int, with_example: bool = False) -> dict:
    P = model.config.page_size
    rows = []
    for i in range(samples):
        rng = random.Random(seed * 1_000_003 + factor * 1009 + i)  # the same chains and haystacks for every scorer
        chain = make_chain(rng, i % FORMATS, chain_length)
        example = (worked_example(random.Random(f"example {seed} {factor} {i}"), chain, i % FORMATS)
                   if with_example else "")  # its own generator: the chain and haystack stay those without it
        sample = build_chain_sample(model.tokenizer, rng, factor * window, topics, chain, example)
        ids = sample.ids.to(model.device)
        out = model.generate(input_ids=ids, max_new_tokens=24 * chain_length, do_sample=False)
        answer = model.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        retrieved = answer_pages(model, ids.shape[1])
        found = [set(range(first // P, last // P + 1)) <= retrieved for first, last in sample.name_tokens]
        rows.append({"format": i % FORMATS, "tokens": ids.shape[1], "statements_retrieved": found,
                     "names_written": [name in answer for name in chain.names], "answer": answer})
    share = lambda key: 100 * sum(sum(r[key]) for r in rows) / (samples * chain_length)  # noqa: E731
    return {"chain recall": share("statements_retrieved"), "names written": share("names_written"), "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="RetroLM checkpoint (default: the embedded default model)")
    parser.add_argument("--scorers", default="trained+lexical+near_miss,trained+lexical+near_miss+hops",
                        help=f"page scorers to compare, among {', '.join(SCORERS)} (bench/heldout_prose.py)")
    parser.add_argument("--lexical-weight", type=float, default=10.0, help="lexical_weight of the +lexical scorers")
    parser.add_argument("--hops", type=int, default=4, help="lexical_hops of the +hops scorers (4: the shipped "
                        "model's)")
    parser.add_argument("--chain-length", type=int, default=5, help="statements per chain (RULER vt's: 5)")
    parser.add_argument("--factors", default="16,64", help="context lengths as multiples of the window")
    parser.add_argument("--samples", type=int, default=20, help="samples per cell (formats take turns)")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--worked-example", action="store_true",
                        help="open each prompt with a worked example of the format about another value")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    args = parser.parse_args()
    if args.chain_length < 1:
        raise SystemExit("--chain-length must be at least 1")
    topics = reference_topics()
    factors = [int(x) for x in args.factors.split(",")]
    scores, details, seconds, window = {}, {}, {}, None
    for scorer in args.scorers.split(","):
        model = RetroLM.from_pretrained(args.model, device=args.device,
                                        **scorer_knobs(scorer, args.lexical_weight, hops=args.hops))
        window = model.base_model.config.max_position_embeddings
        started = time.perf_counter()
        scores[scorer] = {}
        for factor in factors:
            cell = run_cell(model, factor, window, args.samples, args.seed, topics, args.chain_length,
                            args.worked_example)
            scores[scorer][f"{factor}x"] = {k: cell[k] for k in ("chain recall", "names written")}
            details[f"{scorer}@{factor}x"] = cell["rows"]
            print(f"{scorer} {factor}x: chain recall {cell['chain recall']:5.1f}  names written "
                  f"{cell['names written']:5.1f}", flush=True)
        seconds[scorer] = round(time.perf_counter() - started, 1)
    record = {"model": args.model or default_model_path(), "window": window, "factors": factors,
              "samples": args.samples, "chain_length": args.chain_length, "seed": args.seed, "device": args.device,
              "worked_example": args.worked_example,
              "environment": environment(), "haystack": "pydoc_data.topics (Python language reference), held out",
              "scores": scores, "seconds": seconds, "samples_detail": details}
    name = "heldout_chain_example" if args.worked_example else "heldout_chain"
    write_json(os.path.join(args.out, f"{name}.json"), record)
    table = [{"scorer": s, "metric": m, **{f"{f}x": f"{scores[s][f'{f}x'][m]:.0f}" for f in factors}}
             for s in scores for m in ("chain recall", "names written")]
    text = (f"# Held-out chains ({args.samples} samples per cell, chains of {args.chain_length}, {args.device})\n\n"
            "Haystacks: Python's language reference (`pydoc_data.topics`), not in training. Chains: three formats "
            "of our own (bench/heldout_chain.py), not in training. Chain recall: % of the chain's statements "
            "retrieved for the first answer token; names written: % of the chain's names in the answer."
            + (" Each prompt opens with a worked example: a chain of the same format about another value, its "
               "question and answer." if args.worked_example else "") + "\n\n"
            + markdown_table(table, ["scorer", "metric"] + [f"{f}x" for f in factors]))
    write_text(os.path.join(args.out, f"{name}.md"), text)
    print(text)


if __name__ == "__main__":
    main()
