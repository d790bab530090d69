"""The Triton prefill kernel against the reference attention on a CPU, under Triton's interpreter.

    pip install --target /tmp/tsite triton && PYTHONPATH=/tmp/tsite python bench/interpret_prefill.py

For kernel work without a GPU: TRITON_INTERPRET=1 runs the kernel's programs in NumPy. float32 only (the
interpreter's bfloat16 dot is wrong even for a plain product); the CUDA tests (tests/test_attention_paths.py)
remain the check of the compiled kernel. Cases: tests/test_attention_paths.py's prefill shapes at top_k 2 and
13 (15 slots padded to 16, with empty slots in the first pages), both position modes.
"""
from __future__ import annotations

import os
import sys

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

import torch  # noqa: E402

from retrolm.attention import reference_attention  # noqa: E402
from retrolm.triton_prefill import paged_prefill_attention  # noqa: E402
from test_attention_paths import SHAPES, random_case  # noqa: E402


def main() -> int:
    worst = 0.0
    for shape in [s for s in SHAPES if s[5] > 1]:
        for mode in ("original", "contiguous"):
            for top_k in (2, 13):
                plan, query, keys, values = random_case(0, *shape, mode, top_k=top_k)
                error = (paged_prefill_attention(plan, query, keys, values, 0.3)
                         - reference_attention(plan, query, keys, values, 0.3)).abs().max().item()
                worst = max(worst, error)
                print(f"{shape} {mode:>10} top_k {top_k:>2}: {plan.attended.shape[1]} slots, "
                      f"{int((plan.attended < 0).sum())} empty, max error {error:.1e}", flush=True)
    print(f"worst {worst:.1e}")
    return 0 if worst <= 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
