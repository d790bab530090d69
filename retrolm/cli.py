"""Command line: `retrolm generate` (answer a question about a long file) and `retrolm demo`."""
from __future__ import annotations

import argparse
import sys

import torch

from .errors import RetroLMError, exit_code
from .files import read_text
from .inputs import DTYPE_NAMES


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (argparse then reports anything else as a usage error, not a traceback)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _generate(args) -> int:
    from .model import RetroLM
    from .prompt import build_prompt_ids, describe_pages

    context = read_text(args.input, "input file")
    if not context.strip():
        raise RetroLMError(f"input file {args.input!r} is empty; pass a file with the text to read.")
    knobs = {k: v for k, v in (("page_size", args.page_size), ("top_k", args.top_k),
                               ("offload_device_pages", args.offload_device_pages)) if v is not None}
    if args.offload_kv:
        knobs["offload_kv"] = True
    # dtype None: the checkpoint's (float32 for the embedded default model on the CPU)
    model = RetroLM.from_pretrained(args.model, device=args.device, dtype=args.dtype, **knobs)
    ids = build_prompt_ids(model.tokenizer, context, args.question)
    out = model.generate(input_ids=ids, max_new_tokens=args.max_new_tokens, do_sample=False, progress=True)
    answer = model.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()
    t = model.last_timings
    retrievals = model.last_cache.retrievals()
    pages = retrievals[0][1] if retrievals else []
    print(f"answer: {answer}")
    print(f"pages retrieved for the question ({len(pages)}):")
    print("\n".join(describe_pages(model.tokenizer, ids[0], pages, model.config.page_size)))
    print(f"timings: {t['prompt_tokens']} prompt tokens encoded in {t['encode_s']:.2f} s; "
          f"{t['new_tokens']} tokens generated in {t['decode_s']:.2f} s "
          f"({1e3 * t['decode_s'] / max(1, t['new_tokens']):.1f} ms/token)")
    return 0


def _demo(args) -> int:
    from .demo import run_demo

    run_demo(model_path=args.model, factor=args.factor, num_facts=args.facts, seed=args.seed,
             compare=not args.no_compare)
    return 0


def _train_retriever(args) -> int:
    from .training.recipe import train_retriever

    train_retriever(args.model, args.data, args.out, preset=args.preset, overrides=args.set,
                    text_field=args.text_field, split=args.split, push_to_hub=args.push_to_hub)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="retrolm", description="Long-context LLM inference by KV page retrieval.")
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate", help="answer a question about a long text file")
    gen.add_argument("--model", default=None,
                     help="RetroLM checkpoint or HF model (hub name or directory); default: the embedded default model")
    gen.add_argument("--input", required=True, help="text file holding the long context")
    gen.add_argument("--question", required=True)
    gen.add_argument("--max-new-tokens", type=_positive_int, default=64)
    gen.add_argument("--page-size", type=_positive_int)
    gen.add_argument("--top-k", type=int)
    gen.add_argument("--offload-kv", action="store_true",
                     help="keep the K/V pages in host memory, a cache of them on the GPU (inputs whose KV does not "
                          "fit the GPU, e.g. 1M tokens; needs a trained retriever)")
    gen.add_argument("--offload-device-pages", type=_positive_int,
                     help="page slots per layer on the GPU with --offload-kv (default 1024)")
    gen.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    gen.add_argument("--dtype", default=None, choices=sorted(DTYPE_NAMES),
                     help="default: the checkpoint's (the embedded default model runs float32 on the CPU)")
    gen.set_defaults(run=_generate)
    demo = commands.add_parser("demo", help="facts hidden in a long haystack, found by page retrieval")
    demo.add_argument("--model", help="RetroLM checkpoint (default: the embedded default model)")
    demo.add_argument("--factor", type=int, default=32, help="haystack length as a multiple of the trained window")
    demo.add_argument("--facts", type=int, default=3, help="questions, each over its own haystack")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--no-compare", action="store_true", help="skip the full-attention comparison")
    demo.set_defaults(run=_demo)
    train = commands.add_parser("train-retriever", help="train a page retriever for a model (stage 1, LLM frozen)")
    train.add_argument("--model", required=True, help="HF model (hub name or directory) to train a retriever for")
    train.add_argument("--data", required=True,
                       help="corpus: a hub dataset (name, owner/name, name:config) or local jsonl/json/parquet/txt")
    train.add_argument("--out", required=True, help="output directory: data/, checkpoints, the RetroLM checkpoint")
    train.add_argument("--preset", default="8b", help="8b (7-8B model, one 80 GB GPU), small, or a recipe JSON")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a recipe value, e.g. --set max_steps=300 --set seq_len=4096 (repeatable)")
    train.add_argument("--text-field", default="text", help="column holding the text")
    train.add_argument("--split", default="train", help="split of a hub dataset")
    train.add_argument("--push-to-hub", metavar="REPO", help="upload the trained checkpoint to this hub repo")
    train.set_defaults(run=_train_retriever)
    args = parser.parse_args(argv)
    return exit_code(lambda: args.run(args))


if __name__ == "__main__":
    sys.exit(main())
