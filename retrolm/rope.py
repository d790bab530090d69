"""Moving cached keys to new RoPE positions: a key rotated for position p becomes one for p + shift.

RoPE rotates each (x_i, x_{i+D/2}) pair by angle pos * inv_freq_i, and rotations compose, so a stored
(already rotated) key is moved by rotating it again by shift * inv_freq. This is what lets retrieved
pages be re-packed at contiguous positions without re-encoding them.
"""
from __future__ import annotations

import torch


def rope_inv_freq(model) -> torch.Tensor:
    """The rotary inverse frequencies [head_dim // 2] of a Llama/Mistral/Qwen-family HF model."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inner.model.rotary_emb.inv_freq


def shift_keys(keys: torch.Tensor, shift: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """keys: [..., T, D] rotated at some positions; shift: broadcastable to [..., T] (int positions).

    Returns keys rotated for positions + shift, in keys' dtype (math in float32).
    """
    angles = shift.to(torch.float32)[..., None] * inv_freq.to(keys.device, torch.float32)  # [..., T, D/2]
    cos, sin = angles.cos(), angles.sin()
    k = keys.float()
    k1, k2 = k.chunk(2, dim=-1)
    rotated = torch.cat([k1 * cos - k2 * sin, k2 * cos + k1 * sin], dim=-1)
    return rotated.to(keys.dtype)
