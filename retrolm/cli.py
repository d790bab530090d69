"""Command line: `retrolm generate` (answer a question about a long file), `retrolm demo`, `retrolm train-retriever`,
`retrolm index` (a page store of a document collection: build, list, delete) and `retrolm ask` (answer from one)."""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

from .errors import RetroLMError, exit_code
from .files import read_text
from .index import DEFAULT_NPROBE, INDEX_KINDS, check_index_options
from .inputs import DTYPE_NAMES


OFF = "off"  # the command-line value of an optional knob turned off (None in the config)


def escaped_argument(text: str) -> str:
    """argparse type of a string of characters, backslash escapes read ("\\n" is a newline): --lexical-hop-stops
    '.!?\\n'."""
    return text.encode("latin-1", "backslashreplace").decode("unicode_escape")


def _optional_number(text: str, convert, minimum, expected: str) -> float | int | str:
    """argparse type of an optional knob's value: `convert(text)` >= minimum, or OFF (the knob None)."""
    if text.strip().lower() == OFF:
        return OFF
    try:
        value = convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected} or 'off', got {text!r}") from None
    if not value >= minimum:
        raise argparse.ArgumentTypeError(f"expected {expected} or 'off', got {value}")
    return value


def margin_argument(text: str) -> float | str:
    """argparse type of --lexical-near-miss-margin: a number >= 0, or OFF (the knob None: near misses not judged)."""
    return _optional_number(text, float, 0, "a number >= 0")


def echo_tokens_argument(text: str) -> int | str:
    """argparse type of --lexical-echo-tokens: an integer >= 1, or OFF (the knob None: echoes not judged)."""
    return _optional_number(text, int, 1, "an integer >= 1")


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
                               ("offload_device_pages", args.offload_device_pages),
                               ("lexical_weight", args.lexical_weight), ("lexical_hops", args.lexical_hops),
                               ("lexical_hop_span", args.lexical_hop_span),
                               ("lexical_hop_stops", args.lexical_hop_stops))
             if v is not None}
    for knob in ("lexical_near_miss_margin", "lexical_echo_tokens"):
        value = getattr(args, knob)
        if value is not None:
            knobs[knob] = None if value == OFF else value
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


TEXT_SUFFIXES = (".txt", ".md", ".rst")
SCORERS = ("trained", "attention")
SCORER_HELP = ("page scorer: trained (the model's retriever, bookmark keys searched by faiss) or attention (training-"
               "free, any model: page summaries searched exactly); default: the model's own")


def collect_documents(paths: list[str]) -> dict[str, str]:
    """doc id (the path as found) -> text, for each file given and each text file (TEXT_SUFFIXES) under each
    directory given."""
    files = []
    for path in paths:
        if os.path.isdir(path):
            files += sorted(os.path.join(root, name) for root, _, names in os.walk(path) for name in names
                            if name.endswith(TEXT_SUFFIXES))
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise RetroLMError(f"{path!r} is neither a file nor a directory; pass text files or folders of them.")
    if not files:
        raise RetroLMError(f"no text files ({', '.join(TEXT_SUFFIXES)}) under {', '.join(map(repr, paths))}.")
    return {os.path.normpath(f): read_text(f, "document") for f in files}


