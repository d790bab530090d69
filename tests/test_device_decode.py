"""Device-side decode steps (device_decode.py): the same tokens and retrievals as eager decoding.

"static" runs the CUDA graph's step without capture, so the CPU tests check its logic (selection refresh,
bookmarks of pages completed while decoding, positions) against the eager planner; the CUDA tests check the
captured graph against both.
"""
import contextlib

import pytest
import torch
from lexical_toys import chain_prompt
from transformers import AutoModelForCausalLM

from retrolm import RetroLM
from retrolm.compat import cache_argument
from retrolm.device_decode import DeviceDecoder
from retrolm.errors import RetroLMError

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU; run on the GPU host")
TRAINED = dict(init_retriever=True, page_size=8, top_k=2, refresh_interval=3)


def _pair(path, **knobs):
    """The same model twice: decoding eagerly, and with the device-side step."""
    eager = RetroLM.from_pretrained(path, decode_mode="eager", **knobs)
    device = RetroLM.from_pretrained(path, **{"decode_mode": "static", **knobs})
    return eager, device


def _generate(model, ids, seed=0, **kwargs):
    torch.manual_seed(seed)
    out = model.generate(input_ids=ids, max_new_tokens=kwargs.pop("max_new_tokens", 40), eos_token_id=None, **kwargs)
    return out, model.last_cache.retrievals()


def _assert_static_decodes_like_eager(eager, device, lengths, logged_at_least):
    """Greedy tokens and logged retrievals of the static step equal eager decoding's, after prompts of `lengths`."""
    for length in lengths:
        ids = torch.randint(0, 256, (1, length))
        expected, expected_retrievals = _generate(eager, ids, do_sample=False)
        got, got_retrievals = _generate(device, ids, do_sample=False)
        assert device.last_timings["decode_mode"] == "static"
        assert torch.equal(got, expected)
        assert got_retrievals == expected_retrievals
        assert len(got_retrievals) >= logged_at_least  # so the comparison covers the retrievals


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
@pytest.mark.parametrize("mode", ["contiguous", "original"])
@pytest.mark.parametrize("neighbors", [0, 1])
@pytest.mark.parametrize("refresh_on", ["", "aeiou"])
def test_static_step_decodes_like_eager(tiny_dirs, arch, mode, neighbors, refresh_on):
    eager, device = _pair(tiny_dirs[arch], position_mode=mode, neighbor_pages=neighbors, refresh_on=refresh_on,
                          **TRAINED)
    # the decode starts on a page boundary (8, 64) or inside a page (44); mid-page refreshes are logged
    _assert_static_decodes_like_eager(eager, device, lengths=(9, 45, 64), logged_at_least=5)


# lexical scores that decide: few symbols (shared 2-grams) and a weight that outweighs the random retriever
LEXICAL = dict(TRAINED, lexical_weight=50.0, lexical_ngram=2, lexical_max_pages=4)


@pytest.mark.parametrize("mode, refresh_on, query_pages", [("contiguous", "", 1), ("original", "aeiou", 2),
                                                           ("contiguous", "aeiou", 2)])
def test_static_step_with_lexical_scores_decodes_like_eager(tiny_dirs, mode, refresh_on, query_pages):
    """The device step's fixed-buffer lexical index (pages completed while decoding added on the device) selects
    as the eager planner's; without lexical scores some selections differ, so they are what is compared."""
    knobs = dict(position_mode=mode, refresh_on=refresh_on, lexical_query_pages=query_pages)
    eager, device = _pair(tiny_dirs["llama"], **knobs, **LEXICAL)
    plain = RetroLM.from_pretrained(tiny_dirs["llama"], decode_mode="static", **knobs, **TRAINED)
    _assert_lexical_static_decodes_like_eager(eager, device, plain, lengths=(9, 45, 100), logged_at_least=1)


def _assert_lexical_static_decodes_like_eager(eager, device, plain, lengths, logged_at_least):
    """Greedy tokens and retrievals of the static step equal eager decoding's on prompts of few symbols (many
    shared n-grams), and the model without lexical scores (`plain`) retrieves otherwise on some prompt."""
    differs = False
    for length in lengths:
        ids = torch.randint(0, 6, (1, length), generator=torch.Generator().manual_seed(length))
        expected, expected_retrievals = _generate(eager, ids, do_sample=False)
        got, got_retrievals = _generate(device, ids, do_sample=False)
        assert device.last_timings["decode_mode"] == "static"
        assert torch.equal(got, expected) and got_retrievals == expected_retrievals
        assert len(got_retrievals) >= logged_at_least
        differs |= _generate(plain, ids, do_sample=False)[1] != got_retrievals
    assert differs


