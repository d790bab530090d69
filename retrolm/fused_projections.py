"""One matrix product for the projections that read the same input, inside compiled decode steps (`decode_compile`).

At batch 1 every projection is a matrix-vector product that reads its weight once. A Llama / Mistral / Qwen2 layer
runs q_proj, k_proj and v_proj on one input and gate_proj and up_proj on another; on an H200 the small k and v
products run split-K at a fraction of the bandwidth, each with a reduce kernel of its own
(bench/results/decode/profile_decode_compiled.md). One product over the stacked weights reads the same bytes in one
better-shaped kernel.

No second copy of the weights: the first time, a group's weights (and biases) are stacked into one buffer, one group
at a time, and the parameters become views of its rows (`param.data = rows`). They stay the same Parameter objects
(optimizers, peft and ties keep working) and write through to the buffer; state dicts hold the views, which
`save_pretrained` writes as separate tensors. Later blocks find the views in place and only check them; whatever
gave a parameter a storage of its own (`.to(dtype)`, `load_state_dict(assign=True)`) makes the next block stack that
group again.

The attention and MLP forwards stay transformers' own, so RetroLM's cache update and page attention run exactly as
without fusion; only the projections' forwards are replaced while the block runs. The first projection of a group
computes the whole product and keeps it until the last one has taken its rows; a projection called on another
tensor computes its own rows' product. So each projection returns `F.linear(x, weight, bias)` of its own input up
to matmul rounding, whatever the module around it does. Modules whose projections are not plain `nn.Linear`s
(a peft LoRA layer counts by its base layer), differ in input width, dtype, device or bias, or view a buffer of
someone else's, are left alone.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))  # projections of one input, in call order


class FusedProjections:
    """The stacked weights of a group of linear layers and the product of the step in flight."""

    def __init__(self, linears: list[nn.Linear]):
        self.moved = not _adjacent([linear.weight for linear in linears])  # stacked now, not found stacked
        with torch.no_grad():
            self.weight = _stacked([linear.weight for linear in linears])  # [sum of out_features, in_features]
            self.bias = None if linears[0].bias is None else _stacked([linear.bias for linear in linears])
        self.sizes = [linear.out_features for linear in linears]
        self.starts = [sum(self.sizes[:i]) for i in range(len(linears))]
        self.input = self.outputs = None

    def project(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """Linear layer `index` of the group applied to `x`."""
        if index == 0:
            self.input, self.outputs = x, F.linear(x, self.weight, self.bias).split(self.sizes, dim=-1)
        elif x is not self.input:
            rows = slice(self.starts[index], self.starts[index] + self.sizes[index])
            return F.linear(x, self.weight[rows], None if self.bias is None else self.bias[rows])
        output = self.outputs[index]
        if index == len(self.sizes) - 1:
            self.input = self.outputs = None  # no activation outlives the step
        return output


class _Projection:
    """The forward installed on one linear layer of a group. A bound method of a small object, not a partial: dynamo
    guards a partial by identity, so every layer would compile a graph of its own."""

    def __init__(self, group: FusedProjections, index: int):
        self.group, self.index = group, index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.group.project(self.index, x)


@contextlib.contextmanager
def fused_projections(layers):
    """Within this block the q/k/v and gate/up projections of `layers` (decoder layers) that can be fused run as one
    product per group. Yields the names of the fused modules ("3.self_attn", "3.mlp": index in `layers`, module)."""
    installed, names, moved_on_cuda = [], [], False
    try:
        for index, layer in enumerate(layers):
            for name, module in layer.named_modules():
                for group in GROUPS:
                    linears = [_plain_linear(getattr(module, attribute, None)) for attribute in group]
                    if not _fusable(linears):
                        continue
                    fused = FusedProjections(linears)
                    for position, linear in enumerate(linears):
                        linear.forward = _Projection(fused, position).forward
                        installed.append(linear)
                    names.append(f"{index}.{name}" if name else str(index))
                    moved_on_cuda |= fused.moved and fused.weight.is_cuda
        if moved_on_cuda:
            # each stacked buffer is larger than any of the blocks its weights left, so the caching allocator would
            # keep those blocks reserved, unused, as large as the weights moved
            torch.cuda.empty_cache()
        yield names
    finally:
        for linear in installed:
            del linear.forward  # the class's forward again


def _plain_linear(module):
    """The `nn.Linear` computing `module`'s base product (peft's LoRA layers call their base layer on the same
    input first), or None."""
    module = getattr(module, "base_layer", module)
    return module if type(module) is nn.Linear else None


def _fusable(linears: list) -> bool:
    """Plain linear layers of one input width, dtype and device, all with or all without a bias, whose weights can
    be stacked."""
    if any(linear is None or "forward" in vars(linear) for linear in linears):
        return False  # missing, another kind of layer, or a forward someone else installed
    first = linears[0]
    for linear in linears:
        if linear.in_features != first.in_features or (linear.bias is None) != (first.bias is None) \
                or linear.weight.shape != (linear.out_features, linear.in_features):  # a partitioned placeholder
            return False
        if not all(_plain(t) and t.dtype == first.weight.dtype and t.device == first.weight.device
                   for t in (linear.weight, linear.bias) if t is not None):
            return False
    return _stackable([linear.weight for linear in linears]) \
        and (first.bias is None or _stackable([linear.bias for linear in linears]))


def _plain(tensor: torch.Tensor) -> bool:
    """A dense tensor with its own values here (not meta, not a subclass such as DTensor or a quantized weight)."""
    return type(tensor.data) is torch.Tensor and tensor.layout == torch.strided and not tensor.is_meta


def _stackable(tensors: list[torch.Tensor]) -> bool:
    """Stacked already, or each tensor owns its storage: one that views a buffer of someone else's (a ZeRO or FSDP
    flat buffer) is never moved to a buffer of ours, where the owner's writes would no longer reach it."""
    return _adjacent(tensors) or all(t.untyped_storage().nbytes() == t.numel() * t.element_size() for t in tensors)


def _stacked(tensors: list[torch.Tensor]) -> torch.Tensor:
    """`tensors` stacked along dim 0, as one tensor whose rows they are views of (made so once, then found)."""
    first = tensors[0]
    size = (sum(t.shape[0] for t in tensors), *first.shape[1:])
    if _adjacent(tensors):
        return first.detach().as_strided(size, first.stride())
    stacked = torch.cat([t.detach() for t in tensors])  # the only transient: one group's weights
    for tensor, rows in zip(tensors, stacked.split([t.shape[0] for t in tensors])):
        tensor.data = rows
    return stacked


def _adjacent(tensors: list[torch.Tensor]) -> bool:
    """Whether `tensors` are contiguous and follow one another in one storage."""
    storage, offset = tensors[0].untyped_storage().data_ptr(), tensors[0].storage_offset()
    for tensor in tensors:
        if not tensor.is_contiguous() or tensor.untyped_storage().data_ptr() != storage \
                or tensor.storage_offset() != offset:
            return False
        offset += tensor.numel()
    return True
