"""Decode speed and memory: RetroLM vs full attention on a Llama-3-8B-shaped model with random bf16 weights.

For each context length: encode a random prompt (full attention: chunked prefill into HF's StaticCache and,
optionally, the default DynamicCache; RetroLM: page-wise prefill into its paged cache), then greedy-decode
and time every step (CUDA synchronised), reporting the median after warm-up and the peak GPU memory.

    python bench/decode.py --contexts 32768 131072 --out bench/results
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
from transformers import DynamicCache, StaticCache

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import (environment, markdown_table, peak_gib, random_model, reset_peak, sync,  # noqa: E402
                          write_json, write_text)
from retrolm import RetroLM, RetroLMConfig  # noqa: E402
from retrolm.tiny import byte_tokenizer  # noqa: E402


def timed_decode(model, cache, first_token, steps: int, warmup: int) -> list[float]:
    """Greedy-decode warmup + steps tokens; returns per-step milliseconds of the timed steps."""
    token = first_token
    times = []
    for i in range(warmup + steps):
        sync(token.device)
        start = time.perf_counter()
        logits = model(input_ids=token, past_key_values=cache, use_cache=True).logits
        token = logits[:, -1:].argmax(-1)
        sync(token.device)
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1e3)
    return times


def run_full(base, ids, cache_kind: str, steps: int, warmup: int, chunk: int) -> dict:
    base.set_attn_implementation("sdpa")
    total = ids.shape[1] + warmup + steps + 1
    cache = StaticCache(config=base.config, max_cache_len=total) if cache_kind == "static" else DynamicCache()
    device = ids.device
    reset_peak(device)
    sync(device)
    start = time.perf_counter()
    with torch.no_grad():
        for s in range(0, ids.shape[1], chunk):
            logits = base(input_ids=ids[:, s : s + chunk], past_key_values=cache, use_cache=True,
                          logits_to_keep=1).logits
    sync(device)
    prefill_s = time.perf_counter() - start
    prefill_peak = peak_gib(device)
    reset_peak(device)
    with torch.no_grad():
        times = timed_decode(base, cache, logits.argmax(-1), steps, warmup)
    decode_peak = peak_gib(device)
    del cache
    torch.cuda.empty_cache()
    return dict(prefill_s=round(prefill_s, 2), decode_ms=round(statistics.median(times), 2),
                decode_ms_p90=round(sorted(times)[int(0.9 * len(times))], 2),
                prefill_peak_gib=round(prefill_peak, 2), decode_peak_gib=round(decode_peak, 2))


def run_retrolm(model: RetroLM, ids, backends: list[str], steps: int, warmup: int) -> dict:
    device = ids.device
    cache = model.new_cache(ids.shape[1] + len(backends) * (warmup + steps) + 1)
    reset_peak(device)
    sync(device)
    start = time.perf_counter()
    with torch.no_grad():
        cache, logits = model.encode(ids, cache, logits_to_keep=1, progress=True)
    sync(device)
    prefill_s = time.perf_counter() - start
    result = dict(prefill_s=round(prefill_s, 2), prefill_peak_gib=round(peak_gib(device), 2))
    token = logits.argmax(-1)
    for backend in backends:
        model.config.attention_backend = backend
        cache.selection = None
        reset_peak(device)
        with torch.no_grad():
            times = timed_decode(model.base_model, cache, token, steps, warmup)
        result[f"decode_ms_{backend}"] = round(statistics.median(times), 2)
        result[f"decode_ms_p90_{backend}"] = round(sorted(times)[int(0.9 * len(times))], 2)
        result[f"decode_peak_gib_{backend}"] = round(peak_gib(device), 2)
    result["retrieved_pages_last_step"] = cache.selection[1].tolist() if cache.selection else []
    del cache
    torch.cuda.empty_cache()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="llama3-8b")
    parser.add_argument("--contexts", type=int, nargs="+", default=[32768, 131072])
    parser.add_argument("--steps", type=int, default=48)
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--page-size", type=int, default=128)
    parser.add_argument("--top-k", type=int, default=16)
    parser.add_argument("--full-caches", nargs="+", default=["static", "dynamic"], choices=["static", "dynamic"])
    parser.add_argument("--backends", nargs="+", default=["triton", "sdpa"])
    parser.add_argument("--prefill-chunk", type=int, default=8192)
    parser.add_argument("--offload-contexts", type=int, nargs="*", default=[131072],
                        help="also run RetroLM with offload_kv=True (K/V pages in pinned host memory) at these lengths")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()

    torch.manual_seed(0)
    base = random_model(args.shape, dtype=torch.bfloat16 if args.device == "cuda" else torch.float32,
                        device=args.device)
    config = RetroLMConfig(page_size=args.page_size, top_k=args.top_k, base_model_name_or_path=f"random:{args.shape}")
    rows = []
    for context in args.contexts:
        ids = torch.randint(0, base.config.vocab_size - 1, (1, context), device=args.device)
        for kind in args.full_caches:
            print(f"full attention ({kind} cache), {context} tokens", flush=True)
            rows.append(dict(method=f"full-sdpa-{kind}", context=context, **run_full(
                base, ids, kind, args.steps, args.warmup, args.prefill_chunk)))
            print(rows[-1], flush=True)
        model = RetroLM(base, byte_tokenizer(), config)
        print(f"RetroLM, {context} tokens", flush=True)
        rows.append(dict(method="retrolm", context=context, **run_retrolm(model, ids, args.backends, args.steps,
                                                                          args.warmup)))
        model._hooks.remove()
        print(rows[-1], flush=True)
        if context in args.offload_contexts:
            model = RetroLM(base, byte_tokenizer(), config.replace(offload_kv=True))
            print(f"RetroLM with offloaded KV, {context} tokens", flush=True)
            rows.append(dict(method="retrolm-offload", context=context, **run_retrolm(
                model, ids, args.backends[:1], args.steps, args.warmup)))
            model._hooks.remove()
            print(rows[-1], flush=True)

    result = dict(benchmark="decode", shape=args.shape, dtype=str(base.dtype), device=args.device, retrolm_config=config.to_dict(),
                  steps=args.steps, warmup=args.warmup, environment=environment(), rows=rows)
    columns = ["method", "context", "prefill_s", "decode_ms", "decode_ms_triton", "decode_ms_sdpa",
               "prefill_peak_gib", "decode_peak_gib", "decode_peak_gib_triton"]
    table = markdown_table(rows, columns)
    write_json(os.path.join(args.out, "decode.json"), result)
    write_text(os.path.join(args.out, "decode.md"),
               f"# Decode benchmark ({result['environment']['gpu']}, {args.shape}, bf16, random weights)\n\n"
               f"median ms/token over {args.steps} steps after {args.warmup} warm-up; RetroLM page_size="
               f"{args.page_size}, top_k={args.top_k}\n\n" + table)
    print(table)


if __name__ == "__main__":
    main()
