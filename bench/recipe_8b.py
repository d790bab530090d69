"""`retrolm train-retriever --preset 8b` end to end on one GPU, on a random Llama-3-8B-shaped model.

    python bench/recipe_8b.py --steps 6 --out bench/results

What a user runs, at full model size, with the recipe's own settings (8K-token sequences, 4 per step, ZeRO-2,
the LLM frozen in bf16); only the number of steps and of held-out sequences is cut to fit a short GPU lease:
1. saves a random Llama-3-8B-shaped model (bf16, 16 GB) with the byte tokenizer to a local directory;
2. writes a jsonl corpus of natural prose available offline everywhere (Python's own documentation topics,
   `pydoc_data`, PSF licence);
3. runs `retrolm train-retriever` stopped halfway (`stop_at_step`), then the same command again to resume and
   finish: data preparation, the printed time estimate, training, the exported checkpoint;
4. loads the output with `RetroLM.from_pretrained(out)` (logs which scorer) and decodes from a 32K prompt.
Writes recipe_8b.json and recipe_8b.md under --out: wall times, step time, peak GPU memory, the estimate
for the full 1,000-step recipe. Random weights carry no retrieval signal: recall here shows the pipeline runs,
not what a real model learns.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import (environment, markdown_table, peak_gib, random_model, reset_peak, sync, write_json,  # noqa: E402
                          write_text)  # noqa: E402
from retrolm.tiny import byte_tokenizer  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def save_model(directory: str, shape: str, device: str) -> float:
    """A random model of `shape` (bench.common.SHAPES) with the byte tokenizer in `directory`; returns seconds."""
    started = time.perf_counter()
    tokenizer = byte_tokenizer()
    model = random_model(shape, device=device)
    model.config.bos_token_id, model.config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return time.perf_counter() - started


def write_corpus(path: str) -> int:
    """Python's documentation topics, one document a line; returns the number of characters."""
    from pydoc_data.topics import topics

    with open(path, "w") as f:
        for text in topics.values():
            f.write(json.dumps({"text": text}) + "\n")
    return sum(len(t) for t in topics.values())


def train_command(model: str, corpus: str, out: str, steps: int, held_out: int, stop_at: int | None) -> list[str]:
    command = [sys.executable, "-m", "retrolm.cli", "train-retriever", "--model", model, "--data", corpus,
               "--out", out, "--preset", "8b", "--set", f"max_steps={steps}", "--set", f"held_out={held_out}",
               "--set", f"eval_sequences={held_out}", "--set", "report_to=none", "--set", f"save_steps={steps}",
               "--set", f"eval_steps={steps}"]
    return command + (["--set", f"stop_at_step={stop_at}"] if stop_at else [])


def run_logged(command: list[str], log_path: str) -> tuple[float, str]:
    """Run `command` from the repo root, its output to `log_path`; (seconds, output). Raises on failure."""
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])})
    output = done.stdout + done.stderr
    with open(log_path, "w") as f:
        f.write(" ".join(command) + "\n" + output)
    if done.returncode:
        raise SystemExit(f"{' '.join(command[:4])} failed ({done.returncode}); last output:\n{output[-3000:]}")
    return time.perf_counter() - started, output