@pytest.mark.parametrize("refresh_on", ["", "aeiou"])
def test_static_step_runs_the_retriever_only_where_a_refresh_is_due(tiny_dirs, refresh_on, monkeypatch):
    """Steps that keep their selection skip the retriever: it runs at each new page, every refresh_interval
    tokens and after a trigger token, and the tokens stay eager decoding's."""
    eager, device = _pair(tiny_dirs["llama"], refresh_on=refresh_on, **TRAINED)
    selected = []
    select = DeviceDecoder._select_trained
    monkeypatch.setattr(DeviceDecoder, "_select_trained",
                        lambda self, t0, *rest: selected.append(int(t0)) or select(self, t0, *rest))
    ids = torch.randint(0, 256, (1, 45))
    expected, _ = _generate(eager, ids, do_sample=False)
    got, _ = _generate(device, ids, do_sample=False)
    assert torch.equal(got, expected)
    due, made_at = [], 44 - TRAINED["refresh_interval"]  # the rule on host ints, steps at positions 44..83
    for t0 in range(44, 84):
        token = int(got[0, t0])
        if t0 % TRAINED["page_size"] == 0 or t0 - made_at >= TRAINED["refresh_interval"] or chr(token) in refresh_on:
            due.append(t0)
            made_at = t0
    assert selected == due
    assert len(due) < 40  # steps were skipped


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
@pytest.mark.parametrize("mode", ["contiguous", "original"])
@pytest.mark.parametrize("neighbors", [0, 1])
@pytest.mark.parametrize("refresh_on", ["", "aeiou"])
def test_static_step_with_the_training_free_scorer_decodes_like_eager(tiny_dirs, arch, mode, neighbors,
                                                                      refresh_on):
    """Every layer chooses its pages on the device (device_scorer.py): same tokens and per-layer retrievals."""
    eager, device = _pair(tiny_dirs[arch], scorer="attention", page_size=8, top_k=2, refresh_interval=3,
                          position_mode=mode, neighbor_pages=neighbors, refresh_on=refresh_on)
    # the decode starts on a page boundary (32, 64) or inside a page (44, 99); every mid-page step is logged
    _assert_static_decodes_like_eager(eager, device, lengths=(33, 45, 64, 100), logged_at_least=30)


ATTENTION_LEXICAL = dict(scorer="attention", page_size=8, top_k=2, refresh_interval=3, lexical_weight=0.5,
                         lexical_ngram=2, lexical_max_pages=4)


@pytest.mark.parametrize("mode, refresh_on, query_pages, neighbors", [("contiguous", "", 1, 0),
                                                                      ("original", "aeiou", 2, 1),
                                                                      ("contiguous", "aeiou", 2, 1)])
def test_static_step_with_the_training_free_scorer_and_lexical_scores_decodes_like_eager(
        tiny_dirs, mode, refresh_on, query_pages, neighbors):
    """The training-free scorer's layers add the step's lexical scores (pages completed while decoding added on the
    device) as eager decoding does: same tokens and per-layer retrievals; the weight is low enough that attention
    still ranks, and lexical scores change some selection."""
    knobs = dict(ATTENTION_LEXICAL, position_mode=mode, refresh_on=refresh_on, lexical_query_pages=query_pages,
                 neighbor_pages=neighbors)
    eager, device = _pair(tiny_dirs["llama"], **knobs)
    plain = RetroLM.from_pretrained(tiny_dirs["llama"], decode_mode="static", **{**knobs, "lexical_weight": 0.0})
    _assert_lexical_static_decodes_like_eager(eager, device, plain, lengths=(33, 45, 100), logged_at_least=30)


def test_static_step_samples_like_eager(tiny_dirs):
    eager, device = _pair(tiny_dirs["llama"], **TRAINED)
    ids = torch.randint(0, 256, (1, 30))
    for seed in range(3):
        sample = dict(do_sample=True, temperature=0.9, top_k=40, top_p=0.95)
        expected, _ = _generate(eager, ids, seed=seed, **sample)
        got, _ = _generate(device, ids, seed=seed, **sample)
        assert torch.equal(got, expected)


