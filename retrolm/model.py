"""`RetroLM`: a Hugging Face causal LM that reads long inputs by retrieving KV pages.

    model = RetroLM.from_pretrained("mistralai/Mistral-7B-Instruct-v0.2", page_size=128, top_k=16)
    out = model.generate(**model.tokenizer(text, return_tensors="pt"), max_new_tokens=64)  # prompt + new ids
    logits = model(input_ids=ids).logits                     # [1, seq, vocab]
    model.save_pretrained("out/")

The wrapped model (`model.base_model`) is the user's own HF model, unmodified: RetroLM registers its
attention under the name "retrolm", selects it on the model, and plans each forward in a pre-hook that
only acts when the forward's cache is a `PagedKVCache` (hooks.py). Whenever RetroLM runs the model, every
forward must go through that plan, or it raises: RetroLM never falls back to the plain model silently.
"""
from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import tempfile
import time

import torch
from safetensors import SafetensorError
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from .attention import register_attention
from .cache import PagedKVCache
from .checkpoint import (ADAPTER_DIR, BASE_DIR, RETRIEVER_WEIGHTS, check_base_identity, fingerprints_match,
                         record_base_path, resolve_base_path, save_into, weights_fingerprint)
from .compat import cache_argument, causal_lm_output, quiet_peft
from .config import CONFIG_NAME, RetroLMConfig
from .device_decode import DeviceDecoder, device_decode_blocker
from .errors import RetroLMError
from .files import read_safetensors, write_safetensors_atomic
from .hooks import PlanningHooks
from .inputs import (check_attention_mask, check_generation, check_input_ids, check_max_new_tokens,
                     resolve_device, resolve_dtype)
from .logs import logger
from .pager import add_bookmark_token
from .resources import shipped_candidates
from .planner import plan_forward
from .retriever import PageRetriever
from .rope import rope_inv_freq
from .token_tables import character_table

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
# RoPE variants whose rotation depends only on the position, so cached keys can be moved between positions
# (rope.shift_keys). "dynamic" rescales by the current sequence length: cached keys would go stale.
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "yarn")
DEFAULT_MODEL_NAME = "retrolm-byte-llama"


def _inner_model(model):
    """The HF CausalLM under an optional peft wrapper."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def default_model_candidates() -> list[str]:
    """Where the embedded default model may be: the checkout's assets/, then the install's share/retrolm/."""
    return shipped_candidates("assets", DEFAULT_MODEL_NAME)


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


def check_architecture(hf_config) -> None:
    """Refuse models RetroLM cannot run exactly: other families, and RoPE variants that depend on the length."""
    if hf_config.model_type not in SUPPORTED_MODEL_TYPES:
        raise RetroLMError(
            f"unsupported architecture {hf_config.model_type!r}: RetroLM supports {', '.join(SUPPORTED_MODEL_TYPES)} "
            "(decoder-only models with rotary positions); pick a checkpoint of one of these families."
        )
    rope = getattr(hf_config, "rope_parameters", None) or {}
    per_layer_type = rope.values() if all(isinstance(v, dict) for v in rope.values()) and rope else [rope]
    for parameters in per_layer_type:
        rope_type = parameters.get("rope_type", parameters.get("type", "default"))
        if rope_type not in SUPPORTED_ROPE_TYPES:
            raise RetroLMError(
                f"rope_type {rope_type!r} is unsupported: RetroLM moves cached keys between positions, which needs "
                f"a rotation that depends on the position alone ({', '.join(SUPPORTED_ROPE_TYPES)}). Load the model "
                "with another rope scaling (e.g. rope_parameters={'rope_type': 'linear', 'factor': ...}) or none."
            )


# Knobs that mean something only with another one on: (knob, its off value, what it does, the knob it needs)
DEPENDENT_KNOBS = (
    ("lexical_near_miss_margin", None, "judges lexical page scores, which are off", "lexical_weight"),
    ("lexical_hops", 0, "follows lexical page scores, which are off", "lexical_weight"),
    ("lexical_hop_span", None, "sets how far hops look, and hops are off", "lexical_hops"),
    ("lexical_hop_stops", "", "bounds what hops read, and hops are off", "lexical_hops"),
    ("lexical_echo_tokens", None, "judges echoes as near misses, and near misses are off",
     "lexical_near_miss_margin"),
)


def _drop_dependent_knobs(config: RetroLMConfig, asked) -> None:
    """A DEPENDENT_KNOBS knob set while the knob it needs is off: refused when asked for (`asked`: the knobs passed
    to from_pretrained), turned off when it is the checkpoint's (it belongs to what was turned off)."""
    off_values = {knob: off for knob, off, _, _ in DEPENDENT_KNOBS} | {"lexical_weight": 0}
    for knob, off, what, needs in DEPENDENT_KNOBS:
        value, needed = getattr(config, knob), getattr(config, needs)
        if value != off and needed == off_values[needs]:
            turn_on = f"pass {needs} > 0" if off_values[needs] == 0 else f"set {needs}"
            if knob in asked:
                raise RetroLMError(f"{knob}={value!r} {what} ({needs}={needed!r}): {turn_on} with it, or "
                                   f"{knob}={off!r}.")
            setattr(config, knob, off)


