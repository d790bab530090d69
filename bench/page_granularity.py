"""RULER of one model at several page sizes, each with the top-k that fills the same attended budget (its
trained window): is a 1,024-token window better spent on a few large pages or on many small ones?

    python bench/page_granularity.py --pages 128,64,32 --factors 16,64 --device cuda --jobs 6
    python bench/page_granularity.py --pages 128:0,64:0,64:1 --tasks niah_multivalue   # PAGE[:NEIGHBOR_PAGES]
    python bench/page_granularity.py --model M --pages 64:1,64:1:both     # PAGE[:NEIGHBOR_PAGES[:DIRECTION]]

A query attends to sink + local + top_k retrieved pages and the page it is on, so at page size P a window of W
tokens holds top_k = W // P - sink_pages - local_pages - 1 retrieved pages (the default model: 5 at 128, 13 at
64, 29 at 32). The retriever is the model's own, whatever page size it was trained at. Writes
<out>/page_granularity.{json,md,png}.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.default_model_quality import grid_arguments, run_grid, write_results  # noqa: E402
from retrolm.config import RetroLMConfig  # noqa: E402
from retrolm.errors import RetroLMError, exit_code  # noqa: E402
from retrolm.model import BASE_DIR  # noqa: E402


def settings(spec: str, window: int, config: RetroLMConfig) -> list[tuple[str, list[str]]]:
    """'128,64:0,64:1:both' -> [(variant name, eval.ruler options)], top_k filling `window` at each page size."""
    variants = []
    for item in spec.split(","):
        page, _, rest = item.partition(":")
        neighbors, _, direction = rest.partition(":")
        page = int(page)
        neighbors = int(neighbors) if neighbors else config.neighbor_pages
        direction = direction or config.neighbor_direction
        top_k = window // page - config.sink_pages - config.local_pages - 1 if page > 0 else 0
        if page <= 0 or window % page or top_k < 1:
            raise RetroLMError(f"--pages {item}: a page size must divide the {window}-token window and leave room "
                               f"for at least one retrieved page after {config.sink_pages} sink, "
                               f"{config.local_pages} local and the current page")
        name = f"page{page}_top{top_k}_neighbors{neighbors}" + (f"_{direction}" if direction != "next" else "")
        variants.append((name, ["--page-size", str(page), "--top-k", str(top_k), "--neighbor-pages", str(neighbors),
                                "--neighbor-direction", direction]))
    return variants


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=os.path.join(ROOT, "assets", "retrolm-byte-llama"))
    parser.add_argument("--pages", default="128,64,32",
                        help="page sizes, each optionally :NEIGHBOR_PAGES[:DIRECTION] (next, previous, both)")
    parser.add_argument("--factors", default="16,64", help="context lengths as multiples of the window")
    parser.add_argument("--work", default=os.path.join(ROOT, "work", "page_granularity"))
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "page_granularity"))
    grid_arguments(parser)
    parser.set_defaults(num_samples=20)
    args = parser.parse_args(argv)
    with open(os.path.join(args.model, BASE_DIR, "config.json")) as f:
        window = json.load(f)["max_position_embeddings"]
    variants = settings(args.pages, window, RetroLMConfig.load(args.model))
    grid = {name: (args.model, "retrolm", options) for name, options in variants}
    lengths = [window * int(x) for x in args.factors.split(",")]
    record = run_grid(grid, list(grid), [t for t in args.tasks.split(",") if t], lengths, args)
    os.makedirs(args.out, exist_ok=True)
    write_results(record, window, os.path.join(args.out, "page_granularity"), args.note, list(grid), variants[0][0])
    return 0


if __name__ == "__main__":
    sys.exit(exit_code(main))
