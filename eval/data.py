"""Benchmark data: the published files from the Hugging Face hub, or the same files from --data-dir.

LongBench and InfiniteBench publish JSON-lines files on the hub (`THUDM/LongBench` inside `data.zip`,
whose loading script recent `datasets` versions no longer run; `xinrongzhang2022/InfiniteBench` as one
`<task>.jsonl` per task, whose mixed answer types defeat `datasets`' schema inference). Both are fetched
with the hub client `datasets` is built on and read as plain JSON lines, so the hub path and the
--data-dir path share one reader and one format. RULER's QA sources (SQuAD, HotpotQA) load through
`datasets.load_dataset` by their public names (see `ruler_tasks.load_qa`).
"""
from __future__ import annotations

import json
import os
import zipfile
from typing import Callable

from .errors import EvalError


def read_jsonl(lines) -> list[dict]:
    """Parse JSON lines (an open file or a list of str/bytes), skipping blank lines."""
    rows = []
    for number, line in enumerate(lines, 1):
        if isinstance(line, bytes):
            line = line.decode("utf-8")
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise EvalError(f"line {number} is not valid JSON ({error.msg}); re-download the file.") from error
    return rows


def hub_file(repo: str, filename: str) -> str:
    """Local path of `filename` from dataset repo `repo` on the hub (downloaded once, then cached)."""
    from huggingface_hub import hf_hub_download

    return hf_hub_download(repo_id=repo, filename=filename, repo_type="dataset")


def _hub_errors() -> tuple:
    from huggingface_hub.errors import HfHubHTTPError

    return (OSError, HfHubHTTPError, ValueError)


def load_task_rows(benchmark: str, task: str, filename: str, repo: str, data_dir: str | None,
                   hub_filename: str | None = None, zip_member: str | None = None,
                   fetch: Callable[[str, str], str] = hub_file) -> list[dict]:
    """Rows of one task: `<data_dir>/<filename>` if data_dir is given, else the hub file.

    hub_filename: the file in the hub repo (default `filename`); zip_member: the member to read when
    that file is a zip archive. Raises EvalError naming both ways to get the data when neither works.
    """
    how = (f"Either let it download from the Hugging Face hub ({repo}; check your network, HF_ENDPOINT or "
           f"HF_HUB_OFFLINE), or pass --data-dir DIR with the file {filename} in the benchmark's JSON-lines format.")
    if data_dir is not None:
        path = os.path.join(data_dir, filename)
        if not os.path.isfile(path):
            raise EvalError(f"{benchmark} task {task!r}: {path} does not exist. {how}")
        with open(path, encoding="utf-8") as f:
            return read_jsonl(f)
    try:
        path = fetch(repo, hub_filename or filename)
    except _hub_errors() as error:
        raise EvalError(f"cannot load {benchmark} task {task!r}: the hub is unreachable or lacks the file "
                        f"({type(error).__name__}: {str(error)[:200]}), and no --data-dir was given. {how}") from error
    if zip_member is None:
        with open(path, encoding="utf-8") as f:
            return read_jsonl(f)
    with zipfile.ZipFile(path) as archive:
        if zip_member not in archive.namelist():
            raise EvalError(f"{benchmark}: {zip_member} is not in {path}; the task name may be wrong. {how}")
        with archive.open(zip_member) as f:
            return read_jsonl(f)
