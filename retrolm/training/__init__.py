"""Training: retriever stage 1 and post-training stage 2 under DeepSpeed."""
