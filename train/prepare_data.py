"""Tokenize documents and pack them into page-aligned training sequences (input of both training stages).

    python train/prepare_data.py --source "docs/*.jsonl" --tokenizer mistralai/Mistral-7B-v0.1 \
        --seq-len 32768 --page-size 128 --held-out 16 --out data/packed-32k
--source: local .jsonl/.json (column --text-field), .txt (one document per file), .parquet, a directory or
glob of them, or a hub dataset name ("name" or "name:config", --split).
"""
import argparse
import os
import sys

# Runs from a checkout without `pip install -e .` too.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from transformers import AutoTokenizer  # noqa: E402

from retrolm.errors import RetroLMError, exit_code  # noqa: E402
from retrolm.training.data import prepare_packed_data  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", required=True, help="local files (file, directory, glob) or a hub dataset")
    parser.add_argument("--tokenizer", required=True, help="the model's directory or hub name")
    parser.add_argument("--seq-len", type=int, required=True, help="tokens per sequence, a multiple of --page-size")
    parser.add_argument("--page-size", type=int, default=128)
    parser.add_argument("--out", required=True, help="directory to write (replaced whole if it holds earlier data)")
    parser.add_argument("--held-out", type=int, default=0, help="last sequences kept for evaluation")
    parser.add_argument("--text-field", default="text", help="column holding the text (jsonl/json/parquet/hub)")
    parser.add_argument("--split", default="train", help="split of a hub dataset")
    parser.add_argument("--max-documents", type=int, default=None, help="keep the first N documents")
    parser.add_argument("--min-doc-tokens", type=int, default=0, help="drop documents shorter than this")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    def work():
        try:
            tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
        except (OSError, ValueError) as error:
            raise RetroLMError(f"cannot load tokenizer {args.tokenizer!r} ({error}): pass a model directory or a "
                               "reachable hub name.") from error
        meta = prepare_packed_data(args.source, tokenizer, args.out, seq_len=args.seq_len, page_size=args.page_size,
                                   held_out=args.held_out, text_field=args.text_field, split=args.split,
                                   max_documents=args.max_documents, min_doc_tokens=args.min_doc_tokens,
                                   progress=not args.quiet)
        print(f"{args.out}: {meta['num_train']} train + {meta['num_held_out']} held-out sequences of "
              f"{meta['seq_len']} tokens, from {meta['num_documents']} documents ({meta['num_tokens']} tokens)")

    return exit_code(work)


if __name__ == "__main__":
    sys.exit(main())
