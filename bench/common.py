"""Shared bits of the GPU benchmarks: model shapes, environment record, atomic result files."""
from __future__ import annotations

import json
import os
import platform
import tempfile

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

SHAPES = {
    # Llama-3-8B: 32 layers, 4096 wide, GQA 32/8, 128K vocab, rope_theta 5e5
    "llama3-8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=8, rope_theta=500000.0,
                      max_position_embeddings=131072),
    # Qwen2.5-7B: 28 layers, 3584 wide, GQA 28/4 (half Llama-3-8B's KV per token: 1M tokens of bf16 KV is 56 GiB)
    "qwen2.5-7b": dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                       num_attention_heads=28, num_key_value_heads=4, rope_theta=1000000.0,
                       max_position_embeddings=1 << 21, tie_word_embeddings=False),
    # a tiny stand-in, for dry runs of the scripts on a CPU
    "tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1 << 20),
    # a 2-layer stand-in with the same per-layer shapes, for dry runs on small GPUs
    "llama3-8b-2layer": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=2,
                             num_attention_heads=32, num_key_value_heads=8, rope_theta=500000.0,
                             max_position_embeddings=131072),
}


def random_model(shape: str, dtype=torch.bfloat16, device="cuda"):
    """A randomly initialised model of a named shape (Qwen2 for qwen shapes, else Llama), built directly on
    `device` in `dtype`."""
    config_class, model_class = (Qwen2Config, Qwen2ForCausalLM) if shape.startswith("qwen") else \
        (LlamaConfig, LlamaForCausalLM)
    config = config_class(**SHAPES[shape])
    config._attn_implementation = "sdpa"
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = model_class(config)
    finally:
        torch.set_default_dtype(default)
    return model.eval()


def sync(device) -> None:
    """Wait for queued GPU work, so host timers measure it."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def reset_peak(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device) -> float:
    """Peak GPU memory allocated since the last reset, GiB (0 on a CPU)."""
    return torch.cuda.max_memory_allocated() / (1 << 30) if torch.device(device).type == "cuda" else 0.0


def environment() -> dict:
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {"gpu": gpu, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


def write_json(path: str, data) -> None:
    """Write JSON via a temp file and rename, so a crash never leaves a truncated result."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def write_text(path: str, text: str) -> None:
    """Write text via a temp file and rename (the folder made first), as write_json."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(str(row.get(c, "")) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def write_result_files(out: str, name: str, record: dict, summary: list[dict], heading: str, notes: str) -> str:
    """<name>.json (`record` with `summary`, the environment and torch's thread count added) and <name>.md (`heading`,
    the summary as a table, `notes`) under `out`, each written whole (write_json); returns the table."""
    write_json(os.path.join(out, f"{name}.json"), {**record, "summary": summary, "environment": environment(),
                                                   "threads": torch.get_num_threads()})
    table = markdown_table(summary, list(summary[0]))
    write_text(os.path.join(out, f"{name}.md"), f"# {heading}\n\n{table}\n\n{notes}\n")
    return table
