"""Where training metrics go: `metrics.jsonl` in the output directory, and wandb when asked (rank 0 only).

wandb honours WANDB_MODE (online / offline / disabled). Without WANDB_MODE and without an API key it runs
offline (the run is written under output_dir/wandb and can be synced later), so a training job never stops
to ask for a login.
"""
from __future__ import annotations

import json
import os

from ..errors import RetroLMError

METRICS_FILE = "metrics.jsonl"


class MetricsLogger:
    """Appends one JSON line per logged step; mirrors to wandb. A no-op on ranks other than 0."""

    def __init__(self, output_dir: str, config: dict, report_to: str, project: str, run_name: str,
                 is_main: bool, resume_step: int):
        self.is_main = is_main
        self.path = os.path.join(output_dir, METRICS_FILE)
        self.wandb = None
        if not is_main:
            return
        _truncate_after(self.path, resume_step)  # a resumed run rewrites the steps after its checkpoint
        if report_to == "wandb":
            self.wandb = _start_wandb(output_dir, config, project, run_name)

    def log(self, step: int, values: dict) -> None:
        if not self.is_main:
            return
        record = {"step": step, **values}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if self.wandb is not None:
            self.wandb.log(values, step=step)

    def finish(self, summary: dict) -> None:
        if self.wandb is not None:
            self.wandb.summary.update(summary)
            self.wandb.finish()


def read_metrics(output_dir: str) -> list[dict]:
    """The records of `metrics.jsonl` (a half-written last line, from a killed run, is ignored)."""
    path = os.path.join(output_dir, METRICS_FILE)
    records = []
    if os.path.isfile(path):
        with open(path) as f:
            for line in f:
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    break
    return records


def _truncate_after(path: str, step: int) -> None:
    kept = [r for r in read_metrics(os.path.dirname(path)) if r.get("step", 0) <= step]
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in kept)
    os.replace(tmp, path)


def _start_wandb(output_dir: str, config: dict, project: str, run_name: str):
    try:
        import wandb
    except ImportError as error:
        raise RetroLMError("report_to='wandb' but wandb is not installed: pip install wandb, or set "
                           "report_to='none' in the training config.") from error
    mode = os.environ.get("WANDB_MODE")
    if mode is None and not os.environ.get("WANDB_API_KEY") and not _wandb_logged_in(wandb):
        mode = "offline"
        print("wandb: no API key found; logging offline to", os.path.join(output_dir, "wandb"),
              "(sync later with `wandb sync`).")
    return wandb.init(project=project, name=run_name or None, config=config, dir=output_dir, mode=mode,
                      resume="allow", id=_run_id(output_dir))


def _wandb_logged_in(wandb) -> bool:
    try:
        return bool(wandb.api.api_key)
    except (AttributeError, OSError):
        return False


def _run_id(output_dir: str) -> str:
    """A wandb run id stored in the output dir, so a resumed job continues the same wandb run."""
    path = os.path.join(output_dir, "wandb_run_id.txt")
    if os.path.isfile(path):
        with open(path) as f:
            return f.read().strip()
    import uuid

    run_id = uuid.uuid4().hex[:12]
    with open(path + ".tmp", "w") as f:
        f.write(run_id)
    os.replace(path + ".tmp", path)
    return run_id
