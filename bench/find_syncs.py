"""Lists the host-device synchronisations in RetroLM's decode steps (training-free scorer), with the line that
causes each: torch's sync debug mode on a 2-layer Llama-3-8B-shaped model. Run on a GPU host:

    python bench/find_syncs.py [llama3-8b]
"""
from __future__ import annotations

import collections
import os
import sys
import traceback
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import random_model  # noqa: E402
from retrolm import RetroLM, RetroLMConfig  # noqa: E402
from retrolm.compat import cache_argument  # noqa: E402
from retrolm.tiny import byte_tokenizer  # noqa: E402


def main() -> None:
    base = random_model(sys.argv[1] if len(sys.argv) > 1 else "llama3-8b-2layer")
    model = RetroLM(base, byte_tokenizer(), RetroLMConfig(page_size=128, top_k=16, attention_backend="triton"))
    ids = torch.randint(0, 1000, (1, 131072), device="cuda")
    cache = model.new_cache(131072 + 200)
    name = cache_argument(base)
    seen = collections.Counter()

    def record(message, category, filename, lineno, file=None, line=None):
        frames = [f for f in traceback.extract_stack()[:-1] if "/retrolm/" in f.filename]
        seen[" <- ".join(f"{os.path.basename(f.filename)}:{f.lineno} {f.line}" for f in frames[-3:][::-1])] += 1

    with torch.no_grad(), model._hooks.expect_paged():
        cache, logits = model.encode(ids, cache, logits_to_keep=1)
        token = logits.argmax(-1)
        for phase, steps in (("decode", 40),):
            torch.cuda.set_sync_debug_mode("warn")
            warnings.showwarning = record
            with warnings.catch_warnings():
                warnings.simplefilter("always")
                warnings.showwarning = record
                for _ in range(steps):
                    token = base(input_ids=token, use_cache=True, **{name: cache}).logits[:, -1:].argmax(-1)
            torch.cuda.set_sync_debug_mode(0)
    for where, count in seen.most_common():
        print(f"{count:5d}  {where}")
    profile_decode(model, base, cache, token, name)
    torch_profile(model, base, cache, token, name)


def torch_profile(model, base, cache, token, name, steps: int = 34) -> None:
    """CUDA runtime calls (mallocs, synchronisations, copies) and host time of decode steps, refresh steps
    included (every refresh_interval-th step)."""
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad(), model._hooks.expect_paged():
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(steps):
                token = base(input_ids=token, use_cache=True, **{name: cache}).logits[:, -1:].argmax(-1)
                torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=60))


def profile_decode(model, base, cache, token, name, steps: int = 48) -> None:
    """Host time per RetroLM function over decode steps (cProfile; a sync after each step keeps them apart)."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    with torch.no_grad(), model._hooks.expect_paged():
        for _ in range(steps):
            profiler.enable()
            token = base(input_ids=token, use_cache=True, **{name: cache}).logits[:, -1:].argmax(-1)
            profiler.disable()
            torch.cuda.synchronize()
    stats = pstats.Stats(profiler)
    stats.sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
