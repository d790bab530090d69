"""The default model's pipeline pieces: offline documents, from-scratch pretraining, the whole build at toy size."""
import json
import os
import random
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from retrolm import RetroLM, RetroLMError
from retrolm.training.pretrain import load_pretrain_config, pretrain, skipped_positions
from train import corpus

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_documents_are_exact_ascii_and_end_with_an_answered_task():
    for seed in range(40):
        text = corpus.document(corpus.DocumentSpec(seed, 1022, 0.0, 300))
        assert len(text) == 1022 and text.isascii()
        assert "special magic" in text or "VAR " in text, "every non-text document holds a task"
    text = corpus.task_text("niah_single_2", 1000, seed=3, index=0)
    value = text.rsplit(" is ", 1)[1].rstrip(".")
    assert value.isdigit() and text.count(value) == 2, "the answer repeats the needle's value"
    vt = corpus.task_text("vt", 800, seed=1, index=0)  # under RULER's shortest vt: the short form
    assert len(vt) <= 800 and vt.startswith("Memorize") and vt.count("Memorize") == 1


def test_dense_recall_asks_each_question_long_after_its_needle():
    text = corpus.dense_recall_text(random.Random(5), 20000, gap=2048)
    asked = text.split("What is the special magic number for ")[1:]
    assert len(asked) >= 3
    for question in asked:
        key = question.split(" mentioned")[0]
        value = question.split("provided text is ")[1].split(".")[0]
        needle = f"One of the special magic numbers for {key} is: {value}."
        question_at = text.index(f"What is the special magic number for {key} ")
        assert text.index(needle) + 2048 <= question_at


ANSWERED = re.compile(r"What is the special magic number for (.+?) mentioned in the provided text\? The special "
                      r"magic number for \1 mentioned in the provided text is (\d+)\.")


def _orphan_questions(text: str) -> int:
    """Whole answered questions of a dense recall text whose needle is not in the text (a question cut short by
    the end of the document is not counted: it answers nothing)."""
    return sum(f"One of the special magic numbers for {key} is: {value}." not in text
               for key, value in ANSWERED.findall(text))


def test_dense_texts_cut_at_the_end_never_ask_about_a_missing_needle():
    spec = dict(length=8190, text_fraction=0.0, min_task=300, dense_fraction=1.0)
    front = [corpus.document(corpus.DocumentSpec(seed, **spec)) for seed in range(30)]
    end = [corpus.document(corpus.DocumentSpec(seed, **spec, cut_end=True)) for seed in range(30)]
    assert all(len(text) == 8190 for text in end)
    assert sum(_orphan_questions(text) for text in front) > 0  # the shipped corpus's known defect is real here
    assert sum(_orphan_questions(text) for text in end) == 0


def test_stdlib_docstrings_are_offline_english():
    docs = corpus.stdlib_docstrings()
    assert len(docs) > 500 and all(d.isascii() and len(d) >= 120 for d in docs)


def test_skipped_positions_stay_increasing_and_below_the_limit():
    generator = torch.Generator().manual_seed(0)
    positions = skipped_positions(256, 64, 1000, 0.5, generator)
    steps = positions[:, 1:] - positions[:, :-1]
    assert torch.all(steps >= 1) and int(positions.max()) < 1000
    jumped = (steps > 1).any(dim=1)
    assert 0.3 < float(jumped.float().mean()) < 0.7, "about half of the rows skip"
    assert torch.all((steps > 1).sum(dim=1) <= 1), "one jump per row at most"
    assert torch.equal(skipped_positions(4, 64, 64, 1.0, generator), torch.arange(64).expand(4, 64))


def test_pretraining_config_errors_are_clear(tmp_path):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"model": {}, "max_steps": 0}))
    with pytest.raises(RetroLMError, match="needs 'data'"):
        load_pretrain_config(str(config))
    with pytest.raises(RetroLMError, match="max_steps must be an integer >= 1"):
        load_pretrain_config(str(config), ["data=x", "output_dir=y"])
    with pytest.raises(RetroLMError, match="unknown key"):
        load_pretrain_config(str(config), ["data=x", "output_dir=y", "max_steps=3", "batch=2"])
    with pytest.raises(RetroLMError, match="save_steps must be an integer >= 0"):
        load_pretrain_config(str(config), ["data=x", "output_dir=y", "max_steps=3", "save_steps=-1"])


