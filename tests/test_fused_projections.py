"""Fused q/k/v and gate/up projections (retrolm/fused_projections.py), used inside compiled decode steps: the
modules' own outputs up to matmul rounding, no second copy of the weights, a model that trains and saves as
before, and modules of other structures left alone."""
import copy

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from torch import nn
from torch.overrides import TorchFunctionMode
from transformers import (AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM,
                          Phi3Config, Phi3ForCausalLM, Qwen2Config, Qwen2ForCausalLM)

import retrolm.layer_compile
from retrolm import RetroLM
from retrolm.fused_projections import fused_projections
from retrolm.layer_compile import compiled_layers

FAMILIES = {"llama": (LlamaConfig, LlamaForCausalLM), "mistral": (MistralConfig, MistralForCausalLM),
            "qwen2": (Qwen2Config, Qwen2ForCausalLM), "phi3": (Phi3Config, Phi3ForCausalLM)}
SHAPES = {  # query heads, KV heads (GQA ratio), head_dim, hidden size
    "mha": dict(num_attention_heads=4, num_key_value_heads=4, head_dim=16, hidden_size=64),
    "gqa2": dict(num_attention_heads=4, num_key_value_heads=2, head_dim=16, hidden_size=64),
    "mqa": dict(num_attention_heads=8, num_key_value_heads=1, head_dim=8, hidden_size=48),
    "gqa2-odd": dict(num_attention_heads=6, num_key_value_heads=3, head_dim=12, hidden_size=48),
}


def _model(family: str, shape: str = "gqa2", bias: bool = False, layers: int = 2, seed: int = 0):
    """A random fp32 model of `family`; bias: Llama's q/k/v/o and MLP biases (Qwen2 always has q/k/v ones)."""
    config_cls, model_cls = FAMILIES[family]
    values = dict(vocab_size=64, intermediate_size=72, num_hidden_layers=layers, pad_token_id=0, bos_token_id=1,
                  eos_token_id=2, **SHAPES[shape])
    if family == "llama":
        values.update(attention_bias=bias, mlp_bias=bias)
    if family in ("mistral", "qwen2"):
        values.update(sliding_window=None)
    torch.manual_seed(seed)
    model = model_cls(config_cls(**values)).eval()
    with torch.no_grad():  # larger than the init's 0.02, so that a wrong row or bias shows in the logits
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.2)
    return model


def _every_module(layers: int) -> list[str]:
    return [f"{i}.{name}" for i in range(layers) for name in ("self_attn", "mlp")]


class _LinearCalls(TorchFunctionMode):
    """Counts matrix products run through F.linear (every projection's)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.count += func is F.linear
        return func(*args, **(kwargs or {}))


def _linear_calls(model, ids) -> int:
    with _LinearCalls() as calls:
        model(ids)
    return calls.count


def _storage_bytes(model) -> int:
    """Bytes of the distinct storages behind the model's parameters."""
    return sum({p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in model.parameters()}.values())


def _shares_storage(*tensors) -> bool:
    return len({t.untyped_storage().data_ptr() for t in tensors}) == 1


@pytest.mark.parametrize("family, bias", [("llama", False), ("llama", True), ("mistral", False), ("qwen2", False)])
@pytest.mark.parametrize("shape", sorted(SHAPES))
@torch.no_grad()
def test_fused_projections_give_the_modules_outputs(family, bias, shape):
    model = _model(family, shape, bias)
    for length in (1, 9):
        ids = torch.randint(0, 64, (1, length))
        expected = model(ids).logits
        unfused_calls = _linear_calls(model, ids)
        with fused_projections(model.model.layers) as fused:
            got = model(ids).logits
            fused_calls = _linear_calls(model, ids)
        assert fused == _every_module(2)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        assert unfused_calls - fused_calls == 2 * 3  # per layer: k, v and up are served from q's and gate's products


