"""Toys for the training tests: a hand-built LLM whose attention is known, planted documents, packed data."""
from __future__ import annotations

import json
import os

import numpy as np
import torch
from transformers import LlamaForCausalLM

from retrolm.tiny import byte_tokenizer, tiny_config

PAGE = 16
PAGES = 16
TOPICS = 30
PER_TOPIC = 6


def matching_llm(directory: str, heads: int = 2, head_dim: int = 32, scale: float = 3.0) -> str:
    """A 1-layer Llama whose attention goes to earlier copies of the same token.

    Queries and keys are the same projection of the (random, unit-variance) token embedding onto the
    slowest rotary dimensions, with RoPE's base so large that they barely rotate over a few hundred
    positions: q.k is large exactly when two tokens are equal. Full attention mass from a page therefore
    lands on earlier pages that share its tokens, which makes the retrieval label of a planted page known.
    """
    config = tiny_config("llama", num_hidden_layers=1, num_attention_heads=heads, num_key_value_heads=heads,
                         head_dim=head_dim, hidden_size=64,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e8})
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    half = head_dim // 2
    slow = list(range(half // 2, half)) + list(range(half + half // 2, head_dim))  # slowest rotary pairs
    per_head = 64 // heads
    projection = torch.zeros(heads * head_dim, 64)
    for h in range(heads):
        for i, d in enumerate(slow):
            projection[h * head_dim + d, h * per_head + i] = scale
    with torch.no_grad():
        model.model.embed_tokens.weight.normal_(0, 1)
        model.model.layers[0].self_attn.q_proj.weight.copy_(projection)
        model.model.layers[0].self_attn.k_proj.weight.copy_(projection)
    model.save_pretrained(directory)
    byte_tokenizer().save_pretrained(directory)
    return directory


def planted_document(generator: torch.Generator) -> tuple[torch.Tensor, dict[int, int]]:
    """A PAGES x PAGE document of topic pages, and {query page m: planted page j}.

    Each page draws its tokens from one topic (PER_TOPIC token ids). Pages 1-6 introduce six topics; pages
    7-14 are four two-page runs, each repeating one of them; so page m = 8, 10, 12, 14 continues the topic of
    page m-1 (its retrieval query) and needs the earlier page j that introduced it.
    """
    pool = torch.randperm(TOPICS, generator=generator)
    sink, firsts, last = pool[0], pool[1:7], pool[7]
    repeats = torch.randperm(6, generator=generator)[:4]
    topics = [int(sink)] + firsts.tolist() + sum(([int(firsts[r])] * 2 for r in repeats), []) + [int(last)]
    ids = torch.cat([t * PER_TOPIC + torch.randint(0, PER_TOPIC, (PAGE,), generator=generator) for t in topics])
    return ids, {8 + 2 * i: 1 + int(r) for i, r in enumerate(repeats)}


def write_packed(directory: str, train: np.ndarray, held_out: np.ndarray, page_size: int) -> str:
    """A prepared-data directory (the format train/prepare_data.py writes) from token arrays."""
    os.makedirs(directory, exist_ok=True)
    np.save(os.path.join(directory, "train.npy"), train.astype(np.int32))
    np.save(os.path.join(directory, "held_out.npy"), held_out.astype(np.int32))
    with open(os.path.join(directory, "meta.json"), "w") as f:
        json.dump({"seq_len": int(train.shape[1]), "page_size": page_size, "num_train": len(train),
                   "num_held_out": len(held_out)}, f)
    return directory


def write_config(path: str, **values) -> str:
    with open(path, "w") as f:
        json.dump(values, f)
    return path
