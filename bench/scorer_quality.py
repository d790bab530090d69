"""Page scorers compared on one LLM: RULER on the shipped default model's base LM (no LoRA), 4x to 64x its window.

    python bench/scorer_quality.py --device cuda --out bench/results

Methods, all on the same base LM and the shipped RetroLM settings (page size, top-k, sink, local):
- attention_scorer: the training-free scorer (what a plain Hugging Face model gets);
- trained_retriever: the shipped model's trained retriever weights;
- untrained_retriever: a freshly initialised retriever (the explicit `init_retriever=True` opt-in);
- rag: the base LLM reading the chunks a faiss index ranks highest (offline LLM-embedding embedder);
- streaming: a sink page and the most recent pages only (top_k=0);
- attention_scorer_lexical, trained_retriever_lexical: those scorers plus lexical page scores (--lexical-weight,
  --lexical-query-pages: the shipped model's setting). The three scorers above run without them.
Writes <out>/scorer_quality.json, .md and .png.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from safetensors.torch import load_file  # noqa: E402

from bench.default_model_quality import grid_arguments, run_grid, write_results  # noqa: E402
from bench.merge_quality import merge_records  # noqa: E402
from retrolm.checkpoint import BASE_DIR, RETRIEVER_WEIGHTS  # noqa: E402
from retrolm.errors import RetroLMError, exit_code  # noqa: E402
from retrolm.model import RetroLM  # noqa: E402

METHODS = ("attention_scorer", "trained_retriever", "untrained_retriever", "rag", "streaming",
           "attention_scorer_lexical", "trained_retriever_lexical")
TASKS = "niah_single_2,niah_multikey_1,niah_multivalue,vt"


def variant_models(model: str, work: str,
                   lexical: tuple[float, int] = (10.0, 2)) -> dict[str, tuple[str, str, list[str]]]:
    """{method: (model directory, eval method, extra eval options)}: three checkpoints of the base LM, one per scorer,
    without lexical page scores; the *_lexical methods add them (`lexical`: weight, query pages) at eval time."""
    shipped = RetroLM.from_pretrained(model)
    knobs = {k: v for k, v in shipped.config.to_dict().items()
             if k not in ("base_model_name_or_path", "base_model_fingerprint", "scorer")}
    knobs["lexical_weight"] = 0.0
    base = os.path.join(model, BASE_DIR)
    dirs = {name: os.path.join(work, "models", name) for name in METHODS[:3]}
    if not os.path.isdir(dirs["attention_scorer"]):
        RetroLM.from_pretrained(base, **knobs).save_pretrained(dirs["attention_scorer"], save_base_model=True)
    if not os.path.isdir(dirs["trained_retriever"]):
        trained = RetroLM.from_pretrained(base, init_retriever=True, **knobs)
        trained.retriever.load_state_dict(load_file(os.path.join(model, RETRIEVER_WEIGHTS)))
        trained.save_pretrained(dirs["trained_retriever"], save_base_model=True)
    if not os.path.isdir(dirs["untrained_retriever"]):
        RetroLM.from_pretrained(base, init_retriever=True, **knobs).save_pretrained(
            dirs["untrained_retriever"], save_base_model=True)
    with_lexical = ["--lexical-weight", str(lexical[0]), "--lexical-query-pages", str(lexical[1])]
    return {
        **{name: (path, "retrolm", []) for name, path in dirs.items()},
        "rag": (base, "rag", ["--rag-embedder", "llm-input-embeddings", "--rag-chunk-tokens", "128"]),
        "streaming": (dirs["attention_scorer"], "streaming", []),
        "attention_scorer_lexical": (dirs["attention_scorer"], "retrolm", with_lexical),
        "trained_retriever_lexical": (dirs["trained_retriever"], "retrolm", with_lexical),
    }


def merged(record: dict, path: str) -> dict:
    """This run's record with the other methods of an earlier one (same lengths and samples), in METHODS order."""
    with open(path) as f:
        earlier = json.load(f)
    if earlier["lengths"] != record["lengths"] or earlier["num_samples"] != record["num_samples"]:
        raise RetroLMError(f"{path} ran other lengths or sample counts; rerun both with the same options.")
    others = {m: m for m in earlier["scores"] if m not in record["scores"]}
    combined, _ = merge_records([(earlier, others, path), (record, None, "this run")])
    order = [m for m in METHODS if m in combined["scores"]]
    return {**record, **combined, "lengths": record["lengths"],
            "scores": {m: combined["scores"][m] for m in order},
            "devices": {**{m: d for m, d in earlier["devices"].items() if m in others}, **record["devices"]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=os.path.join(ROOT, "assets", "retrolm-byte-llama"))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--factors", default="4,16,64", help="context lengths as multiples of the window")
    parser.add_argument("--work", default=os.path.join(ROOT, "work", "scorer_quality"))
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    parser.add_argument("--merge", help="a scorer_quality.json of an earlier run (another host): its methods that "
                                        "this run does not run join the table")
    grid_arguments(parser)
    parser.set_defaults(tasks=TASKS, num_samples=20)
    args = parser.parse_args()
    with open(os.path.join(args.model, BASE_DIR, "config.json")) as f:
        window = json.load(f)["max_position_embeddings"]
    lengths = [window * int(x) for x in args.factors.split(",")]
    variants = (variant_models(args.model, args.work) if not args.collect_only
                else {name: (None, None, None) for name in METHODS})
    methods = [m for m in args.methods.split(",") if m]
    record = run_grid(variants, methods, [t for t in args.tasks.split(",") if t], lengths, args)
    if args.merge:
        record = merged({**record, "window": window}, args.merge)
    write_results(record, window, os.path.join(args.out, "scorer_quality"), args.note, METHODS, "attention_scorer")


if __name__ == "__main__":
    sys.exit(exit_code(main))
