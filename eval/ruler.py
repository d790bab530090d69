"""RULER: 13 synthetic tasks at any context length (4K to 1M), with its string-match scoring.

    python -m eval.ruler --model PATH --method retrolm --lengths 4k,16k,128k --num-samples 50 --out out/ruler

Samples are generated with the evaluated model's tokenizer so each prompt (+ answer prefix + tokens to
generate) is the largest that fits the requested length (within one haystack unit), deterministically from
--seed; formats follow RULER's generator scripts (see ruler_tasks).
Scores: string_match_all for NIAH / vt / cwe / fwe, string_match_part for qa_1 / qa_2, as 100 x the mean,
per task and length; also the average per length and `ruler_curve.png` (score against context length).
"""
from __future__ import annotations

import os
import re

from . import metrics as M
from .cli import entry, load_method, parse_tasks, parser
from .errors import EvalError
from .prompting import Prompt
from .runner import Sample, TaskRun, mean_scores, run
from .ruler_tasks import TASKS, Generator, load_qa

_SUFFIX = {"k": 1024, "m": 1024 * 1024}
DEFAULT_SAMPLES = 100
OFFICIAL_SAMPLES = 500  # NUM_SAMPLES of RULER's config_tasks.sh


def parse_lengths(spec: str) -> list[int]:
    """'4k,8192,1m' -> [4096, 8192, 1048576]; anything else raises EvalError."""
    out = []
    for item in (x.strip().lower() for x in spec.split(",") if x.strip()):
        found = re.fullmatch(r"(\d+)([km]?)", item)
        if not found or int(found.group(1)) == 0:
            raise EvalError(f"bad --lengths entry {item!r}; use token counts like 4096 or 4k, 128k, 1m.")
        out.append(int(found.group(1)) * _SUFFIX.get(found.group(2), 1))
    if not out:
        raise EvalError("--lengths is empty; pass e.g. --lengths 4k,8k,16k.")
    return out


def postprocess(pred: str) -> str:
    """RULER's cleanup: control characters become newlines, ends stripped."""
    return re.sub(r"[\x00-\x1f]", "\n", pred).strip()


def task_score(task: str, samples: list[Sample], preds: list[str]) -> float:
    metric = M.string_match_all if TASKS[task].metric == "all" else M.string_match_part
    return round(100 * sum(metric(postprocess(p), s.answers) for s, p in zip(samples, preds)) / len(samples), 2)


def to_sample(generated, index: int, gen_tokens: int) -> Sample:
    start = generated.input.find(generated.context)
    prompt = Prompt(before=generated.input[:start], context=generated.context,
                    after=generated.input[start + len(generated.context):], query=generated.query,
                    answer_prefix=generated.answer_prefix)
    return Sample(id=str(index), prompt=prompt, answers=generated.outputs, max_new_tokens=gen_tokens,
                  meta={"length": generated.length, "depth": generated.depth})


def load_qa_sources(tasks, data_dir) -> dict:
    """{dataset: questions and documents} for the QA tasks among `tasks` (see ruler_tasks.load_qa)."""
    names = {TASKS[t].args["dataset"] for t in tasks if TASKS[t].kind == "qa"}
    return {name: load_qa(name, data_dir) for name in sorted(names)}


def make_runs(tasks, lengths, count, num_samples: int, seed: int, qa_sources: dict, essay,
              cwe_words: str | None = None) -> list[TaskRun]:
    runs = []
    for task in tasks:
        kind = TASKS[task]
        qa = qa_sources[kind.args["dataset"]] if kind.kind == "qa" else None
        generator = Generator(task, count, qa_data=qa, essay_path=essay, cwe_words_path=cwe_words)
        for length in lengths:
            samples = [to_sample(generator.sample(length, seed, index=i), i, kind.tokens_to_generate)
                       for i in range(num_samples)]
            runs.append(TaskRun(name=f"{task}_{length}", samples=samples,
                                score=lambda s, p, t=task: task_score(t, s, p), max_length=None))
    return runs


def fold_lengths(raw: dict) -> dict:
    """{"niah_single_1_4096": x} -> {"niah_single_1": {"4096": x}}: one row per task, one column per length."""
    out: dict[str, dict] = {}
    for name, score in raw.items():
        task, length = name.rsplit("_", 1)
        out.setdefault(task, {})[length] = score
    return out


def plot(scores: dict, path: str, title: str) -> None:
    """PNG of score against context length: one line per task and a bold average."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for task, row in scores.items():
        xs = sorted(int(k) for k in row)
        ax.plot(xs, [row[str(x)] for x in xs], marker="o", linewidth=1, alpha=0.6, label=task)
    average = mean_scores(scores)
    xs = sorted(int(k) for k in average)
    ax.plot(xs, [average[str(x)] for x in xs], marker="o", linewidth=3, color="black", label="average")
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs, [f"{x // 1024}K" if x >= 1024 else str(x) for x in xs])
    ax.set(xlabel="context length (tokens)", ylabel="score", ylim=(-2, 102), title=title)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> dict:
    p = parser("Run RULER on a method; writes predictions, scores.json, scores.md and ruler_curve.png.")
    p.add_argument("--lengths", default="4k,8k,16k,32k,64k,128k", help="context lengths, e.g. 4k,128k,1m")
    p.add_argument("--num-samples", type=int, default=None,
                   help=f"samples per task and length (default {DEFAULT_SAMPLES}; {OFFICIAL_SAMPLES} with "
                        "--official-defaults, as RULER)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--essay", default=None, help="RULER's PaulGrahamEssays.json for the essay haystack "
                                                 "(default: a built-in text)")
    p.add_argument("--cwe-words", default=None, help="RULER's english_words.json, the cwe words beyond the "
                                                     "wonderwords pool (default: adjective-noun words)")
    args = p.parse_args(argv)
    tasks = parse_tasks(args.tasks, list(TASKS), "RULER")
    lengths = parse_lengths(args.lengths)
    num_samples = args.num_samples or (OFFICIAL_SAMPLES if args.official_defaults else DEFAULT_SAMPLES)
    if args.num_samples is not None and args.num_samples < 1:
        raise EvalError(f"--num-samples must be >= 1, got {args.num_samples}.")
    qa_sources = load_qa_sources(tasks, args.data_dir)  # a missing source stops the run before the model loads
    method = load_method(args)
    for length in lengths:  # fail before generating anything if a length cannot fit the method
        for task in tasks:
            method.check_max_length(length - TASKS[task].tokens_to_generate, TASKS[task].tokens_to_generate)
    runs = make_runs(tasks, lengths, method.count_tokens, num_samples, args.seed, qa_sources, args.essay,
                     args.cwe_words)
    settings = {"tasks": tasks, "lengths": lengths, "num_samples": num_samples, "seed": args.seed,
                "essay": args.essay or "built-in", "cwe_words": args.cwe_words or "built-in",
                "data": args.data_dir or "hub", "chat_template": args.chat_template}
    notes = [f"samples: {num_samples} per task and length (RULER: {OFFICIAL_SAMPLES}; --official-defaults)",
             f"essay haystack: {args.essay or 'built-in text (RULER: Paul Graham essays; --essay)'}",
             "haystacks: the largest that fits each length (RULER's are often an increment shorter)",
             f"chat template: {'on, answer prefix after the assistant header' if args.chat_template else 'off'}"]
    result = run("RULER", runs, method, args.out, settings, collect=fold_lengths, notes=notes)
    plot(result["scores"], os.path.join(args.out, "ruler_curve.png"), f"RULER: {method.name}")
    return result


if __name__ == "__main__":
    entry(main)
