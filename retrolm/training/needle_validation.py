"""A training run's validation needles: their recall at every evaluation, and the retriever kept by it.

With `needle_eval_samples` set, every evaluation (before training, every `eval_steps`, after) also measures
needle-page recall on the validation needles of `needle_recall.py`, split across ranks like the held-out
loss. With `keep="needle_recall"` (stage 1), the retriever of the best evaluation so far is written to
`output_dir/best_retriever.safetensors` (temp file, then rename) with its step and recall in
`best_retriever.json`; a resumed run continues from them, a fresh run starts over; the export writes that
retriever instead of the last step's.
"""
from __future__ import annotations

import json
import os

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .config import TrainConfig
from .needle_recall import needle_found, validation_samples

BEST_WEIGHTS = "best_retriever.safetensors"
BEST_RECORD = "best_retriever.json"


class NeedleValidation:
    """Measures the validation needles and keeps the best retriever (one per run, on every rank)."""

    def __init__(self, train: TrainConfig, model, resumed_at: int):
        """resumed_at: the step a resumed run continues from (0: a fresh run, which forgets earlier records)."""
        self.lengths = list(train.needle_eval_tokens)
        self.samples = validation_samples(model.tokenizer, self.lengths, train.needle_eval_samples, train.seed)
        self.keep = train.keep == "needle_recall"
        self.weights_path = os.path.join(train.output_dir, BEST_WEIGHTS)
        self.record_path = os.path.join(train.output_dir, BEST_RECORD)
        self.history: list[dict] = []
        self.best: dict | None = None
        if resumed_at and os.path.isfile(self.record_path):
            with open(self.record_path) as f:
                record = json.load(f)
            # evaluations after the checkpoint are run again (with the same result: resuming is exact)
            self.history = [entry for entry in record["history"] if entry["step"] <= resumed_at]
            self.best = record["best"]

    @torch.no_grad()
    def evaluate(self, engine, model, device) -> dict:
        """Recall (percent) per prompt length and their mean; every rank runs its share of the samples."""
        rank, world = dist.get_rank(), dist.get_world_size()
        engine.eval()
        counts = torch.zeros(len(self.lengths), 2, dtype=torch.float64, device=device)  # hits, samples
        jobs = [(row, sample) for row, length in enumerate(self.lengths) for sample in self.samples[length]]
        for row, sample in tqdm(jobs[rank::world], desc="validation needles", unit="prompt", disable=rank != 0,
                                leave=False):
            counts[row, 0] += needle_found(model, sample)
            counts[row, 1] += 1
        engine.train()
        if world > 1:
            dist.all_reduce(counts)
        recall = (100 * counts[:, 0] / counts[:, 1]).tolist()
        metrics = {f"needle_recall@{length}": value for length, value in zip(self.lengths, recall)}
        metrics["needle_recall"] = sum(recall) / len(recall)
        return metrics

    def record(self, step: int, metrics: dict, model, rank: int) -> None:
        """Note this evaluation; with keep="needle_recall", keep the retriever if it beats every earlier one."""
        recall = metrics["needle_recall"]
        # a run resumed at its last step evaluates that step again: one entry per step
        self.history = [entry for entry in self.history if entry["step"] != step] + [
            {"step": step, "needle_recall": recall}]
        better = self.best is None or recall > self.best["needle_recall"]
        if self.keep and better:
            self.best = {"step": step, "needle_recall": recall}
            if rank == 0:
                state = {name: tensor.detach().cpu().contiguous()
                         for name, tensor in model.retriever.state_dict().items()}
                save_file(state, self.weights_path + ".tmp")
                os.replace(self.weights_path + ".tmp", self.weights_path)
        if rank == 0:
            with open(self.record_path + ".tmp", "w") as f:
                json.dump({"history": self.history, "best": self.best}, f, indent=2)
            os.replace(self.record_path + ".tmp", self.record_path)

    def restore_best(self, model) -> None:
        """Put the kept retriever back into `model` before it is exported (keep="needle_recall")."""
        if self.keep:
            state = load_file(self.weights_path, device=str(next(model.retriever.parameters()).device))
            model.retriever.load_state_dict(state)

    def report(self) -> str:
        """One line for the end of the run."""
        line = "validation needle recall by step: " + ", ".join(
            f"{entry['step']}: {entry['needle_recall']:.1f}%" for entry in self.history)
        if self.keep:
            line += f"; exported the retriever of step {self.best['step']}"
        return line

    def summary(self) -> dict:
        return {"needle_recall": self.history, **({"kept": self.best} if self.keep else {})}
