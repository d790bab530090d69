"""`RetroLM`: a Hugging Face causal LM that reads long inputs by retrieving KV pages.

    model = RetroLM.from_pretrained("mistralai/Mistral-7B-Instruct-v0.2", page_size=128, top_k=16)
    out = model.generate(input_ids=ids, max_new_tokens=64)   # prompt + new ids, HF convention
    logits = model(input_ids=ids).logits                     # [1, seq, vocab]
    model.save_pretrained("out/")

The wrapped model (`model.base_model`) is the user's own HF model, unmodified: RetroLM registers its
attention under the name "retrolm", selects it on the model, and plans each forward in a pre-hook that
only acts when the forward's cache is a `PagedKVCache`.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import tempfile
import time

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from transformers.modeling_outputs import CausalLMOutputWithPast

from .attention import register_attention
from .cache import PagedKVCache
from .config import CONFIG_NAME, RetroLMConfig
from .errors import RetroLMError
from .pager import add_bookmark_token, check_input_ids
from .planner import plan_forward
from .retriever import PageRetriever
from .rope import rope_inv_freq

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
RETRIEVER_WEIGHTS = "retriever.safetensors"
ADAPTER_DIR = "adapter"
BASE_DIR = "base"


def _inner_model(model):
    """The HF CausalLM under an optional peft wrapper."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


DEFAULT_MODEL_NAME = "retrolm-byte-llama"


def default_model_candidates() -> list[str]:
    """Where the embedded default model may be: the checkout's assets/, then the install's share/retrolm/."""
    checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return [os.path.join(checkout, "assets", DEFAULT_MODEL_NAME),
            os.path.join(sys.prefix, "share", "retrolm", DEFAULT_MODEL_NAME)]


def default_model_path() -> str:
    """Directory of the embedded default model (the first of `default_model_candidates` that holds it)."""
    candidates = default_model_candidates()
    for path in candidates:
        if os.path.isfile(os.path.join(path, CONFIG_NAME)):
            return path
    raise RetroLMError(f"the embedded default model is not installed (looked in {' and '.join(candidates)}); "
                       "install RetroLM from its repository (pip install -e .) or pass a model name, e.g. "
                       "RetroLM.from_pretrained('mistralai/Mistral-7B-Instruct-v0.2').")


def _weights_without_lora(inner) -> dict:
    """The plain model's state dict of a (possibly peft-wrapped) model: LoRA tensors dropped, names restored."""
    return {k.replace(".base_layer.", "."): v for k, v in inner.state_dict().items() if "lora_" not in k}


