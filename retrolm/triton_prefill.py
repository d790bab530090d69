"""Triton fast path for page-sparse prefill: each page of new tokens attends to its pages, read in place.

The gather path (attention.gather_pages) copies every group's attended pages out of the pool, rotates the
copies' keys to their packed positions and concatenates a mask before SDPA: on the Llama-3-8B shape that is
~40% of a prefill chunk's GPU time (bench/results/decode/profile_prefill.md). Here program (group, head,
row block) runs a flash-attention loop over the group's attended pages and then its own page (causal), loading
each page's keys and values straight from the pool; in contiguous position mode it rotates its query tile by
-shift for each attended page instead of rotating the page's keys (RoPE rotations compose), as the decode
kernel does. No copy of the pool, no mask tensor.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .attention import query_blocks, unblock
from .planner import AttentionPlan
from .triton_decode import dot_precision, dot_side


@triton.jit
def _page_prefill_kernel(
    Q, K, V, Out, Attended, Shift, QueryPages, RowOffsets, InvFreq,
    rows, scaling,
    stride_qg, stride_qh, stride_qr, stride_kh, stride_kt, stride_vh, stride_vt, stride_og, stride_oh, stride_or,
    NUM_SLOTS: tl.constexpr, GROUP: tl.constexpr, HALF: tl.constexpr, HALF_PAD: tl.constexpr, DIM_PAD: tl.constexpr,
    PAGE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HAS_SHIFT: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    g = tl.program_id(0)
    h = tl.program_id(1)
    kv_head = h // GROUP
    r = tl.program_id(2) * BLOCK_M + tl.arange(0, BLOCK_M)
    r_ok = r < rows
    d = tl.arange(0, HALF_PAD)
    d_ok = d < HALF
    dv = tl.arange(0, DIM_PAD)
    dv_ok = dv < 2 * HALF

    q_rows = Q + g * stride_qg + h * stride_qh + r[:, None] * stride_qr
    q1 = tl.load(q_rows + d[None, :], mask=r_ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)
    q2 = tl.load(q_rows + HALF + d[None, :], mask=r_ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)
    row_offset = tl.load(RowOffsets + g * rows + r, mask=r_ok, other=0)  # each row's offset in its own page
    own_page = tl.load(QueryPages + g)
    if HAS_SHIFT:
        inv_freq = tl.load(InvFreq + d, mask=d_ok, other=0.0)

    m = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, DIM_PAD], tl.float32)
    for slot in range(0, NUM_SLOTS + 1):  # the attended pages, then the group's own page
        # each row of Attended / Shift ends with a spare column, so slot NUM_SLOTS reads in bounds, unmasked
        attended = tl.load(Attended + g * (NUM_SLOTS + 1) + slot)
        page = tl.where(slot == NUM_SLOTS, own_page, attended)
        if page >= 0:  # an empty slot (rows are padded to a power of two) costs no work
            qa = q1
            qb = q2
            if HAS_SHIFT:
                shift = tl.load(Shift + g * (NUM_SLOTS + 1) + slot).to(tl.float32)
                angle = -shift * inv_freq
                c = tl.cos(angle)[None, :]
                s = tl.sin(angle)[None, :]
                qa = q1 * c - q2 * s
                qb = q2 * c + q1 * s
            k_base = K + kv_head * stride_kh + page * PAGE * stride_kt
            v_base = V + kv_head * stride_vh + page * PAGE * stride_vt
            for start in range(0, PAGE, BLOCK_N):
                t = start + tl.arange(0, BLOCK_N)
                t_ok = t < PAGE
                k_ptr = k_base + t[:, None] * stride_kt + d[None, :]
                k1 = tl.load(k_ptr, mask=t_ok[:, None] & d_ok[None, :], other=0.0)
                k2 = tl.load(k_ptr + HALF, mask=t_ok[:, None] & d_ok[None, :], other=0.0)
                scores = (tl.dot(qa.to(k1.dtype), tl.trans(k1), input_precision=DOT_PRECISION)
                          + tl.dot(qb.to(k2.dtype), tl.trans(k2), input_precision=DOT_PRECISION))
                own = (t[None, :] <= row_offset[:, None]) & (slot == NUM_SLOTS)  # own page: causal
                visible = t_ok[None, :] & (own | (slot < NUM_SLOTS))
                scores = tl.where(visible, scores * scaling, float("-inf"))
                m_new = tl.maximum(m, tl.max(scores, axis=1))
                m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
                p = tl.exp(scores - m_safe[:, None])
                alpha = tl.exp(m - m_safe)
                l = l * alpha + tl.sum(p, axis=1)
                v = tl.load(v_base + t[:, None] * stride_vt + dv[None, :], mask=t_ok[:, None] & dv_ok[None, :],
                            other=0.0)
                acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
                m = m_new
    out = acc / l[:, None]
    o_ptr = Out + g * stride_og + h * stride_oh + r[:, None] * stride_or + dv[None, :]
    tl.store(o_ptr, out.to(Out.dtype.element_ty), mask=r_ok[:, None] & dv_ok[None, :])


def paged_prefill_attention(plan: AttentionPlan, query, key_pool, value_pool, scaling: float) -> torch.Tensor:
    """query [1, H, q, D] of a forward's new tokens; pools [1, kv_heads, capacity, D]. Returns [1, q, H, D]."""
    heads, dim = query.shape[1], query.shape[-1]
    kv_heads = key_pool.shape[1]
    if "triton_prefill" not in plan.scratch:  # once per forward (per layer under the training-free scorer)
        has_shift = plan.key_shift is not None
        # the slot count is a compile-time constant: padded to a power of two (the kernel skips empty slots), so
        # the widths the first chunks of a prompt have (1, 2, 3, ... attended pages) share a few compiled kernels;
        # one spare column more lets the kernel read every slot unmasked
        width = plan.attended.shape[1]
        pad_slots = (0, (triton.next_power_of_2(width) if width else 0) - width + 1)
        attended = torch.nn.functional.pad(plan.attended, pad_slots, value=-1).to(torch.int32).contiguous()
        plan.scratch["triton_prefill"] = (
            attended,
            torch.nn.functional.pad(plan.key_shift, pad_slots).to(torch.int32).contiguous() if has_shift else attended,
            plan.inv_freq.to(query.device, torch.float32).contiguous() if has_shift else attended,
            has_shift,
            plan.query_pages.to(torch.int32).contiguous(),
            plan.row_offsets.to(torch.int32).contiguous(),
        )
    attended, shift, inv_freq, has_shift, query_pages, row_offsets = plan.scratch["triton_prefill"]
    q = query_blocks(plan, query)  # [G, H, R, D]
    out = torch.empty_like(q)
    groups, _, rows, _ = q.shape
    half = dim // 2
    half_pad = dot_side(half)
    block_m = min(64, dot_side(rows))
    grid = (groups, heads, triton.cdiv(rows, block_m))
    _page_prefill_kernel[grid](
        q, key_pool, value_pool, out, attended, shift, query_pages, row_offsets, inv_freq,
        rows, float(scaling),
        q.stride(0), q.stride(1), q.stride(2), key_pool.stride(1), key_pool.stride(2), value_pool.stride(1),
        value_pool.stride(2), out.stride(0), out.stride(1), out.stride(2),
        NUM_SLOTS=attended.shape[1] - 1, GROUP=heads // kv_heads, HALF=half, HALF_PAD=half_pad, DIM_PAD=2 * half_pad,
        PAGE=plan.page_size, BLOCK_M=block_m, BLOCK_N=min(64, dot_side(plan.page_size)), HAS_SHIFT=has_shift,
        DOT_PRECISION=dot_precision(query.dtype),
    )
    return unblock(plan, out)
