"""Tiny random models with a byte-level tokenizer, built from configs with no network.

Tests and the demo use these: every supported architecture family at a size that runs in
milliseconds on a CPU. The weights are random, so generated text is noise; the shapes, the
code paths and the numerics are the real ones.
"""
from __future__ import annotations

import os

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

SPECIAL_TOKENS = ("<s>", "</s>", "<pad>")
TINY_ARCHITECTURES = {
    "llama": (LlamaConfig, LlamaForCausalLM),
    "mistral": (MistralConfig, MistralForCausalLM),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM),
}


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A lossless byte-level tokenizer: 256 byte tokens plus <s>, </s>, <pad>; any text round-trips."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()  # 256 printable stand-ins, one per byte
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    for tok in SPECIAL_TOKENS:
        vocab[tok] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", model_max_length=1 << 30
    )


def tiny_config(arch: str = "llama", **overrides):
    """A 2-layer, 64-wide config of `arch` with GQA (4 query heads, 2 KV heads) and no sliding window."""
    if arch not in TINY_ARCHITECTURES:
        raise ValueError(f"unknown tiny architecture {arch!r}; choose one of {sorted(TINY_ARCHITECTURES)}")
    config_cls, _ = TINY_ARCHITECTURES[arch]
    values = dict(
        vocab_size=320,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=1 << 20,
        bos_token_id=256,
        eos_token_id=257,
        pad_token_id=258,
        tie_word_embeddings=False,
    )
    if arch in ("mistral", "qwen2", "qwen3"):
        values["sliding_window"] = None
    if arch in ("qwen2", "qwen3"):
        values["use_sliding_window"] = False
    values.update(overrides)
    return config_cls(**values)


def build_tiny_model(directory: str, arch: str = "llama", seed: int = 0, **overrides) -> str:
    """Save a tiny random `arch` model and its byte tokenizer to `directory`; returns the directory."""
    config = tiny_config(arch, **overrides)
    _, model_cls = TINY_ARCHITECTURES[arch]
    torch.manual_seed(seed)
    model = model_cls(config)
    # Random-init std 0.02 gives near-uniform attention; a larger scale makes attention sharp enough that
    # dropping a page visibly changes the logits, so tests of selection can fail when they should.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.2)
    os.makedirs(directory, exist_ok=True)
    model.save_pretrained(directory)
    byte_tokenizer().save_pretrained(directory)
    return directory
