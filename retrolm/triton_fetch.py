"""Triton copy of missing pages from the page-locked host pool into device slots (offload.py).

Program (entry, kv_head) copies one page of one head, keys and values, when the entry's page is >= 0, and
returns at once otherwise, so a graph-captured decode step can launch it at every step for a fixed number of
entries and pay PCIe traffic only for the pages its refresh actually brought in.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _fetch_pages_kernel(HostK, HostV, K, V, Pages, Slots,
                        stride_hh, stride_ht, stride_dh, stride_dt,
                        PAGE: tl.constexpr, DIM: tl.constexpr, DIM_PAD: tl.constexpr, BLOCK_T: tl.constexpr):
    entry = tl.program_id(0)
    head = tl.program_id(1).to(tl.int64)  # 64-bit offsets: a 1M-token pool passes 2**31 elements
    page = tl.load(Pages + entry)
    if page >= 0:
        slot = tl.load(Slots + entry)
        d = tl.arange(0, DIM_PAD)
        for start in range(0, PAGE, BLOCK_T):
            t = start + tl.arange(0, BLOCK_T)
            ok = (t < PAGE)[:, None] & (d < DIM)[None, :]
            source = head * stride_hh + (page * PAGE + t)[:, None] * stride_ht + d[None, :]
            target = head * stride_dh + (slot * PAGE + t)[:, None] * stride_dt + d[None, :]
            tl.store(K + target, tl.load(HostK + source, mask=ok), mask=ok)
            tl.store(V + target, tl.load(HostV + source, mask=ok), mask=ok)


def fetch_pages_kernel_launch(host_keys, host_values, keys, values, pages, slots, page_size: int) -> None:
    """See offload.fetch_pages. Pools [1, kv_heads, rows, D], unit last stride, K and V laid out alike."""
    if keys.stride(-1) != 1 or host_keys.stride() != host_values.stride() or keys.stride() != values.stride():
        raise ValueError("internal: fetch_pages needs contiguous head dims and matching K/V pool layouts")
    dim = keys.shape[-1]
    dim_pad = triton.next_power_of_2(dim)
    block_t = min(triton.next_power_of_2(page_size), max(1, 8192 // dim_pad))
    _fetch_pages_kernel[(pages.numel(), keys.shape[1])](
        host_keys, host_values, keys, values, pages, slots,
        host_keys.stride(1), host_keys.stride(2), keys.stride(1), keys.stride(2),
        PAGE=page_size, DIM=dim, DIM_PAD=dim_pad, BLOCK_T=block_t,
    )
