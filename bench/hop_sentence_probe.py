"""Experiment (not the library's behaviour): a hop looks for the next name only inside the sentence that holds the
link, within `lexical_hop_span`, then runs a bench script with that walk.

    python bench/hop_sentence_probe.py bench/ruler_pages.py --device cpu --samples 40 --factors 4 --seed 43 --tasks vt

Half a page of hop span (the default model's) lifts held-out chains, whose statements are sentences, but at 4x it
costs RULER a few points: the look reaches the text around a statement, whose chance links the walk then follows
(bench/results/hop_span/README.md). A sentence ends at a token holding one of STOPS (RULER vt's statements are
lines). The library would need the stop tokens from the tokenizer in the planner and in page stores; this probe
patches `LexicalIndex._near_links` for the embedded default model's tokenizer instead, to measure the idea first.
"""
from __future__ import annotations

import os
import runpy
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from retrolm import lexical  # noqa: E402
from retrolm.model import default_model_path  # noqa: E402

STOPS = ".!?\n"


def stop_ids() -> torch.Tensor:
    """The default model's token ids whose text holds a sentence end."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(os.path.join(default_model_path(), "base"))
    return torch.tensor([i for i in range(len(tokenizer)) if any(c in tokenizer.decode([i]) for c in STOPS)])


def sentence_near_links(stops: torch.Tensor):
    def near_links(self, page_ids: torch.Tensor, pages: torch.Tensor, links: torch.Tensor) -> torch.Tensor:
        """`LexicalIndex._near_links`, the look kept inside the sentence of a link (an n-gram's sentence is its first
        token's; a stop token ends its sentence)."""
        ids, inside, hashes, at_link, near = self._look(page_ids, pages, links)
        stop = (torch.isin(ids, stops.to(ids.device)) & inside).long()
        sentence = (stop.cumsum(1) - stop)[:, : hashes.shape[1]]
        with_link = torch.zeros(ids.shape[0], ids.shape[1] + 1, dtype=torch.long, device=ids.device)
        with_link.scatter_reduce_(1, sentence, at_link.long(), "amax")
        return hashes[near & (with_link.gather(1, sentence) > 0)].unique()
    return near_links


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit(f"usage: python {sys.argv[0]} SCRIPT [ARGS...]  (a bench script and its options)")
    lexical.LexicalIndex._near_links = sentence_near_links(stop_ids())
    script = sys.argv[1]
    sys.argv = [script] + sys.argv[2:]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
