"""Quality proof of the default model: RULER through the eval harness, up to seven methods, 1x to 64x its window.

    python bench/default_model_quality.py --post-trained DIR   # the shipped model; DIR: a --post-train build
    python bench/default_model_quality.py --model M         # a post-trained model M (its retriever is stage 1's)

Methods (one `python -m eval.ruler` run per method and task, `--jobs` at a time):
- retrolm: the model measured (the shipped one is base + stage-1 retriever, no post-training);
- retrolm_untrained_retriever: that model with its retriever reset to the untrained initialisation;
- retrolm_no_post_training: a post-trained model's base LLM (no LoRA) with the stage-1 retriever;
- retrolm_post_trained: --post-trained, the same base and retriever plus a stage-2 adapter
  (train/build_default_model.py --post-train), the ablation of post-training for a model shipped without it;
- full: the base LLM with full attention over its window (longer prompts cut in the middle, RULER's way);
- rag: the base LLM reading the chunks a faiss index ranks highest (offline LLM-embedding embedder);
- streaming: the shipped LLM with a sink page and the most recent pages (RetroLM with top_k=0);
- retrolm_lexical: the model measured, its page scores plus lexical ones at --lexical-weight (retrolm/lexical.py);
- retrolm_no_lexical: the model measured with lexical page scores off (the shipped model has them on);
- retrolm_near_miss, retrolm_no_near_miss: the model measured with near misses judged (--near-miss-margin) or not
  (retrolm/lexical.py), whichever it does not do itself (only for a model with lexical page scores);
- retrolm_hops, retrolm_no_hops: the model measured with lexical hops (--hops deep) or without (retrolm/lexical.py),
  whichever it does not do itself (only for a model with lexical page scores);
- retrolm_no_echo: the model measured without judging echoes of the question (retrolm/lexical.py), for a model
  that judges them.
Writes <assets>/quality.json, quality.md and quality.png (score vs context length, one panel per task).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.common import environment, markdown_table, write_json, write_text  # noqa: E402
from bench.stage1_model import stage1_model  # noqa: E402
from eval.ruler_tasks import Generator  # noqa: E402
from retrolm.errors import RetroLMError, exit_code  # noqa: E402
from retrolm.config import RetroLMConfig  # noqa: E402
from retrolm.model import BASE_DIR, RetroLM  # noqa: E402
from retrolm.retriever import PageRetriever  # noqa: E402
from train.corpus import byte_count  # noqa: E402

METHODS = ("retrolm", "retrolm_untrained_retriever", "retrolm_no_post_training", "retrolm_post_trained", "full",
           "rag", "streaming", "retrolm_lexical", "retrolm_no_lexical", "retrolm_near_miss", "retrolm_no_near_miss",
           "retrolm_hops", "retrolm_no_hops", "retrolm_no_echo")
DEFAULT_TASKS = "niah_single_1,niah_single_2,niah_multikey_1,niah_multivalue,vt"


def default_methods(model: str, post_trained: str | None) -> list[str]:
    """Every method that measures something distinct: no_post_training only for a post-trained model,
    post_trained only when its model is given, retrolm_lexical for a model without lexical page scores and
    retrolm_no_lexical for one with them, and for the latter the near-miss, hop and echo methods it does not do
    itself."""
    adapter = os.path.isdir(os.path.join(model, "adapter"))
    config = RetroLMConfig.load(model)
    lexical, judged = bool(config.lexical_weight), config.lexical_near_miss_margin is not None
    hops, echo = config.lexical_hops, config.lexical_echo_tokens is not None
    return [m for m in METHODS if (m != "retrolm_no_post_training" or adapter)
            and (m != "retrolm_post_trained" or post_trained)
            and (m != "retrolm_lexical" or not lexical) and (m != "retrolm_no_lexical" or lexical)
            and (m != "retrolm_near_miss" or (lexical and not judged)) and (m != "retrolm_no_near_miss" or judged)
            and (m != "retrolm_hops" or (lexical and not hops)) and (m != "retrolm_no_hops" or hops)
            and (m != "retrolm_no_echo" or echo)]


def variant_models(model: str, stage1_retriever: str, work: str, post_trained: str | None = None,
                   lexical: tuple[float, int] = (10.0, 2), near_miss_margin: float = 0.7, hops: int = 4
                   ) -> dict[str, tuple[str, str, list[str]]]:
    """{method name: (model directory, eval method, extra eval options)}, building the two ablation checkpoints."""
    untrained, no_post = os.path.join(work, "untrained_retriever"), os.path.join(work, "no_post_training")
    if not os.path.isdir(untrained):
        shipped = RetroLM.from_pretrained(model)
        inner_hidden = shipped.retriever.input_proj.in_features
        shipped.retriever = PageRetriever(shipped.config.retriever, inner_hidden, shipped.config.page_size)
        shipped.save_pretrained(untrained, save_base_model=True)
    stage1_model(model, no_post, retriever=stage1_retriever)
    base = os.path.join(model, BASE_DIR)
    return {
        "retrolm": (model, "retrolm", []),
        "retrolm_untrained_retriever": (untrained, "retrolm", []),
        "retrolm_no_post_training": (no_post, "retrolm", []),
        "retrolm_post_trained": (post_trained, "retrolm", []),
        "full": (base, "full", []),
        "rag": (base, "rag", ["--rag-embedder", "llm-input-embeddings", "--rag-chunk-tokens", "128"]),
        "streaming": (model, "streaming", []),
        "retrolm_lexical": (model, "retrolm", ["--lexical-weight", str(lexical[0]),
                                               "--lexical-query-pages", str(lexical[1])]),
        "retrolm_no_lexical": (model, "retrolm", ["--lexical-weight", "0"]),
        "retrolm_near_miss": (model, "retrolm", ["--lexical-near-miss-margin", str(near_miss_margin)]),
        "retrolm_no_near_miss": (model, "retrolm", ["--lexical-near-miss-margin", "off"]),
        "retrolm_hops": (model, "retrolm", ["--lexical-hops", str(hops)]),
        "retrolm_no_hops": (model, "retrolm", ["--lexical-hops", "0"]),
        "retrolm_no_echo": (model, "retrolm", ["--lexical-echo-tokens", "off"]),
    }


def shortest_length(task: str) -> int:
    """RULER's smallest sample of `task` in byte tokens, generation budget included (vt carries a one-shot
    example of ~1.4K tokens)."""
    return Generator(task, byte_count).shortest_length()


def collected(name, task, out) -> dict:
    """What the eval run of (method, task) under `out` has scored so far, and its error line if it failed."""
    scores_path, log = os.path.join(out, "scores.json"), os.path.join(out, "log.txt")
    record = json.load(open(scores_path)) if os.path.isfile(scores_path) else {}
    scores = record.get("scores", {}).get(task, {})
    device = record.get("method_options", {}).get("device") or None
    errors = [line.strip() for line in open(log)] if os.path.isfile(log) else []
    errors = [line for line in errors if line.startswith("error:")]
    return {"method": name, "task": task, "scores": scores, "device": device, "error": errors[-1] if errors else None}


def run_one(name, model, method, extra, task, lengths, args, out) -> dict:
    if args.collect_only:
        return collected(name, task, out)
    log = os.path.join(out, "log.txt")
    command = [sys.executable, "-m", "eval.ruler", "--model", model, "--method", method, "--tasks", task,
               "--lengths", ",".join(str(x) for x in lengths), "--num-samples", str(args.num_samples),
               "--seed", str(args.seed), "--out", out] + extra + (["--device", args.device] if args.device else [])
    started = time.perf_counter()
    os.makedirs(out, exist_ok=True)
    with open(log, "a") as f:
        done = subprocess.run(command, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                              env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    seconds = time.perf_counter() - started
    result = collected(name, task, out)
    print(f"{name:>28} {task:<16} rc={done.returncode} {seconds:6.0f} s  {result['scores']}", flush=True)
    return {**result, "returncode": done.returncode, "seconds": round(seconds, 1)}


def plot(table: dict, lengths: list[int], window: int, path: str, methods=METHODS, highlight="retrolm") -> None:
    """Score vs context length, one panel per task; `highlight` drawn thick and on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(next(iter(table.values())))
    colors = {name: f"C{i}" for i, name in enumerate(methods)}  # one colour per method in every panel
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.6 * len(tasks), 3.6), sharey=True, squeeze=False)
    axes = axes[0]
    for ax, task in zip(axes, tasks):
        for name in sorted(table, key=lambda n: n == highlight):  # drawn last, on top
            points = [(n // window, table[name][task].get(str(n))) for n in lengths]
            points = [(x, y) for x, y in points if y is not None]
            if points:
                ax.plot(*zip(*points), marker="o", color=colors.get(name), label=name,
                        linewidth=2.6 if name == highlight else 1.2, zorder=3 if name == highlight else 2)
        ax.set_xscale("log", base=2)
        ax.set_xticks([n // window for n in lengths], [f"{n // window}x" for n in lengths])
        ax.set_title(task)
        ax.set_xlabel(f"context (x {window}-token window)")
        ax.set_ylim(-3, 103)
    axes[0].set_ylabel("score (%)")
    handles = [plt.Line2D([], [], color=colors.get(n), marker="o", label=n) for n in table]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=os.path.join(ROOT, "assets", "retrolm-byte-llama"))
    parser.add_argument("--stage1-retriever", default=None,
                        help="stage 1's retriever.safetensors (default: the model's own; stage 2 does not train it)")
    parser.add_argument("--post-trained", default=None,
                        help="the model with a stage-2 adapter, for the retrolm_post_trained row")
    parser.add_argument("--methods", default=None, help=f"comma-separated, of {', '.join(METHODS)} (default: "
                                                        "every one that measures something distinct)")
    parser.add_argument("--factors", default="1,4,16,64", help="context lengths as multiples of the window")
    parser.add_argument("--lexical-weight", type=float, default=10.0, help="lexical_weight of retrolm_lexical "
                        "(10: the smallest weight with the best validation-needle recall, bench/results/lexical/)")
    parser.add_argument("--lexical-query-pages", type=int, default=2, help="lexical_query_pages of retrolm_lexical")
    parser.add_argument("--near-miss-margin", type=float, default=0.7,
                        help="lexical_near_miss_margin of retrolm_near_miss (0.7: the shipped model's)")
    parser.add_argument("--hops", type=int, default=4, help="lexical_hops of retrolm_hops (4: the shipped model's)")
    parser.add_argument("--work", default=os.path.join(ROOT, "work", "quality"))
    parser.add_argument("--assets", default=os.path.join(ROOT, "assets"))
    grid_arguments(parser)
    args = parser.parse_args()
    with open(os.path.join(args.model, BASE_DIR, "config.json")) as f:
        window = json.load(f)["max_position_embeddings"]
    lengths = [window * int(x) for x in args.factors.split(",")]
    methods = ([m for m in args.methods.split(",") if m] if args.methods
               else default_methods(args.model, args.post_trained))
    unknown = [m for m in methods if m not in METHODS]
    if unknown or ("retrolm_post_trained" in methods and not args.post_trained and not args.collect_only):
        raise RetroLMError(f"--methods: unknown {', '.join(unknown)} (known: {', '.join(METHODS)})" if unknown else
                           "retrolm_post_trained needs --post-trained MODEL (a build with --post-train)")
    variants = (variant_models(args.model, args.stage1_retriever, args.work, args.post_trained,
                               (args.lexical_weight, args.lexical_query_pages), args.near_miss_margin, args.hops)
                if not args.collect_only else {name: (None, None, None) for name in METHODS})
    tasks = [t for t in args.tasks.split(",") if t]
    record = run_grid(variants, methods, tasks, lengths, args)
    write_results(record, window, os.path.join(args.assets, "quality"), f"{args.note}", METHODS, "retrolm")


def grid_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every RULER grid run shares (this script's and bench/scorer_quality.py's)."""
    parser.add_argument("--tasks", default=DEFAULT_TASKS)
    parser.add_argument("--num-samples", type=int, default=25)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--jobs", type=int, default=8, help="eval processes at once")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads per process")
    parser.add_argument("--device", default=None)
    parser.add_argument("--note", default="", help="a line for the table's header (e.g. where the runs ran)")
    parser.add_argument("--collect-only", action="store_true",
                        help="run nothing: tabulate the scores already under --work (runs made elsewhere)")


def run_grid(variants: dict, methods: list[str], tasks: list[str], lengths: list[int], args) -> dict:
    """Runs (or, with --collect-only, collects) every (method, task) at every length RULER's samples fit."""
    jobs, skipped = [], {}
    shortest = {task: shortest_length(task) for task in tasks}
    for name in methods:
        model, method, extra = variants[name]
        for task in tasks:
            fits = [n for n in lengths if n >= shortest[task]]
            skipped[task] = [n for n in lengths if n not in fits]
            out = os.path.join(args.work, name, task)
            jobs.append((name, model, method, extra, task, fits, args, out))
    started = time.perf_counter()
    with ThreadPoolExecutor(args.jobs) as pool:
        runs = list(pool.map(lambda job: run_one(*job), jobs))
    table = {name: {task: {} for task in tasks} for name in methods}
    for r in runs:
        table[r["method"]][r["task"]] = r["scores"]
    return {"lengths": lengths, "num_samples": args.num_samples, "seed": args.seed,
            "scores": table, "not_run": {t: v for t, v in skipped.items() if v}, "shortest": shortest,
            "runs": runs, "wall_s": round(time.perf_counter() - started, 1),
            "devices": {name: sorted({str(r["device"]) for r in runs if r["method"] == name}) for name in methods},
            "environment": environment()}


def write_results(record: dict, window: int, prefix: str, note: str, palette, highlight: str) -> None:
    """<prefix>.json, .md (one row per task and method, one column per length) and .png."""
    record = {**record, "window": window, "note": note}
    table, lengths, runs = record["scores"], record["lengths"], record["runs"]
    write_json(prefix + ".json", record)
    rows = []
    for task in next(iter(table.values())):
        for name in table:
            row = {"task": task, "method": name}
            for n in lengths:
                value = table[name][task].get(str(n))
                row[f"{n // window}x ({n // 1024}K)"] = "n/a" if value is None else f"{value:.0f}"
            rows.append(row)
    columns = ["task", "method"] + [f"{n // window}x ({n // 1024}K)" for n in lengths]
    notes = "".join(f"\nn/a for {t} at {', '.join(f'{n // window}x' for n in v)}: RULER's shortest {t} sample has "
                    f"{record['shortest'][t]} byte tokens (generation budget included).\n"
                    for t, v in record["not_run"].items())
    notes += "".join(f"\nn/a for {r['method']} on {r['task']}: {r['error']}\n" for r in runs if r["error"])
    write_text(prefix + ".md", f"RULER scores (%), {record['num_samples']} samples per cell, seed {record['seed']}, "
                               f"window {window} tokens. {note}\n\n" + markdown_table(rows, columns) + notes)
    plot(table, lengths, window, prefix + ".png", palette, highlight)
    print(open(prefix + ".md").read())


if __name__ == "__main__":
    sys.exit(exit_code(main))
