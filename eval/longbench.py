"""LongBench (v1, 21 tasks, English and Chinese; LongBench-E with --e) with its official prompts and metrics.

    python -m eval.longbench --model PATH --method retrolm --tasks narrativeqa,qasper --out out/lb
    python -m eval.longbench --model PATH --method full --e --data-dir DIR --out out/lb_e

Prompt templates and generation lengths follow LongBench's dataset2prompt / dataset2maxlen; prompts are
truncated in the middle to --max-length; scores are 100 x the mean over samples of the best score over
reference answers, per task (per length bucket 0-4k / 4-8k / 8k+ for -E), and their average.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from . import metrics as M
from .cli import entry, load_method, parse_tasks, parser
from .data import load_task_rows
from .errors import EvalError
from .methods import model_window
from .prompting import build_prompt
from .runner import Sample, TaskRun, run

HUB_REPO = "THUDM/LongBench"

_QA_EN = ("Answer the question based on the given passages. Only give me the answer and do not output any "
          "other words.")
# "asconcisely" (sic) is in the official template; kept so prompts are byte-equal to LongBench's
_NARRATIVE = ("Answer the question asconcisely as you can, using a single phrase if possible. Do not provide "
              "any explanation.")
_QASPER = ("as concisely as you can, using a single phrase or sentence if possible. If the question cannot be "
           "answered based on the information in the article, write \"unanswerable\". If the question is a "
           "yes/no question, answer \"yes\", \"no\", or \"unanswerable\". Do not provide any explanation.")
_MULTIHOP = f"{_QA_EN}\n\nThe following are given passages.\n{{context}}\n\n{_QA_EN}\n\nQuestion: {{input}}\nAnswer:"


@dataclass(frozen=True)
class Task:
    template: str
    max_new_tokens: int
    metric: Callable[..., float]
    chat: bool = True  # LongBench builds chat prompts except for few-shot and code-completion tasks
    first_line: bool = False  # score only the first line of the prediction
    stop_at_newline: bool = False


TASKS: dict[str, Task] = {
    "narrativeqa": Task(
        "You are given a story, which can be either a novel or a movie script, and a question. "
        f"{_NARRATIVE}\n\nStory: {{context}}\n\nNow, answer the question based on the story {_NARRATIVE[20:]}"
        "\n\nQuestion: {input}\n\nAnswer:", 128, M.qa_f1_score),
    "qasper": Task(
        f"You are given a scientific article and a question. Answer the question {_QASPER}\n\nArticle: {{context}}"
        f"\n\n Answer the question based on the above article {_QASPER}\n\nQuestion: {{input}}\n\nAnswer:",
        128, M.qa_f1_score),
    "multifieldqa_en": Task(
        "Read the following text and answer briefly.\n\n{context}\n\nNow, answer the following question based on "
        "the above text, only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
        64, M.qa_f1_score),
    "multifieldqa_zh": Task(
        "阅读以下文字并用中文简短回答：\n\n{context}\n\n现在请基于上面的文章回答下面的问题，只告诉我答案，不要输出任何其他字词。"
        "\n\n问题：{input}\n回答：", 64, M.qa_f1_zh_score),
    "hotpotqa": Task(_MULTIHOP, 32, M.qa_f1_score),
    "2wikimqa": Task(_MULTIHOP, 32, M.qa_f1_score),
    "musique": Task(_MULTIHOP, 32, M.qa_f1_score),
    "dureader": Task("请基于给定的文章回答下述问题。\n\n文章：{context}\n\n请基于上述文章回答下面的问题。\n\n问题：{input}\n回答：",
                     128, M.rouge_zh_score),
    "gov_report": Task(
        "You are given a report by a government agency. Write a one-page summary of the report.\n\nReport:\n"
        "{context}\n\nNow, write a one-page summary of the report.\n\nSummary:", 512, M.rouge_score),
    "qmsum": Task(
        "You are given a meeting transcript and a query containing a question or instruction. Answer the query in "
        "one or more sentences.\n\nTranscript:\n{context}\n\nNow, answer the query based on the above meeting "
        "transcript in one or more sentences.\n\nQuery: {input}\nAnswer:", 512, M.rouge_score),
    "multi_news": Task(
        "You are given several news passages. Write a one-page summary of all news. \n\nNews:\n{context}\n\n"
        "Now, write a one-page summary of all the news.\n\nSummary:", 512, M.rouge_score),
    "vcsum": Task("下面有一段会议记录，请你阅读后，写一段总结，总结会议的内容。\n会议记录：\n{context}\n\n会议总结：",
                  512, M.rouge_zh_score),
    "trec": Task("Please determine the type of the question below. Here are some examples of questions.\n\n"
                 "{context}\n{input}", 64, M.classification_score, chat=False, first_line=True),
    "triviaqa": Task("Answer the question based on the given passage. Only give me the answer and do not output "
                     "any other words. The following are some examples.\n\n{context}\n\n{input}",
                     32, M.qa_f1_score, chat=False, first_line=True),
    "samsum": Task("Summarize the dialogue into a few short sentences. The following are some examples.\n\n"
                   "{context}\n\n{input}", 128, M.rouge_score, chat=False, first_line=True, stop_at_newline=True),
    "lsht": Task("请判断给定新闻的类别，下面是一些例子。\n\n{context}\n{input}", 64, M.classification_score,
                 chat=False, first_line=True),
    "passage_count": Task(
        "There are some paragraphs below sourced from Wikipedia. Some of them may be duplicates. Please carefully "
        "read these paragraphs and determine how many unique paragraphs there are after removing duplicates. In "
        "other words, how many non-repeating paragraphs are there in total?\n\n{context}\n\nPlease enter the "
        "final count of unique paragraphs after removing duplicates. The output format should only contain the "
        "number, such as 1, 2, 3, and so on.\n\nThe final answer is: ", 32, M.count_score),
    "passage_retrieval_en": Task(
        "Here are 30 paragraphs from Wikipedia, along with an abstract. Please determine which paragraph the "
        "abstract is from.\n\n{context}\n\nThe following is an abstract.\n\n{input}\n\nPlease enter the number "
        "of the paragraph that the abstract is from. The answer format must be like \"Paragraph 1\", "
        "\"Paragraph 2\", etc.\n\nThe answer is: ", 32, M.retrieval_score),
    "passage_retrieval_zh": Task(
        "以下是若干段落文字，以及其中一个段落的摘要。请确定给定的摘要出自哪一段。\n\n{context}\n\n下面是一个摘要\n\n{input}"
        "\n\n请输入摘要所属段落的编号。答案格式必须是\"段落1\"，\"段落2\"等格式\n\n答案是：", 32, M.retrieval_zh_score),
    "lcc": Task("Please complete the code given below. \n{context}Next line of code:\n", 64, M.code_sim_score,
                chat=False),
    "repobench-p": Task("Please complete the code given below. \n{context}{input}Next line of code:\n", 64,
                        M.code_sim_score, chat=False),
}
# LongBench's leaderboard groups: per language, "Avg" is the mean of these six category means (the
# code tasks count in both languages), not the mean over tasks
CATEGORIES: dict[str, dict[str, tuple[str, ...]]] = {
    "Single-Doc QA": {"en": ("narrativeqa", "qasper", "multifieldqa_en"), "zh": ("multifieldqa_zh",)},
    "Multi-Doc QA": {"en": ("hotpotqa", "2wikimqa", "musique"), "zh": ("dureader",)},
    "Summarization": {"en": ("gov_report", "qmsum", "multi_news"), "zh": ("vcsum",)},
    "Few-shot Learning": {"en": ("trec", "triviaqa", "samsum"), "zh": ("lsht",)},
    "Code Completion": {"en": ("lcc", "repobench-p"), "zh": ("lcc", "repobench-p")},
    "Synthetic Tasks": {"en": ("passage_count", "passage_retrieval_en"), "zh": ("passage_retrieval_zh",)},
}
E_TASKS = ("qasper", "multifieldqa_en", "hotpotqa", "2wikimqa", "gov_report", "multi_news", "trec", "triviaqa",
           "samsum", "passage_count", "passage_retrieval_en", "lcc", "repobench-p")
BUCKETS = ("0-4k", "4-8k", "8k+")


def bucket(length: int) -> str:
    """LongBench-E's length bucket of a sample (its `length` field: words, or characters for Chinese)."""
    return BUCKETS[0] if length < 4000 else BUCKETS[1] if length < 8000 else BUCKETS[2]


