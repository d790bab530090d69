"""Where a RetroLM decode step's (or prefill chunk's) time goes on the GPU: kernels, their time, the gaps.

Llama-3-8B shape, random bf16 weights, trained-scorer path. The step runs as a CUDA graph replay ("graph") and
without capture ("static", the same kernels launched from Python); the profiler lists every kernel of
`--steps` steps. Kernel time per step against wall time per step tells launch gaps from slow kernels.
"prefill" profiles the encoding of `--steps` chunks of `prefill_chunk_pages` pages after `--context` tokens.

    python bench/profile_decode.py --out bench/results/decode
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import environment, random_model, write_json, write_text  # noqa: E402
from retrolm import RetroLM, RetroLMConfig  # noqa: E402
from retrolm.compat import cache_argument  # noqa: E402
from retrolm.retriever import PageRetriever  # noqa: E402
from retrolm.tiny import byte_tokenizer  # noqa: E402


def kernel_table(prof, steps: int) -> list[dict]:
    kernels = defaultdict(lambda: [0, 0.0])
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            kernels[event.name][0] += 1
            kernels[event.name][1] += event.device_time_total
    return sorted(({"kernel": k[:90], "per_step": round(c / steps, 1), "us_per_step": round(t / steps, 1)}
                   for k, (c, t) in kernels.items()), key=lambda r: -r["us_per_step"])


def profile_prefill(model, ids, steps: int) -> dict:
    """Kernels of encoding `steps` prefill chunks after the prompt `ids` (one chunk = prefill_chunk_pages pages)."""
    chunk = model.config.prefill_chunk_pages * model.config.page_size
    more = torch.randint(0, 255, (1, chunk * (steps + 1)), device=ids.device)
    cache = model.new_cache(ids.shape[1] + more.shape[1])
    with torch.no_grad():
        cache, _ = model.encode(ids, cache, logits_to_keep=1, progress=False)
        model.encode(more[:, :chunk], cache, logits_to_keep=1, progress=False)  # warm-up
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
            start = time.perf_counter()
            model.encode(more[:, chunk:], cache, logits_to_keep=1, progress=False)
            torch.cuda.synchronize()
            wall_ms = (time.perf_counter() - start) * 1e3 / steps
    rows = kernel_table(prof, steps)
    return dict(mode="prefill", wall_ms_per_step=round(wall_ms, 2),
                kernel_ms_per_step=round(sum(r["us_per_step"] for r in rows) / 1e3, 2),
                kernels_per_step=round(sum(r["per_step"] for r in rows), 1), kernels=rows)


def profile_mode(model, ids, mode: str, steps: int, warmup: int) -> dict:
    if mode == "prefill":
        return profile_prefill(model, ids, steps)
    mode, _, compiled = mode.partition("+")  # "graph+compile": decode_compile on
    model.config.decode_compile = compiled == "compile"
    cache = model.new_cache(ids.shape[1] + warmup + steps + 1)
    with torch.no_grad():
        cache, logits = model.encode(ids, cache, logits_to_keep=1, progress=False)
    name = cache_argument(model.base_model)
    token = logits.argmax(-1)

    def step(token):
        return model.base_model(input_ids=token, use_cache=True, **{name: cache}).logits[:, -1:].argmax(-1)

    with torch.no_grad(), model.decoding(cache, warmup + steps, mode):
        for _ in range(warmup):
            token = step(token)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
            start = time.perf_counter()
            for _ in range(steps):
                token = step(token)
            torch.cuda.synchronize()
            wall_ms = (time.perf_counter() - start) * 1e3 / steps
    rows = kernel_table(prof, steps)
    model.config.decode_compile = False
    return dict(mode=mode + "+compile" * bool(compiled), wall_ms_per_step=round(wall_ms, 2),
                kernel_ms_per_step=round(sum(r["us_per_step"] for r in rows) / 1e3, 2),
                kernels_per_step=round(sum(r["per_step"] for r in rows), 1), kernels=rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="llama3-8b")
    parser.add_argument("--context", type=int, default=8192)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--modes", nargs="+", default=["graph", "static"], choices=["graph", "static", "prefill", "graph+compile"])
    parser.add_argument("--out", default="bench/results/decode")
    parser.add_argument("--name", default="profile_decode", help="result file name (.json and .md)")
    args = parser.parse_args()
    torch.manual_seed(0)
    base = random_model(args.shape)
    config = RetroLMConfig(scorer="trained", base_model_name_or_path=f"random:{args.shape}",
                           base_model_fingerprint="random")
    retriever = PageRetriever(config.retriever, base.config.hidden_size, config.page_size)
    model = RetroLM(base, byte_tokenizer(), config, retriever)
    ids = torch.randint(0, base.config.vocab_size - 1, (1, args.context), device="cuda")
    results = [profile_mode(model, ids, mode, args.steps, args.warmup) for mode in args.modes]
    write_json(os.path.join(args.out, f"{args.name}.json"), dict(environment=environment(), shape=args.shape,
                                                                   context=args.context, results=results))
    lines = []
    for r in results:
        lines += [f"## {r['mode']} ({args.shape}, {args.context} tokens before): wall {r['wall_ms_per_step']} ms/step, kernels {r['kernel_ms_per_step']} ms/step, "
                  f"{r['kernels_per_step']} kernels/step", "", "| kernel | per step | us per step |", "|---|---|---|"]
        lines += [f"| {k['kernel']} | {k['per_step']} | {k['us_per_step']} |" for k in r["kernels"][:40]]
        lines.append("")
    write_text(os.path.join(args.out, f"{args.name}.md"), "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
