"""Sparse page attention, plugged into transformers through its attention-function registry.

Every attention call of a RetroLM forward receives the layer's whole K/V pool (from `PagedLayer.update`)
and the forward's `AttentionPlan`; each group of query tokens (one page) attends to its attended earlier
pages in full and to its own page causally. Paths:
- `reference`: gather the pages, plain-torch float32 softmax attention. The ground truth, kept forever.
- `sdpa`: the same gather, then torch's fused scaled_dot_product_attention.
- `triton`: paged decode and prefill kernels reading pages in place (CUDA; `triton_decode.py`, `triton_prefill.py`).
Without a plan (e.g. the base model run with an ordinary cache) the call is plain SDPA attention, so the
wrapped model keeps working on its own.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from .planner import AttentionPlan
from .rope import shift_keys
from .scorer import select_for_layer

ATTENTION_NAME = "retrolm"


def gather_pages(plan: AttentionPlan, key_pool: torch.Tensor, value_pool: torch.Tensor):
    """Keys/values each group attends to, and the mask of its query rows.

    key_pool, value_pool: [1, kv_heads, capacity, D]. Returns K, V: [G, kv_heads, S, D] with S = (A + 1) * P
    (attended pages in order, then the group's own page; attended keys moved to their new positions), and
    mask [G, R, S] (True = attend).
    """
    P = plan.page_size
    groups, width = plan.attended.shape
    offsets = torch.arange(P, device=key_pool.device)
    context_tokens = (plan.attended.clamp(min=0)[..., None] * P + offsets).reshape(groups, width * P)
    own_tokens = plan.query_pages[:, None] * P + offsets  # [G, P]
    tokens = torch.cat([context_tokens, own_tokens], dim=1)  # [G, S]
    keys = key_pool[0][:, tokens].transpose(0, 1)  # [G, kvh, S, D]
    values = value_pool[0][:, tokens].transpose(0, 1)
    if plan.key_shift is not None and width > 0:
        shift = plan.key_shift.repeat_interleave(P, dim=1)[:, None, :]  # [G, 1, A*P]
        keys = torch.cat([shift_keys(keys[:, :, : width * P], shift, plan.inv_freq), keys[:, :, width * P :]], 2)
    context_mask = (plan.attended >= 0).repeat_interleave(P, dim=1)  # [G, A*P]
    context_mask = context_mask[:, None, :].expand(groups, plan.rows, width * P)
    own_mask = offsets[None, None, :] <= plan.row_offsets[:, :, None]  # [G, R, P] causal in the own page
    return keys, values, torch.cat([context_mask, own_mask], dim=2)


def query_blocks(plan: AttentionPlan, query: torch.Tensor) -> torch.Tensor:
    """query [1, H, q, D] -> [G, H, R, D], each token at its group's row (padding rows are zeros)."""
    blocks = query.new_zeros(plan.query_pages.numel(), query.shape[1], plan.rows, query.shape[-1])
    blocks[plan.q_group, :, plan.q_row] = query[0].transpose(0, 1)
    return blocks


def unblock(plan: AttentionPlan, out: torch.Tensor) -> torch.Tensor:
    """[G, H, R, D] -> [1, q, H, D], the layout HF attention functions return."""
    return out[plan.q_group, :, plan.q_row][None]


def reference_attention(plan: AttentionPlan, query, key_pool, value_pool, scaling: float) -> torch.Tensor:
    """Plain-torch page attention in float32. query [1, H, q, D] -> [1, q, H, D] in query's dtype."""
    keys, values, mask = gather_pages(plan, key_pool, value_pool)
    q = query_blocks(plan, query)
    groups, heads, rows, dim = q.shape
    kv_heads = keys.shape[1]
    per_kv = heads // kv_heads  # query heads sharing one KV head (GQA), HF's repeat_kv order
    q = q.reshape(groups, kv_heads, per_kv * rows, dim).float()
    scores = q @ keys.float().transpose(-1, -2) * scaling  # [G, kvh, g*R, S]
    mask = mask[:, None, None].expand(groups, kv_heads, per_kv, rows, mask.shape[-1])
    scores = scores.masked_fill(~mask.reshape(scores.shape), float("-inf"))
    out = scores.softmax(dim=-1) @ values.float()  # [G, kvh, g*R, D]
    return unblock(plan, out.reshape(groups, heads, rows, dim).to(query.dtype))


def sdpa_page_attention(plan: AttentionPlan, query, key_pool, value_pool, scaling: float) -> torch.Tensor:
    """Same as `reference_attention`, through torch's fused SDPA kernels."""
    keys, values, mask = gather_pages(plan, key_pool, value_pool)
    q = query_blocks(plan, query)
    out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask[:, None], scale=scaling, enable_gqa=True)
    return unblock(plan, out)


def _triton_page_attention(plan, query, key_pool, value_pool, scaling):
    """Triton kernels reading pages in place (imported lazily: Triton exists only on GPU hosts): the decode kernel
    for one new token, the prefill kernel otherwise. They have no backward, so a forward that needs gradients
    takes the SDPA path, which computes the same attention."""
    if plan.decode_token is not None:
        from .triton_decode import paged_decode_attention

        return paged_decode_attention(plan, query, key_pool, value_pool, scaling)
    if query.requires_grad:
        return sdpa_page_attention(plan, query, key_pool, value_pool, scaling)
    from .triton_prefill import paged_prefill_attention

    return paged_prefill_attention(plan, query, key_pool, value_pool, scaling)


BACKENDS = {"reference": reference_attention, "sdpa": sdpa_page_attention, "triton": _triton_page_attention}


def retrolm_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """The function registered as attn_implementation="retrolm"."""
    plan = kwargs.pop("retrolm_plan", None)
    observer = kwargs.pop("retrolm_observer", None)  # training reads full attention's page mass through this
    if observer is not None:
        observer(module, query, key, query.shape[-1] ** -0.5 if scaling is None else scaling)
    if plan is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    return page_attention(plan, module, query, key, value, scaling), None


@torch.compiler.disable  # inside compiled layers (layer_compile.py) this runs as written: the plan is a host object
def page_attention(plan: AttentionPlan, module, query, key_pool, value_pool, scaling: float) -> torch.Tensor:
    """`module`'s page attention under `plan` (the training-free scorer first chooses this layer's pages)."""
    plan.attention_calls += 1
    if plan.attended is None:  # the training-free scorer: this layer chooses its pages with its own queries
        plan = select_for_layer(plan, module.layer_idx, query, key_pool, scaling)
    return BACKENDS[plan.backend](plan, query, key_pool, value_pool, scaling)


def register_attention() -> str:
    """Register RetroLM's attention (and, for plan-less calls, SDPA's mask) under the name "retrolm"."""
    AttentionInterface.register(ATTENTION_NAME, retrolm_attention)
    AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)
    return ATTENTION_NAME
