"""Stage 2: post-train the LLM (LoRA by default) to predict every page from retrieved KV pages, under DeepSpeed.

    deepspeed --num_gpus 8 train/post_train.py --config configs/post_train_mistral7b_32k.json \
        --deepspeed configs/ds_zero3.json
Also runs without the launcher as one process: python train/post_train.py --config ... --deepspeed ...
"""
import sys

from retrolm.training.loop import main

if __name__ == "__main__":
    sys.exit(main("post_train"))