def sample_score(task: str, pred: str, answers: list[str], all_classes) -> float:
    """Best score over the reference answers, after LongBench's first-line rule for few-shot tasks."""
    spec = TASKS[task]
    if spec.first_line:
        pred = pred.lstrip("\n").split("\n")[0]
    return max([spec.metric(pred, truth, all_classes=all_classes) for truth in answers] or [0.0])


def task_score(task: str, samples: list[Sample], preds: list[str]) -> float:
    total = sum(sample_score(task, p, s.answers, s.meta.get("all_classes")) for s, p in zip(samples, preds))
    return round(100 * total / len(samples), 2)


def task_score_e(task: str, samples: list[Sample], preds: list[str]) -> dict:
    """Per length bucket; a bucket with no samples scores None (LongBench's mean of nothing)."""
    groups: dict[str, list[float]] = {b: [] for b in BUCKETS}
    for s, p in zip(samples, preds):
        groups[bucket(s.meta["length"])].append(sample_score(task, p, s.answers, s.meta.get("all_classes")))
    return {b: (round(100 * sum(v) / len(v), 2) if v else None) for b, v in groups.items()}


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def published_average(scores: dict[str, float]) -> dict[str, dict]:
    """LongBench's leaderboard averages: per language, each category's mean over its tasks and "Avg", the
    mean of those category means. Categories (and languages) with no task in `scores` are left out, and
    "tasks" says how many of the language's tasks were run, so a partial run is not mistaken for a full one."""
    out = {}
    for language in ("en", "zh"):
        names = {t for by in CATEGORIES.values() for t in by[language]}
        categories = {}
        for category, by in CATEGORIES.items():
            have = [scores[t] for t in by[language] if t in scores]
            if have:
                categories[category] = _mean(have)
        if categories:
            out[language] = {"Avg": round(_mean(categories.values()), 2),
                             **{c: round(v, 2) for c, v in categories.items()},
                             "tasks": f"{len(names & set(scores))}/{len(names)}"}
    return out


