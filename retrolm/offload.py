"""Offloaded K/V: every page in host memory, a budget of recently used pages on the GPU.

With `offload_kv=True` each layer's K/V pool lives in host memory, which holds every page, and the model's
device keeps `offload_device_pages` page slots per layer: a cache of the pages recent forwards attended to.
One slot table serves all layers (the trained scorer picks one set of pages per forward for every layer):
- `PageSlots.assign(needed)` maps a forward's pages to slots on the device: resident pages keep their slot,
  missing pages take the least recently used slots this forward does not need. Fixed shapes and no host read,
  so a graph-captured decode step runs it as well as an eager forward;
- each layer writes its new K/V to the host pool and to its pages' slots, and copies the missing pages in
  (`fetch_pages`). On CUDA the GPU reads them itself from the page-locked host pool over PCIe (a Triton kernel
  that skips pages already resident): no host-side gather, no staging buffer, nothing for the CPU to do.
On CUDA the host pool is registered with CUDA (page-locked, mapped) and viewed as a CUDA tensor through unified
virtual addressing, so kernels read and write it in place (`bench/results/decode/probe_host_pages.json`: a
gather of random pages through such a view runs at 38-45 GB/s on an H200 host, the host gather plus copy that
RetroLM's first offload tier used at 5 GB/s).
"""
from __future__ import annotations

import weakref

import torch

from .errors import RetroLMError

_HOST_REGISTER_PORTABLE_MAPPED = 1 | 2  # cudaHostRegisterPortable | cudaHostRegisterMapped


class _CudaView:
    """`__cuda_array_interface__` of a registered host tensor: torch.as_tensor makes a CUDA tensor of it that
    reads and writes the host memory in place. Holds the host tensor, so the memory outlives every view."""

    def __init__(self, host: torch.Tensor):
        self.host = host
        self.__cuda_array_interface__ = {
            "data": (host.data_ptr(), False), "shape": tuple(host.shape),
            "typestr": {torch.float16: "<f2", torch.int16: "<i2", torch.float32: "<f4"}[host.dtype],
            "strides": tuple(s * host.element_size() for s in host.stride()), "version": 3,
        }