@pytest.mark.parametrize("compiled", [False, True])
def test_static_step_with_every_page_is_the_plain_model(tiny_dirs, compiled):
    base = AutoModelForCausalLM.from_pretrained(tiny_dirs["mistral"]).eval()
    model = RetroLM.from_pretrained(tiny_dirs["mistral"], init_retriever=True, page_size=8, top_k=64,
                                    decode_mode="static", decode_compile=compiled)
    ids = torch.randint(0, 256, (1, 37))
    expected = base.generate(ids, max_new_tokens=30, do_sample=False, eos_token_id=None, pad_token_id=0)
    got = model.generate(input_ids=ids, max_new_tokens=30, do_sample=False, eos_token_id=None)
    assert torch.equal(got, expected)


def test_static_step_with_the_training_free_scorer_and_every_page_is_the_plain_model(tiny_dirs):
    """A prompt of exactly sink + local + top_k pages: the step attends to all of them, so it is the plain model."""
    base = AutoModelForCausalLM.from_pretrained(tiny_dirs["mistral"]).eval()
    model = RetroLM.from_pretrained(tiny_dirs["mistral"], scorer="attention", page_size=8, top_k=8,
                                    decode_mode="static")
    ids = torch.randint(0, 256, (1, 81))  # 10 complete pages before the first decode token, which opens page 10
    expected = base.generate(ids, max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0)
    got = model.generate(input_ids=ids, max_new_tokens=8, do_sample=False, eos_token_id=None)
    assert model.last_timings["decode_mode"] == "static"
    assert torch.equal(got, expected)


def test_auto_decodes_eagerly_where_the_graph_does_not_apply(tiny_dirs):
    ids = torch.randint(0, 256, (1, 30))
    trained = RetroLM.from_pretrained(tiny_dirs["llama"], **TRAINED)  # decode_mode="auto", on a CPU
    trained.generate(input_ids=ids, max_new_tokens=4)
    assert trained.last_timings["decode_mode"] == "eager"
    if torch.cuda.is_available():
        trained.to("cuda")
        trained.generate(input_ids=ids.cuda(), max_new_tokens=4)
        assert trained.last_timings["decode_mode"] == "graph"


@pytest.mark.parametrize("knobs, length, message", [
    ({"decode_mode": "static", "scorer": "attention", "page_size": 8}, 30, r"a prompt of at least .* = 145 tokens"),
    pytest.param({"decode_mode": "graph", "scorer": "attention", "page_size": 8}, 300, "CUDA",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on hosts without CUDA")),
    pytest.param({"decode_compile": True, **TRAINED}, 30, "decode_compile=True needs a device decode step",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="auto decodes eagerly only off CUDA")),
    ({"decode_mode": "static", "decode_compile": True, **TRAINED}, 8, r"shorter than page_size \+ 1"),
    ({"decode_mode": "static", **TRAINED}, 8, r"shorter than page_size \+ 1"),
    pytest.param({"decode_mode": "graph", **TRAINED}, 30, "CUDA", marks=pytest.mark.skipif(
        torch.cuda.is_available(), reason="checks the error on hosts without CUDA")),
])
def test_a_device_decode_that_cannot_apply_raises(tiny_dirs, knobs, length, message):
    model = RetroLM.from_pretrained(tiny_dirs["llama"], **knobs)
    with pytest.raises(RetroLMError, match=message):
        model.generate(input_ids=torch.randint(0, 256, (1, length)), max_new_tokens=4)


def test_decoding_block_refuses_a_mode_that_cannot_apply(tiny_dirs):
    model = RetroLM.from_pretrained(tiny_dirs["llama"], scorer="attention", page_size=8, top_k=2)
    cache, _ = model.encode(torch.randint(0, 256, (1, 20)), model.new_cache(40))  # 4 x 8 + 1 tokens needed
    with pytest.raises(RetroLMError, match="decode_mode='static' cannot run here"):
        with model.decoding(cache, 10, "static"):
            pass
    model.config.decode_compile = True
    with pytest.raises(RetroLMError, match="decode_compile=True compiles the device decode step"):
        with model.decoding(cache, 10, "eager"):
            pass