def test_pretraining_learns_and_saves_a_loadable_model(tmp_path):
    from training_toys import write_packed

    rows = np.tile(np.arange(64, dtype=np.int32) % 7 + 60, (40, 1))  # a repeating pattern: learnable fast
    data = write_packed(str(tmp_path / "data"), rows[:32], rows[32:], 16)
    model = {"vocab_size": 320, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
             "num_attention_heads": 2, "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 64,
             "bos_token_id": 256, "eos_token_id": 257, "pad_token_id": 258}
    config = tmp_path / "p.json"
    config.write_text(json.dumps({"model": model, "data": data, "output_dir": str(tmp_path / "base"),
                                  "batch_size": 8, "max_steps": 60, "learning_rate": 1e-2, "warmup_steps": 5,
                                  "max_position": 256, "logging_steps": 10, "eval_sequences": 8}))
    results = pretrain(load_pretrain_config(str(config)))
    assert results["train_loss_last_50"] < results["train_loss_first_50"] / 3  # from 4.4 nats to near 0
    assert results["held_out_loss"] < 0.5
    loaded = RetroLM.from_pretrained(str(tmp_path / "base"))
    assert loaded.base_model.config.max_position_embeddings == 64
    assert sorted(os.listdir(tmp_path)) == ["base", "data", "p.json"], "no staging directory left behind"


def _toy_pretrain_config(tmp_path, **overrides):
    from training_toys import write_packed

    rng = np.random.default_rng(0)
    rows = rng.integers(60, 90, size=(40, 64), dtype=np.int32)
    data = write_packed(str(tmp_path / "data"), rows[:32], rows[32:], 16)
    model = {"vocab_size": 320, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
             "num_attention_heads": 2, "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 64,
             "bos_token_id": 256, "eos_token_id": 257, "pad_token_id": 258}
    values = {"model": model, "data": data, "output_dir": str(tmp_path / "base"), "batch_size": 8,
              "max_steps": 9, "learning_rate": 1e-2, "warmup_steps": 2, "max_position": 256, "eval_sequences": 8,
              "save_steps": 3, "bf16": False} | overrides
    path = tmp_path / "p.json"
    path.write_text(json.dumps(values))
    return load_pretrain_config(str(path))


def test_compiled_pretraining_learns_what_the_plain_module_learns(tmp_path):
    plain = _toy_pretrain_config(tmp_path / "plain", max_steps=20)
    compiled = _toy_pretrain_config(tmp_path / "compiled", max_steps=20, compile=True)
    results = [pretrain(plain)]
    torch._dynamo.utils.counters.clear()
    results.append(pretrain(compiled))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1, "the training forward went through inductor"
    assert results[1]["compiled"] and not results[0]["compiled"]
    weights = [load_file(os.path.join(c.output_dir, "model.safetensors")) for c in (plain, compiled)]
    assert sorted(weights[1]) == sorted(weights[0]), "the plain module's names, no torch.compile wrapper prefix"
    for name in weights[0]:  # same start, same batches: inductor's fused float32 kernels round differently only
        torch.testing.assert_close(weights[1][name], weights[0][name], atol=2e-3, rtol=2e-3)
    assert abs(results[1]["train_loss_last_50"] - results[0]["train_loss_last_50"]) < 1e-2


def test_interrupted_pretraining_resumes_to_the_uninterrupted_weights(tmp_path, monkeypatch):
    """Killed after step 5 with resume state at step 3, a second start ends with an uninterrupted run's weights:
    model, optimizer, schedule, data order and position skips all continue where they were."""
    from retrolm.training import pretrain as pretraining
    from safetensors.torch import load_file

    whole = _toy_pretrain_config(tmp_path / "whole")
    pretrain(whole)
    config = _toy_pretrain_config(tmp_path / "resumed")
    calls = {"n": 0}
    real = pretraining.skipped_positions

    def interrupted(*args):
        calls["n"] += 1
        if calls["n"] == 6:  # inside step 6: steps 4-5 are lost, the state of step 3 is on disk
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(pretraining, "skipped_positions", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pretrain(config)
    assert not os.path.exists(config.output_dir) and os.path.isfile(pretraining.resume_path(config))
    monkeypatch.setattr(pretraining, "skipped_positions", real)
    results = pretrain(config)
    assert results["steps"] == 9
    assert sorted(os.listdir(tmp_path / "resumed")) == ["base", "data", "p.json"], "resume state removed at the end"
    expected = load_file(os.path.join(whole.output_dir, "model.safetensors"))
    got = load_file(os.path.join(config.output_dir, "model.safetensors"))
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0, msg=name)


