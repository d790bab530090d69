"""Every way around RetroLM's paged path raises `RetroLMError`; none quietly runs the plain model instead."""
import pytest
import torch
from transformers import AttentionInterface

import retrolm.model as model_module
from retrolm import RetroLM, RetroLMError
from retrolm.attention import ATTENTION_NAME, retrolm_attention


@pytest.fixture
def model(tiny_dirs):
    return RetroLM.from_pretrained(tiny_dirs["llama"], page_size=8, top_k=2)


IDS = torch.arange(40)[None] % 200


def test_cache_not_seen_by_the_model_raises(model, monkeypatch):
    """A transformers release that takes the cache under a new name: the forward arrives without it."""
    monkeypatch.setattr(model_module, "cache_argument", lambda _: "kv_store")
    with pytest.raises(RetroLMError, match="without its paged KV cache"):
        model(input_ids=IDS)
    with pytest.raises(RetroLMError, match="without its paged KV cache"):
        model.generate(input_ids=IDS, max_new_tokens=2)


def test_planning_hook_bypassed_raises(model):
    model._hooks.remove()
    with pytest.raises(RetroLMError, match="without a plan"):
        model(input_ids=IDS)


def test_attention_implementation_switched_raises(model):
    model.base_model.set_attn_implementation("sdpa")
    with pytest.raises(RetroLMError, match="page attention ran in 0 of 2 layers"):
        model(input_ids=IDS)
    with pytest.raises(RetroLMError, match="page attention ran in 0 of 2 layers"):
        model.generate(input_ids=IDS, max_new_tokens=2)


def test_plan_not_delivered_to_the_attention_raises(model):
    """A release that stops passing extra keyword arguments through to the attention function."""
    def forgetful(module, query, key, value, attention_mask, **kwargs):
        kwargs.pop("retrolm_plan", None)
        return retrolm_attention(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register(ATTENTION_NAME, forgetful)
    try:
        with pytest.raises(RetroLMError, match="page attention ran in 0 of 2 layers"):
            model(input_ids=IDS)
    finally:
        AttentionInterface.register(ATTENTION_NAME, retrolm_attention)


@pytest.mark.parametrize("kwargs, match", [
    ({"num_beams": 2}, "beam search"),
    ({"num_return_sequences": 2, "do_sample": True}, "several return sequences"),
    ({"penalty_alpha": 0.6, "top_k": 4}, "generation mode 'contrastive_search'"),
    ({"dola_layers": "high"}, "generation mode 'dola_generation'"),
    ({"prompt_lookup_num_tokens": 3}, "prompt-lookup"),
    ({"use_cache": False}, "use_cache"),
    ({"cache_implementation": "static"}, "cache_implementation"),
    ({"past_key_values": None}, "paged cache"),
    ({"position_ids": torch.arange(40)[None]}, "position_ids"),
])
def test_unsupported_generation_modes_raise(model, kwargs, match):
    with pytest.raises(RetroLMError, match=match):
        model.generate(input_ids=IDS, max_new_tokens=2, **kwargs)


def test_assisted_decoding_raises(model, tiny_dirs):
    from transformers import AutoModelForCausalLM

    assistant = AutoModelForCausalLM.from_pretrained(tiny_dirs["llama"])
    with pytest.raises(RetroLMError, match="assisted"):
        model.generate(input_ids=IDS, max_new_tokens=2, assistant_model=assistant)


def test_beam_search_set_in_the_models_generation_config_raises(model):
    model.base_model.generation_config.num_beams = 3
    with pytest.raises(RetroLMError, match="beam search"):
        model.generate(input_ids=IDS, max_new_tokens=2)


def test_the_wrapped_model_alone_stays_the_plain_model(model, tiny_dirs):
    """Outside RetroLM's own calls, base_model with an ordinary cache is the user's model: full attention."""
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(tiny_dirs["llama"]).eval()
    with torch.no_grad():
        torch.testing.assert_close(model.base_model(input_ids=IDS).logits, plain(input_ids=IDS).logits)


def test_users_see_no_deprecation_warnings(tiny_dirs, tmp_path, caplog):
    """On every admitted transformers release RetroLM passes the cache the way that release expects."""
    import logging
    import warnings

    from peft import LoraConfig, get_peft_model

    from retrolm.compat import quiet_peft

    model = RetroLM.from_pretrained(tiny_dirs["qwen3"], page_size=8, top_k=2)
    with quiet_peft():  # the test's own peft call; RetroLM's are checked below
        model.base_model = get_peft_model(model.base_model, LoraConfig(r=2, target_modules=["q_proj"]))
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        model(input_ids=IDS)
        model.generate(input_ids=IDS, max_new_tokens=3, do_sample=False)
        model.save_pretrained(str(tmp_path / "c"))
        RetroLM.from_pretrained(str(tmp_path / "c")).generate(input_ids=IDS, max_new_tokens=2, do_sample=True)
    said = [str(w.message) for w in caught] + [r.getMessage() for r in caplog.records]
    assert not [s for s in said if "deprecat" in s.lower()], said


def test_the_model_writing_into_another_cache_raises(model):
    """Something between RetroLM's hook and the layers swaps the paged cache for an ordinary one."""
    from transformers import DynamicCache

    from retrolm.compat import CACHE_ARGUMENT_NAMES

    def swap(module, args, kwargs):
        for name in CACHE_ARGUMENT_NAMES:
            if name in kwargs:
                kwargs[name] = DynamicCache()
        return args, kwargs

    model.base_model.get_decoder().register_forward_pre_hook(swap, with_kwargs=True)
    with pytest.raises(RetroLMError, match="paged cache was not updated by this forward"):
        model(input_ids=IDS)