def test_decode_compile_is_refused_with_eager_decoding(tiny_dirs):
    with pytest.raises(RetroLMError, match="decode_mode='eager' has none"):
        RetroLM.from_pretrained(tiny_dirs["llama"], decode_mode="eager", decode_compile=True)
    with pytest.raises(RetroLMError, match="decode_compile must be true or false"):
        RetroLM.from_pretrained(tiny_dirs["llama"], decode_compile="yes")


def _eager_norm_calls(model, monkeypatch):
    """Token counts of the layers' input-norm calls that ran as Python (not as a compiled graph). While dynamo
    traces the norm, `is_compiling()` is true and the branch is dropped from the graph, so a compiled layer adds
    nothing and a layer that runs uncompiled (never compiled, or dynamo gave up on it) is recorded."""
    eager_calls = []
    for layer in model.base_model.model.layers:
        norm = layer.input_layernorm

        def forward(hidden, _norm=norm, _forward=type(norm).forward):
            if not torch.compiler.is_compiling():
                eager_calls.append(hidden.shape[1])
            return _forward(_norm, hidden)
        monkeypatch.setattr(norm, "forward", forward)
    return eager_calls


def _eager_scorer_calls(monkeypatch):
    """{"traced", "eager"}: how the device scorer's per-layer step reached `page_bounds` (see _eager_norm_calls)."""
    import retrolm.device_scorer

    calls, page_bounds = set(), retrolm.device_scorer.page_bounds

    def recorded(*args):
        calls.add("traced" if torch.compiler.is_compiling() else "eager")
        return page_bounds(*args)
    monkeypatch.setattr(retrolm.device_scorer, "page_bounds", recorded)
    return calls


def _fused_modules(monkeypatch):
    """The modules whose projections each compiled decode ran fused (`compiled_layers` yields them), one list per
    generate call."""
    import retrolm.device_decode

    calls, compiled_layers = [], retrolm.device_decode.compiled_layers

    @contextlib.contextmanager
    def recorded(decoder):
        with compiled_layers(decoder) as fused:
            calls.append(fused)
            yield fused
    monkeypatch.setattr(retrolm.device_decode, "compiled_layers", recorded)
    return calls


def _every_module(model) -> list[str]:
    """Every layer's attention and MLP (what a Llama / Mistral / Qwen layer fuses)."""
    return [f"{i}.{name}" for i in range(len(model.base_model.model.layers)) for name in ("self_attn", "mlp")]


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
@pytest.mark.parametrize("scorer", ["trained", "attention"])
def test_compiled_layers_decode_like_eager(tiny_dirs, arch, scorer, monkeypatch):
    """decode_compile: the static step with inductor-compiled layers (projections fused) gives eager decoding's
    tokens and retrievals (float32 on the CPU), and no layer runs uncompiled."""
    knobs = TRAINED if scorer == "trained" else dict(scorer="attention", page_size=8, top_k=2, refresh_interval=3)
    eager, device = _pair(tiny_dirs[arch], **knobs)
    device.config.decode_compile = True
    eager_calls = _eager_norm_calls(device, monkeypatch)
    scorer_calls = _eager_scorer_calls(monkeypatch)
    fused = _fused_modules(monkeypatch)
    _assert_static_decodes_like_eager(eager, device, lengths=(45, 64), logged_at_least=5)
    assert fused == [_every_module(device)] * 2
    assert eager_calls and 1 not in eager_calls  # the prefill's layers ran eagerly, no decode step's did
    assert "eager" not in scorer_calls  # the training-free scorer's per-layer step ran compiled too
    assert scorer_calls == ({"traced"} if scorer == "attention" else set())
    assert all("forward" not in vars(layer) for layer in device.base_model.model.layers)  # restored after generate


def test_decode_mode_is_validated(tiny_dirs):
    with pytest.raises(RetroLMError, match="decode_mode must be one of"):
        RetroLM.from_pretrained(tiny_dirs["llama"], decode_mode="cudagraph")


