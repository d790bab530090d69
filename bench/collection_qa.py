"""Questions over a document collection three ways, on the same questions (issue 15): the page store, text-chunk
RAG, and RetroLM over the whole concatenation.

    python bench/collection_qa.py --docs 32 --questions 40 --out bench/results/collection
    python bench/collection_qa.py --docs 32 --scorer attention   # the training-free scorer (store and concat)

The collection is bench/collection_store.py's: essay-shaped documents of the default model's kind (`--text
reference`: windows of Python's language reference, text held out of the default model's training), each holding
one fact of the same shape under its own key, so every other document is a distractor. Each question asks for one
document's value, with RULER's answer start (the default model answers needles after it). `--facts one` keeps only
the asked document's fact: the others are the same essays with their fact taken out, so a question has one
answerable document among distractors (the default model cannot tell same-shape facts apart by key, even in its
window: RULER multi-key 35% at 1x). There the store holds the fact-free collection, and each question adds its
document (encoded then, counted in its cost), is answered, and puts the fact-free version back (its shard reused).
- store: `RetroLM.answer` over a page store of the collection (built once): bookmark keys of every page in the
  exact inner-product index, the best pages attended, only the question encoded.
- rag: the same documents cut into chunks of `--chunk-tokens`, embedded once with `--embedder` (eval's rag
  embedders: a Hugging Face encoder, or the LLM's own input embeddings offline), in the same exact inner-product
  index (eval/methods.py's pipeline); the best chunks for the question, up to what the plain model's window leaves
  beside the question, are joined in collection order and the plain model answers them.
- concat: `RetroLM.generate` over the documents joined by blank lines, then the question: everything re-encoded
  for every question.
Per method: accuracy (the answer starts with the value), recall of the needle (its pages, or its chunks, among
those attended; not measured for concat), context tokens attended, tokens encoded per question (the work that
grows with the collection), seconds per question. Writes collection_qa_<docs>.json / .md under --out (through
temporary files; _one and _attention mark `--facts one` and the training-free scorer); `--plot FILES` draws
result files into collection_qa.png (`--plot-name` another).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.collection_store import TEXTS, answer_template, collection, needle_pages, question  # noqa: E402
from bench.common import write_result_files  # noqa: E402
from eval.methods import LLM_EMBEDDER, MethodOptions, best_chunks, join_chunks, make_embedder  # noqa: E402
from retrolm.cli import OFF, margin_argument  # noqa: E402
from retrolm.collection import search_pages, store_index, store_lexical_index  # noqa: E402
from retrolm.index import InnerProductIndex  # noqa: E402
from retrolm.model import RetroLM  # noqa: E402
from retrolm.page_store import PageStore  # noqa: E402

METHODS = ("store", "rag", "concat")


def ids_of(model, text: str) -> list[int]:
    return model.tokenizer(text, add_special_tokens=False).input_ids


def greedy(generate, prompt: list[int], new: int, device, **kwargs) -> tuple[list[int], float]:
    """(new token ids, seconds) of greedy decoding after `prompt` with `generate` (HF's or RetroLM's)."""
    started = time.perf_counter()
    output = generate(input_ids=torch.tensor([prompt], device=device), max_new_tokens=new, do_sample=False, **kwargs)
    return output[0, len(prompt):].tolist(), time.perf_counter() - started


class ChunkRag:
    """Text-chunk RAG over the collection: chunks embedded once, an exact inner-product index, the plain model."""

    def __init__(self, model, docs: dict[str, str], chunk_tokens: int, embedder: str):
        self.model, self.window = model, model.base_model.config.max_position_embeddings
        self.chunks, self.owner = [], []  # token ids of each chunk in collection order; (document, first token)
        for doc_id, text in docs.items():
            ids = ids_of(model, text)
            for start in range(0, len(ids), chunk_tokens):
                self.chunks.append(ids[start:start + chunk_tokens])
                self.owner.append((doc_id, start))
        self.embedder = make_embedder(model, embedder)
        started = time.perf_counter()
        vectors = self.embedder.encode([model.tokenizer.decode(c) for c in self.chunks])
        self.index = InnerProductIndex(vectors.shape[1], use_gpu=model.device.type == "cuda")
        self.index.add(vectors)
        self.build_s = time.perf_counter() - started
        self.gap = ids_of(model, "\n\n")

    def ask(self, doc_id: str, fact, offset: int, new: int) -> dict:
        started = time.perf_counter()
        tail = ids_of(self.model, answer_template(fact).replace("{question}", question(fact)))
        room = self.window - len(tail) - new
        _, order = self.index.search(self.embedder.encode([question(fact)]), len(self.chunks))
        order = [int(i) for i in order[0] if i >= 0]
        chosen = best_chunks([len(c) for c in self.chunks], order, room, len(self.gap))
        context = join_chunks(self.chunks, chosen, self.gap)
        held = {self.owner[i][1] + t for i in chosen if self.owner[i][0] == doc_id for t in range(len(self.chunks[i]))}
        answer, _ = greedy(self.model.base_model.generate, context + tail, new, self.model.device)
        return {"answer": self.model.tokenizer.decode(answer), "seconds": time.perf_counter() - started,
                "recalled": set(range(offset, offset + len(fact.needle))) <= held, "context_tokens": len(context),
                "encoded_tokens": len(context) + len(tail) + new}


def ask_store(model, store, doc_id: str, fact, offset: int, new: int, index: str = "exact") -> dict:
    started = time.perf_counter()
    result = model.answer(question(fact), store, max_new_tokens=new, template=answer_template(fact), index=index,
                          do_sample=False)
    seconds = time.perf_counter() - started
    attended = {(d, p) for d, p, _ in result.pages}
    tail = len(ids_of(model, answer_template(fact).replace("{question}", question(fact))))
    searched = tail if model.config.scorer == "attention" else 0  # the training-free search encodes it alone first
    needle = needle_pages(doc_id, fact, offset, model.config.page_size)
    return {"answer": result.text, "seconds": seconds, "index_s": result.timings["index_s"],
            "recalled": needle <= attended, "needle_rank": needle_rank(model, store, needle, fact),
            "context_tokens": len(result.pages) * model.config.page_size, "encoded_tokens": searched + tail + new}


def needle_rank(model, store, needle: set, fact) -> int:
    """The rank (1 = best) of the best of the needle's pages among every stored page, by the store's exact search
    for the question (answer's first step, before neighbours join, lexical scores added when the model has them): how
    far a miss was from the page budget."""
    index, _ = store_index(store)
    lexical = (store_lexical_index(store, model.config, model._hop_stop_table())[0] if model.config.lexical_weight
               else None)
    prompt = torch.tensor(ids_of(model, answer_template(fact).replace("{question}", question(fact))))
    ranked = search_pages(model, index, prompt, len(index), lexical=lexical)
    return 1 + next(i for i, (doc_id, page, _) in enumerate(ranked) if (doc_id, page) in needle)


def ask_store_one(model, store, doc_id: str, text: str, fact_free: str, fact, offset: int, new: int,
                  index: str = "exact") -> dict:
    """`--facts one`: the asked document added with its fact (encoded now), asked, then its fact-free version put
    back (that shard is kept, so nothing is encoded again); the add counts in the time and tokens."""
    started = time.perf_counter()
    store.add({doc_id: text}, progress=False)
    added = time.perf_counter() - started
    row = ask_store(model, store, doc_id, fact, offset, new, index)
    store.add({doc_id: fact_free}, progress=False)
    row["seconds"] += added
    row["encoded_tokens"] += len(ids_of(model, text))
    return row


def without_fact(text: str, fact, offset: int) -> str:
    """`text` with its fact's sentence (at `offset`) and the space or line break that joined it taken out."""
    end = offset + len(fact.needle)
    if text[end:end + 1] in (" ", "\n"):
        return text[:offset] + text[end + 1:]
    return text[:offset].rstrip(" ") + text[end:]


def ask_concat(model, context: list[int], fact, new: int) -> dict:
    tail = ids_of(model, answer_template(fact).replace("{question}", question(fact)))
    answer, seconds = greedy(model.generate, context + tail, new, model.device, progress=False)
    return {"answer": model.tokenizer.decode(answer), "seconds": seconds, "recalled": None,
            "context_tokens": len(context), "encoded_tokens": len(context) + len(tail) + new}


def summarise(rows: list[dict]) -> dict:
    recalled = [r["recalled"] for r in rows if r["recalled"] is not None]
    mean = lambda key: sum(r[key] for r in rows) / len(rows)  # noqa: E731
    ranks = sorted(r["needle_rank"] for r in rows if "needle_rank" in r)
    return {"accuracy": round(100 * mean("correct"), 1),
            "needle_recall": round(100 * sum(recalled) / len(recalled), 1) if recalled else None,
            "median_needle_rank": ranks[len(ranks) // 2] if ranks else None,
            "context_tokens": round(mean("context_tokens")), "encoded_tokens_per_question": round(
                mean("encoded_tokens")), "seconds_per_question": round(mean("seconds"), 3)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="RetroLM checkpoint (default: the embedded default model)")
    parser.add_argument("--docs", type=int, default=32)
    parser.add_argument("--doc-tokens", type=int, default=1024, help="characters = tokens for the default model")
    parser.add_argument("--questions", type=int, default=40)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--chunk-tokens", type=int, default=MethodOptions.rag_chunk_tokens,
                        help="rag chunk size in tokens (default: eval's rag default)")
    parser.add_argument("--embedder", default=LLM_EMBEDDER,
                        help="rag embedder: a Hugging Face encoder name or path (e.g. BAAI/bge-small-en-v1.5), or "
                             f"{LLM_EMBEDDER} (the LLM's input embeddings, offline; the default here)")
    parser.add_argument("--scorer", default="trained", choices=("trained", "attention"),
                        help="RetroLM's page scorer for store and concat: the model's trained retriever (default) or "
                             "the training-free one (page summaries; what a model without a retriever gets); result "
                             "files of the latter end in _attention")
    parser.add_argument("--facts", default="every", choices=("every", "one"),
                        help="every document holds its own fact (default), or only the asked one does")
    parser.add_argument("--text", default="essay", choices=TEXTS,
                        help="documents of essay filler (the default model's kind) or of Python's language "
                             "reference (held out of its training); result files of the latter end in _reference")
    parser.add_argument("--neighbor-direction", default=None, choices=("next", "previous", "both"),
                        help="RetroLMConfig.neighbor_direction for store and concat (default: the model's); result "
                             "files of another end in _<direction>")
    parser.add_argument("--index", default="exact", choices=("exact", "ivf"),
                        help="the store's page search (RetroLM.answer's index; ivf: CPU only); result files of ivf end "
                             "in _ivf")
    parser.add_argument("--lexical-weight", type=float, default=None,
                        help="RetroLMConfig.lexical_weight for store and concat (default: the model's; the default "
                             "model's is 10, its trained scorer only); result files of a weight > 0 end in "
                             "_lexical<weight>")
    parser.add_argument("--near-miss-margin", default=None, type=margin_argument,
                        help="RetroLMConfig.lexical_near_miss_margin for store and concat, or 'off' (default: the "
                             "model's; the default model's is 0.7); result files of a set margin end in _nearmiss<m>")
    parser.add_argument("--store", default=None,
                        help="the store's directory, kept and reused by a later run of the same collection, scorer "
                             "and --facts (default: a temporary one, removed after)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "collection"))
    parser.add_argument("--plot-name", default="collection_qa.png", help="the --plot figure's file name under --out")
    parser.add_argument("--plot", nargs="+", default=None, metavar="JSON",
                        help="run nothing: draw these result files (collection_qa_*.json) into collection_qa.png "
                             "under --out")
    args = parser.parse_args(argv)
    if args.plot:
        plot(args.plot, os.path.join(args.out, args.plot_name))
        return
    overrides = {knob: value for knob, value in (("neighbor_direction", args.neighbor_direction),
                                                 ("lexical_weight", args.lexical_weight)) if value is not None}
    if args.near_miss_margin is not None:
        overrides["lexical_near_miss_margin"] = None if args.near_miss_margin == OFF else args.near_miss_margin
    model = RetroLM.from_pretrained(args.model, device=args.device, scorer=args.scorer, **overrides)
    args.lexical_weight = model.config.lexical_weight  # as run (the model's own unless given), for the file name
    args.near_miss_margin = model.config.lexical_near_miss_margin
    docs, facts = collection(args.docs, args.doc_tokens, args.seed, args.text)
    asked = random.Random(args.seed + 1).sample(sorted(docs), min(args.questions, len(docs)))
    new = max(len(facts[d][0].value) for d in asked) + 2
    rows: dict[str, list[dict]] = {}
    setup = {"collection_tokens": sum(len(ids_of(model, t)) for t in docs.values())}

    def record(method: str, results: list[dict]) -> None:
        """Score `method`'s answers and rewrite the result files, so a run stopped later keeps what it finished."""
        for doc_id, row in zip(asked, results):
            value = facts[doc_id][0].value
            row.update(doc=doc_id, value=value, correct=row["answer"].strip().startswith(value))
        rows[method] = results
        write_results(args, setup, rows, len(asked))

    one = args.facts == "one"
    fact_free = {d: without_fact(text, *facts[d]) for d, text in docs.items()} if one else docs

    def collection_for(doc_id: str) -> dict[str, str]:
        """The collection a question about `doc_id` is asked over (`--facts one`: only that document's fact)."""
        return {**fact_free, doc_id: docs[doc_id]} if one else docs

    if "store" in args.methods:
        path = args.store or tempfile.mkdtemp(prefix="retrolm-store-")
        try:
            store = PageStore.open(path, model, create=True)
            started = time.perf_counter()
            store.add(fact_free)
            setup["store_build_s"] = round(time.perf_counter() - started, 1)
            record("store", [ask_store_one(model, store, d, docs[d], fact_free[d], *facts[d], new, args.index)
                             if one else ask_store(model, store, d, *facts[d], new, args.index) for d in asked])
        finally:
            if args.store is None:
                shutil.rmtree(path, ignore_errors=True)
    if "rag" in args.methods:
        rag, results = None, []
        for d in asked:
            if rag is None or one:  # `--facts one`: the chunks of this question's collection, embedded for it
                rag = ChunkRag(model, collection_for(d), args.chunk_tokens, args.embedder)
            results.append(rag.ask(d, *facts[d], new))
        setup["rag_index_s"] = round(rag.build_s, 1)
        record("rag", results)
    if "concat" in args.methods:
        context, results = None, []
        for d in asked:
            if context is None or one:
                context = ids_of(model, "\n\n".join(collection_for(d).values()))
            results.append(ask_concat(model, context, facts[d][0], new))
        record("concat", results)


def write_results(args, setup: dict, rows: dict[str, list[dict]], questions: int) -> None:
    summary = [{"method": m, **summarise(r)} for m, r in rows.items()]
    name = (f"collection_qa_{args.docs}" + ("_one" if args.facts == "one" else "")
            + ("" if args.scorer == "trained" else f"_{args.scorer}")
            + ("" if args.text == "essay" else f"_{args.text}") + ("" if args.index == "exact" else "_ivf")
            + ("" if args.neighbor_direction is None else f"_{args.neighbor_direction}")
            + (f"_lexical{args.lexical_weight:g}" if args.lexical_weight else "")
            + (f"_nearmiss{args.near_miss_margin:g}" if args.near_miss_margin is not None else ""))
    table = write_result_files(
        args.out, name, {"args": vars(args), "setup": setup, "questions": rows}, summary,
        f"{questions} questions over {args.docs} documents of {args.text} text ({setup['collection_tokens']} tokens), "
        f"{args.model or 'default model'}, {args.scorer} scorer, {args.index} store index, neighbour pages "
        f"{args.neighbor_direction or 'as the model sets them'}, lexical_weight {args.lexical_weight:g}, near-miss "
        f"margin {args.near_miss_margin}, {args.device}",
        f"Setup (once per collection): {setup}. Each question asks for one document's value "
        + ("(only that document holds a fact; the store adds it per question, counted in its time and tokens)"
           if args.facts == "one" else "among facts of the same shape in every document")
        + "; recall: the needle's pages (store) or chunks (rag) are among those attended. Encoded tokens: what the "
        "model runs per question (the store reuses the pages' KV; concat re-encodes the whole collection).")
    print(table, flush=True)


def plot(paths: list[str], target: str) -> None:
    """Accuracy, needle recall and tokens encoded per question against the collection's size, one line per method,
    from result files of this script (each one collection size; the device in each point's label)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[tuple[int, dict, str]]] = {}
    for path in paths:
        with open(path) as f:
            run = json.load(f)
        for row in run["summary"]:
            series.setdefault(row["method"], []).append((run["args"]["docs"], row, run["args"]["device"]))
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    panels = (("accuracy", "accuracy (%)"), ("needle_recall", "needle recall (%)"),
              ("encoded_tokens_per_question", "tokens encoded per question"))
    for axis, (key, label) in zip(axes, panels):
        for method, points in sorted(series.items()):
            points = sorted((docs, row[key]) for docs, row, _ in points if row[key] is not None)
            if points:  # a fixed colour and marker per method, so panels match and equal values stay visible
                style = {"store": ("tab:green", "o", "-"), "rag": ("tab:orange", "s", "--"),
                         "concat": ("tab:blue", "^", ":")}[method]
                axis.plot([d for d, _ in points], [v for _, v in points], color=style[0], marker=style[1],
                          linestyle=style[2], label=method)
        axis.set_xscale("log")
        axis.set_xlabel("documents in the collection (1,024 tokens each)")
        axis.set_ylabel(label)
        if key == "encoded_tokens_per_question":
            axis.set_yscale("log")
        else:
            axis.set_ylim(-2, 102)
        axis.grid(True, alpha=0.3)
    axes[0].legend()
    devices = sorted({(docs, device) for points in series.values() for docs, _, device in points})
    figure.suptitle("Questions over a collection, default model (documents: device; "
                    + "; ".join(f"{docs}: {device}" for docs, device in devices) + ")")
    figure.tight_layout()
    handle, temporary = tempfile.mkstemp(suffix=".png", dir=os.path.dirname(target))
    os.close(handle)
    figure.savefig(temporary, dpi=110)
    os.replace(temporary, target)


if __name__ == "__main__":
    main()
