"""Checkpoints are safe with the user's files and always run on the base model they were saved with."""
import json
import os
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM

from retrolm import RetroLM, RetroLMError
from retrolm.checkpoint import fingerprints_match, weights_fingerprint
from retrolm.tiny import build_tiny_model

IDS = (torch.arange(60)[None] * 7) % 250


def logits(model, ids=IDS):
    with torch.no_grad():
        return model(input_ids=ids).logits


# ------------------------------------------------------------------ saving leaves other files alone
def test_save_into_a_directory_keeps_unrelated_files(tiny_dirs, tmp_path):
    target = tmp_path / "project"
    (target / "notes").mkdir(parents=True)
    (target / "notes" / "todo.md").write_text("mine")
    (target / "data.csv").write_text("a,b\n1,2\n")
    model = RetroLM.from_pretrained(tiny_dirs["llama"], page_size=8, top_k=2)
    model.save_pretrained(str(target))
    model.save_pretrained(str(target), save_base_model=True)  # saving again over our own files
    assert (target / "notes" / "todo.md").read_text() == "mine"
    assert (target / "data.csv").read_text() == "a,b\n1,2\n"
    assert {"retrolm_config.json", "retriever.safetensors", "base"} <= set(os.listdir(target))
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".retrolm")], "no staging left behind"
    torch.testing.assert_close(logits(RetroLM.from_pretrained(str(target))), logits(model), rtol=0, atol=0)


def test_a_foreign_directory_named_like_ours_is_refused_and_nothing_changes(tiny_dirs, tmp_path):
    target = tmp_path / "project"
    (target / "base").mkdir(parents=True)
    (target / "base" / "photo.jpg").write_bytes(b"\xff\xd8 not ours")
    model = RetroLM.from_pretrained(tiny_dirs["llama"], page_size=8, top_k=2)
    with pytest.raises(RetroLMError, match="was not written by RetroLM"):
        model.save_pretrained(str(target), save_base_model=True)
    assert os.listdir(target) == ["base"] and os.listdir(target / "base") == ["photo.jpg"]
    assert sorted(os.listdir(tmp_path)) == ["project"]


def test_resaving_without_an_adapter_removes_the_stale_one(tiny_dirs, tmp_path):
    from peft import LoraConfig, get_peft_model

    plain = RetroLM.from_pretrained(tiny_dirs["llama"], page_size=8, top_k=2)
    lora = RetroLM.from_pretrained(tiny_dirs["llama"], page_size=8, top_k=2)
    lora.base_model = get_peft_model(lora.base_model, LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False))
    target = str(tmp_path / "c")
    lora.save_pretrained(target)
    assert os.path.isdir(os.path.join(target, "adapter"))
    plain.save_pretrained(target)
    assert not os.path.exists(os.path.join(target, "adapter")), "a stale adapter would be applied on load"
    torch.testing.assert_close(logits(RetroLM.from_pretrained(target)), logits(plain), rtol=0, atol=0)


def test_saving_onto_a_file_is_refused(tiny_dirs, tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(RetroLMError, match="it is a file"):
        RetroLM.from_pretrained(tiny_dirs["llama"]).save_pretrained(str(tmp_path / "f"))
    assert (tmp_path / "f").read_text() == "x"


# ------------------------------------------------------------------ the right base model, from anywhere
def test_relative_base_path_is_recorded_absolute_and_loads_from_any_directory(tiny_dirs, tmp_path, monkeypatch):
    first, second = tmp_path / "one", tmp_path / "two"
    shutil.copytree(tiny_dirs["llama"], first / "mymodel")
    build_tiny_model(str(second / "mymodel"), "llama", seed=99)  # another model at the same relative path
    monkeypatch.chdir(first)
    model = RetroLM.from_pretrained("mymodel", page_size=8, top_k=2)
    expected = logits(model)
    model.save_pretrained("ckpt")
    with open(first / "ckpt" / "retrolm_config.json") as f:
        assert json.load(f)["base_model_name_or_path"] == str(first / "mymodel")
    monkeypatch.chdir(second)
    torch.testing.assert_close(logits(RetroLM.from_pretrained(str(first / "ckpt"))), expected, rtol=0, atol=0)


def test_a_different_base_at_the_recorded_path_is_refused(tiny_dirs, tmp_path):
    base = shutil.copytree(tiny_dirs["llama"], str(tmp_path / "base-model"))
    RetroLM.from_pretrained(base, page_size=8).save_pretrained(str(tmp_path / "ckpt"))
    shutil.rmtree(base)
    build_tiny_model(base, "llama", seed=5)  # same architecture, other weights
    with pytest.raises(RetroLMError, match="is not the one this checkpoint was saved with"):
        RetroLM.from_pretrained(str(tmp_path / "ckpt"))
    RetroLM.from_pretrained(str(tmp_path / "ckpt"), base_model_fingerprint="")  # the documented override


def test_a_legacy_relative_path_without_fingerprint_is_refused(tiny_dirs, tmp_path, monkeypatch):
    shutil.copytree(tiny_dirs["llama"], tmp_path / "mymodel")
    RetroLM.from_pretrained(str(tmp_path / "mymodel")).save_pretrained(str(tmp_path / "ckpt"))
    config_path = tmp_path / "ckpt" / "retrolm_config.json"
    values = json.loads(config_path.read_text())
    values.update(base_model_name_or_path="mymodel", base_model_fingerprint="")
    config_path.write_text(json.dumps(values))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RetroLMError, match="relative path 'mymodel'"):
        RetroLM.from_pretrained(str(tmp_path / "ckpt"))
    loaded = RetroLM.from_pretrained(str(tmp_path / "ckpt"), base_model_name_or_path=str(tmp_path / "mymodel"))
    assert loaded.config.base_model_fingerprint  # saving it again makes it verifiable


