"""What differs between the `transformers` releases RetroLM admits (setup.py's range), in one place.

transformers 5.24 renamed the cache argument of every model `forward` and of `generate` from
`past_key_values` to `cache` (the old name still works there, with a deprecation warning on every call).
RetroLM passes its paged cache under the name the installed release declares, so users see no warning, and
finds it under either name, so a forward that carries the cache is never mistaken for one that does not.
peft releases admitted by setup.py still read attributes transformers 5.24 deprecated; those warnings are
not the user's to act on and are silenced around RetroLM's own peft calls only.
"""
from __future__ import annotations

import contextlib
import dataclasses
import inspect
import warnings

from transformers.modeling_outputs import CausalLMOutputWithPast

from .cache import PagedKVCache

CACHE_ARGUMENT_NAMES = ("cache", "past_key_values")


def cache_argument(model) -> str:
    """The keyword under which `model.forward` (an HF causal LM, optionally peft-wrapped) takes its KV cache."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    parameters = inspect.signature(type(inner).forward).parameters
    for name in CACHE_ARGUMENT_NAMES:
        if name in parameters:
            return name
    raise TypeError(f"{type(inner).__name__}.forward takes no KV cache argument (looked for {CACHE_ARGUMENT_NAMES})")


def find_paged_cache(kwargs: dict) -> PagedKVCache | None:
    """The `PagedKVCache` a forward's keyword arguments carry, under any cache argument name; None if none."""
    for name in CACHE_ARGUMENT_NAMES:
        if isinstance(kwargs.get(name), PagedKVCache):
            return kwargs[name]
    return None


def causal_lm_output(logits, cache: PagedKVCache) -> CausalLMOutputWithPast:
    """The HF output object of a RetroLM forward, with the cache under the installed release's field name."""
    fields = {f.name for f in dataclasses.fields(CausalLMOutputWithPast)}
    name = next(n for n in CACHE_ARGUMENT_NAMES if n in fields)
    return CausalLMOutputWithPast(logits=logits, **{name: cache})


@contextlib.contextmanager
def quiet_peft():
    """Around a peft call: drop the FutureWarning peft's use of a renamed transformers attribute raises."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield
