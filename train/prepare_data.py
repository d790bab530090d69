"""Tokenize documents and pack them into page-aligned training sequences (input of both training stages).

    python train/prepare_data.py --source "docs/*.jsonl" --tokenizer mistralai/Mistral-7B-v0.1 \
        --seq-len 32768 --page-size 128 --held-out 16 --out data/packed-32k
--source: local .jsonl/.json (column --text-field), .txt (one document per file), .parquet, a directory or
glob of them, or a hub dataset name ("name" or "name:config", --split).
"""
import argparse
import sys

from transformers import AutoTokenizer

from retrolm.errors import RetroLMError
from retrolm.training.data import prepare_packed_data


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", required=True)
    parser.add_argument("--tokenizer", required=True, help="the model's directory or hub name")
    parser.add_argument("--seq-len", type=int, required=True, help="tokens per sequence, a multiple of --page-size")
    parser.add_argument("--page-size", type=int, default=128)
    parser.add_argument("--out", required=True)
    parser.add_argument("--held-out", type=int, default=0, help="sequences kept for evaluation")
    parser.add_argument("--text-field", default="text")
    parser.add_argument("--split", default="train")
    parser.add_argument("--max-documents", type=int, default=None)
    parser.add_argument("--min-doc-tokens", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        try:
            tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
        except (OSError, ValueError) as error:
            raise RetroLMError(f"cannot load tokenizer {args.tokenizer!r}: pass a model directory or a reachable "
                               "hub name.") from error
        meta = prepare_packed_data(args.source, tokenizer, args.out, args.seq_len, args.page_size, args.held_out,
                                   args.text_field, args.split, args.max_documents, args.min_doc_tokens)
    except RetroLMError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{args.out}: {meta['num_train']} train + {meta['num_held_out']} held-out sequences of {meta['seq_len']} "
          f"tokens, from {meta['num_documents']} documents ({meta['num_tokens']} tokens)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
