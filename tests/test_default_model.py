"""The embedded default model on the CPU: a planted needle at 16x its trained window, found only by retrieval."""
import os

import torch

from retrolm import RetroLM
from retrolm.demo import Fact, haystack_prompt


def test_default_model_answers_a_needle_at_16x_its_window_and_fails_without_retrieval():
    torch.manual_seed(0)
    model = RetroLM.from_pretrained()  # no name: the embedded default model, float32 on the CPU
    window = model.base_model.config.max_position_embeddings
    assert window == 1024 and model.base_model.dtype == torch.float32
    fact = Fact("amber-harbor", "4817305", depth=0.4)
    ids, needle_token = haystack_prompt(model.tokenizer, fact, 16 * window, seed=11)
    assert ids.shape[1] >= 16 * window

    with torch.no_grad():
        out = model.generate(input_ids=ids, max_new_tokens=10, do_sample=False)
    answer = model.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    retrieved = model.last_cache.retrievals()[0][1]
    assert fact.value in answer, answer
    assert needle_token // model.config.page_size in retrieved, (needle_token, retrieved)

    model.config = model.config.replace(top_k=0)  # retrieval off: sink and local pages only
    with torch.no_grad():
        out = model.generate(input_ids=ids, max_new_tokens=10, do_sample=False)
    blind = model.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert fact.value not in blind, blind


def test_the_shipped_models_stage1_is_its_base_and_retriever_without_the_adapter(tmp_path):
    from safetensors.torch import load_file

    from bench.stage1_model import stage1_model
    from train.build_default_model import DEFAULT_OUT as shipped
    inference = RetroLM.from_pretrained(stage1_model(shipped, str(tmp_path / "users")))
    training = RetroLM.from_pretrained(stage1_model(shipped, str(tmp_path / "training"), training_settings=True))
    assert not hasattr(inference.base_model, "peft_config") and not hasattr(training.base_model, "peft_config")
    assert inference.config.neighbor_pages == 1 and training.config.neighbor_pages == 0
    retriever = load_file(os.path.join(shipped, "retriever.safetensors"))
    for name, weight in inference.retriever.state_dict().items():
        assert torch.equal(weight, retriever[name]), name
    exported = RetroLM.from_pretrained(stage1_model(str(tmp_path / "training"), str(tmp_path / "exported")))
    assert exported.config.neighbor_pages == 1, "a stage-1 training output gets the export's inference settings"
    for name, weight in exported.retriever.state_dict().items():
        assert torch.equal(weight, retriever[name]), name
    ids = inference.tokenizer("a stage-1 model still answers " * 20, return_tensors="pt").input_ids
    assert inference.generate(input_ids=ids, max_new_tokens=2, do_sample=False).shape[1] == ids.shape[1] + 2


def test_the_shipped_config_holds_the_settings_a_rebuild_exports():
    """train/build_default_model.py's EXPORT_KNOBS are what a rebuild writes; the shipped model must hold the same,
    so a setting chosen later (and measured) is not lost by the next rebuild, nor shipped without it."""
    from retrolm.config import RetroLMConfig
    from train.build_default_model import DEFAULT_OUT, EXPORT_KNOBS

    shipped = RetroLMConfig.load(DEFAULT_OUT)
    assert {knob: getattr(shipped, knob) for knob in EXPORT_KNOBS} == EXPORT_KNOBS
