"""Pretraining a small Llama from scratch on packed sequences, on one GPU: the default model's base LM.

    python train/pretrain.py --config configs/default_model/pretrain.json --set data=work/pretrain-data

Plain PyTorch (AdamW, warm-up + cosine, bf16 autocast): a model this small needs neither DeepSpeed nor
several GPUs. The model attends to at most `seq_len` tokens (its window). Position skipping (PoSE): in a
`skip_fraction` of the batch rows, the positions after a random split point jump by a random gap, so the
model also sees relative distances up to `max_position` inside its short window. Stage 1 labels pages with
the model's full attention on sequences longer than the window; with skipped positions in pretraining those
distances are ones the model has met (RetroLM itself never needs them: it re-packs retrieved pages inside
the window).

A run saves its whole state every `save_steps` steps to `<output_dir>.resume.pt` (written to a temporary file,
then renamed); started again with the same config, it resumes from there and ends with the same weights as an
uninterrupted run. The file is removed once the model is saved.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import LlamaConfig, LlamaForCausalLM

from ..errors import RetroLMError
from ..tiny import byte_tokenizer
from .config import load_json_config
from .data import PackedSequences
from .loop import warmup_cosine_schedule

RESULTS_FILE = "pretrain_results.json"


@dataclass
class PretrainConfig:
    """A from-scratch pretraining run. `model`: LlamaConfig values (vocab and special ids of the byte tokenizer)."""

    model: dict = field(default_factory=dict)
    data: str = ""  # a prepared-data directory (train/prepare_data.py) with sequences of the window length
    output_dir: str = ""
    batch_size: int = 64
    max_steps: int = 3000
    learning_rate: float = 2e-3
    warmup_steps: int = 200
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    gradient_clipping: float = 1.0
    skip_fraction: float = 0.5  # batch rows whose positions jump once (PoSE)
    max_position: int = 8192  # positions stay below this
    eval_sequences: int = 64
    logging_steps: int = 50
    save_steps: int = 500  # resume state every this many steps (0: never; an interrupted run starts over)
    seed: int = 0
    bf16: bool = True
    # torch.compile the model's training forward: at this size a step is mostly small elementwise kernels (norms,
    # RoPE, activations) that inductor fuses; the saved weights are the plain module's
    compile: bool = False

    def validate(self) -> None:
        for name in ("data", "output_dir"):
            if not getattr(self, name):
                raise RetroLMError(f"pretraining config needs {name!r}; pass --set {name}=PATH.")
        for name in ("batch_size", "max_steps", "max_position", "logging_steps"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise RetroLMError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}.")
        if not isinstance(self.save_steps, int) or self.save_steps < 0:
            raise RetroLMError(f"save_steps must be an integer >= 0 (0: no resume state), got {self.save_steps!r}.")
        if not 0.0 <= self.skip_fraction <= 1.0:
            raise RetroLMError(f"skip_fraction must be in [0, 1], got {self.skip_fraction!r}.")
        if not isinstance(self.compile, bool):
            raise RetroLMError(f"compile must be true or false, got {self.compile!r}.")
        if not self.learning_rate > 0:
            raise RetroLMError(f"learning_rate must be > 0, got {self.learning_rate!r}.")


def load_pretrain_config(path: str, overrides: list[str] = ()) -> PretrainConfig:
    config = load_json_config(PretrainConfig, path, overrides,
                              f"pretraining config {path!r} not found; see configs/default_model/pretrain.json.")
    config.validate()
    return config


def skipped_positions(rows: int, seq_len: int, max_position: int, skip_fraction: float,
                      generator: torch.Generator) -> torch.Tensor:
    """Position ids [rows, seq_len]: 0..seq_len-1, except that in a `skip_fraction` of rows the positions from a
    random split point on are shifted by a random gap, keeping every position below `max_position`."""
    base = torch.arange(seq_len).expand(rows, seq_len)
    room = max_position - seq_len
    if room <= 0 or skip_fraction == 0:
        return base.clone()
    skip = torch.rand(rows, generator=generator) < skip_fraction
    split = torch.randint(1, seq_len, (rows,), generator=generator)
    gap = torch.randint(0, room + 1, (rows,), generator=generator) * skip
    return base + gap[:, None] * (base >= split[:, None])


def _held_out_loss(model, held_out: PackedSequences, count: int, batch: int, device, autocast) -> float | None:
    n = min(count, len(held_out))
    if n == 0:
        return None
    total, tokens = 0.0, 0
    model.eval()
    with torch.no_grad(), autocast:
        for start in range(0, n, batch):
            ids = torch.stack([held_out[i] for i in range(start, min(start + batch, n))]).to(device)
            logits = model(input_ids=ids).logits.float()
            total += float(F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten(), reduction="sum"))
            tokens += ids[:, 1:].numel()
    model.train()
    return total / tokens


def _save(model, directory: str, results: dict) -> None:
    """Model, byte tokenizer and results into `directory`, through a temporary sibling renamed into place."""
    directory = os.path.abspath(directory)
    os.makedirs(os.path.dirname(directory), exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".pretrain-", dir=os.path.dirname(directory))
    try:
        model.save_pretrained(staging)
        byte_tokenizer().save_pretrained(staging)
        with open(os.path.join(staging, RESULTS_FILE), "w") as f:
            json.dump(results, f, indent=2)
        if os.path.isdir(directory):
            shutil.rmtree(directory)
        os.replace(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def resume_path(config: PretrainConfig) -> str:
    return os.path.abspath(config.output_dir).rstrip(os.sep) + ".resume.pt"


def _save_resume_state(path: str, state: dict) -> None:
    staging = f"{path}.{os.getpid()}.tmp"
    try:
        torch.save(state, staging)
        os.replace(staging, path)
    except BaseException:
        if os.path.exists(staging):
            os.remove(staging)
        raise


def _load_resume_state(path: str, config: PretrainConfig) -> dict | None:
    """The saved state of an interrupted run of this same config, or None when there is none."""
    if not os.path.isfile(path):
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    # logging and saving intervals change nothing that is learned; anything else would mix two runs
    ignored = {"logging_steps", "save_steps"}
    saved = {k: v for k, v in state["config"].items() if k not in ignored}
    wanted = {k: v for k, v in dataclasses.asdict(config).items() if k not in ignored}
    if saved != wanted:
        changed = sorted(k for k in wanted.keys() | saved.keys() if saved.get(k) != wanted.get(k))
        raise RetroLMError(f"{path} holds an interrupted pretraining run with another config (differs in "
                           f"{', '.join(changed)}); restore that config to resume it, or delete the file to "
                           "start over.")
    return state


def pretrain(config: PretrainConfig) -> dict:
    """Train the model of `config.model` from scratch; save it with its tokenizer; return the results."""
    data, held_out = PackedSequences(config.data, "train"), PackedSequences(config.data, "held_out")
    if len(data) == 0:
        raise RetroLMError(f"{config.data} has no training sequences.")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(config.seed)
    model = LlamaForCausalLM(LlamaConfig(**config.model)).to(device)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": rest, "weight_decay": 0.0}], lr=config.learning_rate,
                                  betas=(0.9, 0.95), fused=device.type == "cuda")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine_schedule(config))
    forward = torch.compile(model, dynamic=False) if config.compile else model
    use_bf16 = config.bf16 and device.type == "cuda"
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16)
    generator = torch.Generator().manual_seed(config.seed)
    order = torch.randperm(len(data), generator=generator)
    losses, cursor, first_step, seconds_before = [], 0, 0, 0.0
    checkpoint = resume_path(config)
    state = _load_resume_state(checkpoint, config)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        order, cursor, losses = state["order"], state["cursor"], state["losses"]
        first_step, seconds_before = state["step"], state["seconds"]
        print(f"pretraining: resuming at step {first_step} from {checkpoint}", flush=True)
    started = time.perf_counter()
    bar = tqdm(range(first_step, config.max_steps), initial=first_step, total=config.max_steps,
               desc="pretraining", unit="step")
    for step in bar:
        if cursor + config.batch_size > len(order):  # next epoch: a fresh permutation
            order, cursor = torch.randperm(len(data), generator=generator), 0
        index = order[cursor : cursor + config.batch_size]
        cursor += config.batch_size
        ids = torch.from_numpy(data.array[index.sort().values.numpy()].astype("int64")).to(device)
        positions = skipped_positions(ids.shape[0], ids.shape[1], config.max_position, config.skip_fraction,
                                      generator).to(device)
        with autocast:
            logits = forward(input_ids=ids, position_ids=positions).logits
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
        if not math.isfinite(float(loss.detach())):
            raise RetroLMError(f"pretraining diverged at step {step + 1}; lower learning_rate.")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.gradient_clipping)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if (step + 1) % config.logging_steps == 0:
            bar.set_postfix(loss=f"{sum(losses[-config.logging_steps:]) / config.logging_steps:.3f}")
        if config.save_steps and (step + 1) % config.save_steps == 0 and step + 1 < config.max_steps:
            _save_resume_state(checkpoint, {
                "step": step + 1, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "generator": generator.get_state(), "order": order,
                "cursor": cursor, "losses": losses, "seconds": seconds_before + time.perf_counter() - started,
                "config": dataclasses.asdict(config)})
    seconds = seconds_before + time.perf_counter() - started
    tokens = config.max_steps * config.batch_size * data.seq_len
    results = {
        "parameters": sum(p.numel() for p in model.parameters()),
        "window": data.seq_len,
        "steps": config.max_steps,
        "tokens": tokens,
        "seconds": round(seconds, 1),
        "tokens_per_s": round(tokens / seconds),
        "compiled": config.compile,
        "train_loss_first_50": sum(losses[:50]) / len(losses[:50]),
        "train_loss_last_50": sum(losses[-50:]) / len(losses[-50:]),
        "held_out_loss": _held_out_loss(model, held_out, config.eval_sequences, config.batch_size, device, autocast),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "config": dataclasses.asdict(config),
    }
    _save(model, config.output_dir, results)
    if os.path.exists(checkpoint):
        os.remove(checkpoint)
    return results
