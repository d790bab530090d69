"""Triton fast path for sparse decoding: one query token attends to its pages, read in place from the pool.

Split-K ("flash decoding") over pages: program (kv_head, slot) scores the query heads that share
`kv_head` against one page (an attended page, or the own page up to the current token), keeping an online
softmax; a second kernel merges each query head's per-page partials. In contiguous position mode a retrieved
page must be read as if its keys sat `shift` positions later; rather than rotating the page's keys, the
kernel rotates the query by -shift (RoPE rotations compose), which costs D/2 sines instead of P*D/2.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .planner import AttentionPlan


def dot_side(n: int) -> int:
    """A block side of at least n for tl.dot, which needs every side a power of two >= 16."""
    return max(16, triton.next_power_of_2(n))


def dot_precision(dtype: torch.dtype) -> str | None:
    """tl.dot's input precision: full float32 for float32 models (tl.dot would round them to tf32 by default, a
    1e-3 relative error the plain model does not make); None (Triton's default) for bf16/fp16, exact either way."""
    return "ieee" if dtype == torch.float32 else None


@triton.jit
def _page_decode_kernel(
    Q, K, V, Attended, Shift, InvFreq, Own, OutM, OutL, OutAcc,
    num_attended, scaling,
    stride_qh, stride_kh, stride_kt, stride_vh, stride_vt,
    GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, HALF: tl.constexpr, HALF_PAD: tl.constexpr,
    DIM_PAD: tl.constexpr, PAGE: tl.constexpr, BLOCK_N: tl.constexpr, HAS_SHIFT: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    kv_head = tl.program_id(0)
    slot = tl.program_id(1)
    slots = tl.num_programs(1)
    g = tl.arange(0, GROUP_PAD)
    d = tl.arange(0, HALF_PAD)
    g_ok = g < GROUP
    d_ok = d < HALF

    q_rows = Q + (kv_head * GROUP + g)[:, None] * stride_qh
    q1 = tl.load(q_rows + d[None, :], mask=g_ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)
    q2 = tl.load(q_rows + HALF + d[None, :], mask=g_ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)

    is_own = slot >= num_attended
    own_page = tl.load(Own)  # read on the device, so a captured CUDA graph serves every step
    own_len = tl.load(Own + 1)
    page = tl.load(Attended + slot, mask=slot < num_attended, other=-1)
    valid = tl.where(is_own, own_len, tl.where(page >= 0, PAGE, 0))
    page = tl.where(is_own, own_page, tl.maximum(page, 0))
    if HAS_SHIFT:
        shift = tl.load(Shift + slot, mask=slot < num_attended, other=0).to(tl.float32)
        angle = -shift * tl.load(InvFreq + d, mask=d_ok, other=0.0)
        c = tl.cos(angle)[None, :]
        s = tl.sin(angle)[None, :]
        q1, q2 = q1 * c - q2 * s, q2 * c + q1 * s

    dv = tl.arange(0, DIM_PAD)
    m = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    l = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, DIM_PAD], tl.float32)
    k_base = K + kv_head * stride_kh + page * PAGE * stride_kt
    v_base = V + kv_head * stride_vh + page * PAGE * stride_vt
    for start in range(0, PAGE, BLOCK_N):
        t = start + tl.arange(0, BLOCK_N)
        t_ok = (t < valid) & (t < PAGE)
        k_ptr = k_base + t[:, None] * stride_kt + d[None, :]
        k1 = tl.load(k_ptr, mask=t_ok[:, None] & d_ok[None, :], other=0.0)
        k2 = tl.load(k_ptr + HALF, mask=t_ok[:, None] & d_ok[None, :], other=0.0)
        scores = (tl.dot(q1.to(k1.dtype), tl.trans(k1), input_precision=DOT_PRECISION)
                  + tl.dot(q2.to(k2.dtype), tl.trans(k2), input_precision=DOT_PRECISION))
        scores = tl.where(t_ok[None, :], scores * scaling, float("-inf"))  # [GROUP_PAD, BLOCK_N]
        m_new = tl.maximum(m, tl.max(scores, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp(scores - m_safe[:, None])
        alpha = tl.exp(m - m_safe)
        l = l * alpha + tl.sum(p, axis=1)
        v = tl.load(v_base + t[:, None] * stride_vt + dv[None, :],
                    mask=t_ok[:, None] & (dv < 2 * HALF)[None, :], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m = m_new

    row = (kv_head * slots + slot) * GROUP_PAD + g
    tl.store(OutM + row, m)
    tl.store(OutL + row, l)
    tl.store(OutAcc + row[:, None] * DIM_PAD + dv[None, :], acc)


@triton.jit
def _merge_pages_kernel(OutM, OutL, OutAcc, Out, SLOTS: tl.constexpr, GROUP: tl.constexpr, GROUP_PAD: tl.constexpr,
                        DIM: tl.constexpr, DIM_PAD: tl.constexpr):
    """One query head: merge its per-page partials (max, sum, weighted values) into the softmax output."""
    head = tl.program_id(0)
    kv_head = head // GROUP
    g = head % GROUP
    d = tl.arange(0, DIM_PAD)
    m_run = tl.full([], float("-inf"), tl.float32)
    l_run = tl.zeros([], tl.float32)
    acc = tl.zeros([DIM_PAD], tl.float32)
    for slot in range(0, SLOTS):
        row = (kv_head * SLOTS + slot) * GROUP_PAD + g
        m = tl.load(OutM + row)
        m_new = tl.maximum(m_run, m)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # no page seen yet: both weights are 0
        alpha = tl.exp(m_run - m_safe)
        beta = tl.exp(m - m_safe)
        l_run = l_run * alpha + tl.load(OutL + row) * beta
        acc = acc * alpha + tl.load(OutAcc + row * DIM_PAD + d) * beta
        m_run = m_new
    tl.store(Out + head * DIM + d, (acc / l_run).to(Out.dtype.element_ty), mask=d < DIM)


def paged_decode_attention(plan: AttentionPlan, query, key_pool, value_pool, scaling: float) -> torch.Tensor:
    """query [1, H, 1, D] of one decode token; pools [1, kv_heads, capacity, D]. Returns [1, 1, H, D]."""
    if plan.decode_token is None:
        raise ValueError("the Triton decode path handles one new token; use the sdpa backend for prefill")
    heads, dim = query.shape[1], query.shape[-1]
    kv_heads = key_pool.shape[1]
    group = heads // kv_heads
    if "triton" not in plan.scratch:  # once per forward, shared by all layers
        has_shift = plan.key_shift is not None
        attended = plan.attended[0].to(torch.int32).contiguous()
        plan.scratch["triton"] = (
            attended,
            plan.key_shift[0].to(torch.int32).contiguous() if has_shift else attended,
            plan.inv_freq.to(query.device, torch.float32).contiguous() if has_shift else attended,
            has_shift,
            # (own page, tokens of it to read), from the plan's device tensors rather than host ints
            torch.stack([plan.query_pages[0], plan.q_offset[0] + 1]).to(torch.int32),
        )
    attended, shift, inv_freq, has_shift, own = plan.scratch["triton"]
    slots = attended.numel() + 1
    half = dim // 2
    group_pad, half_pad = dot_side(group), dot_side(half)
    dim_pad = 2 * half_pad
    out_m = torch.empty(kv_heads, slots, group_pad, device=query.device, dtype=torch.float32)
    out_l = torch.empty_like(out_m)
    out_acc = torch.empty(kv_heads, slots, group_pad, dim_pad, device=query.device, dtype=torch.float32)
    q = query[0, :, 0].contiguous()  # [H, D]
    _page_decode_kernel[(kv_heads, slots)](
        q, key_pool, value_pool, attended, shift, inv_freq, own, out_m, out_l, out_acc,
        slots - 1, float(scaling),
        q.stride(0), key_pool.stride(1), key_pool.stride(2), value_pool.stride(1), value_pool.stride(2),
        GROUP=group, GROUP_PAD=group_pad, HALF=half, HALF_PAD=half_pad, DIM_PAD=dim_pad, PAGE=plan.page_size,
        BLOCK_N=min(64, dot_side(plan.page_size)), HAS_SHIFT=has_shift, DOT_PRECISION=dot_precision(query.dtype),
    )
    out = torch.empty(heads, dim, device=query.device, dtype=query.dtype)
    # one launch rather than a torch reduction's ~10 per layer: in a graph-captured step these small kernels,
    # not the bytes they move, were a tenth of the step (bench/results/decode/profile_decode.md)
    _merge_pages_kernel[(heads,)](out_m, out_l, out_acc, out, SLOTS=slots, GROUP=group, GROUP_PAD=group_pad, DIM=dim,
                                  DIM_PAD=dim_pad)
    return out[None, None]
