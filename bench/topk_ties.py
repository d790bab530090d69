"""What taking tied pages in page order costs: `retriever.topk_in_page_order` against `torch.topk`, in one run.

    python bench/topk_ties.py --device cuda          # writes topk_ties.json and .md under --out

Page selection ranks pages with a top-k at every layer of a refresh step (`select_pages`, the trained scorer's
[groups, pages] scores; `scorer.decode_selection`, the training-free scorer's reserved rows). `topk_in_page_order`
adds a few elementwise kernels (float bits to an int64 key) and runs the top-k on int64. Measured here on the
shapes a step ranks: one row (decode) and 32 rows (a prefill chunk's groups), over 1K-16K pages (64K-1M tokens at
page 64), k = 16. On CUDA each variant is captured in a CUDA graph, as the decode step is (capture failing would fail
the run), 32 calls a replay, and timed over replays; on the CPU, eagerly. Both variants' selections are checked
equal on untied random scores.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

from bench.common import environment, markdown_table, write_json, write_text  # noqa: E402
from retrolm.retriever import topk_in_page_order  # noqa: E402

CALLS = 32  # top-ks per graph replay: a refresh step of a 32-layer model ranks once per layer


def plain(scores: torch.Tensor, k: int) -> torch.Tensor:
    return scores.topk(k, dim=-1).indices


def in_page_order(scores: torch.Tensor, k: int) -> torch.Tensor:
    return topk_in_page_order(scores, k)[1]


def time_us(fn, scores: torch.Tensor, k: int, repeats: int) -> float:
    """Microseconds per call of fn(scores, k), CALLS calls at a time (a CUDA graph replay on CUDA)."""
    def calls():
        for _ in range(CALLS):
            fn(scores, k)

    if scores.is_cuda:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            calls()  # warm-up outside capture
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            calls()
        run = graph.replay
    else:
        run = calls
    run()
    if scores.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        run()
    if scores.is_cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / (repeats * CALLS) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--pages", default="1024,2048,8192,16384")
    parser.add_argument("--rows", default="1,32")
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "topk_ties"))
    parser.add_argument("--name", default="topk_ties")
    args = parser.parse_args()
    gen = torch.Generator(device=args.device).manual_seed(0)
    lines = []
    for rows in (int(r) for r in args.rows.split(",")):
        for pages in (int(p) for p in args.pages.split(",")):
            scores = torch.randn(rows, pages, device=args.device, generator=gen)
            if not torch.equal(plain(scores, args.k), in_page_order(scores, args.k)):
                raise SystemExit(f"selections differ on untied scores ({rows} x {pages})")
            topk_us = time_us(plain, scores, args.k, args.repeats)
            ordered_us = time_us(in_page_order, scores, args.k, args.repeats)
            lines.append({"rows": rows, "pages": pages, "k": args.k, "topk_us": round(topk_us, 2),
                          "in_page_order_us": round(ordered_us, 2), "extra_us": round(ordered_us - topk_us, 2),
                          "extra_per_32_layer_step_ms": round((ordered_us - topk_us) * CALLS / 1000, 4)})
            print(lines[-1], flush=True)
    columns = list(lines[0])
    record = {"settings": vars(args), "environment": environment(), "calls_per_replay": CALLS, "rows": lines}
    write_json(os.path.join(args.out, f"{args.name}.json"), record)
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    write_text(os.path.join(args.out, f"{args.name}.md"),
               f"Top-k of page scores, plain `torch.topk` against `topk_in_page_order` (ties in page order), one run "
               f"on {device} ({'CUDA graphs of' if args.device.startswith('cuda') else 'eager,'} {CALLS} calls). "
               "extra_per_32_layer_step_ms: what a refresh step of a 32-layer model adds.\n\n"
               + markdown_table(lines, columns) + "\n")


if __name__ == "__main__":
    main()
