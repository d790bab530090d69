"""GPU check: every fast attention path against the plain-torch reference, bf16, random shapes.

    python bench/attention_paths.py --out bench/results
Writes attention_paths.json (max abs / relative error per case) and exits non-zero on any mismatch.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]
from bench.common import environment, write_json  # noqa: E402
from retrolm.attention import reference_attention, sdpa_page_attention  # noqa: E402
from retrolm.triton_decode import paged_decode_attention  # noqa: E402
from test_attention_paths import random_case  # noqa: E402

CASES = [  # page_size, heads, kv_heads, dim, tokens before, new tokens
    (128, 32, 8, 128, 20000, 1), (128, 32, 8, 128, 3000, 1), (64, 28, 4, 128, 9000, 1),
    (128, 32, 32, 128, 5000, 1), (96, 16, 2, 64, 7777, 1), (16, 8, 2, 32, 100, 1), (128, 14, 2, 64, 130, 1),
    (128, 32, 8, 128, 4096, 4096), (64, 28, 4, 128, 1000, 777),
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    rows, worst = [], 0.0
    for case in CASES:
        for mode in ("original", "contiguous"):
            for seed in range(3):
                plan, query, keys, values = random_case(seed, *case, mode, device="cuda", dtype=torch.bfloat16)
                expected = reference_attention(plan, query, keys, values, case[3] ** -0.5).float()
                paths = {"sdpa": sdpa_page_attention}
                if case[5] == 1:
                    paths["triton"] = paged_decode_attention
                for name, fn in paths.items():
                    got = fn(plan, query, keys, values, case[3] ** -0.5).float()
                    rel = ((got - expected).norm() / expected.norm()).item()
                    rows.append(dict(path=name, case=case, mode=mode, seed=seed, rel_err=rel,
                                     max_abs=(got - expected).abs().max().item(), finite=bool(got.isfinite().all())))
                    worst = max(worst, rel if rows[-1]["finite"] else float("inf"))
    ok = worst <= 1e-2
    write_json(os.path.join(args.out, "attention_paths.json"),
               dict(benchmark="attention_paths", tolerance_rel=1e-2, worst_rel_err=worst, passed=ok,
                    environment=environment(), rows=rows))
    print(f"{len(rows)} comparisons, worst relative error {worst:.2e} -> {'PASS' if ok else 'FAIL'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
