"""save_pretrained -> from_pretrained reproduces outputs exactly; saving is atomic."""
import os

import pytest
import torch

from retrolm import RetroLM, RetroLMConfig


@pytest.mark.parametrize("save_base", [False, True])
def test_round_trip_reproduces_outputs(tiny_dirs, tmp_path, save_base):
    model = RetroLM.from_pretrained(tiny_dirs["qwen2"], page_size=8, top_k=2, retriever={"seed": 7},
                                    init_retriever=True)
    with torch.no_grad():  # make the retriever's weights differ from any fresh one
        for p in model.retriever.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    ids = torch.randint(0, 256, (1, 90))
    out = tmp_path / "ckpt"
    model.save_pretrained(str(out), save_base_model=save_base)
    loaded = RetroLM.from_pretrained(str(out))
    assert loaded.config == model.config.replace(base_model_name_or_path=loaded.config.base_model_name_or_path)
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, model(input_ids=ids).logits)
    assert torch.equal(loaded.generate(input_ids=ids, max_new_tokens=10, do_sample=False),
                       model.generate(input_ids=ids, max_new_tokens=10, do_sample=False))
    assert sorted(os.listdir(tmp_path)) == ["ckpt"], "no staging directory left behind"


def test_knobs_override_saved_config(tiny_dirs, tmp_path):
    RetroLM.from_pretrained(tiny_dirs["llama"], page_size=8, top_k=3).save_pretrained(str(tmp_path / "c"))
    loaded = RetroLM.from_pretrained(str(tmp_path / "c"), top_k=5)
    assert (loaded.config.page_size, loaded.config.top_k) == (8, 5)


def test_save_replaces_existing_checkpoint(tiny_dirs, tmp_path):
    target = tmp_path / "c"
    RetroLM.from_pretrained(tiny_dirs["llama"], top_k=3).save_pretrained(str(target))
    RetroLM.from_pretrained(tiny_dirs["llama"], top_k=9).save_pretrained(str(target))
    assert RetroLMConfig.load(str(target)).top_k == 9
    assert sorted(os.listdir(tmp_path)) == ["c"]


def test_config_json_round_trip():
    config = RetroLMConfig(page_size=64, top_k=4, position_mode="original", retriever={"num_layers": 3})
    assert RetroLMConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize("save_base", [False, True])
def test_lora_adapter_round_trip(tiny_dirs, tmp_path, save_base):
    from peft import LoraConfig, get_peft_model

    model = RetroLM.from_pretrained(tiny_dirs["llama"], page_size=8, top_k=2)
    peft_model = get_peft_model(model.base_model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    model.base_model = peft_model
    ids = torch.randint(0, 256, (1, 40))
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    model.save_pretrained(str(tmp_path / "lora"), save_base_model=save_base)
    assert os.path.isdir(tmp_path / "lora" / "adapter")
    loaded = RetroLM.from_pretrained(str(tmp_path / "lora"))
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, expected)
    if save_base:  # base/ is the plain model: no LoRA tensors, loads as a HF model equal to the original base
        from transformers import AutoModelForCausalLM

        base = AutoModelForCausalLM.from_pretrained(str(tmp_path / "lora" / "base"))
        original = AutoModelForCausalLM.from_pretrained(tiny_dirs["llama"])
        assert base.state_dict().keys() == original.state_dict().keys()
        assert all(torch.equal(base.state_dict()[k], v) for k, v in original.state_dict().items())