def _index(args) -> int:
    from .page_store import PageStore
    from .saved_index import saved_index_path

    if args.action == "build":
        from .collection import save_store_index
        from .model import RetroLM

        if args.index == "ivf":  # before any document is encoded
            check_index_options("ivf", use_gpu=torch.device(args.device).type == "cuda")
        documents = collect_documents(args.docs)  # every file read before the model loads: a bad one fails first
        model = RetroLM.from_pretrained(args.model, device=args.device, dtype=args.dtype, **_scorer(args))
        store = PageStore.open(args.out, model, create=True)
        start = time.perf_counter()
        store.add(documents)
        stored = store.documents()
        tokens = sum(stored[d]["tokens"] for d in documents)
        print(f"stored {len(documents)} documents ({tokens} tokens) in {time.perf_counter() - start:.1f} s; "
              f"{args.out} holds {len(stored)} documents, {sum(e['tokens'] for e in stored.values())} tokens")
        saved = os.path.isfile(saved_index_path(store, ("ivf", None)))
        if saved and model.device.type == "cuda" and args.index is None:
            print("the store's saved ivf index was left as it was (IVF runs on the CPU): build again on the CPU to "
                  "update it; until then `retrolm ask --index ivf` updates it in memory for each question")
        elif args.index == "ivf" or saved:
            start = time.perf_counter()
            path = save_store_index(store, "ivf")
            print(f"saved the ivf index of {sum(e['pages'] for e in stored.values())} pages to {path} in "
                  f"{time.perf_counter() - start:.1f} s (`retrolm ask --index ivf` reads it)")
        return 0
    store = PageStore.open(args.store, None)
    if args.action == "delete":
        store.delete(args.ids)
        print(f"deleted {len(args.ids)} documents; {len(store)} left")
        if os.path.isfile(saved_index_path(store, ("ivf", None))):  # rewriting it needs the model: not here
            print("the store's saved ivf index still holds them: `retrolm ask --index ivf` leaves them out for each "
                  "question, and the next `retrolm index build --index ivf` into the store rewrites it")
        return 0
    for doc_id, entry in sorted(store.documents().items()):
        print(f"{entry['tokens']:>10} tokens {entry['pages']:>7} pages  {doc_id}")
    return 0


def _scorer(args) -> dict:
    """from_pretrained's scorer override: none unless --scorer was given (the model's own scorer)."""
    return {} if args.scorer is None else {"scorer": args.scorer}


