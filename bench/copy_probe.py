"""Does a base LM copy a needle's value in a format it never trained on? Full attention, no RetroLM, a CPU is enough.

    python bench/copy_probe.py --bases assets/retrolm-byte-llama/base work/drills/base --out bench/results/drills

The gate of bench/drill_base.sh asks this at one haystack size on a GPU; this asks it at several (0 characters:
the needle sentence alone before the question) and splits the misses, to tell a base that cannot find the value
from one that finds it but copies it badly:
- exact: the answer starts with the value;
- first char: the answer's first character is the value's (the lookup after the answer start found the value);
- tail: the answer's first character is wrong, but the value without its first character appears in the answer
  (the copy went on from the right place after a wrong start, e.g. "4112" for "ZX-4412");
- end of text: the mean probability of the end-of-text token right after the answer start (a base that learned
  that a text may end where a value is due answers nothing, more so late in its window);
- value start: the mean probability of the value's first token that is not a space, the answer start and a space
  given (teacher-forced): a graded measure of starting the copy at the right place, where exact copies move in
  steps of whole samples (the first token is where unseen formats fail: bench/copy_tokens.py).
Needles, questions and answer starts are bench/heldout_prose.py's five test formats (`--needles validation`: stage
1's three validation formats, another set kept out of training; `--needles sealed`: the six formats of
bench/sealed_needles.py, used only for final reporting: never look at its failures to shape training); haystacks
are Python's language reference, as there. Writes copy_probe.json and copy_probe.md under --out
(copy_probe_validation.* for the validation set, copy_probe_sealed.* for the sealed one).
"""
from __future__ import annotations

import argparse
import os
import random
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "bench")]

from bench.common import environment, markdown_table, write_json, write_text  # noqa: E402
from bench.heldout_prose import NEEDLE_SETS  # noqa: E402
from retrolm.training.needle_recall import haystack, hide, reference_topics  # noqa: E402

NEW_TOKENS = 16


def prompt(needle, context: str) -> str:
    return (f"{context}\n\nAnswer the question using the text above.\nQuestion: {needle.question}\n"
            f"Answer: {needle.answer_start}")


def score(answer: str, value: str) -> dict[str, bool]:
    """The three counts of the module docstring for one answer (stripped) to a needle of `value`."""
    first = answer[:1] == value[:1]
    return {"exact": answer.startswith(value), "first char": first, "tail": not first and value[1:] in answer}


def sample(needles: str, chars: int, seed: int, i: int, topics) -> tuple:
    """Sample i of a run: (its needle, its prompt: the needle hidden in `chars` characters of haystack, or alone)."""
    make_needle, formats = NEEDLE_SETS[needles]
    rng = random.Random(f"copy-probe/{seed}/{i}")
    needle = make_needle(rng, i % formats)
    context = (hide(haystack(rng, chars, topics), needle.sentence, rng.uniform(0.05, 0.95)) if chars
               else needle.sentence)
    return needle, prompt(needle, context)


@torch.no_grad()
def value_start(model, tokenizer, text: str, value: str, device) -> float:
    """The probability of the first token of " value" after `text` that is not a space alone, teacher-forced."""
    ids = tokenizer(text).input_ids
    full = tokenizer(f"{text} {value}").input_ids
    if full[:len(ids)] != ids:
        raise SystemExit(f"the tokenizer splits the prompt differently once the value follows it ({value!r}); the "
                         "value-start column needs a prompt whose tokens the value extends.")
    at = next(i for i in range(len(ids), len(full)) if tokenizer.decode(full[i:i + 1]).strip())
    logits = model(torch.tensor([full[:at]], device=device)).logits[0, -1]
    return float(logits.float().softmax(-1)[full[at]])


