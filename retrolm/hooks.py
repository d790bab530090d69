"""The two forward hooks that tie RetroLM to the wrapped model, and refuse every way around them.

Before a forward: if its keyword arguments carry a `PagedKVCache` (under any cache argument name), plan the
forward (retrieval, positions) and hand the plan to the registered attention. While RetroLM itself runs the
model (`expect_paged`), a forward without the paged cache is an error: some generation mode or transformers
release passed the cache differently, and the plain model's full attention would silently answer instead.

After a forward that carried a plan: every layer's attention must have run with it, and the paged cache
must hold exactly the tokens planned; anything else means the attention or the cache was bypassed (another
attn_implementation set on the model, a release that stops forwarding attention kwargs, ...).
"""
from __future__ import annotations

import contextlib

from .compat import find_paged_cache
from .errors import RetroLMError


class PlanningHooks:
    """Installs the hooks on `module` (the HF causal LM); `plan(cache, input_ids)` returns an `AttentionPlan`."""

    def __init__(self, module, plan, num_layers: int):
        self._plan = plan
        self._num_layers = num_layers
        self._expected = 0  # > 0 while RetroLM runs the model: every forward must carry the paged cache
        self._planned = None  # (plan, cache) of the forward in flight
        self._handles = [module.register_forward_pre_hook(self._before, with_kwargs=True),
                         module.register_forward_hook(self._after, with_kwargs=True)]

    @contextlib.contextmanager
    def expect_paged(self):
        """Within this block every forward of the model must run on RetroLM's paged cache."""
        self._expected += 1
        try:
            yield
        finally:
            self._expected -= 1

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()

    def _before(self, module, args, kwargs):
        cache = find_paged_cache(kwargs)
        if cache is None:
            if self._expected:
                raise RetroLMError(
                    "a forward of RetroLM's model ran without its paged KV cache, so it cannot be planned; the plain "
                    "model's full attention would have answered instead. This comes from a generation option or a "
                    "transformers release that passes the cache differently; use greedy decoding or sampling with "
                    "the transformers versions RetroLM supports (see README)."
                )
            return None
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids is None:
            raise RetroLMError("RetroLM needs input_ids (retrieval reads token ids); inputs_embeds is unsupported.")
        if input_ids.shape[0] != 1:
            raise RetroLMError(f"RetroLM encodes one sequence at a time; got batch size {input_ids.shape[0]}.")
        plan = self._plan(cache, input_ids)
        self._planned = (plan, cache)
        kwargs["retrolm_plan"] = plan
        kwargs["position_ids"] = plan.position_ids
        kwargs["use_cache"] = True
        return args, kwargs

    def _after(self, module, args, kwargs, output):
        plan = kwargs.get("retrolm_plan")
        if plan is None:
            return None
        if plan.attention_calls != self._num_layers:
            raise RetroLMError(
                f"RetroLM's page attention ran in {plan.attention_calls} of {self._num_layers} layers of this forward: "
                "the model's attention implementation is no longer 'retrolm' (was set_attn_implementation called "
                "on model.base_model?). Load the model again with RetroLM.from_pretrained."
            )
        planned_plan, cache = self._planned if self._planned is not None else (None, None)
        self._planned = None
        if planned_plan is plan and any(layer.length != plan.new_tokens[1] for layer in cache.layers):
            raise RetroLMError("RetroLM's paged cache was not updated by this forward: the model used another cache. "
                               "Pass the cache RetroLM built (RetroLM.new_cache) and nothing else.")
        return None