class _NoWindowWarning(logging.Filter):
    """Drops transformers' warning that a sequence outgrew `max_position_embeddings`: in contiguous mode RetroLM
    re-packs attended pages, so its positions stay inside the window however long the input."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "predefined maximum length" not in record.getMessage()


@contextlib.contextmanager
def _window_warning_silenced():
    logger = logging.getLogger("transformers.generation.stopping_criteria")
    silencer = _NoWindowWarning()
    logger.addFilter(silencer)
    try:
        yield
    finally:
        logger.removeFilter(silencer)


def check_architecture(model_type: str) -> None:
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise RetroLMError(
            f"unsupported architecture {model_type!r}: RetroLM supports {', '.join(SUPPORTED_MODEL_TYPES)} "
            "(decoder-only models with rotary positions); pick a checkpoint of one of these families."
        )


class RetroLM(nn.Module):
    """A causal LM plus a page retriever. Use `from_pretrained` to build one."""

    def __init__(self, base_model, tokenizer, config: RetroLMConfig, retriever: PageRetriever | None = None):
        super().__init__()
        inner = _inner_model(base_model)
        check_architecture(inner.config.model_type)
        self.config = config
        self.base_model = base_model
        self.tokenizer = tokenizer
        self.bookmark_id = add_bookmark_token(tokenizer, config.bookmark_token)
        inv_freq = rope_inv_freq(inner)
        head_dim = getattr(inner.config, "head_dim", None) or inner.config.hidden_size // inner.config.num_attention_heads
        if inv_freq.numel() * 2 != head_dim:
            raise RetroLMError("partial rotary embeddings are unsupported; use a model with full-width RoPE.")
        if retriever is None:
            retriever = PageRetriever(config.retriever, inner.config.hidden_size, config.page_size)
        self.retriever = retriever.to(inner.device)
        inner.set_attn_implementation(register_attention())
        self._hook = inner.register_forward_pre_hook(self._plan_hook, with_kwargs=True)

    # ------------------------------------------------------------------ loading and saving
    @classmethod
    def from_pretrained(cls, name_or_path: str | None = None, *, device=None, dtype=None, **knobs) -> "RetroLM":
        """Load a RetroLM checkpoint, or wrap a plain HF model (hub name or local dir) with a fresh retriever.

        With no name: the embedded default model (`default_model_path()`), a small byte-level Llama trained
        for this project (assets/retrolm-byte-llama/README.md), loaded in float32 on the CPU.

        knobs: any `RetroLMConfig` field (page_size, top_k, sink_pages, local_pages, position_mode, ...);
        they override what a checkpoint saved. device: e.g. "cuda"; dtype: e.g. torch.bfloat16 or "auto".
        """
        if name_or_path is None:
            name_or_path = default_model_path()
            if dtype in (None, "auto") and (device is None or torch.device(device).type == "cpu"):
                dtype = torch.float32  # shipped in bf16 to stay small; CPUs run float32 several times faster
        is_checkpoint = os.path.isfile(os.path.join(str(name_or_path), CONFIG_NAME))
        if is_checkpoint:
            config = RetroLMConfig.load(name_or_path).replace(**knobs)
            base_path = config.base_model_name_or_path
            if base_path == BASE_DIR:
                base_path = os.path.join(name_or_path, BASE_DIR)
            tokenizer_path = name_or_path
        else:
            config = RetroLMConfig().replace(**knobs, base_model_name_or_path=str(name_or_path))
            base_path = tokenizer_path = str(name_or_path)
        base_model = _load_base(base_path, device, dtype)
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
        if is_checkpoint and os.path.isdir(os.path.join(name_or_path, ADAPTER_DIR)):
            from peft import PeftModel

            base_model = PeftModel.from_pretrained(base_model, os.path.join(name_or_path, ADAPTER_DIR))
        model = cls(base_model, tokenizer, config)
        if is_checkpoint:
            weights = os.path.join(name_or_path, RETRIEVER_WEIGHTS)
            if not os.path.isfile(weights):
                raise RetroLMError(f"{weights} is missing: the checkpoint is incomplete; save it again.")
            model.retriever.load_state_dict(load_file(weights, device=str(model.device)))
        return model.eval()

    def save_pretrained(self, directory: str, save_base_model: bool = False) -> None:
        """Write config, tokenizer, retriever (and LoRA adapter) to `directory`, atomically.

        save_base_model: also store the base weights under `base/`, making the directory self-contained.
        Everything is written to a temporary sibling first and renamed into place, so an interrupted save
        never leaves a half-written checkpoint.
        """
        directory = os.path.abspath(directory)
        parent = os.path.dirname(directory)
        os.makedirs(parent, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=".retrolm-save-", dir=parent)
        try:
            config = self.config.replace()
            inner = _inner_model(self.base_model)
            if save_base_model:  # a complete HF model directory: weights (without LoRA) and tokenizer
                inner.save_pretrained(os.path.join(staging, BASE_DIR), state_dict=_weights_without_lora(inner))
                self.tokenizer.save_pretrained(os.path.join(staging, BASE_DIR))
                config.base_model_name_or_path = BASE_DIR
            if hasattr(self.base_model, "peft_config"):
                self.base_model.save_pretrained(os.path.join(staging, ADAPTER_DIR))
            config.save(staging)
            self.tokenizer.save_pretrained(staging)
            state = {k: v.detach().contiguous().cpu() for k, v in self.retriever.state_dict().items()}
            save_file(state, os.path.join(staging, RETRIEVER_WEIGHTS))
            _replace_dir(staging, directory)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    # ------------------------------------------------------------------ running
    @property
    def device(self) -> torch.device:
        return _inner_model(self.base_model).device

    def new_cache(self, capacity_tokens: int = 0) -> PagedKVCache:
        """An empty paged cache for this model, with room reserved for `capacity_tokens` tokens."""
        inner = _inner_model(self.base_model)
        r = self.config.retriever
        return PagedKVCache(inner.config.num_hidden_layers, self.config.page_size, r.num_score_heads, r.score_dim,
                            device=self.device, capacity_tokens=capacity_tokens)

    def _plan_hook(self, module, args, kwargs):
        cache = kwargs.get("past_key_values")
        if not isinstance(cache, PagedKVCache):
            return None
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids is None:
            raise RetroLMError("RetroLM needs input_ids (retrieval reads token ids); inputs_embeds is unsupported.")
        if input_ids.shape[0] != 1:
            raise RetroLMError(f"RetroLM encodes one sequence at a time; got batch size {input_ids.shape[0]}.")
        inner = _inner_model(self.base_model)
        plan = plan_forward(cache, input_ids[0], self.retriever, inner.get_input_embeddings(), self.config,
                            rope_inv_freq(inner))
        plan.backend = self._backend(input_ids.shape[1])
        cache.plan = plan
        kwargs["retrolm_plan"] = plan
        kwargs["position_ids"] = plan.position_ids
        kwargs["use_cache"] = True
        return args, kwargs

    def _backend(self, new_tokens: int) -> str:
        choice = self.config.attention_backend
        if choice != "auto":
            return choice
        if new_tokens == 1 and self.device.type == "cuda":
            with contextlib.suppress(ImportError):
                import triton  # noqa: F401

                return "triton"
        return "sdpa"

    def _check(self, input_ids: torch.Tensor) -> torch.Tensor:
        vocab = _inner_model(self.base_model).config.vocab_size
        check_input_ids(input_ids, vocab, self.bookmark_id, self.config.max_context_tokens)
        return input_ids.to(self.device)

    def encode(self, input_ids: torch.Tensor, cache: PagedKVCache | None = None, logits_to_keep: int = 0,
               progress: bool | None = None):
        """Encode `input_ids` [1, T] page-wise into `cache`, `prefill_chunk_pages` pages per LLM forward.

        Returns (cache, logits [1, kept, vocab]) where kept = T if logits_to_keep == 0 else the last
        `logits_to_keep` positions. progress: show a bar (default: when there are over 8 chunks).
        """
        cache = self.new_cache(input_ids.shape[1]) if cache is None else cache
        chunk = self.config.prefill_chunk_pages * self.config.page_size
        total = input_ids.shape[1]
        starts = range(0, total, chunk)
        show = len(starts) > 8 if progress is None else progress
        keep_from = 0 if logits_to_keep == 0 else total - logits_to_keep
        pieces = []
        for start in tqdm(starts, desc="encoding pages", unit="chunk", disable=not show):
            end = min(start + chunk, total)
            keep = max(0, end - max(start, keep_from))
            out = self.base_model(input_ids=input_ids[:, start:end], past_key_values=cache, use_cache=True,
                                  logits_to_keep=keep if keep else 1)
            if keep:
                pieces.append(out.logits[:, -keep:])
        return cache, torch.cat(pieces, dim=1) if pieces else None

    def forward(self, input_ids: torch.Tensor, logits_to_keep: int = 0, **unused) -> CausalLMOutputWithPast:
        """Logits of every input token (or of the last `logits_to_keep`), encoding page by page."""
        if unused:
            raise RetroLMError(f"unsupported forward arguments {sorted(unused)}; pass input_ids (and logits_to_keep).")
        cache, logits = self.encode(self._check(input_ids), logits_to_keep=logits_to_keep)
        return CausalLMOutputWithPast(logits=logits, past_key_values=cache)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int = 64, progress: bool | None = None,
                 **generate_kwargs) -> torch.Tensor:
        """Generate after `input_ids` [1, T]; returns [1, T + new] (HF convention: prompt + new ids).

        All but the last prompt token are encoded page-wise first (with a progress bar on long inputs);
        then `transformers` generation runs on the paged cache, so greedy, sampling, stopping criteria,
        streamers and logits processors work as usual (`generate_kwargs`). Retrieval is refreshed every
        `refresh_interval` new tokens and at each new page.
        """
        input_ids = self._check(input_ids)
        if generate_kwargs.get("num_beams", 1) > 1 or generate_kwargs.get("num_return_sequences", 1) > 1:
            raise RetroLMError("beam search and several return sequences are unsupported with RetroLM (one "
                               "sequence per paged cache); use greedy decoding or sampling, one call per sample.")
        cache = self.new_cache(input_ids.shape[1] + max_new_tokens)
        started = time.perf_counter()
        if input_ids.shape[1] > 1:
            self.encode(input_ids[:, :-1], cache, logits_to_keep=1, progress=progress)
        cache.selection = None  # the first decode step retrieves afresh, from a window holding the prompt's end
        encoded = time.perf_counter()
        generate_kwargs.setdefault("pad_token_id", self.tokenizer.pad_token_id or self.tokenizer.eos_token_id)
        quiet = _window_warning_silenced() if self.config.position_mode == "contiguous" else contextlib.nullcontext()
        with quiet:
            output = self.base_model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                              past_key_values=cache, max_new_tokens=max_new_tokens, **generate_kwargs)
        self.last_cache = cache  # for inspection: cache.selection_log lists the pages each decode step retrieved
        self.last_timings = {"encode_s": encoded - started, "decode_s": time.perf_counter() - encoded,
                             "prompt_tokens": input_ids.shape[1], "new_tokens": output.shape[1] - input_ids.shape[1]}
        return output


def _load_base(path: str, device, dtype):
    try:
        hf_config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as error:
        raise RetroLMError(
            f"cannot load model {path!r}: not a local model directory, and not reachable as a hub name "
            f"({type(error).__name__}). Pass an existing directory, or check the name and your network."
        ) from error
    check_architecture(hf_config.model_type)
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype if dtype is not None else "auto",
                                                device_map=device)


def _replace_dir(staging: str, directory: str) -> None:
    """Rename `staging` to `directory`, replacing an old `directory` only once the new one is complete."""
    if not os.path.exists(directory):
        os.rename(staging, directory)
        return
    old = staging + ".old"
    os.rename(directory, old)
    os.rename(staging, directory)
    shutil.rmtree(old, ignore_errors=True)
