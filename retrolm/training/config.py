"""`TrainConfig`: every knob of a training run (either stage), typed, loaded from JSON, checked up front.

A run is `train/train_retriever.py` (stage 1) or `train/post_train.py` (stage 2) with `--config` (this file's
dataclass as JSON) and `--deepspeed` (a DeepSpeed JSON: ZeRO stage, offload). Everything a user can get wrong
in either file is reported here, before a model is loaded or a process group is started.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field

from ..config import CONFIG_NAME, RetroLMConfig
from ..errors import RetroLMError
from ..files import read_json_object

STAGES = ("retriever", "post_train")
FINETUNE_MODES = ("lora", "full", "none")
REPORT_TO = ("wandb", "none")
KEEP = ("last", "needle_recall")


@dataclass
class LoraSettings:
    """peft LoRA on the LLM (stage 2, finetune="lora")."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class TrainConfig:
    """One training run. `model` is a HF model (hub name or directory) or a RetroLM checkpoint (e.g. stage 1's
    output); `data` a directory written by `train/prepare_data.py`; the run writes a RetroLM checkpoint to
    `output_dir` (plus `checkpoints/` for resuming, `metrics.jsonl`, `train_results.json`)."""

    model: str = ""
    data: str = ""
    output_dir: str = ""
    retrolm: dict = field(default_factory=dict)  # RetroLMConfig knobs (page_size, top_k, ...) for this run
    max_steps: int = 100  # optimizer steps
    gradient_accumulation_steps: int = 1  # sequences per optimizer step per process (a sequence is one micro-batch)
    learning_rate: float = 1e-4
    warmup_steps: int = 10
    min_lr_ratio: float = 0.1  # cosine decay ends at learning_rate * min_lr_ratio
    weight_decay: float = 0.0
    gradient_clipping: float = 1.0
    seed: int = 0
    bf16: bool = True  # on GPU; CPU runs are float32
    gradient_checkpointing: bool = True
    # stage 1: contrastive retriever training against the frozen LLM's attention mass
    temperature: float = 1.0  # softmax temperature on retriever scores / sqrt(score_heads * score_dim)
    label_temperature: float = 1.0  # target distribution is mass ** (1 / label_temperature), renormalised
    recall_k: int = 0  # k of the reported recall@k; 0: the run's top_k
    # share of the target taken from copies in the text (training/supervision.py copy_labels): the earlier pages
    # whose n-grams of this many tokens a page repeats; 0: the LLM's attention alone
    copy_label_weight: float = 0.0
    copy_label_ngram: int = 8
    # stage 2: language modelling through retrieved pages
    finetune: str = "lora"  # "lora" (peft), "full", or "none" (only the retriever, if train_retriever)
    lora: LoraSettings = field(default_factory=LoraSettings)
    train_retriever: bool = False  # stage 2: also train retriever + bookmark embedding (stage 1's loss, added)
    retriever_loss_weight: float = 1.0
    retriever_learning_rate: float = 0.0  # 0: same as learning_rate
    # stage 2 replay: this share of the micro-steps trains on a sequence of `replay_data` (prepared data, e.g. the
    # base's own pretraining windows) instead of `data`, so that what the base does on short inputs is kept
    replay_data: str = ""
    replay_fraction: float = 0.0
    # bookkeeping
    logging_steps: int = 1
    eval_steps: int = 0  # 0: evaluate only before and after training
    eval_sequences: int = 8  # held-out sequences evaluated (at most those prepared)
    # needle-page recall on held-out prose at every evaluation (training/needle_recall.py): validation needles of
    # formats kept out of training and out of the test set, this many per prompt length; 0: off
    needle_eval_samples: int = 0
    needle_eval_tokens: list[int] = field(default_factory=lambda: [16384, 65536])  # prompt lengths, in tokens
    # which retriever the run exports: "last" (the final step's) or, in stage 1, "needle_recall" (that of the
    # evaluation, step 0 included, where the validation needles were found most often; the first on ties)
    keep: str = "last"
    save_steps: int = 50  # DeepSpeed checkpoint every this many steps (and at the end)
    stop_at_step: int = 0  # >0: checkpoint and exit at this step (time-sliced jobs); a rerun resumes
    resume: bool = True  # continue from output_dir/checkpoints when it holds one
    report_to: str = "wandb"  # "wandb" honours WANDB_MODE (offline without an API key) or "none"
    wandb_project: str = "retrolm"
    run_name: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.lora, dict):
            self.lora = _build(LoraSettings, self.lora, "lora")

    def retrolm_config(self) -> RetroLMConfig:
        """The RetroLM knobs of this run: a RetroLM checkpoint's own (when `model` is one), then `retrolm`."""
        if os.path.isfile(os.path.join(self.model, CONFIG_NAME)):
            return RetroLMConfig.load(self.model).replace(**self.retrolm)
        return RetroLMConfig().replace(**self.retrolm)

    def validate(self, stage: str) -> None:
        """Raise `RetroLMError` naming the fix for any bad value (no file or model is touched here)."""
        if stage not in STAGES:
            raise RetroLMError(f"unknown stage {stage!r}; one of {STAGES}.")
        for name in ("model", "data", "output_dir"):
            if not getattr(self, name):
                raise RetroLMError(f"the config must set {name!r}.")
        self.retrolm_config()  # unknown or out-of-range RetroLM knobs fail here
        for name in ("max_steps", "gradient_accumulation_steps", "logging_steps", "save_steps", "eval_sequences"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise RetroLMError(f"{name} must be an integer >= 1, got {value!r}.")
        for name in ("warmup_steps", "eval_steps", "stop_at_step", "recall_k", "needle_eval_samples"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise RetroLMError(f"{name} must be an integer >= 0, got {value!r}.")
        for name in ("learning_rate", "temperature", "label_temperature"):
            if not getattr(self, name) > 0:
                raise RetroLMError(f"{name} must be > 0, got {getattr(self, name)!r}.")
        if self.finetune not in FINETUNE_MODES:
            raise RetroLMError(f"finetune must be one of {FINETUNE_MODES}, got {self.finetune!r}.")
        if self.report_to not in REPORT_TO:
            raise RetroLMError(f"report_to must be one of {REPORT_TO}, got {self.report_to!r}.")
        weight = self.copy_label_weight
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight <= 1:
            raise RetroLMError(f"copy_label_weight must be a number in [0, 1] (the copy label's share of the "
                               f"retriever's target), got {weight!r}.")
        if isinstance(self.copy_label_ngram, bool) or not isinstance(self.copy_label_ngram, int) \
                or self.copy_label_ngram < 2:
            raise RetroLMError(f"copy_label_ngram must be an integer >= 2 (tokens a copy must share; 8 suits byte "
                               f"tokens, 4 subword tokens), got {self.copy_label_ngram!r}.")
        self._validate_needle_eval(stage)
        self._validate_replay(stage)
        if stage == "post_train" and self.finetune == "none" and not self.train_retriever:
            raise RetroLMError("nothing to train: finetune='none' and train_retriever=false; set finetune to "
                               "'lora' or 'full', or train_retriever to true.")

    def _validate_replay(self, stage: str) -> None:
        fraction = self.replay_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction < 1:
            raise RetroLMError(f"replay_fraction must be a number in [0, 1) (the share of steps on replay_data), "
                               f"got {fraction!r}.")
        if fraction and stage != "post_train":
            raise RetroLMError("replay_fraction is stage 2's (it keeps the LLM's behaviour on short inputs); stage 1 "
                               "trains the retriever only: set replay_fraction=0 here.")
        if fraction and not self.replay_data:
            raise RetroLMError(f"replay_fraction={fraction} needs replay_data: a prepared-data directory, e.g. the "
                               "base model's pretraining windows.")
        if self.replay_data and not fraction:
            raise RetroLMError("replay_data is set but replay_fraction is 0, so it would never be read; set "
                               "replay_fraction (e.g. 0.25) or remove replay_data.")

    def _validate_needle_eval(self, stage: str) -> None:
        if self.keep not in KEEP:
            raise RetroLMError(f"keep must be one of {KEEP}, got {self.keep!r}.")
        if self.keep == "needle_recall":
            if stage != "retriever":
                raise RetroLMError("keep='needle_recall' chooses among stage 1's retrievers; stage 2 exports the "
                                   "last step's weights: use keep='last' here.")
            if not self.needle_eval_samples:
                raise RetroLMError("keep='needle_recall' needs needle_eval_samples >= 1 (the validation needles "
                                   "it is chosen by).")
        if not self.needle_eval_samples:
            return
        knobs = self.retrolm_config()
        shortest = (knobs.max_attended_pages + 1) * knobs.page_size + 1
        lengths = self.needle_eval_tokens
        if not isinstance(lengths, list) or not lengths or not all(isinstance(n, int) for n in lengths):
            raise RetroLMError(f"needle_eval_tokens must be a non-empty list of prompt lengths in tokens, got "
                               f"{lengths!r}.")
        if min(lengths) < shortest:
            raise RetroLMError(f"needle_eval_tokens {lengths} holds a prompt too short to need retrieval: with "
                               f"page_size {knobs.page_size} and {knobs.max_attended_pages} attended pages every "
                               f"page is read below {shortest} tokens; use longer prompts.")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _build(cls, values: dict, where: str):
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise RetroLMError(f"unknown key(s) {unknown} in {where}; valid keys: {sorted(known)}.")
    return cls(**values)


def parse_override(text: str) -> tuple[str, object]:
    """'key=value' (value as JSON, else a plain string) -> (key, value)."""
    if "=" not in text:
        raise RetroLMError(f"override {text!r} must look like key=value, e.g. max_steps=10.")
    key, raw = text.split("=", 1)
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        return key, raw


def _read_json(path: str, missing: str) -> dict:
    if not os.path.isfile(path):
        raise RetroLMError(missing)
    return read_json_object(path, "config file")


def load_json_config(cls, path: str, overrides: list[str], missing: str):
    """An instance of dataclass `cls` from JSON file `path` with 'key=value' overrides applied; unknown keys
    and a missing file (message `missing`) raise `RetroLMError`."""
    values = _read_json(path, missing)
    values.update(parse_override(o) for o in overrides)
    return _build(cls, values, path)


def load_train_config(path: str, stage: str, overrides: list[str] = ()) -> TrainConfig:
    """Read a `TrainConfig` JSON, apply 'key=value' overrides, validate for `stage`."""
    config = load_json_config(TrainConfig, path, overrides,
                              f"training config {path!r} not found; see configs/ for examples.")
    config.validate(stage)
    return config


def load_deepspeed_config(path: str, config: TrainConfig, on_gpu: bool) -> dict:
    """The DeepSpeed config of `path`, with the values this run owns filled in.

    RetroLM trains on one sequence per micro-batch (the paged cache holds one sequence), so the micro-batch
    is 1 and the batch size comes from gradient accumulation and the number of processes. Values set to
    "auto" (or absent) are filled from `config`; a conflicting explicit value is an error.
    """
    ds = _read_json(path, f"DeepSpeed config {path!r} not found; pass one of configs/ds_zero*.json.")
    owned = {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "gradient_clipping": config.gradient_clipping,
    }
    for key, value in owned.items():
        given = ds.get(key, "auto")
        if given != "auto" and given != value:
            raise RetroLMError(f"{path} sets {key}={given!r} but this run needs {value!r} "
                               f"(micro-batch is one sequence; set accumulation in the training config); "
                               f"use \"auto\" or remove the key.")
        ds[key] = value
    if "train_batch_size" in ds and ds["train_batch_size"] != "auto":
        raise RetroLMError(f"{path} sets train_batch_size; remove it (it follows from gradient_accumulation_steps "
                           "and the number of processes).")
    ds.pop("train_batch_size", None)
    bf16 = ds.setdefault("bf16", {})
    if bf16.get("enabled", "auto") == "auto":
        bf16["enabled"] = bool(on_gpu and config.bf16)
    if ds.get("fp16", {}).get("enabled") is True:
        raise RetroLMError(f"{path} enables fp16; RetroLM trains in bf16 (or float32 on CPU): use \"bf16\".")
    optimizer = ds.get("optimizer")
    if optimizer is not None:
        params = optimizer.setdefault("params", {})
        for key, value in (("lr", config.learning_rate), ("weight_decay", config.weight_decay)):
            if params.get(key, "auto") == "auto":
                params[key] = value
    if "scheduler" in ds:
        raise RetroLMError(f"{path} sets a scheduler; remove it: the run's warmup + cosine schedule comes from "
                           "warmup_steps and min_lr_ratio in the training config.")
    if config.needle_eval_samples and ds.get("zero_optimization", {}).get("stage", 0) == 3:
        raise RetroLMError(f"{path} uses ZeRO stage 3, whose partitioned weights generate cannot read, and "
                           "needle_eval_samples asks for generate calls; use configs/ds_zero2.json for stage 1, or "
                           "needle_eval_samples=0.")
    ds.setdefault("zero_allow_untested_optimizer", True)  # torch AdamW as the client optimizer
    ds.setdefault("steps_per_print", 1 << 30)  # progress is ours (tqdm + metrics.jsonl), not DeepSpeed's prints
    return ds
