"""Cost of the page scorers on a Llama-3-8B-shaped model (random bf16 weights): training-free vs trained.

For each context length and scorer, one run encodes a random prompt page-wise and greedy-decodes, timing:
- prefill: seconds for the whole prompt and per chunk (`prefill_chunk_pages` pages per LLM forward);
- decode: mean (and median) ms/token (CUDA synchronised per step), refresh steps included;
- scorer time inside the scoring calls (training-free: `scorer.select_for_layer`, every layer; trained:
  `planner._select` and the bookmark encoding): GPU time from CUDA events per prefill chunk (prefill is
  GPU-bound), host time per decode step (decode is host-bound: the GPU waits for the launches);
- fixed selection: the same decode with every layer's pages frozen after one scoring (the attention scorer's
  selection is replayed, nothing is scored): decode time with no scorer at all, so `scorer - fixed` is the
  scorer's whole cost, host launches included.

    python bench/scorer_cost.py --contexts 32768 131072 --out bench/results
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import retrolm.attention as attention_module  # noqa: E402
import retrolm.planner as planner_module  # noqa: E402
from bench.common import environment, markdown_table, random_model, sync, write_json, write_text  # noqa: E402
from retrolm import RetroLM, RetroLMConfig  # noqa: E402
from retrolm.compat import cache_argument  # noqa: E402
from retrolm.retriever import PageRetriever  # noqa: E402
from retrolm.tiny import byte_tokenizer  # noqa: E402


class GpuTimer:
    """Wraps functions of a module with CUDA events; `take()` returns the GPU ms spent in them since last time.
    Nested wrapped calls count once (the outermost). On a CPU (dry runs) host time is taken instead."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.pairs, self.depth = [], 0

    @contextlib.contextmanager
    def wrapping(self, module, names):
        originals = {name: getattr(module, name) for name in names}

        def timed(fn):
            def call(*args, **kwargs):
                if self.depth:
                    return fn(*args, **kwargs)
                self.depth += 1
                if self.cuda:
                    start = torch.cuda.Event(enable_timing=True)
                    start.record()
                else:
                    start = time.perf_counter()
                try:
                    out = fn(*args, **kwargs)
                finally:
                    self.depth -= 1
                if self.cuda:
                    end = torch.cuda.Event(enable_timing=True)
                    end.record()
                    self.pairs.append((start, end))
                else:
                    self.pairs.append((time.perf_counter() - start) * 1e3)
                return out
            return call

        for name, fn in originals.items():
            setattr(module, name, timed(fn))
        try:
            yield self
        finally:
            for name, fn in originals.items():
                setattr(module, name, fn)

    def take(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            total = sum(start.elapsed_time(end) for start, end in self.pairs)
        else:
            total = sum(self.pairs)
        self.pairs = []
        return total


@contextlib.contextmanager
def frozen_selection():
    """Every layer replays the selection it made at its first call in this block: decode without scoring."""
    real = attention_module.select_for_layer
    made = {}

    def replay(plan, layer_idx, *args):
        if layer_idx not in made:
            made[layer_idx] = real(plan, layer_idx, *args)
        frozen = made[layer_idx]
        return dataclasses.replace(plan, attended=frozen.attended, key_shift=frozen.key_shift, scratch={})

    attention_module.select_for_layer = replay
    try:
        yield
    finally:
        attention_module.select_for_layer = real


def build(base, config: RetroLMConfig, scorer: str) -> RetroLM:
    retriever = None
    if scorer == "trained":  # random weights: the cost is the same as a trained retriever's
        retriever = PageRetriever(config.retriever, base.config.hidden_size, config.page_size).to(base.dtype)
    return RetroLM(base, byte_tokenizer(), config.replace(scorer=scorer), retriever=retriever)


def run(model: RetroLM, ids: torch.Tensor, scorer: str, steps: int, warmup: int, rounds: int) -> dict:
    """Prefill, then `rounds` blocks of `steps` decode steps (for the attention scorer each block is followed by a
    block with the selection frozen, so both see the same drift of the machine)."""
    targets = [(attention_module, ["select_for_layer"])] if scorer == "attention" else \
        [(planner_module, ["_select", "_window_bookmarks"])]
    chunk = model.config.prefill_chunk_pages * model.config.page_size
    cache = model.new_cache(ids.shape[1] + (warmup + 2 * rounds * (steps + 1)) + 2)
    name = cache_argument(model.base_model)
    gpu_timer, host_timer = GpuTimer(ids.device), GpuTimer(torch.device("cpu"))

    def step(token):
        sync(ids.device)
        began = time.perf_counter()
        token = model.base_model(input_ids=token, use_cache=True, **{name: cache}).logits[:, -1:].argmax(-1)
        sync(ids.device)
        return token, (time.perf_counter() - began) * 1e3

    chunk_ms, scorer_chunk_ms, step_ms, scorer_step_ms, fixed_ms = [], [], [], [], []
    with torch.no_grad(), model._hooks.expect_paged():
        with contextlib.ExitStack() as stack:  # prefill: GPU time inside the scorer (the GPU is the bottleneck)
            for module, names in targets:
                stack.enter_context(gpu_timer.wrapping(module, names))
            for start in range(0, ids.shape[1], chunk):
                sync(ids.device)
                began = time.perf_counter()
                logits = model.base_model(input_ids=ids[:, start : start + chunk], use_cache=True, logits_to_keep=1,
                                          **{name: cache}).logits
                sync(ids.device)
                chunk_ms.append((time.perf_counter() - began) * 1e3)
                scorer_chunk_ms.append(gpu_timer.take())
        token = logits.argmax(-1)
        for _ in range(warmup):
            token, _ = step(token)
        for _ in range(rounds):
            with contextlib.ExitStack() as stack:  # decode: host time inside the scorer (the host is the bottleneck)
                for module, names in targets:
                    stack.enter_context(host_timer.wrapping(module, names))
                for _ in range(steps):
                    token, ms = step(token)
                    step_ms.append(ms)
                    scorer_step_ms.append(host_timer.take())
            if scorer == "attention":
                with frozen_selection():
                    for i in range(steps + 1):
                        token, ms = step(token)
                        if i:  # the first step makes the selection that the others replay
                            fixed_ms.append(ms)
    result = dict(prefill_s=round(sum(chunk_ms) / 1e3, 2), prefill_chunk_ms=round(statistics.median(chunk_ms), 1),
                  scorer_gpu_ms_per_chunk=round(statistics.median(scorer_chunk_ms), 2),
                  decode_ms=round(statistics.mean(step_ms), 2), decode_ms_median=round(statistics.median(step_ms), 2),
                  scorer_host_ms_per_step=round(statistics.mean(scorer_step_ms), 3))
    result["steps_ms"] = [round(x, 2) for x in step_ms]  # every timed step, for the distribution
    result["scorer_host_ms_steps"] = [round(x, 2) for x in scorer_step_ms]
    if fixed_ms:
        result["fixed_steps_ms"] = [round(x, 2) for x in fixed_ms]
        result["decode_ms_fixed_selection"] = round(statistics.mean(fixed_ms), 2)
        overhead = statistics.mean(step_ms) - statistics.mean(fixed_ms)
        result["scorer_overhead_pct"] = round(100 * overhead / statistics.mean(step_ms), 2)
    del cache
    if ids.device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="llama3-8b")
    parser.add_argument("--contexts", type=int, nargs="+", default=[32768, 131072])
    parser.add_argument("--steps", type=int, default=32, help="decode steps per block")
    parser.add_argument("--rounds", type=int, default=4, help="decode blocks (with and without scoring, in turn)")
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--page-size", type=int, default=128)
    parser.add_argument("--top-k", type=int, default=16)
    parser.add_argument("--backend", default="triton", choices=["triton", "sdpa"])
    parser.add_argument("--device", default="cuda", help="cpu: a dry run of the script (--shape tiny)")
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()

    torch.manual_seed(0)
    base = random_model(args.shape, dtype=torch.bfloat16 if args.device == "cuda" else torch.float32,
                        device=args.device)
    config = RetroLMConfig(page_size=args.page_size, top_k=args.top_k, attention_backend=args.backend,
                           base_model_name_or_path=f"random:{args.shape}")
    rows = []
    for context in args.contexts:
        ids = torch.randint(0, base.config.vocab_size - 1, (1, context), device=args.device)
        for scorer in ("attention", "trained"):
            model = build(base, config, scorer)
            print(f"{scorer} scorer, {context} tokens", flush=True)
            rows.append(dict(scorer=scorer, context=context, **run(model, ids, scorer, args.steps, args.warmup, args.rounds)))
            model._hooks.remove()
            print({k: v for k, v in rows[-1].items() if not isinstance(v, list)}, flush=True)

    result = dict(benchmark="scorer_cost", shape=args.shape, retrolm_config=config.to_dict(), steps=args.steps,
                  warmup=args.warmup, environment=environment(), rows=rows)
    columns = ["scorer", "context", "prefill_s", "prefill_chunk_ms", "scorer_gpu_ms_per_chunk", "decode_ms",
               "decode_ms_median", "scorer_host_ms_per_step", "decode_ms_fixed_selection", "scorer_overhead_pct"]
    table = markdown_table(rows, columns)
    write_json(os.path.join(args.out, "scorer_cost.json"), result)
    write_text(os.path.join(args.out, "scorer_cost.md"),
               f"# Page scorer cost ({result['environment']['gpu']}, {args.shape}, bf16, random weights)\n\n"
               f"page_size={args.page_size}, top_k={args.top_k}, refresh_interval={config.refresh_interval}, "
               f"prefill chunk {config.prefill_chunk_pages} pages, {args.backend} decode; decode_ms = mean over "
               f"{args.rounds} x {args.steps} steps after {args.warmup} warm-up (refresh steps included). "
               f"scorer_overhead_pct = (decode_ms - decode_ms_fixed_selection) / decode_ms, where fixed selection is "
               f"the same decode with each layer's pages frozen (no scoring), run in blocks alternating with the "
               f"scored ones. Scorer time: GPU time (CUDA events) per prefill chunk, host time per decode step.\n\n"
               + table)
    print(table)


if __name__ == "__main__":
    main()