class RetroLM(nn.Module):
    """A causal LM plus a page retriever. Use `from_pretrained` to build one."""

    def __init__(self, base_model, tokenizer, config: RetroLMConfig, retriever: PageRetriever | None = None):
        super().__init__()
        inner = _inner_model(base_model)
        check_architecture(inner.config)
        self.config = config
        self.base_model = base_model
        self.tokenizer = tokenizer
        self.bookmark_id = add_bookmark_token(tokenizer, config.bookmark_token)
        self._character_tables: dict[tuple[str, str], torch.Tensor | None] = {}  # `_character_table`'s
        inv_freq = rope_inv_freq(inner)
        shape = inner.config
        head_dim = getattr(shape, "head_dim", None) or shape.hidden_size // shape.num_attention_heads
        if inv_freq.numel() * 2 != head_dim:
            raise RetroLMError("partial rotary embeddings are unsupported; use a model with full-width RoPE.")
        if config.attention_backend == "triton":
            _check_triton_available(inner.device)
        if config.scorer == "auto":
            config.scorer = "trained" if retriever is not None else "attention"
        if config.scorer == "trained" and retriever is None:
            raise RetroLMError(_NO_TRAINED_RETRIEVER)
        if config.scorer == "attention" and config.offload_kv:
            raise RetroLMError("offload_kv=True needs the trained scorer (pages chosen before the forward, so only "
                               "they are copied in); the training-free scorer chooses per layer. Use scorer='trained' "
                               "with a trained retriever, or keep the KV resident (offload_kv=False).")
        self.retriever = retriever.to(inner.device) if config.scorer == "trained" else None
        if not config.base_model_fingerprint:  # identity of the base weights as loaded, saved with checkpoints
            config.base_model_fingerprint = weights_fingerprint(_weights_without_lora(inner)) or ""
        inner.set_attn_implementation(register_attention())
        # on the decoder stack, not the LM head: wrappers (peft) may call the causal LM's .forward() directly,
        # which would skip hooks on it, but the causal LM always calls its decoder as a module
        self._hooks = PlanningHooks(inner.get_decoder(), self._plan, inner.config.num_hidden_layers)

    # ------------------------------------------------------------------ loading and saving
    @classmethod
    def from_pretrained(cls, name_or_path: str | None = None, *, device=None, dtype=None, init_retriever: bool = False,
                        **knobs) -> "RetroLM":
        """Load a RetroLM checkpoint, or wrap a plain HF model (hub name or local dir).

        With no name: the embedded default model (`default_model_path()`), a small byte-level Llama trained
        for this project (assets/retrolm-byte-llama/README.md), loaded in float32 on the CPU.

        The page scorer (`scorer` knob, default "auto"): a checkpoint's trained retriever when it carries one,
        else the training-free attention scorer; one log line says which. A random, untrained retriever is
        never used unless asked for: init_retriever=True builds a fresh one when the model has none (to train
        it, or as a baseline).

        knobs: any `RetroLMConfig` field (page_size, top_k, sink_pages, local_pages, position_mode, scorer, ...);
        they override what a checkpoint saved. device: e.g. "cuda"; dtype: e.g. torch.bfloat16, "bfloat16", "auto".
        """
        device, dtype = resolve_device(device), resolve_dtype(dtype)
        if name_or_path is None:
            name_or_path = default_model_path()
            if dtype in (None, "auto") and (device is None or device.type == "cpu"):
                dtype = torch.float32  # shipped in bf16 to stay small; CPUs run float32 several times faster
        if not isinstance(name_or_path, (str, os.PathLike)):
            raise RetroLMError(f"from_pretrained takes a hub name or a directory, got {type(name_or_path).__name__}.")
        name_or_path = os.fspath(name_or_path)
        is_checkpoint = os.path.isfile(os.path.join(name_or_path, CONFIG_NAME))
        if is_checkpoint:
            config = RetroLMConfig.load(name_or_path).replace(**knobs)
            base_path = resolve_base_path(config.base_model_name_or_path, name_or_path,
                                          bool(config.base_model_fingerprint))
            tokenizer_path = name_or_path
        else:
            config = RetroLMConfig().replace(**knobs, base_model_name_or_path=record_base_path(name_or_path))
            base_path = tokenizer_path = name_or_path
        base_model = _load_base(base_path, device, dtype)
        if is_checkpoint:
            check_base_identity(config.base_model_fingerprint, weights_fingerprint(base_model.state_dict()), base_path)
            # a self-contained checkpoint's base/ moves with it; elsewhere the resolved location is what counts
            config.base_model_name_or_path = record_base_path(base_path)
        tokenizer = _load_tokenizer(tokenizer_path)
        if is_checkpoint and os.path.isdir(os.path.join(name_or_path, ADAPTER_DIR)):
            base_model = _load_adapter(base_model, os.path.join(name_or_path, ADAPTER_DIR), base_path)
        weights = os.path.join(name_or_path, RETRIEVER_WEIGHTS) if is_checkpoint else None
        has_weights = weights is not None and os.path.exists(weights)
        config.scorer, why = _resolve_scorer(config.scorer, has_weights, init_retriever)
        if config.scorer == "attention" and config.lexical_weight and "lexical_weight" not in knobs:
            # the checkpoint's weight was chosen against its trained scorer's score scale, not the training-free
            # scorer's: a training-free run uses lexical scores only when asked for with its own weight
            why += (f"; the checkpoint's lexical_weight={config.lexical_weight} belongs to the trained scorer: off "
                    "(pass lexical_weight to use lexical scores with the training-free scorer)")
            config.lexical_weight = 0.0
        _drop_dependent_knobs(config, knobs)
        retriever = None
        if config.scorer == "trained":
            retriever = PageRetriever(config.retriever, _inner_model(base_model).config.hidden_size, config.page_size)
        model = cls(base_model, tokenizer, config, retriever)
        if config.scorer == "trained" and has_weights:
            model._load_retriever(weights)
        logger.info(f"page scorer: {config.scorer} ({why})")
        return model.eval()

    def _load_retriever(self, path: str) -> None:
        weights = read_safetensors(path, device=str(self.device))
        try:
            self.retriever.load_state_dict(weights)
        except RuntimeError as error:  # names or shapes differ from what the config's retriever has
            raise RetroLMError(f"{path} does not fit the retriever configured in {CONFIG_NAME} "
                               f"({self.config.retriever}): {str(error).splitlines()[-1].strip()} Save the "
                               "checkpoint again, or fix the retriever options.") from error
        bad = [name for name, tensor in weights.items() if not bool(torch.isfinite(tensor).all())]
        if bad:
            raise RetroLMError(f"{path} holds NaN or infinite values (in {', '.join(bad[:3])}): the retriever is "
                               "broken (diverged training or a damaged file); train or save it again.")

    def save_pretrained(self, directory: str, save_base_model: bool = False) -> None:
        """Write config, tokenizer, retriever (and LoRA adapter) into `directory`.

        save_base_model: also store the base weights under `base/`, making the directory self-contained;
        otherwise the config records where the base model was loaded from (an absolute path or a hub id) and
        a fingerprint of its weights. Files are staged and moved in with `retrolm_config.json` last, so the
        directory holds a complete checkpoint or none; other files in it are left alone.
        """
        inner = _inner_model(self.base_model)
        weights = _weights_without_lora(inner)
        current = weights_fingerprint(weights)  # None where weights are not all here (e.g. ZeRO-3 partitions)
        config = self.config.replace()
        if save_base_model:
            config.base_model_name_or_path = BASE_DIR
            config.base_model_fingerprint = current or config.base_model_fingerprint
        elif current is not None and not fingerprints_match(config.base_model_fingerprint, current):
            raise RetroLMError("the base model's weights changed since it was loaded (full fine-tuning?), so the "
                               "checkpoint cannot point at the original: save with save_base_model=True.")

        def write(staging: str) -> None:
            if save_base_model:  # a complete HF model directory: weights (without LoRA) and tokenizer
                inner.save_pretrained(os.path.join(staging, BASE_DIR), state_dict=weights)
                self.tokenizer.save_pretrained(os.path.join(staging, BASE_DIR))
            if hasattr(self.base_model, "peft_config"):
                with quiet_peft():
                    self.base_model.save_pretrained(os.path.join(staging, ADAPTER_DIR))
            self.tokenizer.save_pretrained(staging)
            if self.retriever is not None:
                write_safetensors_atomic(os.path.join(staging, RETRIEVER_WEIGHTS), self.retriever.state_dict())
            config.save(staging)

        save_into(directory, write)

    def push_to_hub(self, repo_id: str, save_base_model: bool = False, private: bool = False,
                    commit_message: str = "Upload RetroLM checkpoint") -> str:
        """Upload this checkpoint (what `save_pretrained` writes) to the Hugging Face Hub; returns the repo URL.

        Without save_base_model, the checkpoint names its base model, which must then be a hub id (a local
        directory would not exist for whoever downloads it).
        """
        from huggingface_hub import HfApi

        if not save_base_model and os.path.isabs(self.config.base_model_name_or_path):
            raise RetroLMError(f"the base model is the local directory {self.config.base_model_name_or_path}, which "
                               "others cannot download: push with save_base_model=True, or load the base model by "
                               "its hub id before pushing.")
        with tempfile.TemporaryDirectory(prefix="retrolm-push-") as scratch:
            folder = os.path.join(scratch, "checkpoint")
            self.save_pretrained(folder, save_base_model=save_base_model)
            api = HfApi()
            url = api.create_repo(repo_id, private=private, exist_ok=True)
            api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message)
        return str(url)

    # ------------------------------------------------------------------ running
    @property
    def device(self) -> torch.device:
        return _inner_model(self.base_model).device

    def new_cache(self, capacity_tokens: int = 0, resident: bool = False) -> PagedKVCache:
        """An empty paged cache for this model, with room reserved for `capacity_tokens` tokens; offloaded when the
        config says offload_kv, unless `resident` (a page store's documents and retrieved pages are held whole)."""
        inner = _inner_model(self.base_model)
        r = self.config.retriever
        offload = self.config.offload_kv and not resident
        return PagedKVCache(inner.config.num_hidden_layers, self.config.page_size, r.num_score_heads, r.score_dim,
                            device=self.device, capacity_tokens=capacity_tokens,
                            offload_pages=self.config.offload_device_pages if offload else 0)

    def _plan(self, cache: PagedKVCache, input_ids: torch.Tensor):
        """The plan of a forward encoding input_ids [1, q] into `cache` (called by the pre-forward hook)."""
        device_decoder = getattr(self, "_device_decoder", None)
        if device_decoder is not None and device_decoder.cache is cache and input_ids.shape[1] == 1:
            return device_decoder.plan_step()
        inner = _inner_model(self.base_model)
        plan = plan_forward(cache, input_ids[0], self.retriever, inner.get_input_embeddings(), self.config,
                            rope_inv_freq(inner), self._refresh_table(), self._hop_stop_table())
        plan.backend = self._backend()
        return plan

    def _refresh_table(self) -> torch.Tensor | None:
        """[V] bool on the device: the ids whose decode step refreshes retrieval (config.refresh_on)."""
        return self._character_table(self.config.refresh_on)

    def _hop_stop_table(self) -> torch.Tensor | None:
        """[V] bool on the device: the ids that end a sentence for lexical hops (config.lexical_hop_stops; None when
        hops are off or it sets none)."""
        return self._character_table(self.config.lexical_hop_stops) if self.config.lexical_hops else None

    def _character_table(self, characters: str) -> torch.Tensor | None:
        """`token_tables.character_table` of this tokenizer, built once per setting and device (the config may be
        changed between calls)."""
        key = (characters, str(self.device))
        if key not in self._character_tables:
            vocab = _inner_model(self.base_model).get_input_embeddings().num_embeddings
            self._character_tables[key] = character_table(self.tokenizer, characters, vocab, self.device)
        return self._character_tables[key]

    def _backend(self) -> str:
        """The attention path of a forward: "triton" (decode and prefill kernels) on CUDA when Triton is there."""
        choice = self.config.attention_backend
        if choice in ("reference", "sdpa"):
            return choice
        if self.device.type == "cuda" and (choice == "triton" or _triton_installed()):
            return "triton"
        return "sdpa"

    def _check(self, input_ids, attention_mask=None) -> torch.Tensor:
        vocab = _inner_model(self.base_model).config.vocab_size
        input_ids = check_input_ids(input_ids, vocab, self.bookmark_id, self.config.max_context_tokens)
        check_attention_mask(attention_mask, input_ids)
        return input_ids.to(self.device)

    def encode(self, input_ids: torch.Tensor, cache: PagedKVCache | None = None, logits_to_keep: int = 0,
               progress: bool | None = None):
        """Encode `input_ids` [1, T] page-wise into `cache`, `prefill_chunk_pages` pages per LLM forward.

        Returns (cache, logits [1, kept, vocab]) where kept = T if logits_to_keep == 0 else the last
        `logits_to_keep` positions. progress: show a bar (default: when there are over 8 chunks). Ids on another
        device (a tokenizer's CPU tensor) are moved to the model's.
        """
        input_ids = input_ids.to(self.device)
        cache = self.new_cache(input_ids.shape[1]) if cache is None else cache
        chunk = self.config.prefill_chunk_pages * self.config.page_size
        total = input_ids.shape[1]
        starts = range(0, total, chunk)
        show = len(starts) > 8 if progress is None else progress
        keep_from = 0 if logits_to_keep == 0 else total - logits_to_keep
        cache_name = cache_argument(self.base_model)
        pieces = []
        with self._hooks.expect_paged():
            try:
                for start in tqdm(starts, desc="encoding pages", unit="chunk", disable=not show):
                    end = min(start + chunk, total)
                    keep = max(0, end - max(start, keep_from))
                    cache.prompt_chunk = "last" if end == total else "earlier"
                    out = self.base_model(input_ids=input_ids[:, start:end], use_cache=True,
                                          logits_to_keep=keep if keep else 1, **{cache_name: cache})
                    if keep:
                        pieces.append(out.logits[:, -keep:])
            finally:
                cache.prompt_chunk = None
        return cache, torch.cat(pieces, dim=1) if pieces else None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, logits_to_keep: int = 0,
                **unused):
        """Logits of every input token (or of the last `logits_to_keep`), encoding page by page.

        attention_mask: accepted when it is all ones (no padding); returns a `CausalLMOutputWithPast`.
        """
        if unused:
            raise RetroLMError(f"unsupported forward arguments {sorted(unused)}; pass input_ids (and logits_to_keep).")
        cache, logits = self.encode(self._check(input_ids, attention_mask), logits_to_keep=logits_to_keep)
        return causal_lm_output(logits, cache)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, max_new_tokens: int = 64,
                 progress: bool | None = None, **generate_kwargs) -> torch.Tensor:
        """Generate after `input_ids` [1, T]; returns [1, T + new] (HF convention: prompt + new ids).

        `model.generate(**tokenizer(text, return_tensors="pt"))` works: an all-ones attention_mask is
        accepted, padding is refused. All but the last prompt token are encoded page-wise first (with a
        progress bar on long inputs); then `transformers` generation runs on the paged cache, so greedy
        decoding, sampling, stopping criteria, streamers and logits processors work as usual
        (`generate_kwargs`); beam search, assisted decoding and other modes raise `RetroLMError`.
        Retrieval is refreshed every `refresh_interval` new tokens and at each new page.
        """
        input_ids = self._check(input_ids, attention_mask)
        max_new_tokens = check_max_new_tokens(max_new_tokens)
        return self.generate_after(self.new_cache(input_ids.shape[1] + max_new_tokens), input_ids, max_new_tokens,
                                   progress, **generate_kwargs)

    @torch.no_grad()
    def generate_after(self, cache: PagedKVCache, input_ids: torch.Tensor, max_new_tokens: int = 64,
                       progress: bool | None = None, **generate_kwargs) -> torch.Tensor:
        """`generate` on a cache that already holds the start of `input_ids` [1, T] (`cache.num_tokens` tokens, e.g.
        pages loaded from a page store) and has room for T + max_new_tokens: the rest of the prompt is encoded,
        then decoding runs as in `generate`. Returns [1, T + new]."""
        held = cache.num_tokens
        if not held < input_ids.shape[1] or not torch.equal(cache.token_ids[:held].cpu(), input_ids[0, :held].cpu()):
            raise RetroLMError(f"the cache holds {held} tokens that are not the start of the {input_ids.shape[1]} "
                               "input ids: pass the ids it holds followed by at least one new token.")
        max_new_tokens = check_max_new_tokens(max_new_tokens)
        check_generation(self.base_model, generate_kwargs)
        mode = self._decode_mode(input_ids.shape[1])  # before the prefill: a mode that cannot apply costs nothing
        started = time.perf_counter()
        if input_ids.shape[1] - held > 1:
            self.encode(input_ids[:, held:-1], cache, logits_to_keep=1, progress=progress)
        cache.selection = None  # the first decode step retrieves afresh, from a window holding the prompt's end
        encoded = time.perf_counter()
        generate_kwargs.setdefault("pad_token_id", self.tokenizer.pad_token_id or self.tokenizer.eos_token_id)
        quiet = _window_warning_silenced() if self.config.position_mode == "contiguous" else contextlib.nullcontext()
        with quiet, self.decoding(cache, max_new_tokens, mode):
            output = self.base_model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                              max_new_tokens=max_new_tokens,
                                              **{cache_argument(self.base_model): cache}, **generate_kwargs)
        self.last_cache = cache  # for inspection: cache.retrievals() lists the pages each decode step retrieved
        self.last_timings = {"encode_s": encoded - started, "decode_s": time.perf_counter() - encoded,
                             "prompt_tokens": input_ids.shape[1], "new_tokens": output.shape[1] - input_ids.shape[1],
                             "decode_mode": mode}
        return output

    def answer(self, question: str, store, max_new_tokens: int = 64, template: str | None = None,
               index: str = "exact", nprobe: int | None = None, **generate_kwargs):
        """Answer `question` from a page store (`retrolm index build`; a `PageStore` or its directory): the pages of
        the whole collection most relevant to it are retrieved (by bookmark key, or under the training-free scorer by
        its page summaries) and attended to (collection.py).
        template: the text after the retrieved pages, "{question}" marking the question; None: as `generate`'s
        prompts ask it, in the chat template when the tokenizer has one (collection.answer).
        index: "exact" inner-product search over the bookmark keys, or "ivf" (approximate, CPU only, trained scorer)
        with `nprobe` lists searched (collection.answer). Returns an `Answer`: .text, .pages (document, page, score)
        cited, .timings."""
        from .collection import answer

        return answer(self, question, store, max_new_tokens, template, index=index, nprobe=nprobe, **generate_kwargs)

    @contextlib.contextmanager
    def decoding(self, cache: PagedKVCache, max_new_tokens: int, mode: str = "eager"):
        """Within this block, single-token forwards of the model on `cache` are decode steps of `mode`: "eager"
        (planned on the host), "graph" or "static" (`device_decode.DeviceDecoder`, at most `max_new_tokens` steps;
        the cache must have room for them). Every forward must run on the paged cache, as in `generate`; a mode
        that cannot apply raises as in `generate`."""
        self._check_decode_mode(mode, cache.num_tokens + 1)
        decoder = None if mode == "eager" else DeviceDecoder(self, cache, max_new_tokens, capture=mode == "graph")
        self._device_decoder = decoder
        try:
            with self._hooks.expect_paged(), (decoder.installed() if decoder else contextlib.nullcontext()):
                yield
        finally:
            self._device_decoder = None
        if decoder is not None:
            decoder.finish()

    def _decode_mode(self, prompt_tokens: int) -> str:
        """How a generate call with this prompt decodes: config.decode_mode, "auto" resolved to the CUDA graph where
        it applies and eager elsewhere; an explicit "graph" or "static" that cannot apply raises, never decodes
        another way."""
        asked = self.config.decode_mode
        if asked != "auto":
            self._check_decode_mode(asked, prompt_tokens)
            return asked
        blocker = device_decode_blocker(self.config, self.device, prompt_tokens, "graph")
        if blocker is not None and self.config.decode_compile:
            raise RetroLMError(f"decode_compile=True needs a device decode step, and this generate call would decode "
                               f"eagerly: {blocker}. Set decode_compile=False, or decode_mode='static' off CUDA.")
        return "graph" if blocker is None else "eager"

    def _check_decode_mode(self, mode: str, prompt_tokens: int) -> None:
        if mode == "eager" and self.config.decode_compile:
            raise RetroLMError("decode_compile=True compiles the device decode step, and eager decoding has none; "
                               "decode with 'graph' or 'static', or set model.config.decode_compile = False.")
        blocker = None if mode == "eager" else device_decode_blocker(self.config, self.device, prompt_tokens, mode)
        if blocker is not None:
            raise RetroLMError(f"decode_mode={mode!r} cannot run here: {blocker}. Use decode_mode='auto' or 'eager'.")


