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
