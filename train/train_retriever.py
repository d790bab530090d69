"""Stage 1: train the page retriever against the frozen LLM's attention (contrastive), under DeepSpeed.

    deepspeed --num_gpus 1 train/train_retriever.py --config configs/train_retriever_tiny.json \
        --deepspeed configs/ds_zero2.json
Also runs without the launcher as one process: python train/train_retriever.py --config ... --deepspeed ...
"""
import sys

from retrolm.training.loop import main

if __name__ == "__main__":
    sys.exit(main("retriever"))
