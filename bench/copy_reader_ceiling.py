"""How much of the held-out accuracy gap is the reader: the default model's answers on held-out prose against the
same retrieval read by a copying reader.

    python bench/copy_reader_ceiling.py --factors 1,16,64 --samples 20 --out bench/results/copy_reader

bench/heldout_prose.py finds the needle's page for every question at 16x and 64x, yet the model answers none of
them, even at 1x with every page in view: the base LM does not start the value after phrasings it was not trained
on (bench/results/drills/). This measures what retrieval would give a reader that copies. The copying reader is a
diagnostic, not a RetroLM decoding mode: at each answer step, where the text so far ends with a passage of at least
--min-match tokens that also occurs in the pages attended for that step, it takes the token that follows the
longest such passage there (when that token is the same at every occurrence), else the model's own token. It copies
only after an answer start that repeats the needle's words before the value, so it bounds the target from above
on formats whose answer start does; format 2 of the test set ("Its tracking label is" for "carries the tracking
label X") it cannot answer.
--min-match 8 was chosen on stage 1's validation formats at 1x (8 and 16 tried); the test formats were then measured
once. Decoding is eager, so that each step's attended pages are on the host (`cache.selection`).
Writes copy_reader.json and copy_reader.md under --out.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch
from transformers import LogitsProcessor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.common import environment, markdown_table, write_json, write_text  # noqa: E402
from bench.heldout_prose import NEEDLE_KINDS, run_cell  # noqa: E402
from retrolm.model import RetroLM, default_model_path  # noqa: E402
from retrolm.training.needle_recall import reference_topics  # noqa: E402


def copied_token(text_ids: torch.Tensor, written: torch.Tensor, sources: torch.Tensor, min_match: int,
                 max_match: int = 64) -> int | None:
    """The token to copy after `written` [W] (the sequence so far), or None.

    text_ids [T]: the ids of the encoded text; sources [C]: positions of `text_ids` whose next token may be copied.
    The longest suffix of `written` (at most max_match tokens, at least min_match) that ends at a source position
    is looked for; its next token is returned when every occurrence of that length agrees on it."""
    sources = sources[sources + 1 < text_ids.shape[0]]
    span = min(max_match, written.shape[0])
    if sources.numel() == 0 or span < min_match:
        return None
    # [C, span]: the positions a match would cover, latest first
    back = sources[:, None] - torch.arange(span, device=sources.device)[None]
    same = (text_ids[back.clamp(min=0)] == written.flip(0)[:span][None]) & (back >= 0)
    lengths = same.long().cumprod(1).sum(1)
    longest = int(lengths.max())
    if longest < min_match:
        return None
    following = text_ids[sources[lengths == longest] + 1].unique()
    return int(following[0]) if following.numel() == 1 else None


class CopyingReader(LogitsProcessor):
    """Takes `copied_token` over the pages attended for each step (every earlier page when no retrieval has run:
    the prompt fits the window) in place of the model's choice, by making it the only token left."""

    def __init__(self, cache, min_match: int):
        self.cache, self.min_match = cache, min_match

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        cache = self.cache
        size = cache.page_size
        current = (cache.num_tokens - 1) // size  # the page being written: never a source
        device = cache.token_ids.device  # on the cache's device: no copy of the whole text per step
        pages = cache.selection[1] if cache.selection is not None else torch.arange(current, device=device)
        pages = pages[(pages >= 0) & (pages < current)]
        sources = (pages[:, None] * size + torch.arange(size, device=device)[None]).flatten()
        token = copied_token(cache.token_ids[: cache.num_tokens], input_ids[0].to(device), sources, self.min_match)
        if token is None:
            return scores
        copied = torch.full_like(scores, float("-inf"))
        copied[:, token] = 0.0
        return copied


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="RetroLM checkpoint (default: the embedded default model)")
    parser.add_argument("--factors", default="1,16,64", help="context lengths as multiples of the window")
    parser.add_argument("--samples", type=int, default=20, help="samples per cell (formats take turns)")
    parser.add_argument("--seed", type=int, default=7, help="bench/heldout_prose.py's seed (the same samples)")
    parser.add_argument("--needles", default="validation,test", help="needle sets of bench/heldout_prose.py")
    parser.add_argument("--min-match", type=int, default=8, help="shortest repeated passage the reader copies after")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "copy_reader"))
    args = parser.parse_args()
    model = RetroLM.from_pretrained(args.model, device=args.device, decode_mode="eager")
    window = model.base_model.config.max_position_embeddings
    topics = reference_topics()
    factors = [int(x) for x in args.factors.split(",")]
    readers = {"model": None, "copying reader": lambda cache: CopyingReader(cache, args.min_match)}
    scores, details, started = {}, {}, time.perf_counter()
    for needles in args.needles.split(","):
        for name, reader in readers.items():
            row = scores.setdefault(f"{needles} / {name}", {"recall": {}, "accuracy": {}})
            for factor in factors:
                cell = run_cell(model, factor, window, args.samples, args.seed, topics, needles, reader=reader)
                row["recall"][f"{factor}x"], row["accuracy"][f"{factor}x"] = cell["recall"], cell["accuracy"]
                details[f"{needles} / {name} @ {factor}x"] = cell["rows"]
                print(f"{needles:>10} {name:>14} {factor:>3}x: recall {cell['recall']:5.1f}  "
                      f"accuracy {cell['accuracy']:5.1f}", flush=True)
    record = {"model": args.model or default_model_path(), "window": window, "factors": factors,
              "samples": args.samples, "seed": args.seed, "min_match": args.min_match, "device": args.device,
              "environment": environment(), "seconds": round(time.perf_counter() - started, 1), "scores": scores,
              "samples_detail": details}
    write_json(os.path.join(args.out, "copy_reader.json"), record)
    table = [{"needles / reader": key, "metric": metric, **{f"{f}x": f"{row[metric][f'{f}x']:.0f}" for f in factors}}
             for key, row in scores.items() for metric in ("recall", "accuracy")]
    sets = "; ".join(f"{n}: {NEEDLE_KINDS[n]}" for n in args.needles.split(","))
    text = (f"# The reader's share of the held-out gap ({args.samples} samples per cell, {args.device})\n\n"
            f"Held-out prose (bench/heldout_prose.py, seed {args.seed}); needles {sets}. The model's own answers "
            f"against a copying reader on the same retrieval (min match {args.min_match} tokens; "
            "bench/copy_reader_ceiling.py). Recall: the value's page(s) among those retrieved for the answer.\n\n"
            + markdown_table(table, ["needles / reader", "metric"] + [f"{f}x" for f in factors]))
    write_text(os.path.join(args.out, "copy_reader.md"), text)
    print(text)


if __name__ == "__main__":
    main()
