"""A page store's IVF index saved in the store's directory, so that a new process (`retrolm ask --index ivf`) reads
the trained index instead of training it again.

`retrolm index build --index ivf` (or `save_store_index`) writes it: one safetensors file per (kind, nlist) under
`indexes/`, holding the faiss index's bytes and each row's (document, page), with the store state it was built for
(doc id -> shard) and its settings as metadata. It is written through a temporary file, so a crash leaves the
old file or the new. A saved index is read when a store's index of that kind is first asked for
(collection.store_index); if the store changed since, it is brought up to date in memory as any earlier index is
(in place while its lists fit, else built afresh), and the file is written again only by the next save. Exact
indexes are not saved: building one costs what reading it back would (the rows themselves).
"""
from __future__ import annotations

import json
import os

from safetensors import SafetensorError, safe_open

from .errors import RetroLMError
from .files import write_safetensors_atomic
from .page_store import PageStore
from .store_search import StoreIndex, SummaryIVFIndex

INDEX_DIR = "indexes"
FORMAT = 1  # the saved index's layout; another is refused, not guessed at


def saved_index_path(store: PageStore, key: tuple) -> str:
    """Where the index of `key` (kind, nlist) is saved in `store`."""
    kind, nlist = key
    return os.path.join(store.path, INDEX_DIR, f"{kind}-{'auto' if nlist is None else nlist}.safetensors")


def check_saved_kind(kind: str) -> None:
    """Raise `RetroLMError` unless an index of `kind` is one that is saved."""
    if kind != "ivf":
        raise RetroLMError(f"only IVF indexes are saved in a store (an exact index is built as fast as it would be "
                           f"read); got {kind!r}.")


def save_index(store: PageStore, key: tuple, files: dict[str, str], index) -> str:
    """Write `index` (an "ivf" store index built for the store state `files`) into `store`; its path."""
    check_saved_kind(key[0])
    tensors, settings = index.saved()
    path = saved_index_path(store, key)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    metadata = {"format": FORMAT, "scorer": store.model.config.scorer, "files": files, "settings": settings}
    write_safetensors_atomic(path, tensors, {"retrolm": json.dumps(metadata)})
    return path


def load_index(store: PageStore, key: tuple) -> tuple[dict[str, str], object] | None:
    """(files, index) of the index of `key` saved in `store`, or None when none is; a damaged or foreign file raises
    `RetroLMError` saying to delete it (the index is then built from the store's shards)."""
    path = saved_index_path(store, key)
    if not os.path.isfile(path):
        return None
    remedy = f"delete {path} (the index is then built from the store) or save it again (`retrolm index build " \
             f"--index ivf`)"
    try:
        with safe_open(path, "pt") as f:
            metadata = json.loads((f.metadata() or {})["retrolm"])
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError, KeyError, ValueError) as error:
        raise RetroLMError(f"saved index {path} is unreadable ({type(error).__name__}: {error}); {remedy}.") from error
    scorer = store.model.config.scorer
    if metadata.get("format") != FORMAT or metadata.get("scorer") != scorer:
        raise RetroLMError(f"saved index {path} is of format {metadata.get('format')} for the "
                           f"{metadata.get('scorer')} scorer; this RetroLM reads format {FORMAT}, and the store's "
                           f"scorer is {scorer}: {remedy}.")
    kind = StoreIndex if scorer == "trained" else SummaryIVFIndex
    return metadata["files"], kind.restored(tensors, metadata["settings"])
