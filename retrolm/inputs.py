"""Checking what users pass to RetroLM's API: one `RetroLMError` naming the value and the fix, before any work.

RetroLM encodes one unpadded sequence per paged cache and decodes it greedily or by sampling; everything
else (padding, batches, beam search, assisted decoding, no cache) is refused here rather than run on a path
that would quietly give the plain model's answers or wrong ones.
"""
from __future__ import annotations

import copy

import torch

from .errors import RetroLMError

ID_DTYPES = (torch.long, torch.int32)
DTYPE_NAMES = {"auto": "auto", "bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
SUPPORTED_GENERATION_MODES = ("greedy_search", "sample")
# generate() keywords that would take the cache, the positions or the inputs away from RetroLM
REFUSED_GENERATE_KWARGS = {
    "past_key_values": "RetroLM builds its own paged cache; do not pass one",
    "cache": "RetroLM builds its own paged cache; do not pass one",
    "cache_implementation": "RetroLM decodes on its own paged cache; remove cache_implementation",
    "use_cache": "RetroLM always decodes with its paged cache; remove use_cache",
    "inputs_embeds": "retrieval reads token ids; pass input_ids",
    "position_ids": "RetroLM assigns positions to retrieved pages itself; remove position_ids",
    "assistant_model": "assisted/speculative decoding is unsupported; use greedy decoding or sampling",
    "prompt_lookup_num_tokens": "prompt-lookup decoding is unsupported; use greedy decoding or sampling",
    "custom_generate": "custom generation loops are unsupported; use greedy decoding or sampling",
}


def check_input_ids(input_ids, vocab_size: int, bookmark_id: int, max_tokens: int) -> torch.Tensor:
    """input_ids as a [1, T] int64 tensor, or a `RetroLMError` saying what is wrong and how to fix it."""
    if not isinstance(input_ids, torch.Tensor):
        raise RetroLMError(f"input_ids must be a torch tensor of token ids [1, T], got {type(input_ids).__name__}; "
                           "use tokenizer(text, return_tensors='pt').input_ids or torch.tensor([ids]).")
    if input_ids.dtype not in ID_DTYPES:
        raise RetroLMError(f"input_ids must hold integer token ids (int64 or int32), got dtype {input_ids.dtype}; "
                           "convert with input_ids.long() if the values are token ids.")
    if input_ids.dim() != 2:
        raise RetroLMError(f"input_ids must be [batch, seq], got shape {tuple(input_ids.shape)}; add a batch dim.")
    if input_ids.shape[0] != 1:
        raise RetroLMError(
            f"RetroLM encodes one sequence at a time (batch size 1), got batch size {input_ids.shape[0]}; "
            "call it once per sequence."
        )
    if input_ids.shape[1] == 0:
        raise RetroLMError("input is empty: pass at least one token (did the text tokenize to nothing?).")
    if input_ids.shape[1] > max_tokens:
        raise RetroLMError(
            f"input has {input_ids.shape[1]} tokens, over max_context_tokens={max_tokens}; "
            f"pass max_context_tokens={input_ids.shape[1]} or more to RetroLM.from_pretrained, or shorten the input."
        )
    if bool((input_ids == bookmark_id).any()) or int(input_ids.max()) >= vocab_size or int(input_ids.min()) < 0:
        raise RetroLMError(
            "input_ids contain the bookmark token or ids outside the model's vocabulary; bookmarks are added by "
            "RetroLM itself, so strip them from the text before tokenizing."
        )
    return input_ids.long()


def check_attention_mask(attention_mask, input_ids: torch.Tensor) -> None:
    """Accept no mask or an all-ones mask of input_ids' shape (the HF idiom `generate(**tokenizer(text))`)."""
    if attention_mask is None:
        return
    if not isinstance(attention_mask, torch.Tensor) or tuple(attention_mask.shape) != tuple(input_ids.shape):
        shape = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else type(attention_mask)
        raise RetroLMError(f"attention_mask must be a tensor shaped like input_ids {tuple(input_ids.shape)}, got "
                           f"{shape}; pass the mask the tokenizer returned, or none.")
    if not bool((attention_mask == 1).all()):
        raise RetroLMError("attention_mask has padding (zeros): RetroLM reads one unpadded sequence at a time; "
                           "tokenize each text on its own, without padding.")


def check_max_new_tokens(max_new_tokens) -> int:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise RetroLMError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}; e.g. max_new_tokens=64.")
    return max_new_tokens


def check_generation(base_model, generate_kwargs: dict) -> None:
    """Refuse generate() options that would leave RetroLM's paged decoding (beam search, assisted decoding, ...)."""
    for name, why in REFUSED_GENERATE_KWARGS.items():
        if name in generate_kwargs:
            raise RetroLMError(f"generate(): {name!r} is unsupported: {why}.")
    config = copy.deepcopy(generate_kwargs.get("generation_config") or base_model.generation_config)
    config.update(**{k: v for k, v in generate_kwargs.items() if k != "generation_config"})
    if (config.num_beams or 1) > 1:
        raise RetroLMError("beam search is unsupported with RetroLM (one sequence per paged cache); use greedy "
                           "decoding or sampling (num_beams=1).")
    if (config.num_return_sequences or 1) > 1:
        raise RetroLMError("several return sequences are unsupported with RetroLM (one sequence per paged cache); "
                           "call generate once per sample.")
    mode = str(getattr(config.get_generation_mode(), "value", config.get_generation_mode()))
    if mode not in SUPPORTED_GENERATION_MODES:
        raise RetroLMError(f"generation mode {mode!r} is unsupported with RetroLM; use greedy decoding "
                           "(do_sample=False) or sampling (do_sample=True).")


def resolve_device(device) -> torch.device | None:
    """A torch device the machine has, or None (the model's own placement)."""
    if device is None:
        return None
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise RetroLMError(f"device {device!r} is not a device name; use 'cpu', 'cuda' or 'cuda:N'.") from error
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise RetroLMError(f"device {device!r} asked for, but this machine has no CUDA GPU visible to torch; "
                               "use device='cpu', or install a CUDA build of torch on a GPU host.")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise RetroLMError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) here.")
    return resolved


def resolve_dtype(dtype):
    """A floating torch dtype, "auto" or None; names like "bfloat16" are accepted."""
    if dtype is None or dtype == "auto":
        return dtype
    if isinstance(dtype, str):
        if dtype not in DTYPE_NAMES:
            raise RetroLMError(f"dtype {dtype!r} is unknown; use one of {sorted(DTYPE_NAMES)} or a torch dtype.")
        return DTYPE_NAMES[dtype]
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise RetroLMError(f"dtype must be a floating-point torch dtype (torch.bfloat16, torch.float16, "
                           f"torch.float32) or 'auto', got {dtype!r}.")
    return dtype
