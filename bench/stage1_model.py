"""A stage-1 model (base + trained retriever, no adapter) as a self-contained RetroLM directory.

    python bench/stage1_model.py assets/retrolm-byte-llama OUT               # the shipped model's stage 1
    python bench/stage1_model.py work/x/stage1 OUT                           # a stage-1 training output
    python bench/stage1_model.py assets/retrolm-byte-llama OUT --training-settings

The shipped model's retriever is its stage 1's (stage 2 trains the adapter only), so its base + retriever is
its stage 1. By default OUT keeps the shipped model's inference settings (neighbour pages on), so stage-1
models are compared as users would run them; --training-settings resets the export-only settings to the
library defaults, as stage 2 training sees its stage-1 checkpoint.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from safetensors.torch import load_file  # noqa: E402

from retrolm import RetroLM  # noqa: E402
from retrolm.config import RetroLMConfig  # noqa: E402
from retrolm.model import BASE_DIR  # noqa: E402
from train.build_default_model import DEFAULT_OUT, EXPORT_KNOBS  # noqa: E402


def stage1_model(source: str, out: str, training_settings: bool = False) -> str:
    """Write `source`'s stage 1 to `out` (skipped when `out` exists); returns `out`."""
    if os.path.isdir(out):
        return out
    knobs = {k: v for k, v in RetroLMConfig.load(source).to_dict().items() if k != "base_model_name_or_path"}
    shipped = RetroLMConfig.load(DEFAULT_OUT)
    knobs.update({k: getattr(RetroLMConfig() if training_settings else shipped, k) for k in EXPORT_KNOBS})
    if os.path.isdir(os.path.join(source, "adapter")):  # a post-trained model: its base + its retriever
        model = RetroLM.from_pretrained(os.path.join(source, BASE_DIR), init_retriever=True, **knobs)
        model.retriever.load_state_dict(load_file(os.path.join(source, "retriever.safetensors")))
    else:  # a stage-1 training output: already base + retriever
        model = RetroLM.from_pretrained(source, **knobs)
    model.save_pretrained(out, save_base_model=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source", help="a post-trained RetroLM model directory, or a stage-1 training output")
    parser.add_argument("out")
    parser.add_argument("--training-settings", action="store_true",
                        help="reset export-only inference settings (neighbour pages) to the library defaults")
    args = parser.parse_args()
    print(stage1_model(args.source, args.out, args.training_settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