def load_and_decode(out: str, prompt_tokens: int, device: str) -> dict:
    """Load the trained checkpoint as a user does, note the scorer it logs, decode 16 tokens after a long prompt."""
    from retrolm import RetroLM

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("retrolm").addHandler(handler)
    logging.getLogger("retrolm").setLevel(logging.INFO)
    started = time.perf_counter()
    model = RetroLM.from_pretrained(out, dtype=torch.bfloat16, device=device)
    loaded = time.perf_counter() - started
    scorer_lines = [r.getMessage() for r in records if "page scorer" in r.getMessage()]
    ids = torch.randint(0, 256, (1, prompt_tokens), device=device)
    reset_peak(device)
    started = time.perf_counter()
    generated = model.generate(ids, max_new_tokens=16, do_sample=False)
    sync(device)
    return {"load_seconds": round(loaded, 1), "scorer_log": scorer_lines, "prompt_tokens": prompt_tokens,
            "generate_seconds": round(time.perf_counter() - started, 2), "new_tokens": generated.shape[1] - prompt_tokens,
            "generate_peak_gib": round(peak_gib(device), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6, help="training steps (the recipe's are 1,000)")
    parser.add_argument("--held-out", type=int, default=4, help="held-out sequences (the recipe's are 16)")
    parser.add_argument("--work", default="/tmp/recipe_8b", help="scratch directory (16 GB of model weights)")
    parser.add_argument("--prompt-tokens", type=int, default=32768)
    parser.add_argument("--shape", default="llama3-8b", help="bench.common.SHAPES name; tiny for a CPU dry run")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.shape == "llama3-8b" and device != "cuda":
        raise SystemExit("the 8B shape needs a CUDA GPU (80 GB); --shape tiny runs the pipeline on a CPU")
    model_dir, run_dir = os.path.join(args.work, "llama3-8b-shape"), os.path.join(args.work, "run")
    corpus = os.path.join(args.work, "pydoc_topics.jsonl")
    os.makedirs(args.work, exist_ok=True)
    os.makedirs(args.out, exist_ok=True)
    save_seconds = save_model(model_dir, args.shape, device)
    corpus_chars = write_corpus(corpus)
    halfway = max(1, args.steps // 2)
    first_seconds, first = run_logged(train_command(model_dir, corpus, run_dir, args.steps, args.held_out, halfway),
                                      os.path.join(args.out, "recipe_8b_first.log"))
    second_seconds, second = run_logged(train_command(model_dir, corpus, run_dir, args.steps, args.held_out, None),
                                        os.path.join(args.out, "recipe_8b_resume.log"))
    with open(os.path.join(run_dir, "train_results.json")) as f:
        results = json.load(f)
    estimate = re.search(r"estimated training time: .*", first)
    tokens_per_s = results["tokens_per_s_per_gpu_median"]
    step_seconds = results["train_config"]["gradient_accumulation_steps"] * results["sequence_tokens"] / tokens_per_s
    decode = load_and_decode(run_dir, args.prompt_tokens, device)
    report = {
        "environment": environment(), "model": f"random {args.shape} shape, bf16, byte tokenizer",
        "corpus": f"pydoc_data topics ({corpus_chars} characters)", "steps": results["steps"],
        "stopped_at_then_resumed": halfway, "resumed": "resumed from" in second,
        "save_model_seconds": round(save_seconds, 1), "first_run_seconds": round(first_seconds, 1),
        "resume_run_seconds": round(second_seconds, 1),
        "printed_estimate": estimate.group(0) if estimate else None,
        "tokens_per_s_per_gpu_median": round(tokens_per_s), "step_seconds": round(step_seconds, 2),
        "full_recipe_hours_at_measured_speed": round(1000 * step_seconds / 3600, 2),
        "peak_memory_gib": round(results["peak_memory_gib_per_gpu"], 2), "zero_stage": results["zero_stage"],
        "trainable_parameters": results["trainable_parameters"],
        "recall_before": results["eval_before"].get("recall"), "recall_after": results["eval_after"].get("recall"),
        "recall_chance": results["eval_after"].get("recall_chance"),
        "load_and_decode": decode,
    }
    write_json(os.path.join(args.out, "recipe_8b.json"), report)
    rows = [{"what": k, "value": v} for k, v in report.items() if k not in ("environment", "load_and_decode")]
    rows += [{"what": f"from_pretrained: {k}", "value": v} for k, v in decode.items()]
    text = (f"# `retrolm train-retriever --preset 8b` on one {report['environment']['gpu'] or 'CPU'}\n\n"
            + markdown_table(rows, ["what", "value"]))
    write_text(os.path.join(args.out, "recipe_8b.md"), text)
    print(text)


if __name__ == "__main__":
    main()
