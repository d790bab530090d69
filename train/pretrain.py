"""Pretrain a small byte-level Llama from scratch on one GPU (the default model's base LM).

    python train/pretrain.py --config configs/default_model/pretrain.json \
        --set data=work/default-model/pretrain-data --set output_dir=work/default-model/base
"""
import argparse
import os
import sys

# Runs from a checkout without `pip install -e .` too.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from retrolm.errors import exit_code  # noqa: E402
from retrolm.training.pretrain import load_pretrain_config, pretrain  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="pretraining config JSON")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set max_steps=100 (repeatable)")
    args = parser.parse_args(argv)

    def work():
        results = pretrain(load_pretrain_config(args.config, args.set))
        print(f"pretrained {results['parameters']:,} parameters for {results['steps']} steps "
              f"({results['tokens_per_s']:,} tokens/s): held-out loss {results['held_out_loss']:.4f} nats/token")

    return exit_code(work)


if __name__ == "__main__":
    sys.exit(main())
