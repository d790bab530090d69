"""Every documented bad input fails with one RetroLMError that names the fix."""
import json
import os

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from retrolm import RetroLM, RetroLMConfig, RetroLMError


@pytest.fixture(scope="module")
def model(tiny_dirs):
    return RetroLM.from_pretrained(tiny_dirs["llama"], page_size=8, top_k=2, max_context_tokens=200)


def test_empty_input(model):
    with pytest.raises(RetroLMError, match="empty"):
        model.generate(input_ids=torch.zeros(1, 0, dtype=torch.long))


def test_context_over_budget(model):
    with pytest.raises(RetroLMError, match="max_context_tokens"):
        model(input_ids=torch.randint(0, 256, (1, 201)))


def test_batch_over_one(model):
    with pytest.raises(RetroLMError, match="one sequence at a time"):
        model.generate(input_ids=torch.randint(0, 256, (2, 10)))


def test_bookmark_token_in_input(model):
    with pytest.raises(RetroLMError, match="bookmark"):
        model(input_ids=torch.tensor([[1, 2, model.bookmark_id]]))


@pytest.mark.parametrize("knobs, match", [
    ({"page_size": 0}, "page_size must be an integer >= 1"),
    ({"top_k": -1}, "top_k must be"),
    ({"position_mode": "nope"}, "position_mode must be one of"),
    ({"attention_backend": "cuda"}, "attention_backend must be one of"),
    ({"pagesize": 4}, "unknown RetroLM option"),
])
def test_bad_knobs(tiny_dirs, knobs, match):
    with pytest.raises(RetroLMError, match=match):
        RetroLM.from_pretrained(tiny_dirs["llama"], **knobs)


def test_unsupported_architecture(tmp_path):
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50)).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(RetroLMError, match="llama, mistral, qwen2, qwen3"):
        RetroLM.from_pretrained(str(tmp_path / "gpt2"))


def test_missing_model_directory(tmp_path):
    with pytest.raises(RetroLMError, match="cannot load model"):
        RetroLM.from_pretrained(str(tmp_path / "does-not-exist"))


def test_no_model_given_without_the_embedded_default(monkeypatch, tmp_path):
    import retrolm.model as model_module

    monkeypatch.setattr(model_module, "default_model_candidates", lambda: [str(tmp_path / "assets")])
    with pytest.raises(RetroLMError, match="embedded default model is not installed"):
        RetroLM.from_pretrained()


def test_checkpoint_missing_retriever_weights(tiny_dirs, tmp_path):
    RetroLM.from_pretrained(tiny_dirs["llama"]).save_pretrained(str(tmp_path / "c"))
    os.remove(tmp_path / "c" / "retriever.safetensors")
    with pytest.raises(RetroLMError, match="retriever.safetensors is missing"):
        RetroLM.from_pretrained(str(tmp_path / "c"))


def test_failed_save_leaves_nothing(model, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("retrolm.files.save_file", broken)
    with pytest.raises(OSError):
        model.save_pretrained(str(tmp_path / "c"))
    assert os.listdir(tmp_path) == []


def test_beam_search_rejected(model):
    with pytest.raises(RetroLMError, match="beam search"):
        model.generate(input_ids=torch.randint(0, 256, (1, 30)), max_new_tokens=3, num_beams=2)


def test_window_warning_is_dropped_only_inside_retrolm_generation():
    import logging

    from retrolm.model import _window_warning_silenced

    logger = logging.getLogger("transformers.generation.stopping_criteria")
    warning = logger.makeRecord(logger.name, logging.WARNING, __file__, 1, "This is a friendly reminder - the "
                                "current text generation call has exceeded the model's predefined maximum length "
                                "(1024).", (), None)
    other = logger.makeRecord(logger.name, logging.WARNING, __file__, 1, "another warning", (), None)
    with _window_warning_silenced():
        assert not logger.filter(warning) and logger.filter(other)
    assert logger.filter(warning), "the filter is removed afterwards"
