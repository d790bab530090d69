"""Command-line options shared by the three benchmark scripts, and turning them into a method."""
from __future__ import annotations

import argparse
import sys

from retrolm.cli import OFF, echo_tokens_argument, escaped_argument, margin_argument
from retrolm.errors import RetroLMError

from .errors import EvalError
from .methods import LLM_EMBEDDER, METHODS, MethodOptions, build_method

RETROLM_KNOBS = ("page_size", "top_k", "sink_pages", "local_pages", "position_mode", "max_context_tokens",
                 "attention_backend", "refresh_interval", "prefill_chunk_pages", "neighbor_pages", "neighbor_direction",
                 "refresh_on", "lexical_weight", "lexical_ngram", "lexical_max_pages", "lexical_query_pages",
                 "lexical_near_miss_margin", "lexical_hops", "lexical_hop_span", "lexical_hop_stops",
                 "lexical_echo_tokens")
STRING_KNOBS = ("position_mode", "attention_backend", "neighbor_direction")
ESCAPED_KNOBS = ("refresh_on", "lexical_hop_stops")  # characters, backslash escapes read
FLOAT_KNOBS = ("lexical_weight",)
OPTIONAL_FLOAT_KNOBS = ("lexical_near_miss_margin",)  # a number, or OFF for None
OPTIONAL_INT_KNOBS = ("lexical_echo_tokens",)  # an integer, or OFF for None


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model", default=None,
                   help="RetroLM checkpoint, or a HF model (local directory or hub name); default: the embedded "
                        "default model (assets/retrolm-byte-llama, float32 on the CPU)")
    p.add_argument("--method", required=True, help=f"one of: {', '.join(METHODS)}")
    p.add_argument("--tasks", default="all", help="comma-separated task names, or 'all'")
    p.add_argument("--out", required=True, help="output directory (predictions/, scores.json, scores.md)")
    p.add_argument("--data-dir", default=None, help="read <task>.jsonl files from here instead of the hub")
    p.add_argument("--limit", type=int, default=None, help="only the first N samples of each task")
    p.add_argument("--max-length", type=int, default=None,
                   help="middle-truncate prompts to this many tokens (default: what the method can hold)")
    p.add_argument("--budget", type=int, default=None,
                   help="context tokens a sparse method attends (retrolm pages / streaming window / rag chunks); "
                        "default: RetroLM's (sink + local + top_k) x page_size")
    p.add_argument("--full-window", type=int, default=None,
                   help="window of `full` and `rag` (default: the model's max_position_embeddings)")
    p.add_argument("--rag-embedder", default="BAAI/bge-small-en-v1.5",
                   help=f"embedding model for rag (hub name or path), or '{LLM_EMBEDDER}' (offline)")
    p.add_argument("--rag-chunk-tokens", type=int, default=256)
    p.add_argument("--official-defaults", action="store_true",
                   help="where not set explicitly, use the settings of the benchmark's published runs (LongBench: "
                        "model2maxlen truncation; InfiniteBench: 128K truncation; RULER: 500 samples)")
    p.add_argument("--chat-template", action="store_true",
                   help="wrap prompts in the tokenizer's chat template (not on tasks the benchmark exempts)")
    p.add_argument("--device", default=None, help="e.g. cuda, cuda:0, cpu")
    p.add_argument("--dtype", default="auto", help="auto, bfloat16, float16 or float32")
    for knob in RETROLM_KNOBS:
        kind = (str if knob in STRING_KNOBS else escaped_argument if knob in ESCAPED_KNOBS
                else float if knob in FLOAT_KNOBS else margin_argument if knob in OPTIONAL_FLOAT_KNOBS
                else echo_tokens_argument if knob in OPTIONAL_INT_KNOBS else int)
        p.add_argument("--" + knob.replace("_", "-"), type=kind, default=None, help=f"RetroLMConfig.{knob}")
    return p


def parse_tasks(spec: str, known: list[str], benchmark: str) -> list[str]:
    """Task names from 'a,b' or 'all'; unknown names raise EvalError listing the valid ones."""
    if spec.strip() == "all":
        return list(known)
    tasks = [t.strip() for t in spec.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in known]
    if unknown or not tasks:
        raise EvalError(f"unknown {benchmark} task(s) {unknown or [spec]}; valid tasks: {', '.join(known)} (or 'all').")
    return tasks


def method_options(args: argparse.Namespace) -> MethodOptions:
    if args.method not in METHODS:
        raise EvalError(f"unknown method {args.method!r}; choose one of {', '.join(METHODS)}.")
    if args.limit is not None and args.limit < 1:
        raise EvalError(f"--limit must be >= 1, got {args.limit}.")
    knobs = {k: (None if getattr(args, k) == OFF else getattr(args, k)) for k in RETROLM_KNOBS
             if getattr(args, k) is not None}
    return MethodOptions(method=args.method, model=args.model, budget=args.budget, full_window=args.full_window,
                         rag_embedder=args.rag_embedder, rag_chunk_tokens=args.rag_chunk_tokens,
                         chat_template=args.chat_template, device=args.device, dtype=args.dtype, retrolm=knobs)


def load_method(args: argparse.Namespace):
    return build_method(method_options(args))


def entry(main) -> None:
    """Run `main(sys.argv[1:])`, printing bad-input errors as one line instead of a traceback."""
    try:
        main(sys.argv[1:])
    except RetroLMError as error:  # EvalError included
        sys.exit(f"error: {error}")
