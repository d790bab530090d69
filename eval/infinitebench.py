"""InfiniteBench (12 tasks) with its official prompts and scoring.

    python -m eval.infinitebench --model PATH --method retrolm --tasks passkey,kv_retrieval --out out/ib

Prompts are the benchmark's templates for open models (the YaRN-Mistral set of `src/prompt.py`), filled
from the hub's JSON-lines fields (id, context, input, answer, options); generation lengths follow
DATA_NAME_TO_MAX_NEW_TOKENS; prompts are truncated in the middle to --max-length (the benchmark used
128K); each task is scored with its `compute_scores.py` rule and reported as 100 x the mean.
Tasks can be named by file name (`passkey`) or by the paper's name (`Retrieve.PassKey`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from . import metrics as M
from .cli import entry, load_method, parse_tasks, parser
from .data import load_task_rows
from .errors import EvalError
from .prompting import build_prompt
from .runner import Sample, TaskRun, run

HUB_REPO = "xinrongzhang2022/InfiniteBench"
OPTION_LETTERS = "ABCD"
_FIND = ("There is an important info hidden inside a lot of irrelevant text. Find it{and_memorize}. I will quiz "
         "you about the important information there.\n\n{{context}}\n\n{{input}}\n\n")
_OPTIONS = "A. {OPTION_A}\nB. {OPTION_B}\nC. {OPTION_C}\nD. {OPTION_D}"


@dataclass(frozen=True)
class Task:
    alias: str  # the paper's name
    template: str
    max_new_tokens: int
    score: Callable[[str, object], float]


TASKS: dict[str, Task] = {
    "passkey": Task("Retrieve.PassKey", _FIND.format(and_memorize=" and memorize them") + "The pass key is", 6,
                    M.ib_passkey),
    "number_string": Task("Retrieve.Number", _FIND.format(and_memorize="") + "The sequence of digits is", 12,
                          M.ib_number_string),
    "kv_retrieval": Task("Retrieve.KV", "Extract the value corresponding to the specified key in the JSON object "
                         "below.\n\n{context}\n\n{input}", 50, M.ib_kv_retrieval),
    "longbook_sum_eng": Task("En.Sum", "Summarize the book below.\n\n{context}\n\nSummary:", 1200, M.ib_rouge_lsum),
    "longbook_choice_eng": Task("En.MC", "Read the book and answer the question.\n\n{context}\n\nQuestion: "
                                "{question}\n" + _OPTIONS + "\n\nThe letter of the correct answer is", 40, M.ib_choice),
    "longbook_qa_eng": Task("En.QA", "Read the book and answer the question. Be very concise in your answer.\n\n"
                            "{context}\n\nQuestion: {question}\nAnswer:", 40, M.ib_qa_f1),
    "longbook_qa_chn": Task("Zh.QA", "阅读以下书籍然后回答问题。\n\n{context}\n\n问题：{question}\n答案：", 40, M.ib_qa_f1_zh),
    "longdialogue_qa_eng": Task("En.Dia", "Below is a dialogue script where one random occurrence of a character "
                                "name is replaced with \"$$MASK$$\", and you should try to guess who that character "
                                "is.\n\n{context}\n\nThe name that has been replaced with $$MASK$$ is likely", 40,
                                M.ib_dialogue),
    "math_find": Task("Math.Find", "{prefix}\n\n{context}\n\n{input}", 3, M.ib_math_find),
    "math_calc": Task("Math.Calc", "Let us calculate the intermediate values of an expression.\n\nExpression: "
                      "1 + 3 + 4\nValues: [1, 4, 8]\n\nExpression: 8 - 3 + 2 - 4\nValues: [8, 5, 7, 3]\n\n"
                      "Expression: {context}\nValues:", 30000, M.ib_math_calc),
    "code_run": Task("Code.Run", "There is a function called {func} in the following Python code.\n\n{context}\n\n"
                     "Please compute the exact value of {func_call}. The value of {func_call} is", 5, M.ib_code_run),
    "code_debug": Task("Code.Debug", "Following is a Python code where exactly one of the functions/methods has a "
                       "deliberate error that makes it crash.\n\n{context}\n\nOptions:\n" + _OPTIONS +
                       "\n\nThe correct option is:", 5, M.ib_code_debug),
}
ALIASES = {spec.alias: name for name, spec in TASKS.items()}


def label(task: str, row: dict):
    """The reference the scorer compares with: [text, letter] for option tasks, else the answer list."""
    answer = row["answer"]
    if task in ("code_debug", "longbook_choice_eng"):
        text = answer[0] if isinstance(answer, list) else answer
        if text not in row["options"]:
            raise EvalError(f"InfiniteBench {task} sample {row.get('id')}: answer {text!r} is not among its options.")
        return [text, OPTION_LETTERS[row["options"].index(text)]]
    return answer if isinstance(answer, list) else [answer]


def make_sample(task: str, row: dict, index: int) -> Sample:
    spec = TASKS[task]
    question = row.get("input") or ""
    options = list(row.get("options") or []) + [""] * 4
    fields = dict(input=question, question=question, OPTION_A=options[0], OPTION_B=options[1],
                  OPTION_C=options[2], OPTION_D=options[3])
    if task == "code_run":  # the input is the call, e.g. "func_3(-12)"
        fields.update(func=question.split("(")[0].strip(), func_call=question.strip())
    if task == "math_find":  # the official prefix names the number asked for ("the largest number")
        found = re.findall(r"The \w+ number", question)
        fields["prefix"] = f"What is {found[0].lower()} in the following list?" if found else question
    prompt = build_prompt(spec.template, context=row["context"], query=question, **fields)
    if not question:
        prompt.query = (prompt.before + prompt.after).strip()
    return Sample(id=str(row.get("id", index)), prompt=prompt, answers=label(task, row),
                  max_new_tokens=spec.max_new_tokens)


def task_score(task: str, samples: list[Sample], preds: list[str]) -> float:
    total = sum(TASKS[task].score(p, s.answers) for s, p in zip(samples, preds))
    return round(100 * total / len(samples), 2)


def load_samples(task: str, data_dir: str | None, limit: int | None = None) -> list[Sample]:
    rows = load_task_rows("InfiniteBench", task, f"{task}.jsonl", HUB_REPO, data_dir)
    return [make_sample(task, row, i) for i, row in enumerate(rows[:limit])]


def main(argv: list[str] | None = None) -> dict:
    p = parser("Run InfiniteBench on a method; writes predictions, scores.json and scores.md.")
    args = p.parse_args(argv)
    spec = ",".join(ALIASES.get(t.strip(), t.strip()) for t in args.tasks.split(","))
    tasks = parse_tasks(spec, list(TASKS), "InfiniteBench")
    runs = [TaskRun(name=t, samples=load_samples(t, args.data_dir, args.limit),
                    score=lambda s, p, t=t: task_score(t, s, p), max_length=args.max_length) for t in tasks]
    method = load_method(args)
    settings = {"tasks": tasks, "max_length": args.max_length, "limit": args.limit, "data": args.data_dir or HUB_REPO}
    return run("InfiniteBench", runs, method, args.out, settings)


if __name__ == "__main__":
    entry(main)
