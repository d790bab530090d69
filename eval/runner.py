"""The shared resumable loop: generate per sample, append predictions, score, write results.

Output directory layout:
    <out>/predictions/<task>.jsonl   one JSON object per finished sample, appended and fsynced
    <out>/scores.json                model, method, RetroLMConfig, versions, settings, scores
    <out>/scores.md                  the same scores as a Markdown table

A crash can at worst leave a half-written last line in a predictions file; the next run cuts it off and
skips every sample whose id is already there. Scores and tables are written to a temporary file and
renamed over the old one, so they are always either the old or the new complete file.
"""
from __future__ import annotations

import json
import os
import platform
import tempfile
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Callable

from tqdm.auto import tqdm

from .prompting import Prompt


@dataclass
class Sample:
    """One benchmark question: its prompt, its references, and what to record with the prediction."""

    id: str
    prompt: Prompt
    answers: Any
    max_new_tokens: int
    meta: dict = field(default_factory=dict)


@dataclass
class TaskRun:
    """One predictions file: a task (or a RULER task at one length) and how to score it.

    score: (samples, predictions in the same order) -> a score in [0, 100], or {column: score}.
    """

    name: str
    samples: list[Sample]
    score: Callable[[list[Sample], list[str]], Any]
    max_length: int | None = None


def atomic_write(path: str, text: str) -> None:
    """Write `text` to `path` through a temporary sibling and os.replace: never a partial file."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def read_predictions(path: str) -> dict[str, dict]:
    """Finished predictions by sample id. A trailing line without its newline (a crash mid-write) is cut off."""
    if not os.path.exists(path):
        return {}
    with open(path, "rb") as f:
        data = f.read()
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) != len(data):
        with open(path, "r+b") as f:
            f.truncate(len(complete))
    done = {}
    for line in complete.decode("utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            done[str(record["id"])] = record
    return done


def append_prediction(path: str, record: dict) -> None:
    """Append one whole JSON line and force it to disk before the next sample starts."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def versions() -> dict:
    """Versions of the packages that decide the numbers."""
    out = {"python": platform.python_version()}
    for name in ("retrolm", "torch", "transformers", "datasets", "faiss-cpu", "jieba", "numpy"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def predict(task: TaskRun, method, out_dir: str) -> list[str]:
    """Predictions for every sample of `task`, generating only those not already on disk."""
    path = os.path.join(out_dir, "predictions", f"{task.name}.jsonl")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    done = read_predictions(path)
    todo = [s for s in task.samples if s.id not in done]
    for sample in tqdm(todo, desc=task.name, unit="sample", initial=len(task.samples) - len(todo),
                       total=len(task.samples)):
        max_length = method.check_max_length(task.max_length, sample.max_new_tokens)
        pred = method.generate(sample.prompt, sample.max_new_tokens, max_length)
        record = {"id": sample.id, "pred": pred, "answers": sample.answers, **sample.meta}
        append_prediction(path, record)
        done[sample.id] = record
    return [done[s.id]["pred"] for s in task.samples]


def mean_scores(scores: dict[str, Any]) -> Any:
    """Average over tasks: a number, or per column when the task scores are {column: score}."""
    values = list(scores.values())
    if not values:
        return None
    if all(isinstance(v, dict) for v in values):
        columns = list(dict.fromkeys(k for v in values for k in v))
        out = {}
        for c in columns:
            have = [v[c] for v in values if v.get(c) is not None]
            out[c] = round(sum(have) / len(have), 2) if have else None
        return out
    return round(sum(values) / len(values), 2)


def render_table(title: str, scores: dict[str, Any], average: Any, first_column: str = "task") -> str:
    """A Markdown table: one row per task plus the average; columns from dict-valued scores."""
    def cell(v):
        return "-" if v is None else f"{v:.2f}"

    rows = list(scores.items()) + [("**average**", average)]
    if scores and all(isinstance(v, dict) for v in scores.values()):
        columns = list(dict.fromkeys(k for v in scores.values() for k in v))
        lines = [f"| {first_column} | " + " | ".join(map(str, columns)) + " |",
                 "|---|" + "---:|" * len(columns)]
        lines += [f"| {name} | " + " | ".join(cell(v.get(c)) for c in columns) + " |" for name, v in rows]
    else:
        lines = [f"| {first_column} | score |", "|---|---:|"]
        lines += [f"| {name} | {cell(v)} |" for name, v in rows]
    return f"## {title}\n\n" + "\n".join(lines) + "\n"


def render_notes(notes: list[str]) -> str:
    """The settings that decide whether these numbers compare with published ones, as a Markdown list."""
    if not notes:
        return ""
    return "\n### Settings that change comparability\n\n" + "".join(f"- {n}\n" for n in notes)


def run(benchmark: str, tasks: list[TaskRun], method, out_dir: str, settings: dict,
        collect: Callable[[dict[str, Any]], dict[str, Any]] = lambda s: s, notes: list[str] = (),
        extra: Callable[[dict[str, Any]], tuple[dict, str]] | None = None) -> dict:
    """Predict and score every task, rewriting scores.json / scores.md after each one; returns the scores file.

    collect: turns {task run name: score} into the reported {row: score} (RULER folds lengths into columns).
    notes: settings that change comparability with published numbers, printed in scores.md and kept in
        scores.json. extra: scores -> (more scores.json fields, more Markdown), e.g. LongBench's published
        averages.
    """
    os.makedirs(out_dir, exist_ok=True)
    raw: dict[str, Any] = {}
    result: dict = {}
    for task in tasks:
        preds = predict(task, method, out_dir)
        raw[task.name] = task.score(task.samples, preds)
        scores = collect(raw)
        average = mean_scores(scores)
        more, more_md = extra(scores) if extra else ({}, "")
        result = {
            "benchmark": benchmark,
            "model": method.model_name,
            "method": method.name,
            "method_options": method.options.to_dict(),
            **method.describe(),
            "settings": settings,
            "notes": list(notes),
            "versions": versions(),
            "scores": scores,
            "average": average,
            **more,
        }
        atomic_write(os.path.join(out_dir, "scores.json"), json.dumps(result, indent=2, ensure_ascii=False) + "\n")
        title = f"{benchmark}: {method.name} on {os.path.basename(os.path.normpath(method.model_name))}"
        atomic_write(os.path.join(out_dir, "scores.md"),
                     render_table(title, scores, average) + more_md + render_notes(list(notes)))
    return result