_NO_TRAINED_RETRIEVER = (
    "scorer='trained' needs trained page retriever weights, and this model has none. Use scorer='attention' "
    "(training-free, the default for plain models), or train a retriever for this model with one command: "
    "retrolm train-retriever --model MODEL --data DATASET --out DIR (docs/training.md), then "
    "RetroLM.from_pretrained(DIR). init_retriever=True builds an untrained one (for training it, or as a baseline)."
)


def _resolve_scorer(requested: str, has_weights: bool, init_retriever: bool) -> tuple[str, str]:
    """The scorer a model loads with, and why (for the log line); never an untrained retriever unless asked."""
    if requested == "attention":
        return "attention", "asked for: training-free, from the model's own queries and keys"
    if has_weights:
        return "trained", "the checkpoint's trained page retriever"
    if init_retriever:
        return "trained", "a freshly initialised, untrained retriever, as asked (init_retriever=True)"
    if requested == "trained":
        raise RetroLMError(_NO_TRAINED_RETRIEVER)
    return "attention", "training-free, from the model's own queries and keys: the model carries no trained retriever"


def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def _check_triton_available(device: torch.device) -> None:
    if device.type != "cuda" or not _triton_installed():
        raise RetroLMError("attention_backend='triton' needs a CUDA device and the triton package (installed with "
                           "torch's CUDA builds); use attention_backend='auto' or 'sdpa' here.")


def _load_base(path: str, device, dtype):
    try:
        hf_config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as error:
        raise RetroLMError(
            f"cannot load model {path!r}: not a local model directory, and not reachable as a hub name "
            f"({type(error).__name__}). Pass an existing directory, or check the name and your network."
        ) from error
    check_architecture(hf_config)
    try:
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype if dtype is not None else "auto",
                                                    device_map=device)
    except (OSError, ValueError, SafetensorError) as error:
        raise RetroLMError(f"cannot load the weights of model {path!r} ({type(error).__name__}: "
                           f"{str(error).splitlines()[0] if str(error) else ''}); the files are missing or damaged: "
                           "download or save the model again.") from error


def _load_adapter(base_model, path: str, base_path: str):
    from peft import PeftModel

    with quiet_peft():
        model = PeftModel.from_pretrained(base_model, path)
    for adapter in model.peft_config.values():  # where the base really is (peft reads its config when saving)
        adapter.base_model_name_or_path = record_base_path(base_path)
    return model


def _load_tokenizer(path: str):
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as error:
        raise RetroLMError(f"cannot load the tokenizer of {path!r} ({type(error).__name__}); the tokenizer files are "
                           "missing or damaged: save the model again.") from error