def test_pretraining_resume_state_of_another_config_is_refused(tmp_path, monkeypatch):
    from retrolm.training import pretrain as pretraining

    config = _toy_pretrain_config(tmp_path)
    monkeypatch.setattr(pretraining, "skipped_positions", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):  # no state yet: interrupted in step 1
        pretrain(config)
    assert not os.path.exists(pretraining.resume_path(config))
    monkeypatch.undo()
    calls = {"n": 0}
    real = pretraining.skipped_positions

    def interrupted(*args):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(pretraining, "skipped_positions", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pretrain(config)
    monkeypatch.undo()
    with pytest.raises(RetroLMError, match="differs in learning_rate.*delete the file"):
        pretrain(_toy_pretrain_config(tmp_path, learning_rate=2e-2))
    assert pretrain(_toy_pretrain_config(tmp_path, logging_steps=1))["steps"] == 9  # logging is not learning


@pytest.mark.parametrize("options,message", [
    (["--post-train", "--stage2-replay", "1.5"], "replay_fraction must be a number in"),
    (["--post-train", "--stage2-set", "learning_rat=1"], "unknown key"),
    (["--stage2-set", "learning_rate=1e-4"], "--stage2-set configure(s) stage 2, which runs only with --post-train"),
    (["--stage2-replay", "0.5", "--stop-after", "stage2"], "--stage2-replay, --stop-after stage2 configure(s)"),
    (["--stage1", "/nonexistent/stage1"], "is not a RetroLM checkpoint"),
    (["--drill-shapes", "plain,sideways"], "drill shapes must be some of plain, trailing, attribute, bare"),
    (["--drill-rejoined", "1.2"], "a share must be a number in [0, 1]; got '1.2'"),
    (["--drill-partial", "-1"], "a share must be a number in [0, 1]; got '-1'"),
    (["--drill-fraction", "half"], "a share must be a number in [0, 1]; got 'half'"),
])
def test_build_refuses_bad_options_in_one_line_before_any_work(tmp_path, options, message):
    done = subprocess.run([sys.executable, os.path.join(ROOT, "train", "build_default_model.py"), "--smoke",
                           "--work", str(tmp_path / "work")] + options, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert not os.path.exists(tmp_path / "work"), "a refused build writes nothing"


def test_build_pipeline_end_to_end_at_toy_size(tmp_path):
    """Every phase of train/build_default_model.py on a CPU (stage 2 too, with --post-train), then the output
    answers through RetroLM; without --post-train the export is stage 1's model, as shipped."""
    out = tmp_path / "model"
    build = [sys.executable, os.path.join(ROOT, "train", "build_default_model.py"), "--smoke", "--work",
             str(tmp_path / "work"), "--out", str(out), "--workers", "2", "--pretrain-set", "max_steps=12",
             "--post-train", "--stage2-replay", "0", "--stage2-set", "max_steps=3", "--drill-fraction", "0.3",
             "--stage-drill-fraction", "0.5", "--drill-shapes", "plain,bare", "--drill-rejoined", "0.5",
             "--drill-partial", "0.5", "--split-windows", "0.5"]
    stopped = subprocess.run(build + ["--stop-after", "pretrain"], capture_output=True, text=True, cwd=ROOT)
    assert stopped.returncode == 0, stopped.stderr[-2000:]
    results = json.load(open(tmp_path / "work" / "build_results.json"))
    assert "pretrain" in results["seconds"] and "stage1" not in results["seconds"], "--stop-after ends the build"
    assert not os.path.exists(tmp_path / "work" / "stage1") and not os.path.exists(out)
    done = subprocess.run(build, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("exists: skipped") == 5, "the second run goes on after pretraining"
    results = json.load(open(tmp_path / "work" / "build_results.json"))
    for phase in ("documents", "long_documents", "pretrain_data", "long_data", "pretrain", "stage1", "stage2",
                  "export"):
        assert phase in results["seconds"], phase
    assert results["pretrain"]["steps"] == 12 and results["stage2"]["steps"] == 3, "overrides reach their phase"
    assert results["stage1"]["steps"] == 4, "stage 1 keeps the smoke size"
    assert results["corpus"]["drill_fraction"] == 0.3 and results["corpus"]["stage_drill_fraction"] == 0.5
    assert results["corpus"]["drill_shapes"] == ["plain", "bare"] and results["corpus"]["drill_rejoined"] == 0.5
    assert results["corpus"]["split_windows"] == 0.5 and results["corpus"]["drill_partial"] == 0.5
    model = RetroLM.from_pretrained(str(out))
    assert model.config.neighbor_pages == 1, "the exported model keeps the shipped inference settings"
    assert os.path.isdir(out / "adapter") and os.path.isdir(out / "base")
    ids = model.tokenizer("hello " * 50, return_tensors="pt").input_ids
    assert model.generate(input_ids=ids, max_new_tokens=3, do_sample=False).shape[1] == ids.shape[1] + 3
    rerun = subprocess.run([sys.executable, os.path.join(ROOT, "train", "build_default_model.py"), "--smoke",
                            "--work", str(tmp_path / "work"), "--out", str(out), "--post-train"],
                           capture_output=True, text=True, cwd=ROOT)
    assert rerun.returncode == 0 and rerun.stdout.count("exists: skipped") == 8, "a finished build resumes as done"
    other_stage = subprocess.run([sys.executable, os.path.join(ROOT, "train", "build_default_model.py"), "--smoke",
                                  "--work", str(tmp_path / "work"), "--out", str(out)], capture_output=True, text=True,
                                  cwd=ROOT)
    assert other_stage.returncode == 2 and "holds the export of" in other_stage.stderr, other_stage.stderr[-2000:]
    assert os.path.isdir(out / "adapter"), "the refused build leaves the post-trained export as it was"
    work = tmp_path / "work"
    plain = subprocess.run([sys.executable, os.path.join(ROOT, "train", "build_default_model.py"), "--smoke",
                            "--work", str(tmp_path / "plain"), "--out", str(tmp_path / "plain_model"),
                            "--workers", "2", "--base", str(work / "base"), "--stage1", str(work / "stage1")],
                           capture_output=True, text=True, cwd=ROOT)
    assert plain.returncode == 0, plain.stderr[-2000:]
    results = json.load(open(tmp_path / "plain" / "build_results.json"))
    assert "stage2" not in results["seconds"] and "export" in results["seconds"] and not results["post_train"]
    assert not os.path.exists(tmp_path / "plain" / "pretrain-data"), "no replay windows are packed for no stage 2"
    stage1_only = RetroLM.from_pretrained(str(tmp_path / "plain_model"))
    assert not os.path.exists(tmp_path / "plain_model" / "adapter") and stage1_only.config.neighbor_pages == 1
    trained = RetroLM.from_pretrained(str(work / "stage1")).retriever.state_dict()
    for name, weight in stage1_only.retriever.state_dict().items():
        assert torch.equal(weight, trained[name].float()), name
    replayed = subprocess.run([sys.executable, os.path.join(ROOT, "train", "build_default_model.py"), "--smoke",
                               "--work", str(tmp_path / "replay"), "--out", str(tmp_path / "replay_model"),
                               "--workers", "2", "--base", str(work / "base"), "--stage1", str(work / "stage1"),
                               "--post-train", "--stage2-set", "max_steps=4"],
                              capture_output=True, text=True, cwd=ROOT)
    assert replayed.returncode == 0, replayed.stderr[-2000:]
    assert "(--stage1): skipped" in replayed.stdout and not os.path.exists(tmp_path / "replay" / "stage1")
    stage2 = json.load(open(tmp_path / "replay" / "stage2" / "train_results.json"))
    assert stage2["train_config"]["replay_fraction"] == 0.5, "--post-train replays half its steps by default"
    assert stage2["train_config"]["replay_data"] == str(tmp_path / "replay" / "pretrain-data")
    assert stage2["train_config"]["model"] == str(work / "stage1") and "replay_lm_loss" in stage2["eval_after"]
    assert RetroLM.from_pretrained(str(tmp_path / "replay_model")).config.neighbor_pages == 1
