"""Probe (issue 12, item 3): can the GPU read and write pinned host pages in place, and how fast?

Measures on one GPU, printed and written as JSON:
- a CUDA view of a pinned host tensor (`__cuda_array_interface__`, unified addressing): exact index_select /
  index_copy_ through it, and their bandwidth when gathering random pages (GPU pulls over PCIe, no host work);
- the same gather captured in a CUDA graph;
- bulk DMA (pinned -> device `copy_`) bandwidth, and the host-gather-then-copy path RetroLM's offload used;
- how long pinning a large host buffer takes.
"""
import argparse
import json
import os
import time

import torch


class _HostView:
    def __init__(self, tensor):
        self.__cuda_array_interface__ = {"data": (tensor.data_ptr(), False), "shape": tuple(tensor.shape),
                                         "typestr": "<f2", "strides": None, "version": 3}


def timed(fn, repeat=10):
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeat


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=os.environ.get("OUT", "/tmp/out"))
    parser.add_argument("--pool-gib", type=float, default=2.0)
    args = parser.parse_args()
    out = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__}
    P, heads, dim = 128, 4, 128
    tokens = int(args.pool_gib * 2**30 / (heads * dim * 2))
    tokens -= tokens % P
    start = time.perf_counter()
    host = torch.empty(1, heads, tokens, dim, dtype=torch.float16, pin_memory=True)
    out["pin_s_per_gib"] = (time.perf_counter() - start) / args.pool_gib
    print("pinned", out, flush=True)
    start = time.perf_counter()
    chunk = torch.randn(2**26, dtype=torch.float16, device="cuda")
    flat = host.view(-1)
    for first in range(0, flat.numel(), chunk.numel()):
        piece = flat[first : first + chunk.numel()]
        piece.copy_(chunk[: piece.numel()])
    out["host_fill_s"] = time.perf_counter() - start
    print("filled", out, flush=True)
    try:
        alias = torch.as_tensor(_HostView(host), device="cuda")
        out["alias"] = str(alias.device)
        print("alias", out, flush=True)
    except Exception as error:  # noqa: BLE001 (a probe reports what happened)
        out["alias_error"] = repr(error)
        alias = None
    pages = tokens // P
    for count in (16, 19 * 28, 4096):
        chosen = torch.randperm(pages, device="cuda")[:count]
        rows = (chosen[:, None] * P + torch.arange(P, device="cuda")).flatten()
        if alias is not None:
            got = alias.index_select(2, rows)
            want = host.index_select(2, rows.cpu()).cuda()
            out[f"alias_gather_exact_{count}"] = bool(torch.equal(got, want))
            seconds = timed(lambda: alias.index_select(2, rows))
            out[f"alias_gather_gbps_{count}"] = got.numel() * 2 / seconds / 1e9
        seconds = timed(lambda: host.index_select(2, rows.cpu()).pin_memory().to("cuda", non_blocking=True), 3)
        out[f"host_gather_copy_gbps_{count}"] = count * P * heads * dim * 2 / seconds / 1e9
        print(count, out, flush=True)
    block = host.view(-1)[: 2**28]  # contiguous 512 MiB (a per-head token slice would be a strided copy)
    device_block = torch.empty_like(block, device="cuda")
    seconds = timed(lambda: device_block.copy_(block, non_blocking=True))
    out["dma_h2d_gbps"] = block.numel() * 2 / seconds / 1e9
    seconds = timed(lambda: block.copy_(device_block, non_blocking=True))
    out["dma_d2h_gbps"] = block.numel() * 2 / seconds / 1e9
    if alias is not None:
        new = torch.randn(1, heads, 1, dim, dtype=torch.float16, device="cuda")
        row = torch.tensor([P * 7 + 3], device="cuda")
        alias.index_copy_(2, row, new)
        torch.cuda.synchronize()
        out["alias_write_exact"] = bool(torch.equal(host[:, :, P * 7 + 3 : P * 7 + 4], new.cpu()))
        chosen = torch.randperm(pages, device="cuda")[: 19 * 28]
        rows = (chosen[:, None] * P + torch.arange(P, device="cuda")).flatten()
        dest = torch.empty(1, heads, rows.numel(), dim, dtype=torch.float16, device="cuda")
        graph = torch.cuda.CUDAGraph()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            torch.index_select(alias, 2, rows, out=dest)
        torch.cuda.current_stream().wait_stream(stream)
        with torch.cuda.graph(graph):
            torch.index_select(alias, 2, rows, out=dest)
        rows.copy_((torch.randperm(pages, device="cuda")[: 19 * 28][:, None] * P
                    + torch.arange(P, device="cuda")).flatten())
        graph.replay()
        torch.cuda.synchronize()
        out["graph_gather_exact"] = bool(torch.equal(dest.cpu(), host.index_select(2, rows.cpu())))
        out["graph_gather_ms"] = timed(graph.replay) * 1e3
    try:
        import triton
        import triton.language as tl

        @triton.jit
        def _copy(src, dst, n, BLOCK: tl.constexpr):
            offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
            tl.store(dst + offsets, tl.load(src + offsets, mask=offsets < n), mask=offsets < n)

        n = 1 << 20
        dst = torch.empty(n, dtype=torch.float16, device="cuda")
        _copy[(n // 1024,)](host.view(-1), dst, n, BLOCK=1024)
        torch.cuda.synchronize()
        out["triton_reads_pinned"] = bool(torch.equal(dst.cpu(), host.view(-1)[:n]))
    except Exception as error:  # noqa: BLE001
        out["triton_error"] = repr(error)[:300]
    print(json.dumps(out, indent=1))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "probe_host_pages.json"), "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