def _ask(args) -> int:
    from .model import RetroLM
    from .page_store import PageStore

    started = time.perf_counter()
    model = RetroLM.from_pretrained(args.model, device=args.device, dtype=args.dtype, **_scorer(args))
    store = PageStore.open(args.store, model)
    loaded = time.perf_counter()
    result = model.answer(args.question, store, max_new_tokens=args.max_new_tokens, template=args.template,
                          index=args.index, nprobe=args.nprobe, do_sample=False)
    print(f"answer: {result.text}")
    print(f"pages attended ({len(result.pages)}), best first:")
    for doc_id, page, score in result.pages:
        text = store.page_token_ids(doc_id, page)  # the page's text alone: its K/V are not needed here
        preview = model.tokenizer.decode(text, skip_special_tokens=True).replace("\n", " ")[:60]
        print(f"  {score:8.2f}  {doc_id} page {page}: {preview}")
    t = result.timings
    searched = args.index if args.index == "exact" else f"{args.index}, nprobe {args.nprobe or DEFAULT_NPROBE}"
    print(f"timings: model and store loaded in {loaded - started:.2f} s; index ({searched}) {t['index_s']:.2f} s, "
          f"retrieval {t['retrieve_s']:.3f} s, pages loaded {t['load_s']:.3f} s, answer {t['generate_s']:.2f} s")
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
    gen.add_argument("--lexical-weight", type=float, default=None,
                     help="add lexical page scores at this weight (either scorer; 10 finds facts in text unlike the "
                          "retriever's training text, docs/decisions.md; 0: off; default: the model's own, 10 for "
                          "the embedded model's trained scorer, 0 for others)")
    gen.add_argument("--lexical-near-miss-margin", type=margin_argument, default=None,
                     help="rank pages that repeat only a question's common words (another key's fact of the same "
                          "shape) below all others, at this rarity margin (0.7; retrolm/lexical.py); 'off': never; "
                          "default: the model's own")
    gen.add_argument("--lexical-hops", type=int, default=None,
                     help="also retrieve the pages linked hop by hop to the pages a question matches (a chain of "
                          "statements, each naming the one before), this many hops deep (retrolm/lexical.py); 0: "
                          "off; default: the model's own")
    gen.add_argument("--lexical-hop-span", type=int, default=None,
                     help="how many tokens each side of a link a hop looks for the next name (a statement's length; "
                          "retrolm/lexical.py); default: the model's own, a quarter page if it sets none")
    gen.add_argument("--lexical-hop-stops", type=escaped_argument, default=None,
                     help="characters that end a sentence, past which a hop does not look (backslash escapes read: "
                          "'.!?\\n'; '': the span alone bounds it; retrolm/lexical.py); default: the model's own")
    gen.add_argument("--lexical-echo-tokens", type=echo_tokens_argument, default=None,
                     help="rank a passage that repeats this many consecutive tokens of the question or more (a worked "
                          "example asking the same of another value) below all others, when the question's key is "
                          "held elsewhere (retrolm/lexical.py); 'off': never; default: the model's own")
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
    index = commands.add_parser("index", help="a page store: a document collection encoded once into KV pages")
    actions = index.add_subparsers(dest="action", required=True)
    build = actions.add_parser("build", help="encode documents into a store (new, or add to / replace in one)")
    build.add_argument("docs", nargs="+", help=f"text files, or folders of them ({', '.join(TEXT_SUFFIXES)})")
    build.add_argument("--out", required=True, help="the store directory (created if new)")
    build.add_argument("--model", default=None, help="RetroLM checkpoint (default: the embedded default model)")
    build.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    build.add_argument("--dtype", default=None, choices=sorted(DTYPE_NAMES))
    build.add_argument("--scorer", default=None, choices=SCORERS, help=SCORER_HELP)
    build.add_argument("--index", default=None, choices=("ivf",),
                       help="also build the approximate (IVF) page index and save it in the store, so that each "
                            "`retrolm ask --index ivf` reads it instead of training it (CPU only); a later build into "
                            "a store holding one brings it up to date")
    listing = actions.add_parser("list", help="the documents of a store")
    listing.add_argument("--store", required=True)
    delete = actions.add_parser("delete", help="remove documents from a store")
    delete.add_argument("--store", required=True)
    delete.add_argument("ids", nargs="+", help="document ids, as `retrolm index list` shows them")
    index.set_defaults(run=_index)
    ask = commands.add_parser("ask", help="answer a question from a page store's documents (`retrolm index build`)")
    ask.add_argument("question")
    ask.add_argument("--store", required=True)
    ask.add_argument("--model", default=None, help="the model the store was built with (default: the embedded one)")
    ask.add_argument("--template", default=None,
                     help='the text after the retrieved pages, "{question}" marking the question (default: the '
                          "question as `retrolm generate` asks it, in the tokenizer's chat template when it has one, "
                          'else "...Question: {question}\\nAnswer:")')
    ask.add_argument("--max-new-tokens", type=_positive_int, default=64)
    ask.add_argument("--index", default="exact", choices=INDEX_KINDS,
                     help="page search: exact (default), or ivf (approximate, faiss IVF, CPU only; recall against "
                          "exact: bench/index_recall.py, and for a store of the training-free scorer, a shortlist "
                          "ranked by its rule, bench/summary_search.py)")
    ask.add_argument("--nprobe", type=_positive_int, default=None,
                     help=f"with --index ivf: lists searched per question (default {DEFAULT_NPROBE}, half the lists "
                          "for a store of the training-free scorer; more is slower and closer to exact)")
    ask.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ask.add_argument("--dtype", default=None, choices=sorted(DTYPE_NAMES))
    ask.add_argument("--scorer", default=None, choices=SCORERS, help=SCORER_HELP + " (the store's, as built)")
    ask.set_defaults(run=_ask)
    args = parser.parse_args(argv)
    return exit_code(lambda: args.run(args))


if __name__ == "__main__":
    sys.exit(main())
