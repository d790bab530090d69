"""Shipped configs load into RetroLMConfig (unknown or out-of-range knobs would raise)."""
import glob
import json
import os

from retrolm import RetroLMConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_retrolm_configs_load():
    paths = glob.glob(os.path.join(ROOT, "configs", "retrolm_*.json"))
    assert paths
    for path in paths:
        with open(path) as f:
            config = RetroLMConfig.from_dict(json.load(f))
        assert config.to_dict()["page_size"] >= 1


def test_training_and_deepspeed_configs_load():
    from retrolm.training.config import load_deepspeed_config, load_train_config

    for name, stage in (("train_retriever.json", "retriever"), ("post_train.json", "post_train")):
        train = load_train_config(os.path.join(ROOT, "configs", name), stage, ["max_steps=7"])
        assert train.max_steps == 7 and train.retrolm_config().page_size == 128
    for name, zero in (("ds_zero2.json", 2), ("ds_zero3.json", 3), ("ds_zero3_offload.json", 3)):
        ds = load_deepspeed_config(os.path.join(ROOT, "configs", name), train, on_gpu=True)
        assert ds["zero_optimization"]["stage"] == zero and ds["train_micro_batch_size_per_gpu"] == 1
        assert ds["gradient_accumulation_steps"] == train.gradient_accumulation_steps and ds["bf16"]["enabled"]
    assert ds["optimizer"]["params"]["lr"] == train.learning_rate  # the offload variant's optimizer is filled in