def render_published(average: dict[str, dict]) -> str:
    if not average:
        return ""
    columns = ["Avg", *CATEGORIES, "tasks"]
    lines = ["| language | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for language, row in average.items():
        cells = [row.get(c) for c in columns]
        lines.append(f"| {language} | " + " | ".join("-" if v is None else v if isinstance(v, str) else f"{v:.2f}"
                                                   for v in cells) + " |")
    return ("\n### Published-style averages (per language: mean of category means)\n\n" + "\n".join(lines)
            + "\n")


def _published(scores: dict[str, float]) -> tuple[dict, str]:
    average = published_average(scores)
    return {"published_average": average}, render_published(average)


def official_max_length(window: int) -> int:
    """LongBench's model2maxlen rule: the window in thousands, less 500 (4K -> 3500, 8K -> 7500,
    32K -> 31500), as its config gives for every model it evaluated."""
    length = (window // 1024) * 1000 - 500
    if length < 1:
        raise EvalError(f"the model's window ({window} tokens) is below LongBench's model2maxlen rule (window in "
                        "thousands - 500); pass --max-length N instead of --official-defaults.")
    return length


def make_sample(task: str, row: dict, index: int) -> Sample:
    spec = TASKS[task]
    question = row.get("input") or ""
    prompt = build_prompt(spec.template, context=row["context"], query=question, input=question)
    if not question:  # summaries and code completion: retrieve with the instruction / the code's end
        prompt.query = row["context"][-1000:] if task == "lcc" else (prompt.before + prompt.after).strip()
    prompt.chat, prompt.stop_at_newline = spec.chat, spec.stop_at_newline
    meta = {"length": row.get("length"), "all_classes": row.get("all_classes")}
    return Sample(id=str(row.get("_id") or index), prompt=prompt, answers=list(row["answers"]),
                  max_new_tokens=spec.max_new_tokens, meta=meta)


def load_samples(task: str, data_dir: str | None, e: bool = False, limit: int | None = None) -> list[Sample]:
    name = f"{task}_e" if e else task
    rows = load_task_rows("LongBench", name, f"{name}.jsonl", HUB_REPO, data_dir, hub_filename="data.zip",
                          zip_member=f"data/{name}.jsonl")
    return [make_sample(task, row, i) for i, row in enumerate(rows[:limit])]


def main(argv: list[str] | None = None) -> dict:
    p = parser("Run LongBench (v1 or -E) on a method; writes predictions, scores.json and scores.md.")
    p.add_argument("--e", action="store_true", help="LongBench-E: the 13 tasks with length buckets")
    args = p.parse_args(argv)
    tasks = parse_tasks(args.tasks, list(E_TASKS if args.e else TASKS), "LongBench-E" if args.e else "LongBench")
    runs = []
    for task in tasks:
        samples = load_samples(task, args.data_dir, args.e, args.limit)
        score = (lambda s, p, t=task: task_score_e(t, s, p)) if args.e else (lambda s, p, t=task: task_score(t, s, p))
        runs.append(TaskRun(name=task, samples=samples, score=score, max_length=args.max_length))
    method = load_method(args)
    max_length = args.max_length
    if max_length is None and args.official_defaults:
        max_length = official_max_length(model_window(method.retrolm))
        for task_run in runs:
            task_run.max_length = max_length
    settings = {"variant": "LongBench-E" if args.e else "LongBench", "tasks": tasks, "max_length": max_length,
                "limit": args.limit, "data": args.data_dir or HUB_REPO, "chat_template": args.chat_template}
    notes = [
        f"truncation: prompts middle-truncated to {max_length} tokens before any chat template" if max_length else
        "truncation: only to what the method holds (published runs: model2maxlen, the window in thousands - 500; "
        "--official-defaults)",
        "average: the mean over tasks; LongBench's leaderboard \"Avg\" is per language the mean of its six "
        "category means (the published-style table)" if not args.e else "average: the mean over tasks, per bucket",
        "code_sim (lcc, repobench-p): fuzz.ratio as fuzzywuzzy computes it with python-Levenshtein installed; "
        "its difflib fallback differs by about 1.5 points",
        "chat template: " + ("on (not for " + ", ".join(t for t, spec in TASKS.items() if not spec.chat) + ")"
                             if args.chat_template else "off"),
    ]
    return run("LongBench-E" if args.e else "LongBench", runs, method, args.out, settings, notes=notes,
               extra=None if args.e else _published)


if __name__ == "__main__":
    entry(main)
