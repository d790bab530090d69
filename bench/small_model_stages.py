"""Both training stages on one GPU on a small model: held-out recall@k and long-document LM loss, before/after.

    python bench/small_model_stages.py --pretrain-seconds 150

1. Pretrains a small Llama (byte vocabulary) with full attention at a 1024-token window on synthetic documents:
   filler sentences with facts ("the code of NAME is DIGITS.") that the text later repeats, so the model learns
   to look facts up (a random model's attention carries no retrieval signal to learn from).
2. Writes 8192-token documents (8x the window) of the same kind, facts early and repeats late, and packs them
   with train/prepare_data.py.
3. Stage 1 (`deepspeed --num_gpus 1 train/train_retriever.py`), then stage 2 (`train/post_train.py`, LoRA) on
   stage 1's output, both through the real entry points and configs.
Writes bench/results/small_model_stages.json and .md.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import environment, markdown_table, write_json, write_text  # noqa: E402
from retrolm.tiny import byte_tokenizer  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = ("river stone light paper window garden silver morning quiet market letter winter orange bridge "
         "candle forest harbor engine pocket ladder violet thunder marble cotton").split()
NAMES = [a + b for a in ("ka", "lo", "mi", "ru", "ze", "po", "ta", "ve") for b in ("rn", "lt", "sk", "md", "vx")]


def _section(rng: random.Random, facts: list[str], length: int) -> str:
    """`length` characters of filler sentences with `facts` placed among the first 80% of them, in order."""
    count = max(len(facts) + 1, length // 45)
    places = sorted(rng.sample(range(int(count * 0.8) or 1), min(len(facts), int(count * 0.8) or 1)))
    sentences = []
    for i in range(count):
        sentences.append(" ".join(rng.choices(WORDS, k=rng.randint(4, 9))) + ".")
        if places and places[0] == i:
            places.pop(0)
            sentences.append(facts.pop(0))
    text = " ".join(sentences)
    while len(text) < length:
        text += " " + " ".join(rng.choices(WORDS, k=8)) + "."
    return text[:length]


def document(rng: random.Random, chars: int, facts: int) -> str:
    """Exactly `chars` characters: codes stated in the first half, repeated in another order in the second."""
    table = {name: "".join(rng.choices("0123456789", k=5)) for name in rng.sample(NAMES, facts)}
    stated = [f"The code of {name} is {code}." for name, code in table.items()]
    recalled = [f"Recall: the code of {name} is {table[name]}." for name in rng.sample(list(table), len(table))]
    half = chars // 2
    return _section(rng, stated, half) + " " + _section(rng, recalled, chars - half - 1)


def pretrain(directory: str, seconds: float, window: int, device: str) -> dict:
    config = LlamaConfig(vocab_size=320, hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1 << 20,
                         bos_token_id=256, eos_token_id=257, pad_token_id=258, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(device)
    tokenizer = byte_tokenizer()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    rng = random.Random(0)
    started, step, losses = time.perf_counter(), 0, []
    while time.perf_counter() - started < seconds:
        texts = [document(rng, window + 64, rng.randint(3, 8)) for _ in range(32)]
        ids = torch.tensor([tokenizer(t, add_special_tokens=False)["input_ids"][:window] for t in texts], device=device)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device == "cuda"):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        step += 1
        losses.append(float(loss))
        if step % 100 == 0:
            print(f"pretrain step {step}: loss {sum(losses[-100:]) / 100:.3f}", flush=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return {"steps": step, "seconds": seconds, "window": window, "batch": 32,
            "final_loss_mean_last_50": sum(losses[-50:]) / len(losses[-50:]),
            "parameters": sum(p.numel() for p in model.parameters())}


def launch(script: str, config: str, overrides: dict, num_gpus: int) -> None:
    launcher = ["deepspeed", "--num_gpus", str(num_gpus)] if torch.cuda.is_available() else [sys.executable]
    sets = sum((["--set", f"{k}={json.dumps(v) if not isinstance(v, str) else v}"] for k, v in overrides.items()), [])
    subprocess.run(launcher + [os.path.join(ROOT, "train", script), "--config", os.path.join(ROOT, config),
                               "--deepspeed", os.path.join(ROOT, "configs/ds_zero2.json")] + sets, check=True, cwd=ROOT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pretrain-seconds", type=float, default=150)
    parser.add_argument("--window", type=int, default=1024)
    parser.add_argument("--factor", type=int, default=8, help="long documents are factor x window tokens")
    parser.add_argument("--documents", type=int, default=160)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--top-k", type=int, default=4)
    parser.add_argument("--work", default="/tmp/retrolm-small-stages")
    parser.add_argument("--name", default="small_model_stages")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    os.makedirs(args.work, exist_ok=True)
    base, data = os.path.join(args.work, "base"), os.path.join(args.work, "data")
    stage1, stage2 = os.path.join(args.work, "stage1"), os.path.join(args.work, "stage2")

    pretrained = pretrain(base, args.pretrain_seconds, args.window, device)
    rng = random.Random(1)
    seq_len = args.window * args.factor
    jsonl = os.path.join(args.work, "long.jsonl")
    with open(jsonl, "w") as f:
        for _ in range(args.documents):
            f.write(json.dumps({"text": document(rng, seq_len - 2, rng.randint(8, 16))}) + "\n")
    subprocess.run([sys.executable, os.path.join(ROOT, "train/prepare_data.py"), "--source", jsonl, "--tokenizer", base,
                    "--seq-len", str(seq_len), "--page-size", "128", "--out", data, "--held-out", "8"], check=True)
    retrolm = {"page_size": 128, "top_k": args.top_k, "sink_pages": 1, "local_pages": 1}
    common = {"data": data, "max_steps": args.steps, "warmup_steps": 10, "eval_sequences": 8, "eval_steps": 0,
              "save_steps": 10_000, "report_to": "none", "resume": False, "gradient_accumulation_steps": 1}
    started = time.perf_counter()
    launch("train_retriever.py", "configs/train_retriever.json",
           {**common, "model": base, "output_dir": stage1, "retrolm": retrolm, "learning_rate": 3e-4}, 1)
    launch("post_train.py", "configs/post_train.json",
           {**common, "model": stage1, "output_dir": stage2, "retrolm": {}, "learning_rate": 1e-3}, 1)
    stages_s = time.perf_counter() - started
    results = {}
    for name, directory in (("stage1", stage1), ("stage2", stage2)):
        with open(os.path.join(directory, "train_results.json")) as f:
            results[name] = json.load(f)

    record = {"base_model": pretrained, "long_document_tokens": seq_len, "retrolm": retrolm,
              "stage1": {k: results["stage1"][k] for k in ("steps", "eval_before", "eval_after",
                                                           "tokens_per_s_per_gpu_median", "peak_memory_gib_per_gpu")},
              "stage2": {k: results["stage2"][k] for k in ("steps", "eval_before", "eval_after",
                                                           "tokens_per_s_per_gpu_median", "peak_memory_gib_per_gpu",
                                                           "trainable_parameters")},
              "stages_wall_s": stages_s, "device": results["stage2"]["device"], "environment": environment()}
    out = os.path.join(ROOT, "bench", "results", args.name)
    write_json(out + ".json", record)
    s1, s2 = record["stage1"], record["stage2"]
    rows = [
        {"metric": f"stage 1: held-out recall@{args.top_k} (vs full attention's top pages)",
         "before": f"{s1['eval_before']['recall']:.3f}", "after": f"{s1['eval_after']['recall']:.3f}",
         "chance": f"{s1['eval_after']['recall_chance']:.3f}"},
        {"metric": f"stage 2: held-out LM loss through retrieved pages ({seq_len} tokens)",
         "before": f"{s2['eval_before']['lm_loss']:.4f}", "after": f"{s2['eval_after']['lm_loss']:.4f}", "chance": ""},
        {"metric": "reference: full-attention LM loss (same documents)",
         "before": f"{s2['eval_before']['lm_loss_full_attention']:.4f}",
         "after": f"{s2['eval_after']['lm_loss_full_attention']:.4f}", "chance": ""},
    ]
    table = markdown_table(rows, ["metric", "before", "after", "chance"])
    write_text(out + ".md", table)
    print(table)


if __name__ == "__main__":
    main()