def test_a_moved_base_directory_is_one_clear_error(tiny_dirs, tmp_path):
    base = shutil.copytree(tiny_dirs["llama"], str(tmp_path / "base-model"))
    RetroLM.from_pretrained(base).save_pretrained(str(tmp_path / "ckpt"))
    os.rename(base, str(tmp_path / "elsewhere"))
    with pytest.raises(RetroLMError, match="does not exist .*base_model_name_or_path"):
        RetroLM.from_pretrained(str(tmp_path / "ckpt"))
    RetroLM.from_pretrained(str(tmp_path / "ckpt"), base_model_name_or_path=str(tmp_path / "elsewhere"))


def test_default_model_saved_without_its_base_loads_back(tmp_path):
    model = RetroLM.from_pretrained()
    ids = torch.randint(0, 250, (1, 300))
    model.save_pretrained(str(tmp_path / "mine"), save_base_model=False)
    assert not os.path.exists(tmp_path / "mine" / "base")
    reloaded = RetroLM.from_pretrained(str(tmp_path / "mine"), dtype=torch.float32)
    torch.testing.assert_close(logits(reloaded, ids), logits(model, ids),
                               rtol=0, atol=0)


def test_changed_base_weights_need_save_base_model(tiny_dirs, tmp_path):
    model = RetroLM.from_pretrained(tiny_dirs["llama"])
    with torch.no_grad():
        model.base_model.lm_head.weight.mul_(1.5)
    with pytest.raises(RetroLMError, match="save_base_model=True"):
        model.save_pretrained(str(tmp_path / "c"))
    model.save_pretrained(str(tmp_path / "c"), save_base_model=True)
    torch.testing.assert_close(logits(RetroLM.from_pretrained(str(tmp_path / "c"))), logits(model), rtol=0, atol=0)


# ------------------------------------------------------------------ the fingerprint
def test_fingerprint_ignores_the_load_dtype_but_not_the_weights(tiny_dirs):
    prints = {dtype: weights_fingerprint(AutoModelForCausalLM.from_pretrained(tiny_dirs["qwen2"], dtype=dtype)
                                         .state_dict()) for dtype in (torch.float32, torch.bfloat16, torch.float16)}
    assert fingerprints_match(prints[torch.float32], prints[torch.bfloat16])
    assert fingerprints_match(prints[torch.float32], prints[torch.float16])
    other = AutoModelForCausalLM.from_pretrained(tiny_dirs["qwen2"])
    with torch.no_grad():  # a fine-tune: every weight moved by ~2%
        for p in other.parameters():
            p.mul_(1 + 0.02 * torch.randn_like(p))
    assert not fingerprints_match(prints[torch.float32], weights_fingerprint(other.state_dict()))
    llama = weights_fingerprint(AutoModelForCausalLM.from_pretrained(tiny_dirs["llama"]).state_dict())
    assert not fingerprints_match(prints[torch.float32], llama)


# ------------------------------------------------------------------ RoPE variants
@pytest.mark.parametrize("rope", [
    {"rope_type": "linear", "factor": 2.0},
    {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 64},
    {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64},
])
@pytest.mark.parametrize("mode", ["original", "contiguous"])
def test_position_only_rope_scalings_equal_the_plain_model(tmp_path, rope, mode):
    path = build_tiny_model(str(tmp_path / "m"), "llama", seed=2, max_position_embeddings=256,
                            rope_parameters={"rope_theta": 10000.0, **rope})
    plain = AutoModelForCausalLM.from_pretrained(path).eval()
    model = RetroLM.from_pretrained(path, page_size=8, top_k=64, position_mode=mode, attention_backend="reference")
    ids = torch.randint(0, 250, (1, 200))
    with torch.no_grad():
        torch.testing.assert_close(logits(model, ids), plain(input_ids=ids).logits, rtol=1e-4, atol=1e-4)


def test_dynamic_rope_is_refused(tmp_path):
    path = build_tiny_model(str(tmp_path / "m"), "llama", max_position_embeddings=64,
                            rope_parameters={"rope_theta": 10000.0, "rope_type": "dynamic", "factor": 2.0})
    with pytest.raises(RetroLMError, match="rope_type 'dynamic' is unsupported"):
        RetroLM.from_pretrained(path)
