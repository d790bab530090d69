"""Where does a base LM's copy of a needle's value go wrong? Per-token probabilities of the value, teacher-forced.

    python bench/copy_tokens.py --base work/drills/base --formats 2 4 0 --samples 3 --out bench/results/drills

The prompt is bench/copy_probe.py's with no haystack (the needle, then the question and the answer start); the
value follows the answer start after one space. For each token of " value": the probability the base gives it
and, where another token is likelier, that token and its probability. A CPU is enough (the base alone, a few
forward passes). Writes copy_tokens_<name>.md under --out (through a temporary file).
"""
from __future__ import annotations

import argparse
import os
import random
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "bench")]

from bench.common import write_text  # noqa: E402
from bench.copy_probe import prompt  # noqa: E402
from bench.heldout_prose import NEEDLE_SETS  # noqa: E402


@torch.no_grad()
def value_tokens(model, tokenizer, needle) -> list[dict]:
    """One row per token of " value": the token, its probability, and the likeliest token where that differs."""
    text = prompt(needle, needle.sentence)
    start = tokenizer(text, return_tensors="pt").input_ids.shape[1]
    ids = tokenizer(text + " " + needle.value, return_tensors="pt").input_ids
    probs = model(ids).logits[0].float().softmax(-1)
    rows = []
    for t in range(start - 1, ids.shape[1] - 1):
        target, top = ids[0, t + 1].item(), probs[t].argmax().item()
        rows.append({"token": tokenizer.decode([target]), "p": round(probs[t, target].item(), 2),
                     "likeliest": None if top == target else (tokenizer.decode([top]), round(probs[t, top].item(), 2))})
    return rows


def describe(rows: list[dict]) -> str:
    return " ".join(f"`{r['token']!r}` {r['p']:.2f}" + (f" (`{r['likeliest'][0]!r}` {r['likeliest'][1]:.2f})"
                                                        if r["likeliest"] else "") for r in rows)


def main() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", required=True, help="base LM directory (Hugging Face format)")
    parser.add_argument("--name", default=None, help="names the result file (default: the base's directory name)")
    parser.add_argument("--needles", default="test", choices=sorted(NEEDLE_SETS))
    parser.add_argument("--formats", type=int, nargs="+", default=None, help="default: every format of the set")
    parser.add_argument("--samples", type=int, default=3, help="needles per format")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "drills"))
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(args.base)
    model = AutoModelForCausalLM.from_pretrained(args.base).eval()
    make_needle, count = NEEDLE_SETS[args.needles]
    formats = args.formats if args.formats is not None else list(range(count))
    bad = [f for f in formats if not 0 <= f < count]
    if bad:
        raise SystemExit(f"--formats {bad}: the {args.needles} set has formats 0-{count - 1}.")
    lines = ["| format | value | answer start | per token of the value: probability (likeliest token where another) |",
             "|---|---|---|---|"]
    for form in formats:
        for i in range(args.samples):
            needle = make_needle(random.Random(f"copy-tokens/{form}/{i}"), form)
            row = describe(value_tokens(model, tokenizer, needle))
            lines.append(f"| {form} | {needle.value} | {needle.answer_start} | {row} |")
            print(lines[-1], flush=True)
    name = args.name or os.path.basename(os.path.normpath(args.base))
    write_text(os.path.join(args.out, f"copy_tokens_{name}.md"),
               f"# Per-token probabilities of the value, base `{name}`, {args.needles} formats, no haystack\n\n"
               + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
