"""Decode speed against the strongest baselines, each beside its memory-bandwidth floor, in one run.

Llama-3-8B shape with random bf16 weights, batch 1. Per context length, on the same prompt:
- `hf-dynamic`: transformers' default DynamicCache, chunked prefill, eager decode;
- `hf-static-compile`: StaticCache and `torch.compile(model.forward, mode="reduce-overhead", fullgraph=True)`
  (CUDA graphs through torch.compile: the fastest decode transformers offers);
- `retrolm-eager`: RetroLM, decode steps planned on the host (Triton attention);
- `retrolm-graph`: RetroLM, every decode step one CUDA graph replay (device_decode.py), trained-scorer path;
- `retrolm-generate-graph`: `RetroLM.generate` itself, transformers' loop included (all steps, capture included);
- `retrolm-offload-graph` (`--offload-contexts`, e.g. 512K and 1M): every page in page-locked host memory and
  `--offload-device-pages` page slots per layer on the GPU (offload.py); prefill includes reserving and
  page-locking the host pool. Full attention is not run there (its floor is listed).
Each decode step is timed alone (synchronised before and after), median after warm-up. The floor of a method
is the bytes one decode step must read (all weights, plus the KV it attends to: the whole context for full
attention; sink + local + top_k pages and the token's own page for RetroLM) over the copy bandwidth measured
on the same GPU in the same run. A token check decodes the same prompt eagerly and with the graph and
compares the tokens.

    python bench/decode.py --contexts 32768 --out bench/results/decode          # one JSON + table per run
    python bench/decode.py --combine bench/results/decode                      # table + PNG over all runs
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import glob
import inspect
import json
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
from retrolm.compat import cache_argument  # noqa: E402
from retrolm.retriever import PageRetriever  # noqa: E402
from retrolm.tiny import byte_tokenizer  # noqa: E402

GIB = 1 << 30


def copy_bandwidth(device, gib: float = 4.0, repeats: int = 10) -> float:
    """Bytes per second a device-to-device copy moves (read + write), median of `repeats`."""
    source = torch.empty(int(gib * GIB), dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        target.copy_(source)
        sync(device)
        times.append(time.perf_counter() - start)
    del source, target
    return 2 * gib * GIB / statistics.median(times)


def kv_bytes_per_token(config, dtype) -> int:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return config.num_hidden_layers * 2 * config.num_key_value_heads * head_dim * torch.finfo(dtype).bits // 8


def weight_bytes(module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def timed_steps(step, token, steps: int, warmup: int) -> tuple[list[float], torch.Tensor]:
    """Run `step(token) -> next token` warmup + steps times; per-step milliseconds of the timed ones."""
    times = []
    for i in range(warmup + steps):
        sync(token.device)
        start = time.perf_counter()
        token = step(token)
        sync(token.device)
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1e3)
    return times, token


def summary(times: list[float]) -> dict:
    """Median, mean (refresh steps that copy pages in count here) and 90th percentile ms/token."""
    return dict(decode_ms=round(statistics.median(times), 2), decode_ms_mean=round(statistics.mean(times), 2),
                decode_ms_p90=round(sorted(times)[int(0.9 * len(times))], 2))


def run_hf(base, ids, kind: str, steps: int, warmup: int, chunk: int) -> dict:
    """Full attention: chunked prefill, then greedy decode ("dynamic": eager; "static-compile": compiled)."""
    base.set_attn_implementation("sdpa")
    total = ids.shape[1] + warmup + steps + 1
    cache = StaticCache(config=base.config, max_cache_len=total) if kind == "static-compile" else DynamicCache()
    cache_name = "cache" if "cache" in inspect.signature(type(base).forward).parameters else "past_key_values"
    takes_cache_position = "cache_position" in inspect.signature(type(base).forward).parameters
    device = ids.device
    reset_peak(device)
    sync(device)
    start = time.perf_counter()
    with torch.no_grad():
        for s in range(0, ids.shape[1], chunk):
            piece = ids[:, s : s + chunk]
            extra = {"cache_position": torch.arange(s, s + piece.shape[1], device=device)} if takes_cache_position else {}
            logits = base(input_ids=piece, use_cache=True, logits_to_keep=1, **{cache_name: cache}, **extra).logits
    sync(device)
    result = dict(prefill_s=round(time.perf_counter() - start, 2), prefill_peak_gib=round(peak_gib(device), 2))
    forward = base.forward
    if kind == "static-compile":
        forward = torch.compile(base.forward, mode="reduce-overhead", fullgraph=True)
    position = torch.tensor([ids.shape[1]], device=device)

    def step(token):
        nonlocal position
        extra = {"cache_position": position} if takes_cache_position else {}
        out = forward(input_ids=token, position_ids=position[None], use_cache=True, **{cache_name: cache}, **extra)
        position = position + 1
        return out.logits[:, -1:].argmax(-1)

    reset_peak(device)
    compile_start = time.perf_counter()
    with torch.no_grad():
        times, _ = timed_steps(step, logits.argmax(-1), steps, warmup)
    result.update(summary(times), decode_peak_gib=round(peak_gib(device), 2),
                  warmup_s=round(time.perf_counter() - compile_start - sum(times) / 1e3, 1))
    del cache
    torch.cuda.empty_cache()
    return result


def run_retrolm(model: RetroLM, ids, modes: list[str], steps: int, warmup: int, prefills: int = 1,
                prefix: str = "retrolm") -> list[dict]:
    """Page-wise prefill (`prefills` times: the first of a process also compiles kernels; the last is kept), then
    greedy decode in each mode, continuing the same cache."""
    device = ids.device
    # a step that keeps its selection and one that refreshes it are two graphs, the second captured at the first
    # refresh (within refresh_interval steps): both are warm before the timed steps
    warmup = max(warmup, model.config.refresh_interval + 1)
    times = []
    for _ in range(prefills):
        cache = None
        torch.cuda.empty_cache()
        cache = model.new_cache(ids.shape[1] + len(modes) * (warmup + steps) + 1)
        reset_peak(device)
        sync(device)
        start = time.perf_counter()
        with torch.no_grad():
            cache, logits = model.encode(ids, cache, logits_to_keep=1, progress=False)
        sync(device)
        times.append(round(time.perf_counter() - start, 2))
    prefill = dict(prefill_s=times[-1], prefill_peak_gib=round(peak_gib(device), 2),
                   kv_host_gib=round(cache.memory_bytes() / GIB, 2) if cache.slots is not None else 0.0,
                   kv_device_gib=round(cache.device_bytes() / GIB, 2))
    if cache.slots is not None:
        prefill["host_pool_s"] = round(sum(layer.allocate_s for layer in cache.layers), 2)
    if prefills > 1:
        prefill["prefill_s_first"] = times[0]
    token = logits.argmax(-1)
    cache_name = cache_argument(model.base_model)
    rows = []
    offloaded = cache.slots is not None
    for mode in modes:
        mode, _, compiled = mode.partition("+")  # "graph+compile": decode_compile on
        model.config.decode_compile = compiled.startswith("compile")
        reset_peak(device)
        started = time.perf_counter()
        fetched_before = int(cache.slots.fetched) if offloaded else 0
        extra = {}
        try:
            with torch.no_grad(), projections_fused(compiled != "compile-unfused"), \
                    model.decoding(cache, warmup + steps + (COLD_STEPS if offloaded else 0), mode):
                step = lambda t: model.base_model(input_ids=t, use_cache=True,  # noqa: E731
                                                  **{cache_name: cache}).logits[:, -1:].argmax(-1)
                times, token = timed_steps(step, token, steps, warmup)
                if offloaded:  # what a refresh costs when none of its pages is on the GPU: clear, then one step
                    extra["pages_fetched_per_step"] = round((int(cache.slots.fetched) - fetched_before)
                                                            / (warmup + steps), 2)
                    cold = []
                    for _ in range(COLD_STEPS):
                        cache.slots.clear()
                        before = int(cache.slots.fetched)
                        cold += timed_steps(step, token, 1, 0)[0]
                        extra["cold_step_pages"] = int(cache.slots.fetched) - before
                    extra["cold_step_ms"] = round(statistics.median(cold), 2)
        except Exception as error:  # noqa: BLE001 (recorded; the cache is no longer usable for later modes)
            rows.append(dict(method=method_name(prefix, mode, compiled), **prefill,
                             error=f"{type(error).__name__}: {str(error)[:300]}"))
            break
        rows.append(dict(method=method_name(prefix, mode, compiled), **prefill, **summary(times),
                         decode_peak_gib=round(peak_gib(device), 2), warmup_steps=warmup,
                         warmup_s=round(time.perf_counter() - started - sum(times) / 1e3, 1), **extra))
    model.config.decode_compile = False
    del cache
    gc.collect()  # an offloaded cache's host pool (tens of GiB, page-locked) goes now, not at some later collection
    torch.cuda.empty_cache()
    return rows


def method_name(prefix: str, mode: str, compiled: str) -> str:
    """retrolm-graph, retrolm-graph-compiled, retrolm-graph-compiled-unfused."""
    return f"{prefix}-{mode}" + {"": "", "compile": "-compiled", "compile-unfused": "-compiled-unfused"}[compiled]


@contextlib.contextmanager
def projections_fused(fused: bool):
    """Compiled layers with their q/k/v and gate/up projections fused (as RetroLM runs them), or each projection a
    product of its own (the A/B row of that fusion)."""
    if fused:
        yield
        return
    import retrolm.layer_compile

    fuse = retrolm.layer_compile.fused_projections
    retrolm.layer_compile.fused_projections = lambda layers: contextlib.nullcontext([])
    try:
        yield
    finally:
        retrolm.layer_compile.fused_projections = fuse


def generate_rate(model: RetroLM, ids, new_tokens: int, compiled: bool = False) -> dict:
    """ms per new token of `RetroLM.generate` itself (transformers' loop, first step and capture included), and
    that time split in two from a second, shorter call: per_token_ms, what each further token costs (the
    step plus the loop's host work), and setup_s, what a call costs once (first uncaptured step, capture,
    compiling)."""
    model.config.decode_mode, model.config.decode_compile = "auto", compiled
    seconds = {}
    try:
        for count in (max(1, new_tokens // 4), new_tokens):
            model.generate(input_ids=ids, max_new_tokens=count, do_sample=False, eos_token_id=None)
            seconds[model.last_timings["new_tokens"]] = model.last_timings["decode_s"]
    finally:
        model.config.decode_compile = False
    timings = model.last_timings
    (short, short_s), (long, long_s) = sorted(seconds.items())
    per_token = (long_s - short_s) / (long - short) if long > short else None
    return dict(method=f"retrolm-generate-{timings['decode_mode']}{'-compiled' * compiled}",
                prefill_s=round(timings["encode_s"], 2), decode_ms=round(long_s / long * 1e3, 2),
                per_token_ms=round(per_token * 1e3, 2) if per_token is not None else None,
                setup_s=round(long_s - long * per_token, 3) if per_token is not None else None)


class ScoreRecorder:
    """A logits processor that keeps each generate step's scores (float32) and changes nothing."""

    def __init__(self):
        self.scores = []

    def __call__(self, input_ids, scores):
        self.scores.append(scores.float())
        return scores


def tokens_match(model: RetroLM, ids, new_tokens: int, compiled: bool = False) -> dict:
    """Greedy tokens of the eager and the device-side decode ("graph" on CUDA, "static" elsewhere; with the layers
    compiled if `compiled`) after the same prompt; where they part, how near eager's logits tied there
    (tie_gap: eager's logit of its token minus that of the device's token) and how far the two decodes' logits were
    apart up to there (max_logit_difference), both against the largest logit (logit_scale)."""
    device_mode = "graph" if ids.device.type == "cuda" else "static"
    out, seconds, scores = {}, {}, {}
    for mode in ("eager", device_mode):
        model.config.decode_mode, model.config.decode_compile = mode, compiled and mode != "eager"
        recorder = ScoreRecorder()
        out[mode] = model.generate(input_ids=ids, max_new_tokens=new_tokens, do_sample=False, eos_token_id=None,
                                   logits_processor=[recorder])
        seconds[mode], scores[mode] = round(model.last_timings["decode_s"], 2), torch.cat(recorder.scores)
    model.config.decode_mode, model.config.decode_compile = "auto", False
    expected, got = out["eager"][0, ids.shape[1]:], out[device_mode][0, ids.shape[1]:]
    same = int((expected == got).sum())
    first_difference = next((i for i in range(new_tokens) if expected[i] != got[i]), None)
    compared = new_tokens if first_difference is None else first_difference + 1
    result = dict(prompt_tokens=ids.shape[1], new_tokens=new_tokens, identical_tokens=same, compiled=compiled,
                  compared=device_mode, first_difference=first_difference, decode_s=seconds,
                  identical=bool(torch.equal(out["eager"], out[device_mode])),
                  logit_scale=round(float(scores["eager"].abs().max()), 3),
                  max_logit_difference=round(float((scores["eager"][:compared] - scores[device_mode][:compared])
                                                   .abs().max()), 4))
    if first_difference is not None:
        step = scores["eager"][first_difference]
        result["tie_gap"] = round(float(step[expected[first_difference]] - step[got[first_difference]]), 4)
    # the process's first compiled decode includes compiling the layers: its time is the user's one-time cost
    return result


def offload_tokens_match(base, config, offloaded, retriever, args) -> dict:
    """Greedy tokens of the offloaded graph decode against resident eager decoding, same prompt; the check
    prompt is longer than the offloaded runs' slot budget so prefill and decode evict and fetch pages back."""
    slots = (offloaded.max_attended_pages + 2) * 4  # prefill chunks of 4 pages
    check_config = RetroLMConfig(**{**offloaded.to_dict(), "offload_device_pages": slots, "prefill_chunk_pages": 4})
    device_mode = "graph" if base.device.type == "cuda" else "static"
    out = {}
    for name, cfg, mode in (("resident-eager", config, "eager"), ("offload-device", check_config, device_mode)):
        model = RetroLM(base, byte_tokenizer(), RetroLMConfig(**{**cfg.to_dict(), "decode_mode": mode}), retriever)
        torch.manual_seed(1)
        ids = random_prompt(model, args.check_tokens * 2)
        out[name] = model.generate(input_ids=ids, max_new_tokens=args.check_new_tokens, do_sample=False,
                                   eos_token_id=None)
        model._hooks.remove()
    same = int((out["resident-eager"] == out["offload-device"]).all(dim=0)[ids.shape[1]:].sum())
    return dict(prompt_tokens=ids.shape[1], new_tokens=args.check_new_tokens, identical_tokens=same,
                offload_device_pages=slots, compared=device_mode,
                identical=bool(torch.equal(out["resident-eager"], out["offload-device"])))


def random_prompt(model: RetroLM, length: int) -> torch.Tensor:
    """[1, length] random ids of the model's vocabulary, never RetroLM's bookmark token (inputs must not hold it)."""
    ids = torch.randint(0, model.base_model.config.vocab_size - 1, (1, length), device=model.device)
    return torch.where(ids == model.bookmark_id, 0, ids)


def measure(args) -> None:
    torch.manual_seed(0)
    device = torch.device(args.device)
    base = random_model(args.shape, dtype=torch.bfloat16, device=args.device)
    chunk = {"prefill_chunk_pages": args.prefill_chunk_pages} if args.prefill_chunk_pages else {}
    lexical = {"lexical_weight": args.lexical_weight} if args.lexical_weight else {}
    config = RetroLMConfig(page_size=args.page_size, top_k=args.top_k, scorer=args.scorer, **chunk, **lexical,
                           base_model_name_or_path=f"random:{args.shape}", base_model_fingerprint="random")
    retriever = None  # the training-free scorer has none
    if args.scorer == "trained":  # random weights: speed only
        retriever = PageRetriever(config.retriever, base.config.hidden_size, config.page_size)
    bandwidth = copy_bandwidth(device)
    weights = weight_bytes(base)
    per_token = kv_bytes_per_token(base.config, base.dtype)
    attended_tokens = (config.max_attended_pages + 1) * config.page_size
    retriever_bytes = weight_bytes(retriever) if retriever is not None else 0
    print(f"copy bandwidth {bandwidth / 1e12:.2f} TB/s, weights {weights / 1e9:.2f} GB, KV {per_token} B/token",
          flush=True)
    model = RetroLM(base, byte_tokenizer(), config, retriever)
    compiled = any("+compile" in mode for mode in args.modes)
    checks = []
    for check_compiled in (False, True)[: 1 + compiled]:
        try:
            checks.append(tokens_match(model, random_prompt(model, args.check_tokens), args.check_new_tokens,
                                       check_compiled))
        except Exception as error:  # noqa: BLE001 (recorded: the speed rows still run)
            checks.append(dict(prompt_tokens=args.check_tokens, new_tokens=args.check_new_tokens, identical_tokens=0,
                               compiled=check_compiled, identical=False,
                               error=f"{type(error).__name__}: {str(error)[:300]}"))
        print("token check", checks[-1], flush=True)
    check = checks[0]
    model._hooks.remove()  # the baselines run the plain model, as their users would
    rows = []
    result = dict(benchmark="decode", shape=args.shape, dtype="bfloat16", environment=environment(),
                  copy_bandwidth_tb_s=round(bandwidth / 1e12, 3), weight_gb=round(weights / 1e9, 3),
                  kv_bytes_per_token=per_token, retrolm_config=config.to_dict(), steps=args.steps,
                  warmup=args.warmup, token_check=check, rows=rows)
    if compiled:
        result["token_check_compiled"] = checks[1]
    for context in args.contexts:
        ids = random_prompt(model, context)
        full_floor = (weights + context * per_token) / bandwidth * 1e3
        retro_floor = (weights + retriever_bytes + attended_tokens * per_token) / bandwidth * 1e3
        for kind in args.full:
            print(f"full attention ({kind}), {context} tokens", flush=True)
            try:
                row = run_hf(base, ids, kind, args.steps, args.warmup, args.prefill_chunk)
            except Exception as error:  # noqa: BLE001 (a failing baseline is recorded, the others still run)
                row = dict(error=f"{type(error).__name__}: {str(error)[:300]}")
            rows.append(dict(method=f"hf-{kind}", context=context, floor_ms=round(full_floor, 2), **row))
            print(rows[-1], flush=True)
        model = RetroLM(base, byte_tokenizer(), config, retriever)
        print(f"RetroLM, {context} tokens", flush=True)
        runs = run_retrolm(model, ids, args.modes, args.steps, args.warmup, args.prefills)
        for generate_compiled in (False, True)[: 1 + compiled] if args.generate_tokens else ():
            try:
                runs.append(generate_rate(model, ids, args.generate_tokens, generate_compiled))
            except Exception as error:  # noqa: BLE001 (recorded, the measured rows are kept)
                runs.append(dict(method="retrolm-generate", error=f"{type(error).__name__}: {str(error)[:300]}"))
        for row in runs:
            rows.append(dict(row, context=context, floor_ms=round(retro_floor, 2)))
            print(rows[-1], flush=True)
        model._hooks.remove()
        for row in rows:
            if "decode_ms" in row:
                row["x_floor"] = round(row["decode_ms"] / row["floor_ms"], 2)
        # after every context: a timeout loses no row
        write_json(os.path.join(args.out, f"{run_name(args)}.json"), result)
    offloaded = RetroLMConfig(**{**config.to_dict(), "offload_kv": True,
                                 "offload_device_pages": args.offload_device_pages})
    if args.offload_contexts:
        result.update(retrolm_offload_config=offloaded.to_dict(),
                      offload_token_check=offload_tokens_match(base, config, offloaded, retriever, args))
        print("offload token check", result["offload_token_check"], flush=True)
    for context in args.offload_contexts:
        model = RetroLM(base, byte_tokenizer(), offloaded, retriever)
        print(f"RetroLM offloaded, {context} tokens", flush=True)
        ids = random_prompt(model, context)
        full_floor = (weights + context * per_token) / bandwidth * 1e3
        retro_floor = (weights + retriever_bytes + attended_tokens * per_token) / bandwidth * 1e3
        rows.append(dict(method="hf-full-attention-not-run", context=context, floor_ms=round(full_floor, 2)))
        mode = "graph" if device.type == "cuda" else "static"
        for row in run_retrolm(model, ids, [mode], args.steps, args.warmup, prefix="retrolm-offload"):
            rows.append(dict(row, context=context, floor_ms=round(retro_floor, 2),
                             x_floor=round(row["decode_ms"] / retro_floor, 2) if "decode_ms" in row else None))
            print(rows[-1], flush=True)
        model._hooks.remove()
        del ids
        write_json(os.path.join(args.out, f"{run_name(args)}.json"), result)
    print(markdown_table(rows, COLUMNS))


def run_name(args) -> str:
    contexts = list(args.contexts) + list(args.offload_contexts)
    return args.name or "decode_" + "_".join(f"{c // 1024}k" for c in contexts)


COLD_STEPS = 3  # offloaded runs: decode steps timed after emptying the GPU's page slots

COLUMNS = ["method", "context", "decode_ms", "decode_ms_mean", "decode_ms_p90", "floor_ms", "x_floor", "prefill_s",
           "prefill_peak_gib", "decode_peak_gib", "kv_host_gib", "kv_device_gib", "host_pool_s",
           "pages_fetched_per_step", "cold_step_ms", "cold_step_pages", "warmup_s", "per_token_ms", "setup_s"]


def combine(directory: str) -> None:
    """decode.md and decode.png from every run's JSON in `directory` (each run's ratios are within that run)."""
    runs = [json.load(open(path)) for path in glob.glob(os.path.join(directory, "decode_*.json"))]
    runs.sort(key=lambda run: min(row["context"] for row in run["rows"]))
    lines = ["# Decode speed (random bf16 weights, batch 1)", ""]
    for run in runs:
        env, check = run["environment"], run["token_check"]
        cfg = run["retrolm_config"]
        scorer = ", training-free scorer" if cfg["scorer"] == "attention" else ""
        lines += [f"## {run['shape']} on {env['gpu']}{scorer}: contexts {sorted({r['context'] for r in run['rows']})}", "",
                  f"torch {env['torch']}, transformers {env['transformers']}; copy bandwidth "
                  f"{run['copy_bandwidth_tb_s']} TB/s; weights {run['weight_gb']} GB; median ms/token over "
                  f"{run['steps']} steps after {run['warmup']} warm-up; RetroLM page_size {cfg['page_size']}, top_k "
                  f"{cfg['top_k']}, sink {cfg['sink_pages']}, local {cfg['local_pages']}. Graph vs eager greedy tokens "
                  f"after a {check['prompt_tokens']}-token prompt: {check['identical_tokens']}/{check['new_tokens']} "
                  "identical.", "", markdown_table(run["rows"], COLUMNS)]
        by_context = {}
        for row in run["rows"]:
            by_context.setdefault(row["context"], {})[row["method"]] = row.get("decode_ms")
        resident_128k = by_context.get(131072, {}).get("retrolm-graph")
        for context, methods in sorted(by_context.items()):
            static = methods.get("hf-static-compile")
            for name in ("retrolm-graph", "retrolm-graph-compiled"):
                if methods.get(name) and static:
                    lines.append(f"- {context} tokens: {name} is {static / methods[name]:.1f}x faster than "
                                 "hf-static-compile.")
            offloaded = methods.get("retrolm-offload-graph")
            if offloaded and resident_128k:
                lines.append(f"- {context} tokens offloaded: {offloaded / resident_128k:.2f}x the resident 128K "
                             "decode time.")
        for row in run["rows"]:
            if "cold_step_ms" in row:
                lines.append(f"- {row['context']} tokens offloaded: a step with no page on the GPU (all "
                             f"{row['cold_step_pages']} of each layer copied in) takes {row['cold_step_ms']} ms; "
                             f"decoding fetched {row['pages_fetched_per_step']} pages per step; reserving and page-locking the "
                             f"{row['kv_host_gib']} GiB host pool took {row['host_pool_s']} s of the prefill.")
        compiled_check = run.get("token_check_compiled")
        if compiled_check:
            lines.append(f"- Compiled layers ({compiled_check['compared']}, decode_compile) vs eager: "
                         f"{compiled_check['identical_tokens']}/{compiled_check['new_tokens']} greedy tokens identical "
                         f"after a {compiled_check['prompt_tokens']}-token prompt" + (
                             f" (the first difference at new token {compiled_check['first_difference']}"
                             + (f", where eager's two logits are {compiled_check['tie_gap']} apart of "
                                f"{compiled_check['logit_scale']}" if "tie_gap" in compiled_check else "") + ")."
                             if compiled_check.get("first_difference") is not None else "."))
        offload_check = run.get("offload_token_check")
        if offload_check:
            lines.append(f"- Offloaded {offload_check['compared']} decode ({offload_check['offload_device_pages']} page "
                         f"slots, a {offload_check['prompt_tokens']}-token prompt) vs resident eager: "
                         f"{offload_check['identical_tokens']}/{offload_check['new_tokens']} greedy tokens identical.")
        lines.append("")
    write_text(os.path.join(directory, "decode.md"), "\n".join(lines))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = sorted({run["shape"] for run in runs})
    figure, axes = plt.subplots(1, len(shapes), figsize=(6 * len(shapes), 4.5), squeeze=False)
    for axis, shape in zip(axes[0], shapes):
        series = {}
        # where runs overlap (same method and context), the run that measured more methods there is drawn
        richness = lambda run, context: sum(row["context"] == context for row in run["rows"])  # noqa: E731
        for run in (r for r in runs if r["shape"] == shape):
            scorer = " (training-free scorer)" if run["retrolm_config"]["scorer"] == "attention" else ""
            for row in sorted(run["rows"], key=lambda row: richness(run, row["context"])):
                if not row.get("decode_ms") and "not-run" not in row["method"]:
                    continue
                if row["method"].startswith("retrolm-generate"):
                    continue  # transformers' loop included: in the table, not in the per-step plot
                # offloaded graph decode continues the resident graph line; one floor line per attention kind
                method = "retrolm-graph" if row["method"] == "retrolm-offload-graph" else row["method"]
                method += scorer if method.startswith("retrolm") else ""
                point = series.get(method, {}).get(row["context"])
                if point is not None and point[1] > richness(run, row["context"]):
                    continue
                floor = "full attention floor" if method.startswith("hf-") else "RetroLM floor"
                series.setdefault(floor, {})[row["context"]] = (row["floor_ms"], 0)
                if row.get("decode_ms"):
                    series.setdefault(method, {})[row["context"]] = (row["decode_ms"], richness(run, row["context"]))
        for name, points in sorted(series.items()):
            contexts = sorted(points)
            floor = "floor" in name
            axis.plot(contexts, [points[c][0] for c in contexts], marker=None if floor else "o",
                      linestyle=":" if floor else "-", label=name)
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        offloaded = any(row["method"] == "retrolm-offload-graph" for run in runs if run["shape"] == shape
                        for row in run["rows"])
        axis.set_title(shape + (" (RetroLM past 128K: KV offloaded to host memory)" if offloaded else ""), fontsize=9)
        axis.set_xlabel("context tokens")
        axis.set_ylabel("ms / token (log)")
        axis.legend(fontsize=7)
        axis.grid(alpha=0.3, which="both")
    tmp = os.path.join(directory, "decode.tmp.png")
    figure.savefig(tmp, dpi=120, bbox_inches="tight")
    os.replace(tmp, os.path.join(directory, "decode.png"))
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="llama3-8b")
    parser.add_argument("--contexts", type=int, nargs="*", default=[32768, 131072])
    parser.add_argument("--steps", type=int, default=48)
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--page-size", type=int, default=128)
    parser.add_argument("--top-k", type=int, default=16)
    parser.add_argument("--full", nargs="*", default=["static-compile", "dynamic"], choices=["static-compile", "dynamic"])
    parser.add_argument("--modes", nargs="+", default=["eager", "graph"],
                        choices=["eager", "graph", "static", "graph+compile", "static+compile", "graph+compile-unfused"],
                        help="RetroLM decode modes; +compile: with decode_compile (the decoder layers compiled, "
                             "projections fused); +compile-unfused: the same without fusing projections")
    parser.add_argument("--scorer", default="trained", choices=["trained", "attention"],
                        help="RetroLM's page scorer: a (random) trained retriever, or the training-free scorer")
    parser.add_argument("--lexical-weight", type=float, default=0.0,
                        help="lexical page scores at this weight (trained scorer): their per-step cost")
    parser.add_argument("--prefill-chunk", type=int, default=8192, help="HF baselines' prefill chunk (tokens)")
    parser.add_argument("--prefill-chunk-pages", type=int, default=None,
                        help="RetroLM's prefill_chunk_pages (default: the library's)")
    parser.add_argument("--check-tokens", type=int, default=8192, help="prompt length of the graph-vs-eager token check")
    parser.add_argument("--check-new-tokens", type=int, default=64)
    parser.add_argument("--prefills", type=int, default=1,
                        help="RetroLM prefills per context; the last is reported, the first as prefill_s_first")
    parser.add_argument("--generate-tokens", type=int, default=128,
                        help="also time RetroLM.generate for this many new tokens (0: skip)")
    parser.add_argument("--offload-contexts", type=int, nargs="*", default=[],
                        help="also run RetroLM with offload_kv=True at these contexts (e.g. 524288 1048576)")
    parser.add_argument("--offload-device-pages", type=int, default=1024, help="offload_device_pages of those runs")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", default="bench/results/decode")
    parser.add_argument("--name", help="result file name (default: decode_<contexts>)")
    parser.add_argument("--combine", metavar="DIR", help="only build DIR/decode.md and decode.png from its runs")
    args = parser.parse_args()
    if args.combine:
        combine(args.combine)
    else:
        measure(args)


if __name__ == "__main__":
    main()