@torch.no_grad()
def probe(path: str, sizes: list[int], samples: int, seed: int, needles: str, device: str) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).to(device).eval()
    window = model.config.max_position_embeddings
    topics = reference_topics()
    formats = NEEDLE_SETS[needles][1]
    cells = {}
    for chars in sizes:
        counts = {"exact": 0, "first char": 0, "tail": 0}
        end_of_text = 0.0
        per_format, start_per_format = [0] * formats, [0.0] * formats
        examples = []
        for i in range(samples):
            needle, text = sample(needles, chars, seed, i, topics)
            ids = tokenizer(text, return_tensors="pt").input_ids.to(device)
            if ids.shape[1] + NEW_TOKENS > window:
                raise SystemExit(f"{chars} haystack characters make a {ids.shape[1]}-token prompt: over the "
                                 f"{window}-token window with {NEW_TOKENS} new tokens; pass smaller --sizes.")
            out = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, output_scores=True,
                                 return_dict_in_generate=True, pad_token_id=tokenizer.pad_token_id)
            end_of_text += float(out.scores[0][0].float().softmax(-1)[tokenizer.eos_token_id])
            answer = tokenizer.decode(out.sequences[0, ids.shape[1]:], skip_special_tokens=True).strip()
            for name, hit in score(answer, needle.value).items():
                counts[name] += hit
            per_format[i % formats] += answer.startswith(needle.value)
            start_per_format[i % formats] += value_start(model, tokenizer, text, needle.value, device)
            if len(examples) < 2 * formats:
                examples.append({"format": i % formats, "value": needle.value, "answer": answer})
        cells[str(chars)] = {k: round(100 * v / samples, 1) for k, v in counts.items()} | {
            "exact per format": [round(100 * v / (samples // formats), 1) for v in per_format],
            "end of text": round(end_of_text / samples, 3), "value start": round(sum(start_per_format) / samples, 3),
            "value start per format": [round(v / (samples // formats), 3) for v in start_per_format],
            "examples": examples}
        print(f"{path} {chars} chars: {cells[str(chars)]['exact']}% exact", flush=True)
    return cells


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bases", nargs="+", required=True, help="base LM directories (Hugging Face format)")
    parser.add_argument("--names", nargs="+", default=None, help="a row name per base (default: the paths)")
    parser.add_argument("--sizes", default="0,350,700", help="haystack sizes in characters")
    parser.add_argument("--samples", type=int, default=60, help="samples per size (formats take turns)")
    parser.add_argument("--needles", default="test", choices=sorted(NEEDLE_SETS),
                        help="bench/heldout_prose.py's test formats, stage 1's validation formats, or the sealed "
                             "formats (used only for final reporting: never look at its failures to shape training)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    names = args.names or args.bases
    if len(names) != len(args.bases):
        parser.error("--names needs one name per base")
    formats = NEEDLE_SETS[args.needles][1]
    if args.samples % formats:
        parser.error(f"--samples must be a multiple of {formats} (the formats take turns)")
    torch.manual_seed(args.seed)
    sizes = [int(s) for s in args.sizes.split(",")]
    results = {name: probe(path, sizes, args.samples, args.seed, args.needles, args.device)
               for name, path in zip(names, args.bases)}
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, "copy_probe" + ("" if args.needles == "test" else f"_{args.needles}"))
    write_json(stem + ".json", {
        "bases": dict(zip(names, args.bases)), "needles": args.needles, "sizes": sizes, "samples": args.samples,
        "seed": args.seed, "device": args.device, "environment": environment(), "results": results})
    columns = ["base", "haystack chars", "exact", "first char right", "tail copied after a wrong start",
               "exact by format " + " / ".join(str(f) for f in range(formats)), "end of text next (mean p)",
               "value start (mean p), by format"]
    rows = [dict(zip(columns, [name, chars, cell["exact"], cell["first char"], cell["tail"],
                               " / ".join(f"{v:g}" for v in cell["exact per format"]), cell["end of text"],
                               f"{cell['value start']:.2f}: " + " / ".join(
                                   f"{v:.2f}" for v in cell["value start per format"])]))
            for name, cells in results.items() for chars, cell in cells.items()]
    write_text(stem + ".md", "\n".join([
        f"# Copying unseen needle formats ({args.needles} set), full attention ({args.samples} samples per row, "
        "% of samples)", "", markdown_table(rows, columns), ""]))
    print(open(stem + ".md").read())
    return 0


if __name__ == "__main__":
    sys.exit(main())
