"""Validation needles in held-out prose: samples mark their value, stage 1 measures them at every evaluation, and
keep="needle_recall" exports the retriever of the best evaluation (not the last step's)."""
import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from retrolm import RetroLM, RetroLMError
from retrolm.training import needle_validation
from retrolm.training.config import TrainConfig, load_deepspeed_config
from retrolm.training.loop import run
from retrolm.training.needle_recall import (VALIDATION_FORMATS, answer_pages, needle_found, validation_samples,
                                            value_pages)
from retrolm.training.tracking import read_metrics
from training_toys import write_config, write_packed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DS_ZERO2 = os.path.join(ROOT, "configs", "ds_zero2.json")
DS_ZERO3 = os.path.join(ROOT, "configs", "ds_zero3.json")
PAGE = 16
KNOBS = {"page_size": PAGE, "top_k": 2, "retriever": {"num_layers": 1, "hidden_size": 64, "num_heads": 2,
                                                     "intermediate_size": 128}}


def test_samples_mark_their_value_and_depend_on_the_seed_only(tiny_dirs):
    tokenizer = RetroLM.from_pretrained(tiny_dirs["llama"]).tokenizer
    samples = validation_samples(tokenizer, [400, 1500], 2 * VALIDATION_FORMATS, seed=3)
    for length, group in samples.items():
        for sample in group:
            first, last = sample.value_tokens
            assert tokenizer.decode(sample.ids[0, first:last + 1]) == sample.value
            assert 0.9 * length <= sample.ids.shape[1] <= 1.1 * length
    again = validation_samples(tokenizer, [400], 3, seed=3)[400]
    other = validation_samples(tokenizer, [400], 3, seed=4)[400]
    assert all(torch.equal(a.ids, b.ids) for a, b in zip(again, samples[400]))
    assert not any(torch.equal(a.ids, b.ids) for a, b in zip(other, samples[400]))


def test_a_needle_counts_as_found_only_when_its_pages_are_retrieved(tiny_dirs):
    samples = validation_samples(RetroLM.from_pretrained(tiny_dirs["llama"]).tokenizer, [900], 4, seed=0)[900]
    every = RetroLM.from_pretrained(tiny_dirs["llama"], page_size=PAGE, top_k=64, init_retriever=True,
                                    scorer="trained")
    assert all(needle_found(every, sample) for sample in samples)  # top_k covers every page
    few = RetroLM.from_pretrained(tiny_dirs["llama"], page_size=PAGE, top_k=1, init_retriever=True,
                                  scorer="trained")
    found = []
    for sample in samples:
        found.append(needle_found(few, sample))
        retrieved = answer_pages(few, sample.ids.shape[1])
        assert len(retrieved) <= few.config.max_attended_pages + 1 < sample.ids.shape[1] // PAGE
        assert found[-1] == (value_pages(sample, PAGE) <= retrieved)
    assert not all(found), "an untrained retriever picking 1 of ~50 pages misses some needles"


def _stage1_config(tmp_path, tiny_dirs, name, **values) -> str:
    generator = torch.Generator().manual_seed(5)
    rows = torch.randint(0, 256, (12, 8 * PAGE), generator=generator).numpy().astype(np.int32)
    data = write_packed(str(tmp_path / "data"), rows[:10], rows[10:], PAGE)
    base = dict(model=tiny_dirs["llama"], data=data, output_dir=str(tmp_path / name), retrolm=KNOBS, max_steps=4,
                learning_rate=3e-2, warmup_steps=0, min_lr_ratio=1.0, eval_sequences=1, eval_steps=2,
                save_steps=100, report_to="none", needle_eval_samples=2, needle_eval_tokens=[400])
    return write_config(str(tmp_path / f"{name}.json"), **{**base, **values})


def _retriever(directory: str) -> dict:
    return load_file(os.path.join(directory, "retriever.safetensors"))


def test_stage1_measures_validation_needles_at_every_evaluation(tmp_path, tiny_dirs):
    results = run("retriever", _stage1_config(tmp_path, tiny_dirs, "measured"), DS_ZERO2)
    history = results["needle_recall"]
    assert [entry["step"] for entry in history] == [0, 2, 4]
    assert all(entry["needle_recall"] in (0.0, 50.0, 100.0) for entry in history)  # two samples per evaluation
    logged = [row["eval/needle_recall@400"] for row in read_metrics(str(tmp_path / "measured"))
              if "eval/needle_recall@400" in row]
    assert logged == [entry["needle_recall"] for entry in history]
    assert "kept" not in results


def test_keep_needle_recall_exports_the_best_evaluations_retriever(tmp_path, tiny_dirs, monkeypatch):
    # constant learning rate: a 2-step run's weights are the 4-step run's weights at step 2
    reference = run("retriever", _stage1_config(tmp_path, tiny_dirs, "two_steps", max_steps=2, eval_steps=0),
                    DS_ZERO2)
    last = run("retriever", _stage1_config(tmp_path, tiny_dirs, "last"), DS_ZERO2)
    found = iter([False, False, True, True, True, False])  # two samples per evaluation: 0%, 100%, 50%
    monkeypatch.setattr(needle_validation, "needle_found", lambda model, sample: next(found))
    kept = run("retriever", _stage1_config(tmp_path, tiny_dirs, "kept", keep="needle_recall"), DS_ZERO2)
    assert [e["needle_recall"] for e in kept["needle_recall"]] == [0.0, 100.0, 50.0]
    assert kept["kept"] == {"step": 2, "needle_recall": 100.0}
    step_two, step_four = _retriever(str(tmp_path / "two_steps")), _retriever(str(tmp_path / "last"))
    exported = _retriever(str(tmp_path / "kept"))
    assert all(torch.equal(exported[name], step_two[name]) for name in step_two)
    assert any(not torch.equal(exported[name], step_four[name]) for name in step_four)
    assert reference["steps"] == 2 and last["steps"] == 4
    with open(tmp_path / "kept" / needle_validation.BEST_RECORD) as f:
        assert json.load(f)["best"] == {"step": 2, "needle_recall": 100.0}


@pytest.mark.parametrize("values, match", [
    ({"keep": "best"}, "keep must be one of"),
    ({"keep": "needle_recall"}, "needs needle_eval_samples >= 1"),
    ({"needle_eval_samples": -1}, "needle_eval_samples must be an integer >= 0"),
    ({"needle_eval_samples": 2, "needle_eval_tokens": [64]}, "too short to need retrieval"),
    ({"needle_eval_samples": 2, "needle_eval_tokens": []}, "non-empty list"),
])
def test_bad_needle_settings_are_refused(values, match):
    config = TrainConfig(model="m", data="d", output_dir="o", retrolm={"page_size": PAGE, "top_k": 2}, **values)
    with pytest.raises(RetroLMError, match=match):
        config.validate("retriever")


def test_keep_needle_recall_is_stage_one_only_and_refuses_zero3():
    config = TrainConfig(model="m", data="d", output_dir="o", needle_eval_samples=2, keep="needle_recall")
    with pytest.raises(RetroLMError, match="stage 2 exports the last step's weights"):
        config.validate("post_train")
    with pytest.raises(RetroLMError, match="ZeRO stage 3"):
        load_deepspeed_config(DS_ZERO3, config, on_gpu=False)
