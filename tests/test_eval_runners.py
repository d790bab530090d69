"""Each runner end to end on a tiny random model with the fixtures; resuming; bad input.

The model's output is noise, so these check the plumbing and the result files, not answer quality.
"""
import json
import os
import sys

import pytest

from eval import infinitebench, longbench, ruler
from eval.data import load_task_rows
from eval.errors import EvalError
from eval.methods import Method
from eval.runner import read_predictions
from retrolm.tiny import build_tiny_model

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "eval")
LB, IB, RU = (os.path.join(FIXTURES, d) for d in ("longbench", "infinitebench", "ruler"))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(str(tmp_path_factory.mktemp("eval_tiny") / "llama"), "llama", seed=1)


def _lines(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _check_outputs(out, tasks):
    for task in tasks:
        records = _lines(os.path.join(out, "predictions", f"{task}.jsonl"))
        assert records and all(isinstance(r["pred"], str) for r in records)
    scores = json.load(open(os.path.join(out, "scores.json")))
    table = open(os.path.join(out, "scores.md")).read()
    assert set(scores["scores"]) >= {t.rsplit("_", 1)[0] if t[-1].isdigit() else t for t in tasks}
    assert "retrolm_config" in scores and "torch" in scores["versions"] and scores["model"]
    assert "**average**" in table
    return scores


def test_longbench_retrolm_end_to_end(model, tmp_path):
    out = str(tmp_path / "lb")
    tasks = ["trec", "multifieldqa_zh", "lcc"]
    scores = longbench.main(["--model", model, "--method", "retrolm", "--tasks", ",".join(tasks),
                             "--data-dir", LB, "--out", out])
    _check_outputs(out, tasks)
    assert scores["method"] == "retrolm" and scores["retrolm_config"]["top_k"] == 16
    assert len(_lines(os.path.join(out, "predictions", "trec.jsonl"))) == 2
    # scores are recomputable from the predictions file with the official rules
    records = _lines(os.path.join(out, "predictions", "lcc.jsonl"))
    expected = round(100 * sum(longbench.sample_score("lcc", r["pred"], r["answers"], None) for r in records)
                     / len(records), 2)
    assert scores["scores"]["lcc"] == expected


def test_longbench_e_full_has_length_buckets(model, tmp_path):
    out = str(tmp_path / "lbe")
    scores = longbench.main(["--model", model, "--method", "full", "--full-window", "400", "--e", "--tasks",
                             "hotpotqa", "--data-dir", LB, "--out", out])
    assert list(scores["scores"]["hotpotqa"]) == list(longbench.BUCKETS)
    assert scores["window"] == 400


def test_full_truncates_in_the_middle_to_its_window(model, tmp_path):
    from eval.cli import method_options, parser
    from eval.methods import build_method

    args = parser("t").parse_args(["--model", model, "--method", "full", "--full-window", "300", "--out", "x"])
    method = build_method(method_options(args))
    sample = longbench.load_samples("narrativeqa", LB)[0]
    ids = method.prompt_ids(sample.prompt, 128, None)
    full = method.encode(sample.prompt.text)
    assert len(ids) == 300 - 128 and ids[:86] == full[:86] and ids[-86:] == full[-86:]


def test_interrupted_then_resumed_gives_the_same_scores(model, tmp_path, monkeypatch):
    argv = ["--model", model, "--method", "full", "--tasks", "narrativeqa,trec", "--data-dir", LB]
    longbench.main(argv + ["--out", str(tmp_path / "once")])

    calls = {"n": 0}
    real = Method.generate

    def crash_on_third(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(Method, "generate", crash_on_third)
    resumed = str(tmp_path / "resumed")
    with pytest.raises(KeyboardInterrupt):
        longbench.main(argv + ["--out", resumed])
    path = os.path.join(resumed, "predictions", "trec.jsonl")
    assert len(_lines(os.path.join(resumed, "predictions", "narrativeqa.jsonl"))) == 2
    with open(path, "a") as f:  # a crash in the middle of writing a line
        f.write('{"id": "trec-1", "pr')
    monkeypatch.setattr(Method, "generate", real)
    longbench.main(argv + ["--out", resumed])
    assert calls["n"] == 3  # nothing finished before the crash was generated again
    assert [r["id"] for r in _lines(path)] == ["trec-0", "trec-1"]
    once = json.load(open(tmp_path / "once" / "scores.json"))
    again = json.load(open(os.path.join(resumed, "scores.json")))
    assert once == again
    assert open(tmp_path / "once" / "scores.md").read() == open(os.path.join(resumed, "scores.md")).read()


def test_infinitebench_rag_end_to_end(model, tmp_path):
    out = str(tmp_path / "ib")
    tasks = ["passkey", "kv_retrieval", "longbook_choice_eng", "code_debug"]
    scores = infinitebench.main(["--model", model, "--method", "rag", "--rag-embedder", "llm-input-embeddings",
                                 "--budget", "512", "--rag-chunk-tokens", "64", "--tasks",
                                 "Retrieve.PassKey,kv_retrieval,En.MC,code_debug", "--data-dir", IB, "--out", out])
    _check_outputs(out, tasks)
    assert scores["budget"] == 512 and scores["gpu_index"] is False
    choice = _lines(os.path.join(out, "predictions", "longbook_choice_eng.jsonl"))
    assert choice[0]["answers"] == ["a copper candle", "B"]


def test_rag_keeps_chunks_in_document_order_within_budget(model):
    from eval.methods import MethodOptions, build_method

    method = build_method(MethodOptions(method="rag", model=model, rag_embedder="llm-input-embeddings",
                                        budget=300, rag_chunk_tokens=50))
    sample = infinitebench.load_samples("passkey", IB)[0]
    ids = method.prompt_ids(sample.prompt, 6, None)
    before = method.encode(sample.prompt.before)
    after = method.encode(sample.prompt.after, special=False)
    context = method.encode(sample.prompt.context, special=False)
    kept = ids[len(before):len(ids) - len(after)]
    assert len(kept) <= 300 < len(context)
    chunks = [context[i:i + 50] for i in range(0, len(context), 50)]
    positions, at = [], 0
    for i, chunk in enumerate(chunks):  # every kept chunk appears whole, in document order
        found = [j for j in range(at, len(kept) - len(chunk) + 1) if kept[j:j + len(chunk)] == chunk]
        if found:
            positions.append(i)
            at = found[0] + len(chunk)
    assert len(positions) >= 2 and positions == sorted(positions)


@pytest.mark.parametrize("seed", range(6))
def test_best_chunks_fill_the_room_best_first_and_join_in_order(seed):
    import random

    from eval.methods import best_chunks, join_chunks

    rng = random.Random(seed)
    chunks = [[rng.randrange(100) for _ in range(rng.randint(1, 9))] for _ in range(rng.randint(1, 12))]
    order = rng.sample(range(len(chunks)), len(chunks))
    room, gap = rng.randint(0, 60), [-1] * rng.randint(0, 2)
    chosen = best_chunks([len(c) for c in chunks], order, room, len(gap))
    taken, used = set(), 0  # reference: walk the order, take a chunk whenever it still fits
    for i in order:
        if used + len(chunks[i]) + len(gap) <= room:
            taken.add(i)
            used += len(chunks[i]) + len(gap)
    assert chosen == sorted(taken)
    expected = []
    for k, i in enumerate(chosen):
        expected += (gap if k and chosen[k - 1] != i - 1 else []) + chunks[i]
    assert join_chunks(chunks, chosen, gap) == expected and len(expected) <= room


def test_rag_reuses_one_index_emptied_per_prompt(model):
    from eval.methods import MethodOptions, build_method

    method = build_method(MethodOptions(method="rag", model=model, rag_embedder="llm-input-embeddings",
                                        budget=300, rag_chunk_tokens=50))
    prompt = infinitebench.load_samples("passkey", IB)[0].prompt
    first = method.prompt_ids(prompt, 6, None)
    index = method._index
    assert index is not None and index.on_gpu is method.gpu_index
    chunks = -(-len(method.encode(prompt.context, special=False)) // 50)
    assert len(index) == chunks  # this prompt's chunks only
    method.retrieve(method.encode("other words " * 40, special=False), "words", 100)
    assert method._index is index and len(index) == 10  # GPU resources are set up once per run, not per prompt
    assert method.prompt_ids(prompt, 6, None) == first  # nothing left over from the other prompt
    assert len(index) == chunks


def test_rag_without_faiss_is_a_clear_error(model, monkeypatch):
    from eval.methods import MethodOptions, build_method

    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` now raises ImportError
    with pytest.raises(EvalError, match=r"method 'rag' ranks chunks with faiss on the CPU: faiss is not installed.*\[cpu\]"):
        build_method(MethodOptions(method="rag", model=model, rag_embedder="llm-input-embeddings"))


def test_ruler_streaming_end_to_end_with_plot(model, tmp_path):
    out = str(tmp_path / "ruler")
    scores = ruler.main(["--model", model, "--method", "streaming", "--budget", "512", "--tasks",
                         "niah_single_1,qa_1", "--lengths", "1k,2k", "--num-samples", "1", "--data-dir", RU,
                         "--out", out])
    _check_outputs(out, ["niah_single_1_1024", "niah_single_1_2048", "qa_1_1024", "qa_1_2048"])
    assert scores["scores"]["niah_single_1"].keys() == {"1024", "2048"}
    cfg = scores["retrolm_config"]
    assert (cfg["top_k"], cfg["sink_pages"], cfg["local_pages"]) == (0, 1, 3)
    with open(os.path.join(out, "ruler_curve.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_without_model_the_embedded_default_model_runs_in_float32(tmp_path):
    import torch

    from eval.cli import method_options, parser
    from eval.methods import build_method
    from retrolm.model import default_model_path

    options = method_options(parser("test").parse_args(["--method", "retrolm", "--out", str(tmp_path)]))
    assert options.model is None
    method = build_method(options)
    assert method.model_name == default_model_path()
    assert method.retrolm.base_model.dtype == torch.float32  # shipped in bf16; float32 is faster on the CPU
    assert method.retrolm.config.max_context_tokens == 1 << 20  # its own config, so RULER 1M fits


# ----------------------------------------------------------------------------- bad input
def test_unknown_task_and_method(model, tmp_path):
    with pytest.raises(EvalError, match="unknown LongBench task.*valid tasks"):
        longbench.main(["--model", model, "--method", "full", "--tasks", "nope", "--out", str(tmp_path)])
    with pytest.raises(EvalError, match="unknown method 'magic'.*retrolm"):
        infinitebench.main(["--model", model, "--method", "magic", "--tasks", "passkey", "--data-dir", IB,
                            "--out", str(tmp_path)])


def test_missing_data_names_both_ways(tmp_path):
    with pytest.raises(EvalError, match="(?s)does not exist.*hub.*--data-dir"):
        load_task_rows("LongBench", "qasper", "qasper.jsonl", "THUDM/LongBench", str(tmp_path))

    def offline(repo, filename):
        raise OSError("no network")

    with pytest.raises(EvalError, match="(?s)hub is unreachable.*no --data-dir.*--data-dir DIR"):
        load_task_rows("InfiniteBench", "passkey", "passkey.jsonl", "xinrongzhang2022/InfiniteBench", None,
                       fetch=offline)
    with pytest.raises(EvalError, match="(?s)squad.json.*--data-dir"):
        ruler.load_qa("squad", str(tmp_path))
    with pytest.raises(EvalError, match="(?s)hotpotqa.json.*--data-dir"):  # before loading the (absent) model
        ruler.main(["--model", str(tmp_path / "no-model"), "--method", "full", "--tasks", "niah_single_1,qa_2",
                    "--lengths", "4k", "--data-dir", str(tmp_path), "--out", str(tmp_path / "out")])


def test_context_longer_than_the_method_can_hold(model, tmp_path):
    with pytest.raises(EvalError, match="--max-length 4000 is longer than method 'retrolm' can hold"):
        longbench.main(["--model", model, "--method", "retrolm", "--max-context-tokens", "1000", "--max-length",
                        "4000", "--tasks", "trec", "--data-dir", LB, "--out", str(tmp_path)])
    with pytest.raises(EvalError, match="can hold"):
        ruler.main(["--model", model, "--method", "retrolm", "--max-context-tokens", "1000", "--lengths", "2k",
                    "--tasks", "niah_single_1", "--out", str(tmp_path)])
    assert not os.path.exists(tmp_path / "scores.json")


def test_partial_line_is_cut_on_read(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": "a", "pred": "x"}\n{"id": "b", "pr')
    assert list(read_predictions(str(path))) == ["a"]
    assert path.read_text() == '{"id": "a", "pred": "x"}\n'