@CUDA
@pytest.mark.parametrize("mode", ["contiguous", "original"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_graph_decodes_like_eager(tiny_dirs, mode, dtype):
    knobs = dict(device="cuda", dtype=dtype, position_mode=mode, neighbor_pages=1, refresh_on="aeiou",
                 page_size=16, top_k=2, refresh_interval=3, init_retriever=True)
    eager = RetroLM.from_pretrained(tiny_dirs["llama"], decode_mode="eager", **knobs)
    graph = RetroLM.from_pretrained(tiny_dirs["llama"], decode_mode="graph", **knobs)
    static = RetroLM.from_pretrained(tiny_dirs["llama"], decode_mode="static", **knobs)
    for length in (17, 100, 300):
        ids = torch.randint(0, 256, (1, length), device="cuda")
        expected, expected_retrievals = _generate(eager, ids, do_sample=False, max_new_tokens=70)
        for model in (graph, static):
            got, retrievals = _generate(model, ids, do_sample=False, max_new_tokens=70)
            assert torch.equal(got, expected)
            assert retrievals == expected_retrievals
        assert graph.last_timings["decode_mode"] == "graph"
        sample = dict(do_sample=True, temperature=0.9, top_k=40, max_new_tokens=70)
        assert torch.equal(_generate(graph, ids, seed=1, **sample)[0], _generate(eager, ids, seed=1, **sample)[0])


@CUDA
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("scorer, lengths", [("trained", (17, 100, 300)), ("attention", (65, 300))])
def test_cuda_graph_with_lexical_scores_decodes_like_eager(tiny_dirs, dtype, scorer, lengths):
    """Both scorers with lexical scores: the captured step gives eager decoding's tokens and retrievals (the
    training-free scorer's device step needs prompts filling every page slot: 65 tokens and up)."""
    lexical = LEXICAL if scorer == "trained" else dict(ATTENTION_LEXICAL, neighbor_pages=1)
    knobs = dict(lexical, device="cuda", dtype=dtype, refresh_on="aeiou", page_size=16)
    eager = RetroLM.from_pretrained(tiny_dirs["llama"], decode_mode="eager", **knobs)
    graph = RetroLM.from_pretrained(tiny_dirs["llama"], decode_mode="graph", **knobs)
    for length in lengths:
        ids = torch.randint(0, 6, (1, length), device="cuda")
        expected, expected_retrievals = _generate(eager, ids, do_sample=False, max_new_tokens=70)
        got, retrievals = _generate(graph, ids, do_sample=False, max_new_tokens=70)
        assert graph.last_timings["decode_mode"] == "graph"
        assert torch.equal(got, expected) and retrievals == expected_retrievals


@CUDA
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mode", ["contiguous", "original"])
def test_training_free_scorer_device_step_on_gpu_decodes_like_eager(tiny_dirs, dtype, mode):
    knobs = dict(device="cuda", dtype=dtype, scorer="attention", neighbor_pages=1, refresh_on="aeiou", page_size=16,
                 top_k=2, refresh_interval=3, position_mode=mode)
    eager, static = _pair(tiny_dirs["llama"], **knobs)
    graph = RetroLM.from_pretrained(tiny_dirs["llama"], decode_mode="graph", **knobs)
    for length in (65, 300):
        ids = torch.randint(0, 256, (1, length), device="cuda")
        expected, expected_retrievals = _generate(eager, ids, do_sample=False, max_new_tokens=70)
        for model in (static, graph):
            got, retrievals = _generate(model, ids, do_sample=False, max_new_tokens=70)
            assert model._backend() == "triton"
            assert torch.equal(got, expected)
            assert retrievals == expected_retrievals
        assert graph.last_timings["decode_mode"] == "graph"
        sample = dict(do_sample=True, temperature=0.9, top_k=40, max_new_tokens=70)
        assert torch.equal(_generate(graph, ids, seed=1, **sample)[0], _generate(eager, ids, seed=1, **sample)[0])
    auto = RetroLM.from_pretrained(tiny_dirs["llama"], **knobs)  # decode_mode="auto" takes the graph now
    auto.generate(input_ids=torch.randint(0, 256, (1, 65), device="cuda"), max_new_tokens=4)
    assert auto.last_timings["decode_mode"] == "graph"


class _ScoreRecorder:
    """A logits processor that keeps each generate step's scores and changes nothing."""

    def __init__(self):
        self.scores = []

    def __call__(self, input_ids, scores):
        self.scores.append(scores.float().clone())
        return scores


def _generate_with_scores(model, ids, max_new_tokens):
    recorder = _ScoreRecorder()
    out = model.generate(input_ids=ids, max_new_tokens=max_new_tokens, eos_token_id=None, do_sample=False,
                         logits_processor=[recorder])
    return out[0, ids.shape[1]:], torch.cat(recorder.scores), model.last_cache.retrievals()


def _assert_same_until_a_near_tie(expected, got, tolerance):
    """bf16: fused and compiled kernels round differently from eager ones, so greedy tokens may part where two logits
    nearly tie. Every step up to the first differing token must give eager's logits within `tolerance` (a fraction
    of the logits' range), and at that token eager's own logits must rank the two tokens within it."""
    (expected_tokens, expected_scores, _), (got_tokens, got_scores, _) = expected, got
    scale = float(expected_scores.abs().max())
    differ = next((i for i in range(len(expected_tokens)) if expected_tokens[i] != got_tokens[i]), len(expected_tokens))
    steps = min(differ + 1, len(expected_tokens))
    assert float((expected_scores[:steps] - got_scores[:steps]).abs().max()) <= tolerance * scale
    if differ < len(expected_tokens):
        gap = expected_scores[differ, expected_tokens[differ]] - expected_scores[differ, got_tokens[differ]]
        assert 0 <= float(gap) <= tolerance * scale, f"token {differ} differs without a near tie"


@CUDA
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("scorer", ["trained", "attention"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_graph_with_compiled_layers_decodes_like_eager(tiny_dirs, arch, scorer, dtype, monkeypatch):
    """decode_compile on CUDA: the graph replays inductor's fused kernels and one product per fused projection
    group (q/k/v with Qwen2's biases, gate/up). In float32, tokens and retrievals equal eager decoding's on the
    tiny models; in bfloat16 they do up to a near tie of two logits, and the logits agree within rounding until
    then (bench/decode.py reports the token agreement on a 7-8B shape)."""
    knobs = dict(device="cuda", dtype=dtype, page_size=16, top_k=2, refresh_interval=3, neighbor_pages=1)
    knobs.update(init_retriever=True) if scorer == "trained" else knobs.update(scorer="attention")
    eager = RetroLM.from_pretrained(tiny_dirs[arch], decode_mode="eager", **knobs)
    graph = RetroLM.from_pretrained(tiny_dirs[arch], decode_mode="graph", decode_compile=True, **knobs)
    eager_calls = _eager_norm_calls(graph, monkeypatch)
    fused = _fused_modules(monkeypatch)
    for length in (65, 300):
        ids = torch.randint(0, 256, (1, length), device="cuda")
        expected = _generate_with_scores(eager, ids, max_new_tokens=70)
        got = _generate_with_scores(graph, ids, max_new_tokens=70)
        assert graph.last_timings["decode_mode"] == "graph"
        if dtype == torch.float32:
            assert torch.equal(got[0], expected[0])
            assert got[2] == expected[2]  # retrievals
        else:
            _assert_same_until_a_near_tie(expected, got, tolerance=0.02)
    assert eager_calls and 1 not in eager_calls
    assert fused == [_every_module(graph)] * 2


@CUDA
def test_cuda_graph_decodes_like_eager_on_the_default_model():
    eager = RetroLM.from_pretrained(device="cuda", dtype=torch.bfloat16, decode_mode="eager")
    graph = RetroLM.from_pretrained(device="cuda", dtype=torch.bfloat16, decode_mode="graph")
    text = "The quick brown fox jumps over the lazy dog. " * 200 + "The special magic number is 7421. " + \
        "Water boils at one hundred degrees. " * 200 + "Question: what is the special magic number? Answer:"
    ids = eager.tokenizer(text, return_tensors="pt").input_ids.cuda()
    expected, expected_retrievals = _generate(eager, ids, do_sample=False, max_new_tokens=64)
    got, retrievals = _generate(graph, ids, do_sample=False, max_new_tokens=64)
    assert graph.last_timings["decode_mode"] == "graph"
    assert torch.equal(got, expected)
    assert retrievals == expected_retrievals


def _manual_decode(model, mode: str, steps: int = 30, between=None) -> tuple[list[int], object]:
    """A hand-written greedy loop inside `model.decoding` after encoding 50 random tokens (seed 3): its tokens and
    the cache. between(model, cache) runs after the prompt is encoded, before decoding."""
    torch.manual_seed(3)
    ids = torch.randint(0, 256, (1, 50))
    cache = model.new_cache(ids.shape[1] + steps)
    with torch.no_grad():
        cache, logits = model.encode(ids, cache, logits_to_keep=1)
        if between is not None:
            between(model, cache)
        token, out = logits.argmax(-1), []
        with model.decoding(cache, steps, mode):
            for _ in range(steps):
                token = model.base_model(input_ids=token, use_cache=True,
                                         **{cache_argument(model.base_model): cache}).logits.argmax(-1)
                out.append(int(token))
    assert cache.num_tokens == ids.shape[1] + steps
    return out, cache


def test_decoding_block_serves_a_manual_decode_loop(tiny_dirs, monkeypatch):
    """`RetroLM.decoding` (what bench/decode.py times) turns plain forwards on the paged cache into device-side
    steps: a hand-written greedy loop gives the eager loop's tokens."""
    steps = []
    device_step = DeviceDecoder._step
    monkeypatch.setattr(DeviceDecoder, "_step", lambda self, *rest: steps.append(1) or device_step(self, *rest))
    tokens = {mode: _manual_decode(RetroLM.from_pretrained(tiny_dirs["llama"], **TRAINED), mode)[0]
              for mode in ("eager", "static")}
    assert tokens["static"] == tokens["eager"]
    assert len(steps) == 30  # the static loop's steps, and none of the eager loop's


def test_lexical_scores_turned_on_after_the_prompt_decode_alike_in_both_paths(tiny_dirs):
    """A prompt encoded with lexical scores off, then decoded with them on (hops and sentence ends too): the eager
    and the device step each make the cache's lexical index at their first step, with the model's sentence-end
    table, and write the same tokens (every step selects afresh: eager decoding would otherwise keep the prompt's
    selection, made without lexical scores, for its first steps)."""
    def lexical_on(model, cache):
        assert cache.lexical is None
        model.config.lexical_weight, model.config.lexical_ngram = 50.0, 2
        model.config.lexical_hops, model.config.lexical_hop_stops = 2, "."

    tokens = {}
    for mode in ("eager", "static"):
        model = RetroLM.from_pretrained(tiny_dirs["llama"], **{**TRAINED, "refresh_interval": 1})
        tokens[mode], cache = _manual_decode(model, mode, between=lexical_on)
        assert torch.equal(cache.lexical.hop_stops, model._hop_stop_table())
    assert tokens["static"] == tokens["eager"]


@pytest.mark.parametrize("scorer_knobs", [LEXICAL, ATTENTION_LEXICAL], ids=["trained", "attention"])
def test_static_step_keeps_the_prompts_near_misses_as_eager_does(tiny_dirs, scorer_knobs):
    """With near misses judged (margin 0: any page less rare than the best's passage), the device step applies the
    prompt's judgement as eager decoding does; without them some selection differs, so they are what is compared."""
    knobs = dict(scorer_knobs, refresh_on="aeiou", lexical_query_pages=2)
    eager, device = _pair(tiny_dirs["llama"], **knobs, lexical_near_miss_margin=0.0)
    plain = RetroLM.from_pretrained(tiny_dirs["llama"], decode_mode="static", **knobs)
    _assert_lexical_static_decodes_like_eager(eager, device, plain, lengths=(45, 120, 180), logged_at_least=1)


@pytest.mark.parametrize("scorer_knobs", [LEXICAL, ATTENTION_LEXICAL], ids=["trained", "attention"])
def test_static_step_keeps_the_prompts_hop_scores_as_eager_does(tiny_dirs, scorer_knobs):
    """With hops (chain prompts, unigram links; pages of 16: a hop span of 4 tokens reaches three of a name's),
    the device step adds the prompt's hop scores as eager decoding does; without them some selection differs."""
    knobs = dict(scorer_knobs, refresh_on="aeiou", lexical_query_pages=2, lexical_ngram=1, page_size=16)
    eager, device = _pair(tiny_dirs["llama"], **knobs, lexical_hops=3)
    plain = RetroLM.from_pretrained(tiny_dirs["llama"], decode_mode="static", **knobs)
    differs = False
    for length, seed in ((200, 0), (260, 1), (330, 2)):
        ids = chain_prompt(length, seed)
        expected, expected_retrievals = _generate(eager, ids, do_sample=False)
        got, got_retrievals = _generate(device, ids, do_sample=False)
        assert device.last_timings["decode_mode"] == "static"
        assert torch.equal(got, expected) and got_retrievals == expected_retrievals and got_retrievals
        assert eager.last_cache.lexical.hop_scores.any()  # the walk reached a page
        differs |= _generate(plain, ids, do_sample=False)[1] != got_retrievals
    assert differs
