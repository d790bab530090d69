"""Training: the stage-2 forward is the inference path, labels and losses are right, both stages learn,
resume is exact, DeepSpeed runs them on 2 processes, and bad configs fail before any compute."""
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from retrolm import RetroLM, RetroLMError
from retrolm.compat import set_activation_checkpointing
from retrolm.model import _inner_model
from retrolm.retriever import PageRetriever, eligible_pages, score_pages
from retrolm.training.config import TrainConfig
from retrolm.training.loop import _source_of, run
from retrolm.training.objectives import build_objective, page_bookmarks
from retrolm.training.supervision import (PageMassObserver, copy_labels, mixed_labels, recall_at_k, retrieval_loss,
                                         top_pages)
from retrolm.training.tracking import read_metrics
from training_toys import PAGE, PAGES, matching_llm, planted_document, write_config, write_packed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DS_ZERO2 = os.path.join(ROOT, "configs", "ds_zero2.json")
DS_ZERO3 = os.path.join(ROOT, "configs", "ds_zero3.json")


def _config(**values) -> TrainConfig:
    return TrainConfig(**{"data": "unused", "output_dir": "unused", **values})


# ------------------------------------------------------------------ the stage-2 forward is RetroLM's own path
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("mode", ["contiguous", "original"])
@pytest.mark.parametrize("scorer", ["attention", "trained"])
def test_training_forward_equals_inference_and_checkpointing_keeps_gradients(tiny_dirs, arch, mode, scorer):
    """Stage 2's one-pass forward is RetroLM's chunked inference, under either page scorer."""
    train = _config(model=tiny_dirs[arch], retrolm=dict(page_size=8, top_k=2, position_mode=mode,
                                                        prefill_chunk_pages=3, scorer=scorer),
                    train_retriever=scorer == "trained")
    objective = build_objective(train, "post_train", torch.device("cpu"))
    ids = torch.randint(0, 256, (1, 96))
    objective.eval()
    with torch.no_grad():
        inference = objective.model(input_ids=ids).logits  # encoded 3 pages per forward through the paged cache
        training = objective.sparse_logits(ids)  # one forward, no cache
    torch.testing.assert_close(training, inference, rtol=1e-5, atol=1e-5)

    objective.train()
    grads = []
    for checkpointing in (True, False):
        inner = _inner_model(objective.model.base_model)
        set_activation_checkpointing(inner, checkpointing)
        objective.zero_grad()
        objective(ids)["loss"].backward()
        grads.append([p.grad.clone() for p in objective.trainable_parameters()])
    assert len(grads[0]) > 0 and any(g.abs().sum() > 0 for g in grads[0])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_page_bookmarks_are_the_vectors_inference_stores(tiny_dirs):
    model = RetroLM.from_pretrained(tiny_dirs["mistral"], page_size=8, top_k=2, init_retriever=True)
    ids = torch.randint(0, 256, (1, 64))
    with torch.no_grad():
        cache, _ = model.encode(ids)
        queries, keys = page_bookmarks(model, ids[0])
    torch.testing.assert_close(keys, cache.bookmark_keys[:8], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(queries, cache.page_queries[:8], rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ labels, loss, recall
@pytest.mark.parametrize("arch,chunk", [("llama", 1 << 27), ("qwen3", 600), ("mistral", 1)])
def test_page_mass_equals_eager_attention_weights(tiny_dirs, arch, chunk):
    """The chunked page mass against HF's eager attention probabilities (the plain reference)."""
    model = RetroLM.from_pretrained(tiny_dirs[arch], page_size=8)
    eager = RetroLM.from_pretrained(tiny_dirs[arch], page_size=8).base_model
    eager.set_attn_implementation("eager")
    ids = torch.randint(0, 256, (1, 56))
    observer = PageMassObserver(8, max_chunk_elements=chunk)
    with torch.no_grad():
        model.base_model(input_ids=ids, retrolm_observer=observer, use_cache=False)
        attentions = eager(input_ids=ids, output_attentions=True).attentions  # per layer [1, H, T, T]
    probs = torch.stack(attentions).sum(dim=(0, 2))[0]  # [T, T] summed over layers and heads
    expected = probs.view(7, 8, 7, 8).sum(dim=(1, 3)) / (len(attentions) * attentions[0].shape[1] * 8)
    mass = observer.page_mass()
    torch.testing.assert_close(mass, expected, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(mass.sum(dim=1), torch.ones(7))
    assert torch.all(mass.triu(diagonal=1) == 0), "no mass on future pages"

    # focused label: each (layer, head, token) distribution over pages, weighted by its share on candidates
    per_token = torch.stack(attentions)[:, 0].reshape(-1, 56, 7, 8).sum(dim=3)  # [layers*H, T, N]
    _, candidates = eligible_pages(torch.arange(7), 7, 1, 1)
    far = per_token * candidates.repeat_interleave(8, dim=0)
    focused = (far * far.sum(dim=2, keepdim=True)).sum(dim=0).view(7, 8, 7).sum(dim=1) / (per_token.shape[0] * 8)
    torch.testing.assert_close(observer.focused_mass(), focused, rtol=1e-4, atol=1e-7)
    assert torch.all(observer.focused_mass()[~candidates] == 0), "focused labels live on candidates only"


def test_retrieval_loss_is_minimal_at_the_target_and_recall_counts_hits():
    mass = torch.tensor([[0.1, 0.6, 0.2, 0.1, 0.0], [0.0, 0.1, 0.1, 0.7, 0.1]])
    candidates = torch.tensor([[True, True, True, True, False], [False, True, True, True, False]])
    at_target = retrieval_loss(mass.clamp(min=1e-12).log(), mass, candidates, temperature=1.0)
    for _ in range(5):
        other = retrieval_loss(torch.randn(2, 5), mass, candidates, temperature=1.0)
        assert other > at_target
    relevant = top_pages(mass, candidates, 1)
    assert relevant.nonzero().tolist() == [[0, 1], [1, 3]]
    right = torch.tensor([[0.0, 5.0, 1.0, 0.0, 9.0], [0.0, 0.0, 1.0, 3.0, 9.0]])  # page 4 is never a candidate
    wrong = torch.tensor([[0.0, 0.0, 5.0, 0.0, 0.0], [0.0, 3.0, 1.0, 0.0, 0.0]])
    assert recall_at_k(right, relevant, candidates, 1) == (1.0, 2)
    assert recall_at_k(wrong, relevant, candidates, 1) == (0.0, 2)
    assert recall_at_k(right, relevant, candidates, 3)[1] == 1, "a row with <= k candidates has no choice"


def _reference_copy_labels(ids: list[int], page_size: int, ngram: int) -> torch.Tensor:
    """copy_labels written plainly: each token's n-gram, the earlier pages where it also ends, equal shares."""
    pages = len(ids) // page_size
    labels = torch.zeros(pages, pages)
    for t in range(ngram - 1, len(ids)):
        gram = ids[t - ngram + 1: t + 1]
        holders = {s // page_size for s in range(ngram - 1, t) if ids[s - ngram + 1: s + 1] == gram}
        for j in holders:
            labels[t // page_size, j] += 1 / len(holders)
    return labels


@pytest.mark.parametrize("page_size,pages,ngram,vocab,chunk", [
    (4, 3, 2, 3, 1 << 26), (8, 6, 3, 4, 1 << 26), (4, 9, 5, 2, 64), (16, 5, 8, 2, 100), (8, 4, 2, 50, 1 << 26)])
def test_copy_labels_match_a_plain_reference(page_size, pages, ngram, vocab, chunk):
    generator = torch.Generator().manual_seed(page_size * 100 + pages)
    ids = torch.randint(0, vocab, (page_size * pages,), generator=generator)
    got = copy_labels(ids, page_size, ngram, max_chunk_elements=chunk)
    torch.testing.assert_close(got, _reference_copy_labels(ids.tolist(), page_size, ngram), rtol=1e-5, atol=1e-5)
    assert torch.all(got.triu(1) == 0), "a page copies only from itself or earlier pages"


def test_copy_labels_point_at_the_page_a_rare_span_came_from():
    generator = torch.Generator().manual_seed(0)
    ids = torch.arange(1000, 1000 + 8 * 16)  # no n-gram repeats
    ids[6 * 16 + 3: 6 * 16 + 13] = ids[2 * 16 + 1: 2 * 16 + 11].clone()  # page 6 repeats 10 tokens of page 2
    ids[4 * 16:5 * 16] = torch.randint(0, 2, (16,), generator=generator)  # a page of boilerplate
    ids[7 * 16:8 * 16] = ids[4 * 16:5 * 16]  # repeated later
    labels = copy_labels(ids, 16, 4)
    assert labels[6, 2] == 7 and labels[6].sum() == 7, "10 copied tokens end 7 four-token n-grams"
    assert labels[3].sum() == 0 and labels[1].sum() == 0
    assert labels[7, 4] > 0 and labels[7, :4].sum() == 0


def test_mixed_labels_blend_rows_and_keep_the_label_a_row_has():
    attention = torch.tensor([[0.0, 2.0, 2.0, 0.0], [0.0, 1.0, 3.0, 0.0], [0.0, 0.0, 0.0, 0.0], [9.0, 0.0, 0.0, 0.0]])
    copies = torch.tensor([[0.0, 0.0, 5.0, 5.0], [0.0, 0.0, 0.0, 0.0], [0.0, 4.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    candidates = torch.tensor([[False, True, True, True]] * 4)
    mixed = mixed_labels(attention, copies, candidates, 0.25)
    torch.testing.assert_close(mixed[0], torch.tensor([0.0, 0.375, 0.5, 0.125]))  # 0.75 x (.5,.5,0) + .25 x (0,.5,.5)
    torch.testing.assert_close(mixed[1], torch.tensor([0.0, 0.25, 0.75, 0.0]), msg="no copies: attention alone")
    torch.testing.assert_close(mixed[2], torch.tensor([0.0, 1.0, 0.0, 0.0]), msg="no attention: copies alone")
    assert mixed[3].sum() == 0, "mass off the candidates is not a label"


def _planted_recall(retriever: PageRetriever, embed, documents) -> float:
    hits = rows = 0
    for ids, planted in documents:
        with torch.no_grad():
            queries, keys = retriever(embed(ids.view(PAGES, PAGE)), torch.full((PAGES,), PAGE))
        scores = score_pages(queries[:-1], keys)  # row m-1 ranks pages for page m
        _, candidates = eligible_pages(torch.arange(1, PAGES), PAGES, 1, 1)
        for m, j in planted.items():
            best = scores[m - 1].masked_fill(~candidates[m - 1], float("-inf")).argmax()
            hits += int(best == j)
            rows += 1
    return hits / rows


SMALL_RETRIEVER = {"num_layers": 1, "hidden_size": 128, "num_heads": 4, "intermediate_size": 256}


def _train_on_planted_documents(tmp_path, llm: str, **values) -> tuple[dict, list]:
    """Stage 1 (200 steps) on 200 planted documents; returns (results, the 8 held-out documents)."""
    generator = torch.Generator().manual_seed(0)
    documents = [planted_document(generator) for _ in range(208)]
    stack = np.stack([d[0].numpy() for d in documents])
    data = write_packed(str(tmp_path / "data"), stack[:200], stack[200:], PAGE)
    config = write_config(str(tmp_path / "stage1.json"), model=llm, data=data, output_dir=str(tmp_path / "out"),
                          retrolm={"page_size": PAGE, "top_k": 1, "retriever": SMALL_RETRIEVER}, max_steps=200,
                          learning_rate=3e-4, warmup_steps=10, eval_sequences=8, report_to="none", save_steps=500,
                          **values)
    return run("retriever", config, DS_ZERO2), documents[200:]


def _planted_recall_before_and_after(tmp_path, llm: str, held_out) -> tuple[float, float]:
    fresh = RetroLM.from_pretrained(llm, page_size=PAGE, top_k=1, retriever=SMALL_RETRIEVER, init_retriever=True)
    trained = RetroLM.from_pretrained(str(tmp_path / "out"))
    embed = fresh.base_model.get_input_embeddings()
    return _planted_recall(fresh.retriever, embed, held_out), _planted_recall(trained.retriever, embed, held_out)


def test_stage1_recall_rises_on_a_planted_task(tmp_path):
    """The LLM's attention labels the planted page; the trained retriever finds it, a fresh one does not."""
    llm = matching_llm(str(tmp_path / "llm"))
    results, held_out = _train_on_planted_documents(tmp_path, llm)

    print("trainer recall before/after:", results["eval_before"]["recall"], results["eval_after"]["recall"])
    losses = [r["loss"] for r in read_metrics(str(tmp_path / "out")) if "loss" in r]
    assert all(math.isfinite(x) for x in losses) and np.mean(losses[-10:]) < np.mean(losses[:10])
    before, after = _planted_recall_before_and_after(tmp_path, llm, held_out)
    print("planted recall@1 before/after:", before, after)
    assert before < 0.5 and after >= 0.9, (before, after)
    # the trainer's own recall (rows that need retrieval, against the focused labels) rises too
    assert results["eval_after"]["recall"] > results["eval_before"]["recall"] + 0.15


def test_stage1_learns_from_copy_labels_where_attention_says_nothing(tmp_path):
    """With an LLM whose attention is uniform (no label), copy labels alone teach the planted task (without
    them the same run ends at recall@1 0.06)."""
    llm = matching_llm(str(tmp_path / "llm"), scale=0.0)  # zero queries and keys: attention is uniform
    _, held_out = _train_on_planted_documents(tmp_path, llm, copy_label_weight=1.0, copy_label_ngram=2)
    before, after = _planted_recall_before_and_after(tmp_path, llm, held_out)
    assert before < 0.5 and after >= 0.9, (before, after)


# ------------------------------------------------------------------ stage 2 learns; resume is exact
def _pattern_data(directory: str, page_size: int = 16, seq_len: int = 128, seed: int = 1) -> str:
    """A learnable toy: each sequence is one of three fixed 16-token motifs repeated, from a random phase."""
    generator = torch.Generator().manual_seed(seed)
    motifs = [torch.randint(0, 256, (16,), generator=generator) for _ in range(3)]
    rows = []
    for i in range(24):
        phase = int(torch.randint(0, 16, (1,), generator=generator))
        rows.append(motifs[i % 3].roll(phase).repeat(seq_len // 16).numpy())
    stack = np.stack(rows)
    return write_packed(directory, stack[:20], stack[20:], page_size)


def _stage2_config(tmp_path, tiny_dirs, name, **values):
    base = dict(model=tiny_dirs["llama"], data=_pattern_data(str(tmp_path / "data")),
                output_dir=str(tmp_path / name), retrolm={"page_size": 16, "top_k": 2}, max_steps=6,
                learning_rate=1e-2, warmup_steps=1, eval_sequences=2, save_steps=2, report_to="none",
                lora={"r": 4, "alpha": 8, "dropout": 0.1})
    return write_config(str(tmp_path / f"{name}.json"), **{**base, **values})


def test_stage2_loss_decreases_and_output_is_a_checkpoint(tmp_path, tiny_dirs):
    results = run("post_train", _stage2_config(tmp_path, tiny_dirs, "out", max_steps=12), DS_ZERO2)
    assert results["eval_after"]["lm_loss"] < results["eval_before"]["lm_loss"] - 1.0
    assert results["trainable_parameters"] > 0
    loaded = RetroLM.from_pretrained(str(tmp_path / "out"))
    assert hasattr(loaded.base_model, "peft_config"), "the LoRA adapter is part of the checkpoint"
    ids = torch.from_numpy(np.load(str(tmp_path / "data" / "held_out.npy"))[:1].astype(np.int64))
    base = RetroLM.from_pretrained(tiny_dirs["llama"], page_size=16, top_k=2)
    with torch.no_grad():
        trained_loss = torch.nn.functional.cross_entropy(loaded(input_ids=ids).logits[0, :-1], ids[0, 1:])
        base_loss = torch.nn.functional.cross_entropy(base(input_ids=ids).logits[0, :-1], ids[0, 1:])
    assert trained_loss < base_loss - 1.0


def test_resume_after_a_stop_reproduces_the_loss_curve(tmp_path, tiny_dirs):
    run("post_train", _stage2_config(tmp_path, tiny_dirs, "straight"), DS_ZERO2)
    assert run("post_train", _stage2_config(tmp_path, tiny_dirs, "resumed", stop_at_step=3), DS_ZERO2) is None
    assert not os.path.exists(tmp_path / "resumed" / "retrolm_config.json"), "no checkpoint exported at a stop"
    run("post_train", _stage2_config(tmp_path, tiny_dirs, "resumed"), DS_ZERO2)
    straight = [r["loss"] for r in read_metrics(str(tmp_path / "straight")) if "loss" in r]
    resumed = [r["loss"] for r in read_metrics(str(tmp_path / "resumed")) if "loss" in r]
    assert len(straight) == len(resumed) == 6
    np.testing.assert_allclose(resumed, straight, rtol=1e-5)


@pytest.mark.parametrize("fraction", [0.0, 0.25, 1 / 3, 0.5, 0.9])
def test_replay_steps_are_spread_evenly_and_each_source_walks_its_own_order(fraction):
    sources = [_source_of(i, fraction) for i in range(60)]
    replays = [ordinal for source, ordinal in sources if source == "replay"]
    plain = [ordinal for source, ordinal in sources if source == "data"]
    assert replays == list(range(len(replays))) and plain == list(range(len(plain)))
    for n in range(1, 61):
        assert sum(source == "replay" for source, _ in sources[:n]) == math.floor(n * fraction + 1e-9)


def test_stage2_replay_trains_on_both_sources_and_reports_the_replay_loss(tmp_path, tiny_dirs, monkeypatch):
    from retrolm.training import objectives

    lengths = []
    real_forward = objectives.PostTrainObjective.forward

    def recording(self, input_ids):
        lengths.append(input_ids.shape[1])
        return real_forward(self, input_ids)

    monkeypatch.setattr(objectives.PostTrainObjective, "forward", recording)
    replay = _pattern_data(str(tmp_path / "replay"), seq_len=64, seed=2)  # other motifs, four pages a sequence
    results = run("post_train", _stage2_config(tmp_path, tiny_dirs, "out", max_steps=40, replay_data=replay,
                                               replay_fraction=0.5), DS_ZERO2)
    assert lengths == [64 if _source_of(i, 0.5)[0] == "replay" else 128 for i in range(40)]
    before, after = results["eval_before"], results["eval_after"]
    assert after["replay_lm_loss"] < before["replay_lm_loss"] - 1.0, "the replay split is evaluated, and learned"
    assert after["lm_loss"] < before["lm_loss"] - 1.0


# ------------------------------------------------------------------ DeepSpeed launcher, 2 CPU processes
def test_deepspeed_two_processes_run_both_stages(tmp_path, tiny_dirs):
    deepspeed = shutil.which("deepspeed", path=os.path.dirname(sys.executable)) or shutil.which("deepspeed")
    assert deepspeed, "the deepspeed launcher is installed with the [train] extra"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_") and k not in ("RANK", "WORLD_SIZE",
                                                                                              "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(PYTHONPATH=ROOT, HOME=str(tmp_path))  # no wandb key anywhere: logging must go offline by itself
    data = _pattern_data(str(tmp_path / "data"))
    stage1 = write_config(str(tmp_path / "s1.json"), model=tiny_dirs["qwen2"], data=data,
                          output_dir=str(tmp_path / "s1"), retrolm={"page_size": 16, "top_k": 2}, max_steps=3,
                          eval_sequences=2, report_to="wandb")
    stage2 = write_config(str(tmp_path / "s2.json"), model=str(tmp_path / "s1"), data=data,
                          output_dir=str(tmp_path / "s2"), max_steps=3, eval_sequences=2, report_to="none",
                          learning_rate=1e-2, train_retriever=True)
    for script, config, ds in (("train_retriever.py", stage1, DS_ZERO2), ("post_train.py", stage2, DS_ZERO3)):
        done = subprocess.run([deepspeed, "--num_gpus", "2", os.path.join(ROOT, "train", script), "--config", config,
                               "--deepspeed", ds], env=env, cwd=str(tmp_path), capture_output=True, text=True,
                              timeout=900)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for stage, name in (("retriever", "s1"), ("post_train", "s2")):
        with open(tmp_path / name / "train_results.json") as f:
            results = json.load(f)
        assert results["stage"] == stage and results["world_size"] == 2 and results["steps"] == 3
        losses = [r["loss"] for r in read_metrics(str(tmp_path / name)) if "loss" in r]
        assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    assert results["zero_stage"] == 3 and "recall" in results["eval_after"]
    assert any(d.startswith("offline-run") for d in os.listdir(tmp_path / "s1" / "wandb"))
    loaded = RetroLM.from_pretrained(str(tmp_path / "s2"))
    assert loaded.config.page_size == 16 and hasattr(loaded.base_model, "peft_config")
    assert loaded.generate(input_ids=torch.randint(0, 256, (1, 70)), max_new_tokens=3).shape == (1, 73)


# ------------------------------------------------------------------ bad configs fail before any compute
def _data_dir(tmp_path, seq_len=64):
    rows = np.zeros((4, seq_len), dtype=np.int32)
    return write_packed(str(tmp_path / f"d{seq_len}"), rows[:3], rows[3:], 16)


@pytest.mark.parametrize("values,ds,match", [
    ({"no_such_key": 1}, None, "unknown key"),
    ({"retrolm": {"page_size": 16, "top_kk": 3}}, None, "unknown RetroLM option"),
    ({"max_steps": 0}, None, "max_steps"),
    ({"finetune": "qlora"}, None, "finetune"),
    ({"finetune": "none"}, None, "nothing to train"),
    ({"retrolm": {"page_size": 24}}, None, "whole pages"),
    ({"data": "/nonexistent/data"}, None, "prepare_data.py"),
    ({}, {"train_micro_batch_size_per_gpu": 4}, "train_micro_batch_size_per_gpu"),
    ({}, {"scheduler": {"type": "WarmupLR"}}, "scheduler"),
    ({}, {"fp16": {"enabled": True}}, "fp16"),
    ({"copy_label_weight": 1.5}, None, r"copy_label_weight must be a number in \[0, 1\]"),
    ({"copy_label_ngram": 1}, None, "copy_label_ngram must be an integer >= 2"),
    ({"replay_fraction": 0.25}, None, "needs replay_data"),
    ({"replay_fraction": 1.0, "replay_data": "x"}, None, r"replay_fraction must be a number in \[0, 1\)"),
    ({"replay_fraction": True, "replay_data": "x"}, None, "replay_fraction must be"),
    ({"replay_data": "x"}, None, "never be read"),
    ({"replay_fraction": 0.25, "replay_data": "/nonexistent/replay"}, None, "not prepared training data"),
])
def test_bad_configs_fail_before_any_compute(tmp_path, values, ds, match):
    base = dict(model="/nonexistent/model", data=_data_dir(tmp_path), output_dir=str(tmp_path / "out"),
                retrolm={"page_size": 16})
    config = write_config(str(tmp_path / "c.json"), **{**base, **values})
    ds_path = DS_ZERO2 if ds is None else write_config(str(tmp_path / "ds.json"), **ds)
    with pytest.raises(RetroLMError, match=match):
        run("post_train", config, ds_path)
    assert not os.path.exists(tmp_path / "out"), "nothing written"


def test_command_line_reports_config_errors_in_one_line(tmp_path):
    done = subprocess.run([sys.executable, os.path.join(ROOT, "train", "post_train.py"), "--config",
                           str(tmp_path / "missing.json"), "--deepspeed", DS_ZERO2], capture_output=True, text=True)
    assert done.returncode == 2
    assert "training config" in done.stderr and "Traceback" not in done.stderr


def test_replay_is_refused_in_stage1():
    config = TrainConfig(model="m", data="d", output_dir="o", replay_data="r", replay_fraction=0.25)
    config.validate("post_train")
    with pytest.raises(RetroLMError, match="replay_fraction is stage 2's"):
        config.validate("retriever")


def test_replay_sequences_shorter_than_two_pages_are_refused(tmp_path):
    config = write_config(str(tmp_path / "c.json"), model="/nonexistent/model", data=_data_dir(tmp_path),
                          output_dir=str(tmp_path / "out"), retrolm={"page_size": 16},
                          replay_data=_data_dir(tmp_path, seq_len=16), replay_fraction=0.25)
    with pytest.raises(RetroLMError, match="replay_data: sequences of 16 tokens hold fewer than two pages"):
        run("post_train", config, DS_ZERO2)
    assert not os.path.exists(tmp_path / "out"), "nothing written"
