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
OFFICIAL_MAX_LENGTH = 128 * 1024  # TRUNCATE_LEN of the official YaRN-Mistral and ChatGLM3 runs (Yi-200K: 200000)
OPTION_LETTERS = "ABCD"
_FIND = "There is an important info hidden inside a lot of irrelevant text. Find it{}.\n\n{{context}}\n\n{{input}}\n\n"
_OPTIONS = "A. {OPTION_A}\nB. {OPTION_B}\nC. {OPTION_C}\nD. {OPTION_D}"


@dataclass(frozen=True)
class Task:
    alias: str  # the paper's name
    template: str
    max_new_tokens: int
    score: Callable[[str, object], float]


TASKS: dict[str, Task] = {
    # the two wordings differ in the official set ("memorize it ... information." vs "... information there.")
    "passkey": Task("Retrieve.PassKey", _FIND.format(" and memorize it. I will quiz you about the important "
                                                     "information") + "The pass key is", 6, M.ib_passkey),
    "number_string": Task("Retrieve.Number", _FIND.format(". I will quiz you about the important information there")
                          + "The sequence of digits is", 12, M.ib_number_string),
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


# The official prompt builder pulls these out of the hub's sentence-form `input`
CODE_RUN_CALL = re.compile(r"func_[0-9]+\(-?[0-9]+\)")  # "... the return value of func_3(-12). Your ..."
MATH_FIND_TARGET = re.compile(r"The .+ of")  # "... The second largest number of the list is: "


def _official_field(pattern: re.Pattern, task: str, row: dict) -> str:
    found = pattern.findall(row.get("input") or "")
    if not found:
        raise EvalError(f"InfiniteBench {task} sample {row.get('id')}: its input {row.get('input')!r} has no "
                        f"match for {pattern.pattern!r}, which the official prompt needs; re-download the hub file.")
    return found[0]


def make_sample(task: str, row: dict, index: int) -> Sample:
    spec = TASKS[task]
    question = row.get("input") or ""
    options = list(row.get("options") or []) + [""] * 4
    fields = dict(input=question, question=question, OPTION_A=options[0], OPTION_B=options[1],
                  OPTION_C=options[2], OPTION_D=options[3])
    if task == "code_run":
        call = _official_field(CODE_RUN_CALL, task, row)
        fields.update(func=call.split("(")[0], func_call=call)
    if task == "math_find":  # "The second largest number of" -> "What is the second largest number in ..."
        target = _official_field(MATH_FIND_TARGET, task, row).lower()[:-3]
        fields["prefix"] = f"What is {target} in the following list?"
    prompt = build_prompt(spec.template, context=row["context"], query=question, **fields)
    prompt.chat = False  # the official open-model runs feed the raw completion prompt, never a chat template
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
    if args.chat_template:
        raise EvalError("InfiniteBench's prompts for open models are raw completions ending in an answer cue (\"The "
                        "pass key is\"), and its official runs use no chat template; drop --chat-template.")
    spec = ",".join(ALIASES.get(t.strip(), t.strip()) for t in args.tasks.split(","))
    tasks = parse_tasks(spec, list(TASKS), "InfiniteBench")
    max_length = args.max_length
    if max_length is None and args.official_defaults:
        max_length = OFFICIAL_MAX_LENGTH
    runs = [TaskRun(name=t, samples=load_samples(t, args.data_dir, args.limit),
                    score=lambda s, p, t=t: task_score(t, s, p), max_length=max_length) for t in tasks]
    method = load_method(args)
    settings = {"tasks": tasks, "max_length": max_length, "limit": args.limit, "data": args.data_dir or HUB_REPO}
    notes = [f"truncation: prompts middle-truncated to {max_length} tokens" if max_length else
             f"truncation: only to what the method holds (published runs: {OFFICIAL_MAX_LENGTH} tokens; "
             "--official-defaults)",
             "prompts: the open-model (YaRN-Mistral) templates, no chat template, greedy decoding"]
    return run("InfiniteBench", runs, method, args.out, settings, notes=notes)


if __name__ == "__main__":
    entry(main)