def host_pool(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A zeroed host tensor of `shape` and the view through which `device` reads and writes it: the tensor
    itself on the CPU; on CUDA a CUDA tensor over the same memory, page-locked with cudaHostRegister (no
    power-of-two rounding as in torch's pinned allocator: a 1M-token pool is 57 GiB and must not become 64)."""
    host = torch.zeros(shape, dtype=dtype)  # zeros: unwritten rows are read (masked) and must not hold NaNs
    if device.type != "cuda":
        return host, host
    nbytes = host.numel() * host.element_size()
    with torch.cuda.device(device):
        cudart = torch.cuda.cudart()
        error = int(cudart.cudaHostRegister(host.data_ptr(), nbytes, _HOST_REGISTER_PORTABLE_MAPPED))
        if error != 0:
            raise RetroLMError(f"offload_kv: could not page-lock {nbytes / 2**30:.1f} GiB of host memory for the K/V "
                               f"pool (cudaError {error}); free host memory or lower the capacity (prompt + "
                               "max_new_tokens).")
        weakref.finalize(host, cudart.cudaHostUnregister, host.data_ptr())
        bf16 = dtype == torch.bfloat16  # the interface has no bfloat16 type string: view 2-byte words, then cast
        view = torch.as_tensor(_CudaView(host.view(torch.int16) if bf16 else host), device=device)
    return host, view.view(torch.bfloat16) if bf16 else view


class PageSlots:
    """Which page each of `slots` device slots holds, shared by all layers; LRU replacement on the device.

    slot_of_page [pages + 1]: slot holding each page, -1 if none (last entry: a sink for masked writes);
    page_of_slot [slots + 1]: page in each slot, -1 if free (last entry: the trash slot, which takes the writes
    of padding entries); last_used [slots + 1]: the assign() call that last needed each slot.
    """

    def __init__(self, slots: int, pages: int, device: torch.device):
        self.slots, self.pages = slots, pages
        self.slot_of_page = torch.full((pages + 1,), -1, dtype=torch.long, device=device)
        self.page_of_slot = torch.full((slots + 1,), -1, dtype=torch.long, device=device)
        self.last_used = torch.full((slots + 1,), -1, dtype=torch.long, device=device)
        self.clock = torch.zeros(1, dtype=torch.long, device=device)
        self.fetched = torch.zeros(1, dtype=torch.long, device=device)  # pages made resident so far (in every layer)

    def clear(self) -> None:
        """Forget every resident page: the next forward copies in all it needs (frees nothing; for measuring)."""
        self.slot_of_page.fill_(-1)
        self.page_of_slot.fill_(-1)
        self.last_used.fill_(-1)

    def check_fits(self, pages_needed: int) -> None:
        if pages_needed > self.slots:
            raise RetroLMError(
                f"offload_kv: one forward needs {pages_needed} pages on the device but offload_device_pages is "
                f"{self.slots}. Raise offload_device_pages (each page slot costs page_size x kv_heads x head_dim x 4 "
                "bytes per layer in bf16) or lower prefill_chunk_pages / top_k."
            )

    def assign(self, needed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """needed [W]: distinct page ids, -1 padded, at most `slots` of them valid. Makes every needed page resident
        in the tables.

        Returns (fetch_pages [W], fetch_slots [W]): the pages to copy in from the host and the slot each goes to
        (-1 / the trash slot for entries already resident or padding). Look slots up in `slot_of_page` after.
        """
        trash_slot, trash_page = self.slots, self.pages
        valid = needed >= 0
        current = torch.where(valid, self.slot_of_page[needed.clamp(min=0)], -1)
        missing = valid & (current < 0)
        taken = torch.zeros(self.slots + 1, dtype=torch.bool, device=needed.device)
        taken.index_fill_(0, torch.where(current >= 0, current, trash_slot), True)
        # least recently used first; slots this forward needs are never victims (W <= slots leaves enough)
        age = torch.where(taken[:-1], torch.iinfo(torch.long).max, self.last_used[:-1])
        victims = age.topk(min(needed.numel(), self.slots), largest=False).indices  # ascending last use
        rank = (missing.cumsum(0) - 1).clamp(min=0, max=victims.numel() - 1)
        victim = torch.where(missing, victims[rank], trash_slot)
        evicted = self.page_of_slot[victim]
        self.slot_of_page.index_copy_(0, torch.where(missing & (evicted >= 0), evicted, trash_page),
                                      torch.full_like(victim, -1))
        self.slot_of_page.index_copy_(0, torch.where(missing, needed, trash_page), victim)
        self.page_of_slot.index_copy_(0, victim, torch.where(missing, needed, -1))
        slot = torch.where(missing, victim, current)
        self.last_used.index_copy_(0, torch.where(valid, slot, trash_slot), self.clock.expand_as(slot))
        self.clock += 1
        self.fetched += missing.sum()
        return torch.where(missing, needed, -1), victim

    def slot_rows(self, positions: torch.Tensor, page_size: int) -> torch.Tensor:
        """Rows of the device slot pool holding `positions` (their pages must be resident)."""
        return self.slot_of_page[positions // page_size] * page_size + positions % page_size


def fetch_pages(host_keys, host_values, keys, values, pages, slots, page_size: int) -> None:
    """Copy pages [W] of the host pools into `slots` [W] of the device pools (entries with page -1 copy nothing).
    Pools: [1, kv_heads, rows, D]; on CUDA the host pools are their CUDA views (`host_pool`)."""
    if keys.device.type == "cuda":
        from .triton_fetch import fetch_pages_kernel_launch

        fetch_pages_kernel_launch(host_keys, host_values, keys, values, pages, slots, page_size)
        return
    offsets = torch.arange(page_size, device=pages.device)
    source = (pages.clamp(min=0)[:, None] * page_size + offsets).flatten()
    target = (slots[:, None] * page_size + offsets).flatten()  # padding entries target the trash slot
    keys.index_copy_(2, target, host_keys.index_select(2, source))
    values.index_copy_(2, target, host_values.index_select(2, source))