@torch.no_grad()
def test_fusion_keeps_one_copy_of_the_weights_and_leaves_the_model_as_it_was():
    model = _model("qwen2", "mqa")
    parameters = dict(model.named_parameters())
    values = {name: p.clone() for name, p in parameters.items()}
    before = _storage_bytes(model)
    with fused_projections(model.model.layers):
        assert _storage_bytes(model) == before
    assert _storage_bytes(model) == before
    assert dict(model.named_parameters()) == parameters  # the same Parameter objects ...
    assert all(torch.equal(p, values[name]) for name, p in parameters.items())  # ... holding the same values
    assert not any("forward" in vars(module) for module in model.modules())
    attention, mlp = model.model.layers[1].self_attn, model.model.layers[1].mlp
    assert _shares_storage(attention.q_proj.weight, attention.k_proj.weight, attention.v_proj.weight)
    assert _shares_storage(attention.q_proj.bias, attention.k_proj.bias, attention.v_proj.bias)
    assert _shares_storage(mlp.gate_proj.weight, mlp.up_proj.weight)
    stacked_at = attention.q_proj.weight.data_ptr()
    with fused_projections(model.model.layers):
        assert attention.q_proj.weight.data_ptr() == stacked_at  # found in place, not stacked again


def test_a_model_trains_after_fusion_as_before():
    """Training writes through the views, so a later fused block computes with the trained weights."""
    plain = _model("llama", "gqa2", bias=True)
    fused = copy.deepcopy(plain)
    with torch.no_grad(), fused_projections(fused.model.layers):
        pass
    optimizers = {model: torch.optim.AdamW(model.train().parameters(), lr=1e-2) for model in (plain, fused)}
    torch.manual_seed(1)
    for _ in range(3):
        ids = torch.randint(0, 64, (2, 12))
        losses = []
        for model, optimizer in optimizers.items():
            loss = model(ids, labels=ids).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss)
        assert torch.equal(losses[0], losses[1])
    for (name, p), q in zip(plain.named_parameters(), fused.parameters()):
        assert torch.equal(p, q), name
    plain.eval(), fused.eval()
    ids = torch.randint(0, 64, (1, 9))
    with torch.no_grad(), fused_projections(fused.model.layers):
        torch.testing.assert_close(fused(ids).logits, plain(ids).logits, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_a_converted_model_is_stacked_again():
    """`.to(dtype)` gives every parameter a storage of its own; the next block stacks the groups again."""
    model = _model("mistral", "gqa2")
    with fused_projections(model.model.layers):
        pass
    model.double()
    attention = model.model.layers[0].self_attn
    assert not _shares_storage(attention.q_proj.weight, attention.k_proj.weight)
    ids = torch.randint(0, 64, (1, 9))
    expected = model(ids).logits
    with fused_projections(model.model.layers) as fused:
        assert fused == _every_module(2)
        torch.testing.assert_close(model(ids).logits, expected)
    assert _shares_storage(attention.q_proj.weight, attention.k_proj.weight, attention.v_proj.weight)


class _OtherLinear(nn.Linear):
    """A linear layer of another kind (say, quantized): its forward may not be F.linear of its weight."""


@torch.no_grad()
def test_other_structures_are_left_alone():
    phi3 = _model("phi3", "gqa2")  # q/k/v and gate/up already one product each: nothing to fuse
    ids = torch.randint(0, 64, (1, 9))
    expected = phi3(ids).logits
    with fused_projections(phi3.model.layers) as fused:
        assert fused == []
        assert torch.equal(phi3(ids).logits, expected)
    llama = _model("llama", "gqa2")
    other = _OtherLinear(64, 32, bias=False)
    other.load_state_dict(llama.model.layers[1].self_attn.k_proj.state_dict())
    llama.model.layers[1].self_attn.k_proj = other
    expected = llama(ids).logits
    with fused_projections(llama.model.layers) as fused:
        assert fused == ["0.self_attn", "0.mlp", "1.mlp"]
        torch.testing.assert_close(llama(ids).logits, expected, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_parameters_in_a_buffer_of_someone_else_stay_there():
    """Like a ZeRO flat buffer: an owner keeps writing to it, so its parameters are only fused where they already
    follow one another in it (here the MLPs'), never moved out (here q/k/v, held in reverse order)."""
    model = _model("llama", "gqa2")
    ids = torch.randint(0, 64, (1, 9))
    expected = model(ids).logits
    order = [p for layer in model.model.layers for p in (*reversed(list(layer.self_attn.parameters())),
                                                         *layer.mlp.parameters())]
    flat = torch.cat([p.reshape(-1) for p in order])
    for p, part in zip(order, flat.split([p.numel() for p in order])):
        p.data = part.view(p.shape)
    with fused_projections(model.model.layers) as fused:
        assert fused == ["0.mlp", "1.mlp"]
        torch.testing.assert_close(model(ids).logits, expected, rtol=1e-5, atol=1e-5)
    assert all(_shares_storage(p, flat) for p in order)


@torch.no_grad()
def test_lora_layers_fuse_their_base_layers():
    """peft's LoRA layers call their base layer on the same input first: the base products fuse, the adapters
    add to them as before."""
    model = get_peft_model(_model("qwen2", "gqa2"), LoraConfig(r=4, target_modules=["q_proj", "k_proj", "v_proj"],
                                                                 init_lora_weights=False)).eval()
    layers = model.base_model.model.model.layers
    ids = torch.randint(0, 64, (1, 9))
    expected = model(ids).logits
    with fused_projections(layers) as fused:
        assert fused == _every_module(2)
        torch.testing.assert_close(model(ids).logits, expected, rtol=1e-5, atol=1e-5)


def _traced_graphs(monkeypatch) -> list:
    """Makes compiled_layers trace with dynamo into a backend that keeps the graphs (no inductor: seconds on a
    CPU); returns the list they go to."""
    graphs = []

    def backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    def compiled_function(function):
        def forward(*args, **kwargs):  # a new code object, so no graph compiled elsewhere in the process serves it
            return function(*args, **kwargs)
        return torch.compile(forward, backend=backend)
    monkeypatch.setattr(retrolm.layer_compile, "compiled_function", compiled_function)
    return graphs


@torch.no_grad()
def test_compiled_layers_trace_one_fused_graph_for_every_layer(monkeypatch):
    """compiled_layers: dynamo traces each group's product once (q/k/v, gate/up, o, down: 4 products per layer),
    and the per-layer groups cost no graph of their own (one graph serves every layer, and later blocks)."""
    graphs = _traced_graphs(monkeypatch)
    model = _model("qwen2", "gqa2", layers=3)
    ids = torch.randint(0, 64, (1, 9))
    expected = model(ids).logits
    for _ in range(2):
        with compiled_layers(model.model) as fused:
            assert fused == _every_module(3)
            # no HF cache: its per-layer objects would cost a graph per layer (RetroLM's cache update is not traced)
            torch.testing.assert_close(model(ids, use_cache=False).logits, expected, rtol=1e-5, atol=1e-5)
    assert len(graphs) == 1
    assert sum(node.target is F.linear for node in graphs[0].graph.nodes) == 4


def test_save_after_a_compiled_decode_writes_the_weights(tiny_dirs, tmp_path, monkeypatch):
    """After a compiled decode the projections are views of stacked buffers; both save paths write them as the
    separate, loadable tensors they were loaded from. (Traced without inductor: the stacking is the same.)"""
    _traced_graphs(monkeypatch)
    model = RetroLM.from_pretrained(tiny_dirs["llama"], init_retriever=True, page_size=8, top_k=2,
                                    decode_mode="static", decode_compile=True)
    ids = torch.randint(0, 256, (1, 30))
    tokens = model.generate(input_ids=ids, max_new_tokens=6, do_sample=False, eos_token_id=None)
    attention = model.base_model.model.layers[0].self_attn
    assert _shares_storage(attention.q_proj.weight, attention.k_proj.weight, attention.v_proj.weight)
    original = AutoModelForCausalLM.from_pretrained(tiny_dirs["llama"]).state_dict()
    model.save_pretrained(str(tmp_path / "retrolm"), save_base_model=True)
    model.base_model.save_pretrained(str(tmp_path / "hf"))
    for saved in (str(tmp_path / "retrolm" / "base"), str(tmp_path / "hf")):
        state = AutoModelForCausalLM.from_pretrained(saved).state_dict()
        assert state.keys() == original.keys()
        assert all(torch.equal(state[name], original[name]) for name in original), saved
    reloaded = RetroLM.from_pretrained(str(tmp_path / "retrolm"), decode_mode="static", decode_compile=True)
    assert torch.equal(reloaded.generate(input_ids=ids, max_new_tokens=6, do_sample=False, eos_token_id=None), tokens)
