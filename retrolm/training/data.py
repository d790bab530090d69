"""Training data: documents through `datasets`, tokenized, packed into page-aligned sequences on disk.

    prepare_packed_data("data/*.jsonl", tokenizer, "data/packed-32k", seq_len=32768, page_size=128, held_out=16)
    train = PackedSequences("data/packed-32k")            # [seq_len] LongTensors, memory-mapped

Packing rule: every document becomes [bos] + tokens + [eos]; documents are concatenated in order and cut into
consecutive windows of `seq_len` tokens (a whole number of pages); the last partial window is dropped. A long
document therefore continues across consecutive sequences. The last `held_out` sequences are held out, so no
sequence is in both splits (a document cut at the boundary may have its head in train and its tail held out).
On disk: `train.npy` and `held_out.npy` ([sequences, seq_len] int32, held_out may have 0 rows) and `meta.json`.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import RetroLMError

BUILDERS = {".jsonl": "json", ".json": "json", ".txt": "text", ".parquet": "parquet"}
OUTPUT_FILES = ("train.npy", "held_out.npy", "meta.json")
PREPARE_HINT = "python train/prepare_data.py --source DOCS --tokenizer MODEL --seq-len N --page-size P --out DIR"
TOKENIZE_BATCH = 256  # documents per tokenizer call: fast tokenizers parallelise within a batch


def check_fits_pages(seq_len: int, page_size: int) -> None:
    """Raise RetroLMError unless `seq_len` is a positive multiple of `page_size` (a sequence holds whole pages)."""
    if isinstance(page_size, bool) or not isinstance(page_size, (int, np.integer)) or page_size < 1:
        raise RetroLMError(f"page_size must be a positive integer, got {page_size!r}.")
    if isinstance(seq_len, bool) or not isinstance(seq_len, (int, np.integer)) or seq_len < 1 or seq_len % page_size:
        raise RetroLMError(f"a sequence must hold whole pages: pass --seq-len as a multiple of page_size={page_size} "
                           f"(got seq_len={seq_len!r}).")


# ---------------------------------------------------------------------------------------------- documents
def _looks_local(source: str) -> bool:
    """Whether `source` names local files rather than a hub dataset ("name", "owner/name", "name:config").

    Hub ids hold at most one "/", so that alone cannot mean a path; a glob character, a known extension, a
    leading "/", "." or "~", a second separator, or an existing path does.
    """
    expanded = os.path.expanduser(source)
    return (os.path.exists(expanded) or any(c in source for c in "*?[")
            or os.path.splitext(source)[1].lower() in BUILDERS or source.startswith(("/", ".", "~"))
            or source.count("/") > 1 or (os.sep != "/" and os.sep in source))


def _local_files(source: str) -> list[str]:
    """The non-empty data files a local source names (a file, a directory searched recursively, or a glob).

    Zero-byte files are left out: they hold no document, and `datasets` fails on an empty JSON file.
    """
    expanded = os.path.expanduser(source)
    if os.path.isdir(expanded):
        files = sorted(f for f in glob.glob(os.path.join(expanded, "**", "*"), recursive=True)
                       if os.path.isfile(f) and os.path.splitext(f)[1].lower() in BUILDERS)
    else:
        files = sorted(f for f in glob.glob(expanded, recursive=True) if os.path.isfile(f))
    if not files:
        raise RetroLMError(f"no data files at {source!r}: pass an existing .jsonl/.json/.txt/.parquet file, a "
                           "directory or a glob of them, or a hub dataset name.")
    extensions = sorted({os.path.splitext(f)[1].lower() for f in files})
    if len(extensions) != 1 or extensions[0] not in BUILDERS:
        raise RetroLMError(f"{source!r} holds files of types {extensions}; pass files of exactly one of "
                           f"{sorted(BUILDERS)} (a narrower glob such as 'dir/*.jsonl').")
    files = [f for f in files if os.path.getsize(f) > 0]
    if not files:
        raise RetroLMError(f"{source!r} holds no documents (every file is empty); pass non-empty files.")
    return files


def load_documents(source: str, text_field: str = "text", split: str = "train",
                   max_documents: int | None = None):
    """A `datasets.Dataset` of at least one document, its text in column `text_field`.

    `source`: a local .jsonl/.json or .parquet file (one document a row), .txt files (one document a file), a
    directory or glob of files of one of these types (the split is then always "train"), or a hub dataset
    "name" / "owner/name" / "name:config" loaded with `split`. `max_documents` keeps the first documents only.
    """
    try:
        import datasets
    except ImportError as error:
        raise RetroLMError("loading documents needs the `datasets` package: pip install -e '.[train]'.") from error
    if max_documents is not None and max_documents < 1:
        raise RetroLMError(f"max_documents must be >= 1 (or None for all), got {max_documents}.")

    if _looks_local(source):
        files = _local_files(source)
        builder = BUILDERS[os.path.splitext(files[0])[1].lower()]
        extra = {"sample_by": "document"} if builder == "text" else {}  # a .txt file is one document
        try:
            dataset = datasets.load_dataset(builder, data_files=files, split="train", **extra)
        # The builders report unreadable or malformed files as any of these; StopIteration and "corresponds to
        # no data" (a ValueError) are what they raise for files with no rows.
        except (OSError, ValueError, StopIteration, datasets.exceptions.DatasetGenerationError) as error:
            cause = error.__cause__ or error
            raise RetroLMError(f"cannot read documents from {source!r} ({type(cause).__name__}: {cause}); check "
                               f"that the files are valid {builder} data with at least one document.") from error
    else:
        name, _, config = source.partition(":")
        try:
            dataset = datasets.load_dataset(name, config or None, split=split)
        # Unreachable hub, offline mode and HTTP errors are all OSError subclasses (ConnectionError,
        # huggingface_hub's HfHubHTTPError); an unknown name is DatasetNotFoundError.
        except (OSError, datasets.exceptions.DatasetNotFoundError) as error:
            raise RetroLMError(f"cannot load hub dataset {source!r} ({type(error).__name__}: {error}); pass local "
                               "files (.jsonl/.json/.txt/.parquet, a directory or a glob), or check the dataset "
                               "name and your network.") from error
        except ValueError as error:  # unknown split or config name: datasets says which exist
            raise RetroLMError(f"cannot load hub dataset {source!r} split {split!r}: {error}") from error

    if text_field not in dataset.column_names:
        raise RetroLMError(f"{source!r} has no column {text_field!r}; columns: {dataset.column_names}. "
                           "Pass --text-field with one of them.")
    if max_documents is not None and max_documents < len(dataset):
        dataset = dataset.select(range(max_documents))
    if len(dataset) == 0:
        raise RetroLMError(f"{source!r} holds no documents; pass a source with at least one.")
    return dataset


# ---------------------------------------------------------------------------------------------- packing
def pack_documents(token_lists: Iterable[Sequence[int]], seq_len: int, eos_id: int | None,
                   bos_id: int | None = None) -> np.ndarray:
    """Pack documents into an int32 array [num_sequences, seq_len] (0 rows when under seq_len tokens in all).

    Each document becomes [bos_id] + tokens + [eos_id] (either left out when None); the documents are
    concatenated in order and cut into consecutive windows of seq_len; the final partial window is dropped.
    The stream is held in memory once, 4 bytes a token.
    """
    if seq_len < 1:
        raise RetroLMError(f"seq_len must be >= 1, got {seq_len}.")
    bos = np.asarray([] if bos_id is None else [bos_id], dtype=np.int32)  # [0 or 1]
    eos = np.asarray([] if eos_id is None else [eos_id], dtype=np.int32)  # [0 or 1]
    pieces = []
    for tokens in token_lists:
        pieces += [bos, np.asarray(tokens, dtype=np.int32).reshape(-1), eos]
    stream = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int32)  # [tokens]
    rows = len(stream) // seq_len
    return stream[: rows * seq_len].reshape(rows, seq_len)  # [sequences, seq_len]


def _check_out_dir(out_dir: str) -> None:
    """Refuse an out_dir that exists and is not earlier prepared data, since preparing replaces it whole."""
    if not os.path.lexists(out_dir):
        return
    if not os.path.isdir(out_dir) or os.path.islink(out_dir):
        raise RetroLMError(f"--out {out_dir!r} exists and is not a directory; pass a new path.")
    contents = os.listdir(out_dir)
    if contents and "meta.json" not in contents:
        raise RetroLMError(f"--out {out_dir!r} is a non-empty directory that is not prepared data (no meta.json); "
                           "it would be replaced whole: pass a new or empty directory.")


def prepare_packed_data(source: str, tokenizer, out_dir: str, seq_len: int, page_size: int, held_out: int = 0,
                        text_field: str = "text", split: str = "train", max_documents: int | None = None,
                        min_doc_tokens: int = 0, progress: bool = True) -> dict:
    """Load, tokenize and pack `source`, and write `out_dir` (train.npy, held_out.npy, meta.json); returns meta.

    Documents are tokenized with `tokenizer(text, add_special_tokens=False)`, those under `min_doc_tokens`
    tokens dropped, the rest packed by `pack_documents` with the tokenizer's bos/eos. The last `held_out`
    sequences go to held_out.npy, the others to train.npy (at least one). The write is atomic: everything goes
    to a temporary sibling directory renamed into place, so a failed run leaves neither a partial out_dir
    nor a temporary directory, and keeps an existing out_dir as it was.
    """
    check_fits_pages(seq_len, page_size)
    if held_out < 0:
        raise RetroLMError(f"held_out must be >= 0, got {held_out}.")
    out_dir = os.path.abspath(os.path.expanduser(out_dir))
    _check_out_dir(out_dir)
    documents = load_documents(source, text_field, split, max_documents)

    counts = {"documents": 0, "tokens": 0, "dropped": 0}

    def tokenized() -> Iterator[list[int]]:
        bar = tqdm(total=len(documents), desc="tokenizing", unit="doc", disable=not progress)
        for batch in documents.select_columns([text_field]).iter(batch_size=TOKENIZE_BATCH):
            texts = ["" if t is None else t for t in batch[text_field]]  # a null text is an empty document
            for tokens in tokenizer(texts, add_special_tokens=False)["input_ids"]:
                if len(tokens) < min_doc_tokens:
                    counts["dropped"] += 1
                    continue
                counts["documents"] += 1
                counts["tokens"] += len(tokens)
                yield tokens
            bar.update(len(texts))
        bar.close()

    packed = pack_documents(tokenized(), seq_len, tokenizer.eos_token_id, tokenizer.bos_token_id)
    specials = (tokenizer.bos_token_id is not None) + (tokenizer.eos_token_id is not None)
    stream = counts["tokens"] + specials * counts["documents"]
    if len(packed) == 0:
        raise RetroLMError(f"{source!r} gives {stream} tokens ({counts['documents']} documents kept, "
                           f"{counts['dropped']} under --min-doc-tokens {min_doc_tokens}, bos/eos included); one "
                           f"training sequence needs {seq_len}. Add documents or lower --seq-len.")
    if held_out >= len(packed):
        raise RetroLMError(f"held_out={held_out} leaves no training sequence: {source!r} packs into only "
                           f"{len(packed)} sequences of {seq_len} tokens ({(held_out + 1) * seq_len} tokens needed, "
                           f"{stream} given). Lower --held-out or add documents.")

    meta = {"seq_len": seq_len, "page_size": page_size, "num_train": len(packed) - held_out,
            "num_held_out": held_out, "num_documents": counts["documents"],
            "num_dropped_documents": counts["dropped"], "num_tokens": counts["tokens"],
            "vocab_size": len(tokenizer), "eos_id": tokenizer.eos_token_id, "bos_id": tokenizer.bos_token_id,
            "source": source, "text_field": text_field, "split": split,
            "tokenizer": str(getattr(tokenizer, "name_or_path", "") or "")}
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.tmp-", dir=parent)
    try:
        np.save(os.path.join(staging, "train.npy"), packed[: len(packed) - held_out])  # [num_train, seq_len]
        np.save(os.path.join(staging, "held_out.npy"), packed[len(packed) - held_out:])  # [held_out, seq_len]
        with open(os.path.join(staging, "meta.json"), "w") as f:
            json.dump(meta, f, indent=2)
        if os.path.exists(out_dir):
            # Directories cannot be swapped in one rename: move the old one aside first, drop it only after.
            old = staging + ".old"
            os.rename(out_dir, old)
            os.rename(staging, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(staging, out_dir)
    except BaseException:  # also on Ctrl-C: never leave a half-written staging directory behind
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return meta


# ---------------------------------------------------------------------------------------------- reading
class PackedSequences(torch.utils.data.Dataset):
    """One split ("train" or "held_out") of a prepared directory, memory-mapped: item i is a LongTensor [seq_len].

    A split with zero rows loads fine and has length 0.
    """

    def __init__(self, directory: str, split: str = "train"):
        meta_path, array_path = os.path.join(directory, "meta.json"), os.path.join(directory, f"{split}.npy")
        if not os.path.isdir(directory) or not os.path.isfile(meta_path):
            raise RetroLMError(f"{directory!r} is not prepared training data (no meta.json); run {PREPARE_HINT} "
                               "first.")
        if not os.path.isfile(array_path):
            raise RetroLMError(f"{directory!r} has no split {split!r} ({split}.npy); splits are 'train' and "
                               f"'held_out'. Run {PREPARE_HINT} again.")
        with open(meta_path) as f:
            self._meta = json.load(f)
        self.array = np.load(array_path, mmap_mode="r")  # [sequences, seq_len]
        if self.array.ndim != 2 or self.array.shape[1] != self.seq_len:
            raise RetroLMError(f"{array_path} has shape {tuple(self.array.shape)}, not [sequences, "
                               f"{self.seq_len}] as meta.json says; run {PREPARE_HINT} again.")

    @property
    def meta(self) -> dict:
        """The contents of meta.json."""
        return self._meta

    @property
    def seq_len(self) -> int:
        return int(self._meta["seq_len"])

    @property
    def page_size(self) -> int:
        return int(self._meta["page_size"])

    def __len__(self) -> int:
        return self.array.shape[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        # Copy out of the memory map: the tensor must own its memory (writable, survives the map).
        return torch.from_numpy(np.array(self.array[index], dtype=np.int64))  # [seq_len]
