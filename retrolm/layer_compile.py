"""The model's decoder layers compiled by torch.compile (inductor) inside the device decode step (`decode_compile`).

At batch 1 a 7-8B model's decode step is a chain of matrix-vector products and, between them, ~50 small kernels
per layer: RMSNorm's pow / mean / rsqrt / multiply, RoPE's halves and products, SiLU, residual adds, dtype copies.
A CUDA graph removes their launch cost but not their run time (~2 ms of a 7 ms step on an H200,
`bench/results/decode/profile_decode.md`); inductor fuses them into a few kernels. RetroLM's own parts of a layer
stay as they are (`torch.compiler.disable`): the cache update and the page attention read the step's plan, a host
object, and are already one or two kernels each. The training-free scorer's per-layer step (device_scorer.py,
~40 small kernels per layer) is compiled the same way.

The transformers layer class's own forward is compiled (one compiled function per class, shared by all layers
and models: layer_idx is traced as a dynamic int, so 32 layers are one compiled graph, not 32), and used only
while a device decode step runs. The first step compiles (seconds, once per process; a second cache capacity
recompiles once with that size dynamic); CUDA graph capture happens at the second step, after every kernel has
been compiled. Inside the block the projections that read one input (q/k/v, gate/up) run as one matrix product per
group (fused_projections.py). Fused kernels round differently from transformers' eager ones in the last bits, so
tokens can differ from eager decoding where two logits (or two pages' scores) nearly tie.
"""
from __future__ import annotations

import contextlib
import functools

import torch
import torch._inductor.config

from .fused_projections import fused_projections

_COMPILED: dict = {}  # function -> its compiled form
RECOMPILE_LIMIT = 64  # shapes of several models in one process (tests) each take an entry


def compiled_function(function):
    """`function` compiled by inductor, once per process."""
    if function not in _COMPILED:
        # bf16/fp16: round where eager rounds (each op's output), so fused kernels stay as close to eager as they can
        precise = hasattr(torch._inductor.config, "emulate_precision_casts")
        options = {"emulate_precision_casts": True} if precise else {}
        _COMPILED[function] = torch.compile(function, options=options)
    return _COMPILED[function]


@contextlib.contextmanager
def compiled_layers(decoder):
    """Within this block `decoder.layers` run their compiled forward, with fused projections. Yields the fused
    modules' names (`fused_projections`)."""
    layers = list(decoder.layers)
    for layer in layers:
        layer.forward = functools.partial(compiled_function(type(layer).forward), layer)
    limit = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
    try:
        with torch._dynamo.config.patch(allow_unspec_int_on_nn_module=True, **{limit: RECOMPILE_LIMIT}), \
                fused_projections(layers) as fused:
            yield fused
    finally:
        for layer in layers:
            del layer.forward  # the class's forward again
