"""Post-training throughput under DeepSpeed: a Mistral-7B-shaped model (random bf16 weights), LoRA, long sequences.

    python bench/post_train_throughput.py --num-gpus 2 --deepspeed configs/ds_zero3.json --seq-len 32768

Builds the random model and random-text packed data locally, launches `deepspeed --num_gpus N
train/post_train.py` (the real entry point, real data path) for a few steps, then reads the run's
train_results.json: tokens/s per GPU (median step, first step excluded) and peak GPU memory per GPU.
Writes bench/results/<name>.json and .md.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import string
import subprocess
import sys
import time

import torch
from transformers import MistralConfig, MistralForCausalLM

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import environment, markdown_table, write_json, write_text  # noqa: E402
from retrolm.tiny import byte_tokenizer  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MISTRAL_7B = dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=8, rope_theta=1e6, max_position_embeddings=32768,
                  sliding_window=None)
TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=1 << 20, sliding_window=None)


def build_model(directory: str, shape: dict, device: str) -> None:
    """Save a randomly initialised Mistral-shaped model (bf16 on GPU) and a byte tokenizer to `directory`."""
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = MistralForCausalLM(MistralConfig(**shape, bos_token_id=256, eos_token_id=257, pad_token_id=258))
    finally:
        torch.set_default_dtype(default)
    model.save_pretrained(directory)
    byte_tokenizer().save_pretrained(directory)
    del model


def write_documents(path: str, documents: int, chars: int, seed: int) -> None:
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(documents):
            words = (("".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 9)))) for _ in range(chars // 5))
            f.write(json.dumps({"text": " ".join(words)[:chars]}) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-gpus", type=int, default=2)
    parser.add_argument("--deepspeed", default="configs/ds_zero3.json")
    parser.add_argument("--seq-len", type=int, default=32768)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--shape", choices=["mistral-7b", "tiny"], default="mistral-7b")
    parser.add_argument("--work", default="/tmp/retrolm-bench-post-train")
    parser.add_argument("--name", default="post_train_mistral7b_32k")
    args = parser.parse_args()
    on_gpu = torch.cuda.is_available()
    os.makedirs(args.work, exist_ok=True)
    model_dir, data_dir = os.path.join(args.work, "model"), os.path.join(args.work, "data")
    run_dir = os.path.join(args.work, "run")

    started = time.perf_counter()
    build_model(model_dir, MISTRAL_7B if args.shape == "mistral-7b" else TINY, "cuda" if on_gpu else "cpu")
    sequences = args.num_gpus * (args.steps + 1) + args.num_gpus
    jsonl = os.path.join(args.work, "docs.jsonl")
    write_documents(jsonl, documents=sequences + 2, chars=args.seq_len + 64, seed=0)
    subprocess.run([sys.executable, os.path.join(ROOT, "train/prepare_data.py"), "--source", jsonl,
                    "--tokenizer", model_dir, "--seq-len", str(args.seq_len), "--page-size", "128",
                    "--out", data_dir, "--held-out", str(args.num_gpus)], check=True)
    setup_s = time.perf_counter() - started

    launcher = ["deepspeed", "--num_gpus", str(args.num_gpus)] if on_gpu else [sys.executable]
    command = launcher + [os.path.join(ROOT, "train/post_train.py"), "--config", os.path.join(ROOT, "configs/post_train.json"),
                          "--deepspeed", os.path.join(ROOT, args.deepspeed),
                          "--set", f"model={model_dir}", "--set", f"data={data_dir}", "--set", f"output_dir={run_dir}",
                          "--set", f"max_steps={args.steps}", "--set", "warmup_steps=1", "--set", "eval_sequences=2",
                          "--set", "save_steps=1000", "--set", "report_to=none", "--set", "resume=false"]
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT)
    run_s = time.perf_counter() - started
    with open(os.path.join(run_dir, "train_results.json")) as f:
        results = json.load(f)

    record = {
        "shape": args.shape, "model": MISTRAL_7B if args.shape == "mistral-7b" else TINY,
        "deepspeed_config": args.deepspeed, "zero_stage": results["zero_stage"], "bf16": results["bf16"],
        "num_gpus": results["world_size"], "sequence_tokens": results["sequence_tokens"], "steps": results["steps"],
        "tokens_per_s_per_gpu": results["tokens_per_s_per_gpu_median"],
        "peak_memory_gib_per_gpu": results["peak_memory_gib_per_gpu"], "peak_memory_kind": results["peak_memory_kind"],
        "trainable_parameters": results["trainable_parameters"], "retrolm": results["train_config"]["retrolm"],
        "lora": results["train_config"]["lora"], "eval_before": results["eval_before"],
        "eval_after": results["eval_after"], "setup_s": setup_s, "launch_to_exit_s": run_s,
        "device": results["device"], "environment": environment(), "versions": results["versions"],
    }
    out = os.path.join(ROOT, "bench", "results", args.name)
    write_json(out + ".json", record)
    row = {"model": args.shape, "GPUs": record["num_gpus"], "ZeRO": record["zero_stage"],
           "sequence": record["sequence_tokens"], "tokens/s/GPU": f"{record['tokens_per_s_per_gpu']:.0f}",
           "peak GiB/GPU": f"{record['peak_memory_gib_per_gpu']:.1f}", "device": record["device"]}
    write_text(out + ".md", markdown_table([row], list(row)))
    print(markdown_table([row], list(row)))


if __name__ == "__main__":
    main()
