"""A stage-1 model (base + trained retriever, no adapter) as a self-contained RetroLM directory.

    python bench/stage1_model.py assets/retrolm-byte-llama OUT               # the shipped model's stage 1
    python bench/stage1_model.py work/x/stage1 OUT                           # a stage-1 training output
    python bench/stage1_model.py assets/retrolm-byte-llama OUT --training-settings
    python bench/stage1_model.py assets/retrolm-byte-llama OUT --retriever R.safetensors   # another retriever
    python bench/stage1_model.py assets/retrolm-byte-llama OUT --set lexical_weight=10      # other settings

A post-trained model's retriever is its stage 1's (stage 2 trains the adapter only), so its base + retriever
is its stage 1, under the model's own inference settings. A stage-1 training output gets the settings the
default model's export adds (neighbour pages), so stage-1 models are compared as users would run them.
--training-settings resets those export-only settings to the library defaults instead, as stage 2 training
sees its stage-1 checkpoint. --set KNOB=VALUE (a JSON value) sets any RetroLMConfig knob last, e.g. to train stage 2
with lexical page scores (a post-trained model keeps its stage 1's settings).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from safetensors.torch import load_file  # noqa: E402

from retrolm import RetroLM  # noqa: E402
from retrolm.config import RetroLMConfig  # noqa: E402
from retrolm.model import BASE_DIR  # noqa: E402
from train.build_default_model import EXPORT_KNOBS  # noqa: E402


def stage1_model(source: str, out: str, retriever: str | None = None, training_settings: bool = False,
                 settings: dict | None = None) -> str:
    """Write `source`'s stage 1 to `out` (skipped when `out` exists), with the retriever weights of `retriever`
    (default: `source`'s own) and the RetroLMConfig knobs `settings` over its own; returns `out`."""
    if os.path.isdir(out):
        return out
    knobs = {k: v for k, v in RetroLMConfig.load(source).to_dict().items() if k != "base_model_name_or_path"}
    post_trained = os.path.isdir(os.path.join(source, "adapter"))
    if training_settings:
        knobs.update({k: getattr(RetroLMConfig(), k) for k in EXPORT_KNOBS})
    elif not post_trained:
        knobs.update(EXPORT_KNOBS)
    knobs.update(settings or {})
    if post_trained:  # its base, and a retriever loaded below
        model = RetroLM.from_pretrained(os.path.join(source, BASE_DIR), init_retriever=True, **knobs)
        retriever = retriever or os.path.join(source, "retriever.safetensors")
    else:  # a stage-1 training output: already base + retriever
        model = RetroLM.from_pretrained(source, **knobs)
    if retriever:
        model.retriever.load_state_dict(load_file(retriever))
    model.save_pretrained(out, save_base_model=True)
    return out


def setting(text: str) -> tuple[str, object]:
    """KNOB=VALUE with VALUE in JSON ("10", "true", '"next"'), checked against RetroLMConfig's knobs."""
    knob, sep, value = text.partition("=")
    if not sep or knob not in RetroLMConfig().to_dict():
        raise argparse.ArgumentTypeError(f"expected KNOB=VALUE with KNOB a RetroLMConfig field, got {text!r}")
    try:
        return knob, json.loads(value)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"{knob}: {value!r} is not a JSON value ({e.msg}); quote strings: "
                                         f"{knob}='\"{value}\"'") from None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source", help="a post-trained RetroLM model directory, or a stage-1 training output")
    parser.add_argument("out")
    parser.add_argument("--training-settings", action="store_true",
                        help="reset export-only inference settings (neighbour pages) to the library defaults")
    parser.add_argument("--retriever", default=None,
                        help="a retriever.safetensors to use instead of the source's own (e.g. another stage-1 run's)")
    parser.add_argument("--set", action="append", default=[], metavar="KNOB=VALUE", type=setting,
                        help="a RetroLMConfig knob and its JSON value, e.g. lexical_weight=10 (repeatable)")
    args = parser.parse_args()
    print(stage1_model(args.source, args.out, retriever=args.retriever, training_settings=args.training_settings,
                       settings=dict(args.set)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
