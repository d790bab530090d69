"""Training data: documents through `datasets`, tokenized, packed into page-aligned sequences on disk.

    prepare_packed_data("data/*.jsonl", tokenizer, "data/packed-32k", seq_len=32768, page_size=128, held_out=16)
    train = PackedSequences("data/packed-32k")            # [seq_len] LongTensors, memory-mapped

Packing rule: every document becomes [bos] + tokens + [eos]; documents are concatenated in order and cut into
consecutive windows of `seq_len` tokens (a whole number of pages); the last partial window is dropped. A long
document therefore continues across consecutive sequences. The last `held_out` sequences are held out.
On disk: `train.npy` and `held_out.npy` ([sequences, seq_len] int32) and `meta.json`.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
from typing import Iterable

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import RetroLMError

BUILDERS = {".jsonl": "json", ".json": "json", ".txt": "text", ".parquet": "parquet"}
PREPARE_HINT = "python train/prepare_data.py --source DOCS --tokenizer MODEL --seq-len N --page-size P --out DIR"


def check_fits_pages(seq_len: int, page_size: int) -> None:
    """Raise unless a sequence of `seq_len` tokens holds a whole number (>= 1) of pages."""
    if not isinstance(seq_len, int) or seq_len < page_size or seq_len % page_size:
        raise RetroLMError(f"a sequence must hold whole pages: seq_len={seq_len} is not a positive multiple of "
                           f"page_size={page_size}; pass --seq-len as a multiple of {page_size}.")


def _local_files(source: str) -> list[str] | None:
    """The files a local source names (file, directory or glob), or None when it is a hub name."""
    looks_local = os.sep in source or os.path.splitext(source)[1] in BUILDERS or os.path.exists(source)
    if not looks_local:
        return None
    if os.path.isdir(source):
        files = sorted(f for f in glob.glob(os.path.join(source, "**", "*"), recursive=True)
                       if os.path.splitext(f)[1] in BUILDERS)
    else:
        files = sorted(glob.glob(source))
    if not files:
        raise RetroLMError(f"no data files at {source!r}: pass an existing .jsonl/.json/.txt/.parquet file, a "
                           "directory or a glob of them, or a hub dataset name.")
    return files


def load_documents(source: str, text_field: str = "text", split: str = "train", max_documents: int | None = None):
    """A `datasets.Dataset` of documents from local files (jsonl/json, txt: one document per file, parquet) or
    a hub dataset name ("name" or "name:config"), with its text in column `text_field`."""
    import datasets

    files = _local_files(source)
    try:
        if files is not None:
            kinds = {BUILDERS.get(os.path.splitext(f)[1]) for f in files}
            if None in kinds or len(kinds) != 1:
                raise RetroLMError(f"{source!r} mixes or holds unsupported file types; use only one of "
                                   f"{sorted(BUILDERS)}.")
            builder = kinds.pop()
            extra = {"sample_by": "document"} if builder == "text" else {}
            dataset = datasets.load_dataset(builder, data_files=files, split="train", **extra)
        else:
            name, _, config = source.partition(":")
            dataset = datasets.load_dataset(name, config or None, split=split)
    except (ConnectionError, OSError, datasets.exceptions.DatasetNotFoundError) as error:
        raise RetroLMError(f"cannot load dataset {source!r} ({type(error).__name__}: {error}); pass local files, "
                           "or check the name and your network.") from error
    if text_field not in dataset.column_names:
        raise RetroLMError(f"{source!r} has no column {text_field!r}; columns: {dataset.column_names}. "
                           "Pass --text-field.")
    if max_documents is not None:
        dataset = dataset.select(range(min(max_documents, len(dataset))))
    if len(dataset) == 0:
        raise RetroLMError(f"{source!r} holds no documents.")
    return dataset


def pack_documents(token_lists: Iterable[list[int]], seq_len: int, eos_id: int | None,
                   bos_id: int | None = None) -> np.ndarray:
    """Concatenate [bos] + tokens + [eos] of each document and cut into rows of seq_len -> [sequences, seq_len]."""
    stream: list[int] = []
    for tokens in token_lists:
        stream.extend(([bos_id] if bos_id is not None else []) + list(tokens) + ([eos_id] if eos_id is not None else []))
    rows = len(stream) // seq_len
    return np.asarray(stream[: rows * seq_len], dtype=np.int32).reshape(rows, seq_len)  # [sequences, seq_len]


def prepare_packed_data(source: str, tokenizer, out_dir: str, seq_len: int, page_size: int, held_out: int = 0,
                        text_field: str = "text", split: str = "train", max_documents: int | None = None,
                        min_doc_tokens: int = 0, progress: bool = True) -> dict:
    """Load, tokenize, pack and write `out_dir` atomically (a failed run leaves an old out_dir untouched).

    Returns the meta dict written to meta.json.
    """
    check_fits_pages(seq_len, page_size)
    if held_out < 0:
        raise RetroLMError(f"held_out must be >= 0, got {held_out}.")
    documents = load_documents(source, text_field, split, max_documents)
    token_lists = []
    for text in tqdm(documents[text_field], desc="tokenizing", unit="doc", disable=not progress):
        tokens = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(tokens) >= min_doc_tokens:
            token_lists.append(tokens)
    packed = pack_documents(token_lists, seq_len, tokenizer.eos_token_id, tokenizer.bos_token_id)
    total = sum(len(t) for t in token_lists)
    if len(packed) <= held_out:
        need = (held_out + 1) * seq_len
        raise RetroLMError(f"{source!r} gives {total} tokens ({len(packed)} sequences of {seq_len}); {need} are "
                           f"needed for {held_out} held-out and one training sequence. Add documents, or lower "
                           "--seq-len or --held-out.")
    meta = {"seq_len": seq_len, "page_size": page_size, "num_train": len(packed) - held_out,
            "num_held_out": held_out, "num_documents": len(token_lists), "num_tokens": total,
            "vocab_size": len(tokenizer), "eos_id": tokenizer.eos_token_id, "bos_id": tokenizer.bos_token_id,
            "source": source, "text_field": text_field, "tokenizer": getattr(tokenizer, "name_or_path", "")}
    out_dir = os.path.abspath(out_dir)
    os.makedirs(os.path.dirname(out_dir), exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".retrolm-data-", dir=os.path.dirname(out_dir))
    try:
        np.save(os.path.join(staging, "train.npy"), packed[: len(packed) - held_out])
        np.save(os.path.join(staging, "held_out.npy"), packed[len(packed) - held_out :])
        with open(os.path.join(staging, "meta.json"), "w") as f:
            json.dump(meta, f, indent=2)
        if os.path.exists(out_dir):
            old = staging + ".old"
            os.rename(out_dir, old)
            os.rename(staging, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return meta


class PackedSequences(torch.utils.data.Dataset):
    """The sequences of one split ("train" or "held_out") of a prepared directory, memory-mapped."""

    def __init__(self, directory: str, split: str = "train"):
        meta_path, array_path = os.path.join(directory, "meta.json"), os.path.join(directory, f"{split}.npy")
        if not (os.path.isfile(meta_path) and os.path.isfile(array_path)):
            raise RetroLMError(f"{directory!r} is not prepared training data (no meta.json / {split}.npy); run "
                               f"{PREPARE_HINT} first.")
        with open(meta_path) as f:
            self.meta = json.load(f)
        self.array = np.load(array_path, mmap_mode="r")  # [sequences, seq_len]

    @property
    def seq_len(self) -> int:
        return int(self.meta["seq_len"])

    @property
    def page_size(self) -> int:
        return int(self.meta["page_size"])

    def __len__(self) -> int:
        return self.array.shape[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.from_numpy(np.array(self.array[index], dtype=np.int64))  # [seq_len]
