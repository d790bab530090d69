"""The DeepSpeed training loop shared by both stages: one sequence per micro-batch, resumable, logged.

    run("post_train", "configs/post_train_tiny.json", "configs/ds_zero2.json")

Order of work: read and check both configs and the data (errors before any compute), start the process
group, load the model for the stage, hand it to DeepSpeed, evaluate the held-out sequences, train, evaluate
again, write the RetroLM checkpoint into `output_dir` and `train_results.json` next to it.

Resuming is exact: sequence order is a pure function of (seed, step), random state is re-seeded from the
sequence index before every micro-step, and DeepSpeed's checkpoint holds the optimizer and the schedule.
"""
from __future__ import annotations

import atexit
import contextlib
import json
import math
import os
import platform
import resource
import shutil
import socket
import time

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from ..errors import RetroLMError, exit_code
from .config import TrainConfig, load_deepspeed_config, load_train_config
from .data import PackedSequences, check_fits_pages
from .needle_validation import NeedleValidation
from .objectives import build_objective
from .tracking import MetricsLogger

CHECKPOINTS_DIR = "checkpoints"
RESULTS_FILE = "train_results.json"
KEEP_CHECKPOINTS = 2


def run(stage: str, config_path: str, deepspeed_path: str, overrides: list[str] = ()) -> dict | None:
    """Run a stage end to end. Returns the results dict on rank 0 (None on other ranks or when stopped early)."""
    train = load_train_config(config_path, stage, overrides)
    data, held_out = _load_data(train)
    replay, replay_held_out = _load_replay(train)
    ds_config = load_deepspeed_config(deepspeed_path, train, on_gpu=torch.cuda.is_available())
    import deepspeed  # imported late: config errors above need no DeepSpeed start-up

    device = _init_distributed(deepspeed)
    rank, world = dist.get_rank(), dist.get_world_size()
    os.makedirs(train.output_dir, exist_ok=True)
    torch.manual_seed(train.seed)
    objective = build_objective(train, stage, device)
    rotary = _rotary_buffers(objective)
    groups = _param_groups(objective, train)
    schedule = warmup_cosine_schedule(train)
    client_optimizer = None
    if "optimizer" not in ds_config:
        client_optimizer = torch.optim.AdamW(groups, lr=train.learning_rate, weight_decay=train.weight_decay)
    engine, _, _, scheduler = deepspeed.initialize(
        model=objective, optimizer=client_optimizer, model_parameters=None if client_optimizer else groups,
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, schedule), config=ds_config)
    _restore_rotary(rotary)  # bf16 casting must not round RoPE frequencies

    checkpoints = os.path.join(train.output_dir, CHECKPOINTS_DIR)
    step, eval_before = 0, None
    if train.resume and os.path.isfile(os.path.join(checkpoints, "latest")):
        _, client = engine.load_checkpoint(checkpoints, load_module_strict=False)
        step, eval_before = client["step"], client["eval_before"]
        if rank == 0:
            print(f"resumed from {checkpoints} at step {step}")
    logger = MetricsLogger(train.output_dir, {"train": train.to_dict(), "deepspeed": ds_config}, train.report_to,
                           train.wandb_project, train.run_name, rank == 0, step)
    needles = NeedleValidation(train, objective.model, resumed_at=step) if train.needle_eval_samples else None

    def needle_recall(at_step: int) -> dict:
        if needles is None:
            return {}
        found = needles.evaluate(engine, objective.model, device)
        needles.record(at_step, found, objective.model, rank)
        return found

    def replay_metrics() -> dict:
        if replay_held_out is None:
            return {}
        return {f"replay_{k}": v for k, v in _evaluate(engine, objective, replay_held_out, train, device).items()}

    def evaluate(at_step: int) -> dict:
        return {**_evaluate(engine, objective, held_out, train, device), **replay_metrics(), **needle_recall(at_step)}

    if eval_before is None:
        started = time.perf_counter()
        eval_before = _evaluate(engine, objective, held_out, train, device)
        forward_seconds = time.perf_counter() - started
        started = time.perf_counter()
        eval_before.update(replay_metrics())
        eval_before.update(needle_recall(0))
        logger.log(0, {f"eval/{k}": v for k, v in eval_before.items()})
        evaluated = -(-min(train.eval_sequences, len(held_out)) // world)
        if rank == 0 and evaluated:
            print(estimate_training_time(stage, train, forward_seconds / evaluated, step))
        if rank == 0 and needles is not None:
            print(f"validation needles: {time.perf_counter() - started:.0f} s per evaluation, recall "
                  f"{eval_before['needle_recall']:.1f}% before training")

    seq_len = data.seq_len
    throughput = []
    bar = tqdm(total=train.max_steps, initial=step, desc=f"{stage} training", unit="step", disable=rank != 0)
    while step < train.max_steps:
        step += 1
        started = time.perf_counter()
        sums: dict[str, float] = {}
        tokens = 0
        for micro in range(train.gradient_accumulation_steps):
            index = ((step - 1) * train.gradient_accumulation_steps + micro) * world + rank
            torch.manual_seed(train.seed * 1_000_003 + index)  # dropout etc. depend on the sequence, not on history
            source, ordinal = _source_of(index, train.replay_fraction)
            sequences = replay if source == "replay" else data
            ids = sequences[_sequence_index(ordinal, len(sequences), train.seed)][None].to(device)  # [1, seq_len]
            tokens += ids.shape[1]
            out = engine(ids)
            engine.backward(out["loss"])
            engine.step()
            for key, value in out.items():
                sums[key] = sums.get(key, 0.0) + float(value.detach() if torch.is_tensor(value) else value)
        metrics = _mean_over_ranks({k: v / train.gradient_accumulation_steps for k, v in sums.items()}, device)
        elapsed = time.perf_counter() - started
        tokens_per_s = tokens / elapsed  # per process
        throughput.append(tokens_per_s)
        bar.update(1)
        bar.set_postfix(loss=f"{metrics['loss']:.4f}")
        if step % train.logging_steps == 0 or step == train.max_steps:
            logger.log(step, {**metrics, "lr": scheduler.get_last_lr()[0], "tokens_per_s_per_gpu": tokens_per_s,
                              "peak_memory_gib": _peak_memory_gib(device)})
        if train.eval_steps and step % train.eval_steps == 0 and step < train.max_steps:
            logger.log(step, {f"eval/{k}": v for k, v in evaluate(step).items()})
        stopping = train.stop_at_step and step == train.stop_at_step and step < train.max_steps
        if step % train.save_steps == 0 or step == train.max_steps or stopping:
            _save_checkpoint(engine, checkpoints, step, eval_before, rank)
        if stopping:
            bar.close()
            if rank == 0:
                print(f"stopped at step {step} (stop_at_step); rerun the same command to resume.")
            logger.finish({})
            return None
    bar.close()

    eval_after = evaluate(step)
    logger.log(step, {f"eval/{k}": v for k, v in eval_after.items()})
    _export(engine, objective, train, rank, needles)
    peak = _max_over_ranks(_peak_memory_gib(device), device)
    results = {
        "stage": stage, "steps": step, "world_size": world, "sequence_tokens": seq_len,
        "eval_before": eval_before, "eval_after": eval_after,
        "tokens_per_s_per_gpu_median": _median(throughput[1:] or throughput),  # the first step warms up
        "peak_memory_gib_per_gpu": peak,
        "peak_memory_kind": "torch.cuda.max_memory_allocated" if device.type == "cuda" else "process max RSS",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "zero_stage": engine.zero_optimization_stage(), "bf16": engine.bfloat16_enabled(),
        "trainable_parameters": sum(getattr(p, "ds_numel", p.numel()) for p in objective.trainable_parameters()),
        "train_config": train.to_dict(), "deepspeed_config": ds_config,
        "versions": _versions(), **(needles.summary() if needles is not None else {}),
    }
    if rank == 0:
        _write_json(os.path.join(train.output_dir, RESULTS_FILE), results)
        if needles is not None:
            print(needles.report())
    logger.finish({"eval_after": eval_after})
    _barrier()
    return results if rank == 0 else None


# a training micro-step costs about this many held-out evaluation forwards of the same sequence: stage 1 only
# back-propagates through the small retriever; stage 2 through the LLM, recomputing checkpointed layers
STEP_COST_IN_FORWARDS = {"retriever": 1.3, "post_train": 4.0}


def estimate_training_time(stage: str, train: TrainConfig, forward_seconds: float, done_steps: int = 0) -> str:
    """One line: the expected time of the remaining steps, from the measured seconds of one evaluation forward."""
    evaluations = (train.max_steps // train.eval_steps if train.eval_steps else 0) + 1
    seconds = forward_seconds * (STEP_COST_IN_FORWARDS[stage] * train.gradient_accumulation_steps *
                                 (train.max_steps - done_steps) + evaluations * train.eval_sequences)
    return (f"estimated training time: {seconds / 60:.1f} min for {train.max_steps - done_steps} steps "
            f"(measured {forward_seconds:.2f} s per held-out forward; a step is ~{STEP_COST_IN_FORWARDS[stage]:g} "
            f"forwards x {train.gradient_accumulation_steps} sequences; the progress bar refines it)")


def main(stage: str, argv: list[str] | None = None) -> int:
    """Command line of train/train_retriever.py and train/post_train.py."""
    import argparse

    parser = argparse.ArgumentParser(description=f"RetroLM {stage} training under DeepSpeed.")
    parser.add_argument("--config", required=True, help="training config JSON (see configs/)")
    parser.add_argument("--deepspeed", required=True, help="DeepSpeed config JSON, e.g. configs/ds_zero2.json")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a training config value, e.g. --set max_steps=10 (repeatable)")
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # from the launcher
    args = parser.parse_args(argv)

    def work():
        try:
            run(stage, args.config, args.deepspeed, args.set)
        finally:
            # one run per process here: leave the group now, while every object holding it is alive, rather than
            # at interpreter exit (a launched rank once aborted there, "terminate called without an active
            # exception", after its run had finished)
            _leave_group()

    return exit_code(work)


# ---------------------------------------------------------------------------------------------- pieces
def _load_data(train: TrainConfig) -> tuple[PackedSequences, PackedSequences]:
    return _checked_sequences(train.data, train, "data")


def _checked_sequences(directory: str, train: TrainConfig, key: str) -> tuple[PackedSequences, PackedSequences]:
    """(train split, held-out split) of the prepared data in `directory` (the config's `key`): whole pages, at
    least two per sequence, at least one training sequence; a missing held-out split only means no evaluation."""
    data = PackedSequences(directory, "train")
    held_out = PackedSequences(directory, "held_out")
    page_size = train.retrolm_config().page_size
    check_fits_pages(data.seq_len, page_size)
    if data.seq_len < 2 * page_size:
        raise RetroLMError(f"{key}: sequences of {data.seq_len} tokens hold fewer than two pages of {page_size}; "
                           "prepare data with a longer --seq-len (or set a smaller page_size).")
    if len(data) == 0:
        raise RetroLMError(f"{key}: {directory} holds no training sequences; prepare more data.")
    if len(held_out) == 0:
        print(f"warning: {directory} has no held-out sequences (prepare with --held-out N): no evaluation of it.")
    return data, held_out


def _init_distributed(deepspeed) -> torch.device:
    """Join the launcher's process group, or make a one-process group when started without a launcher."""
    if "RANK" not in os.environ:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    on_gpu = torch.cuda.is_available()
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if on_gpu else "gloo", auto_mpi_discovery=False)
        # torch warns at exit about a group never destroyed; in-process runs (tests, notebooks) keep it until then,
        # since DeepSpeed keeps handles to it across runs in one process; the command line leaves it after its run
        atexit.register(_leave_group)
    if on_gpu:
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def _leave_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _barrier() -> None:
    """Wait for every rank; under NCCL name this rank's GPU (else torch guesses it, with a warning)."""
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def _param_groups(objective, train: TrainConfig) -> list[dict]:
    retriever = [p for p in objective.model.retriever.parameters() if p.requires_grad] \
        if objective.model.retriever is not None else []
    retriever_ids = {id(p) for p in retriever}
    rest = [p for p in objective.trainable_parameters() if id(p) not in retriever_ids]
    groups = [{"params": rest, "lr": train.learning_rate}] if rest else []
    if retriever:
        groups.append({"params": retriever, "lr": train.retriever_learning_rate or train.learning_rate})
    if not groups:
        raise RetroLMError("no trainable parameters: check finetune / train_retriever in the training config.")
    return groups


def warmup_cosine_schedule(train):
    """LR multiplier of step: linear warm-up, then cosine down to min_lr_ratio at max_steps (any config with
    warmup_steps, max_steps and min_lr_ratio)."""
    def factor(step: int) -> float:
        if step < train.warmup_steps:
            return (step + 1) / (train.warmup_steps + 1)
        progress = min(1.0, (step - train.warmup_steps) / max(1, train.max_steps - train.warmup_steps))
        return train.min_lr_ratio + (1 - train.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor


def _rotary_buffers(module) -> list[tuple[torch.nn.Module, str, torch.Tensor]]:
    """float32 copies of every rotary frequency buffer, taken before DeepSpeed casts the model."""
    saved = []
    for sub in module.modules():
        for name in ("inv_freq", "original_inv_freq"):
            value = getattr(sub, name, None)
            if isinstance(value, torch.Tensor):
                saved.append((sub, name, value.detach().float().clone()))
    return saved


def _restore_rotary(saved) -> None:
    for sub, name, value in saved:
        setattr(sub, name, value.to(getattr(sub, name).device))


def _load_replay(train: TrainConfig) -> tuple[PackedSequences | None, PackedSequences | None]:
    """Stage 2's replay sequences (train split, and held-out split or None when empty), or (None, None)."""
    if not train.replay_fraction:
        return None, None
    replay, held_out = _checked_sequences(train.replay_data, train, "replay_data")
    return replay, (held_out if len(held_out) else None)


def _source_of(index: int, replay_fraction: float) -> tuple[str, int]:
    """("replay" or "data", the ordinal of global micro-step `index` among that source's steps).

    Replay steps are spread evenly: step i replays when floor((i + 1) f) > floor(i f), so exactly floor(n f) of
    the first n steps replay, and each source walks through its own epoch permutations without skipping.
    """
    replays_before = math.floor(index * replay_fraction)
    if math.floor((index + 1) * replay_fraction) > replays_before:
        return "replay", replays_before
    return "data", index - replays_before


def _sequence_index(index: int, size: int, seed: int) -> int:
    """The training sequence of global micro-step `index`: a fresh permutation of the data each epoch."""
    epoch, offset = divmod(index, size)
    generator = torch.Generator().manual_seed(seed * 7919 + epoch)
    return int(torch.randperm(size, generator=generator)[offset])


def _evaluate(engine, objective, held_out: PackedSequences, train: TrainConfig, device) -> dict:
    """Mean held-out metrics over the first `eval_sequences` held-out sequences, split across ranks.

    Every rank runs the same number of forwards (ZeRO-3 gathers weights collectively inside each one): when
    the count does not divide evenly, the last ranks re-run an early sequence and do not count it.
    """
    count = min(train.eval_sequences, len(held_out))
    if count == 0:
        return {}
    rank, world = dist.get_rank(), dist.get_world_size()
    engine.eval()
    sums: dict[str, list[float]] = {}  # key -> [sum of finite values, how many]
    padded = -(-count // world) * world
    for i in tqdm(range(rank, padded, world), desc="evaluating", unit="seq", disable=rank != 0, leave=False):
        torch.manual_seed(train.seed + i)
        metrics = objective.evaluate(held_out[i % count][None].to(device))
        for key, value in metrics.items():
            total = sums.setdefault(key, [0.0, 0.0])
            if i < count and value is not None and math.isfinite(value):
                total[0] += value
                total[1] += 1
    engine.train()
    keys = sorted(sums)
    totals = torch.tensor([sums[k] for k in keys], dtype=torch.float64, device=device).reshape(-1, 2)
    if world > 1:
        dist.all_reduce(totals)
    return {k: (s / c if c else None) for k, (s, c) in zip(keys, totals.tolist())}


def _mean_over_ranks(values: dict[str, float], device) -> dict[str, float]:
    if dist.get_world_size() == 1:
        return values
    keys = sorted(values)
    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return {k: v / dist.get_world_size() for k, v in zip(keys, tensor.tolist())}


def _max_over_ranks(value: float, device) -> float:
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    if dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return float(tensor)


def _peak_memory_gib(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _median(values: list[float]) -> float | None:
    return sorted(values)[len(values) // 2] if values else None


def _save_checkpoint(engine, directory: str, step: int, eval_before: dict, rank: int) -> None:
    """DeepSpeed checkpoint of the trainable state (frozen weights are reloaded from the model, not stored).

    DeepSpeed rewrites `latest` only after the new tag is complete, so a save cut short leaves the previous
    checkpoint in force; older tags beyond the last `KEEP_CHECKPOINTS` are removed.
    """
    engine.save_checkpoint(directory, tag=f"step-{step}", client_state={"step": step, "eval_before": eval_before},
                           exclude_frozen_parameters=True)
    _barrier()
    if rank == 0:
        tags = sorted((d for d in os.listdir(directory) if d.startswith("step-")), key=lambda d: int(d[5:]))
        for old in tags[:-KEEP_CHECKPOINTS]:
            shutil.rmtree(os.path.join(directory, old), ignore_errors=True)


def _export(engine, objective, train: TrainConfig, rank: int, needles: NeedleValidation | None) -> None:
    """Write the trained RetroLM checkpoint into output_dir (loadable by `RetroLM.from_pretrained(output_dir)`).

    Under ZeRO-3 the saved weights are gathered first. `save_pretrained` moves the files in with
    retrolm_config.json last, so the directory is a complete checkpoint or not a checkpoint at all, and leaves
    the run's own files (checkpoints, metrics) alone. Without full fine-tuning the checkpoint points at the
    base model the run started from. With keep="needle_recall" the retriever is the kept one, not the last.
    """
    import deepspeed

    model = objective.model
    full = train.finetune == "full" and any(p.requires_grad for p in model.base_model.parameters())
    saved = list(model.retriever.parameters()) if model.retriever is not None else []
    saved += [p for n, p in model.base_model.named_parameters() if full or "lora_" in n]
    gather = (deepspeed.zero.GatheredParameters(saved, modifier_rank=None) if engine.zero_optimization_stage() == 3
              else contextlib.nullcontext())
    with gather:
        if rank == 0:
            if needles is not None:
                needles.restore_best(model)
            model.save_pretrained(train.output_dir, save_base_model=full)
    _barrier()


def _write_json(path: str, payload: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2, default=str)
        f.write("\n")
    os.replace(tmp, path)


def _versions() -> dict:
    import deepspeed
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "deepspeed": deepspeed.__version__}
