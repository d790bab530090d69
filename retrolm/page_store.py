"""The page store: a document collection encoded once into KV pages and bookmark keys on disk.

Layout of a store directory:
- `manifest.json`: the format version, the identity of the model that encoded the pages (fingerprints of its base
  weights, of all weights as loaded (an adapter changes the KV) and of its retriever; its dtype; the RetroLM knobs
  that shape encoding), and one entry per document (its shard, tokens, pages).
- `pages/<hash of the document id>.safetensors`: one document's shard. Per layer `keys.<i>` / `values.<i>`
  [kv_heads, tokens, head_dim] as encoded (RoPE at the document's own positions, from 0); `token_ids` [tokens];
  `page_starts` [pages]; `bookmark_keys` and `page_queries` (the retriever's key and query of each page) [pages,
  heads, dim] under the trained scorer, or per layer `center.<i>` / `radius.<i>` [pages, kv_heads, head_dim] (the
  training-free scorer's page summaries).

A document is encoded padded to whole pages with newline tokens (the last token of the tokenizer's "\n"), so its
last page is retrievable like the others: a shard's tokens are pages x page_size, the manifest's `tokens` counts
the document's own.

Every write goes through a temporary file and a rename, and the manifest changes once per add or delete, after
the shards it names are complete: a crash leaves the store as it was. A shard is named by its document's id and
text, so the same add run again reuses the shards an interrupted one finished. Shards are read through
safetensors' memory map, one tensor at a time.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import torch
from safetensors import safe_open
from tqdm.auto import tqdm

from .checkpoint import fingerprints_match, weights_fingerprint
from .config import RetroLMConfig
from .errors import RetroLMError
from .files import read_json_object, write_json_atomic, write_safetensors_atomic
from .store_search import IndexCache

FORMAT_VERSION = 2  # 2: documents padded to whole pages (version 1 dropped a document's last partial page)
MANIFEST = "manifest.json"
PAGES_DIR = "pages"
# The RetroLM knobs that change what encoding writes into the pages (decode-only and speed knobs are left out).
# Lexical page scores change which pages a long document's encoding attends, and rank a store's pages too.
ENCODING_KNOBS = ("page_size", "scorer", "scorer_query_tokens", "top_k", "neighbor_pages", "neighbor_direction",
                  "sink_pages", "local_pages", "position_mode", "bookmark_token", "retriever", "lexical_weight",
                  "lexical_ngram", "lexical_max_pages", "lexical_query_pages", "lexical_near_miss_margin",
                  "lexical_hops", "lexical_hop_span", "lexical_hop_stops", "lexical_echo_tokens")


def model_identity(model) -> dict:
    """What a store records of the model that encoded it, and checks when it is opened again."""
    config = model.config.to_dict()
    retriever = model.retriever
    return {
        "base_model_fingerprint": model.config.base_model_fingerprint,
        "weights_fingerprint": weights_fingerprint(model.base_model.state_dict()) or "",
        "retriever_fingerprint": (weights_fingerprint(retriever.state_dict()) or "") if retriever is not None else "",
        "dtype": str(next(model.base_model.parameters()).dtype).removeprefix("torch."),
        "retrolm": {knob: config[knob] for knob in ENCODING_KNOBS},
    }


def _identity_differences(saved: dict, current: dict) -> list[str]:
    defaults = RetroLMConfig().to_dict()  # a knob newer than the store: the store was encoded as its default does
    recorded = {knob: saved["retrolm"].get(knob, defaults.get(knob)) for knob in current["retrolm"]}
    differences = [f"{knob} ({recorded[knob]!r} in the store, {value!r} now)"
                   for knob, value in current["retrolm"].items() if recorded[knob] != value]
    for name, label in (("base_model_fingerprint", "base model weights"),
                        ("weights_fingerprint", "model weights (base and adapter, as loaded)"),
                        ("retriever_fingerprint", "retriever weights")):
        if bool(saved[name]) != bool(current[name]) or (saved[name] and not fingerprints_match(saved[name],
                                                                                                current[name])):
            differences.append(label)
    if saved["dtype"] != current["dtype"]:
        differences.append(f"dtype ({saved['dtype']} in the store, {current['dtype']} now)")
    return differences


@dataclass
class StoredDocument:
    """One document's pages as read from its shard (CPU tensors)."""

    doc_id: str
    token_ids: torch.Tensor  # [tokens]
    keys: list[torch.Tensor]  # per layer [kv_heads, tokens, head_dim]
    values: list[torch.Tensor]
    page_starts: torch.Tensor  # [pages]
    bookmark_keys: torch.Tensor | None  # [pages, heads, dim] (trained scorer)
    page_queries: torch.Tensor | None  # [pages, heads, dim] (trained scorer)
    summaries: list[tuple[torch.Tensor, torch.Tensor]] | None  # per layer (center, radius) (attention scorer)


class PageStore:
    """A directory of encoded documents. `PageStore.open(path, model)` (create=True starts an empty one); with
    model=None it lists and deletes documents only (no identity to check, nothing to encode or read with)."""

    def __init__(self, path: str, manifest: dict, model):
        self.path, self.manifest, self.model = path, manifest, model
        self.index_cache = IndexCache()  # the indexes searched over this store (collection.store_index)
        self.lexical_index = None  # ((files, lexical knobs), store_lexical.StoreLexicalIndex) (collection)

    @classmethod
    def open(cls, path: str, model, create: bool = False) -> "PageStore":
        manifest_path = os.path.join(path, MANIFEST)
        if not os.path.exists(manifest_path):
            if model is None:
                raise RetroLMError(f"{path} is not a page store (no {MANIFEST}).")
            if not create:
                raise RetroLMError(f"{path} is not a page store (no {MANIFEST}); build one with "
                                   "`retrolm index build DOCS --out STORE`.")
            if os.path.isdir(path) and set(os.listdir(path)) - {PAGES_DIR}:
                raise RetroLMError(f"{path} exists and holds other files; pass an empty or new directory for a store.")
            os.makedirs(os.path.join(path, PAGES_DIR), exist_ok=True)
            manifest = {"format_version": FORMAT_VERSION, "identity": model_identity(model), "documents": {}}
            write_json_atomic(manifest_path, manifest)
            return cls(path, manifest, model)
        manifest = read_json_object(manifest_path, "page store manifest")
        if manifest.get("format_version") != FORMAT_VERSION:
            raise RetroLMError(f"page store {path} has format version {manifest.get('format_version')!r}; this RetroLM "
                               f"reads version {FORMAT_VERSION}: build the store again.")
        differences = [] if model is None else _identity_differences(manifest["identity"], model_identity(model))
        if differences:
            raise RetroLMError(f"page store {path} was built with another model or config: {'; '.join(differences)} "
                               "differ. Load the model and settings it was built with, or build a new store.")
        return cls(path, manifest, model)

    # ------------------------------------------------------------------ contents
    def documents(self) -> dict[str, dict]:
        """doc id -> {"file", "tokens", "pages"} for every stored document."""
        return dict(self.manifest["documents"])

    def __len__(self) -> int:
        return len(self.manifest["documents"])

    def read_pages(self, doc_id: str, pages: list[int]) -> StoredDocument:
        """`pages` of one document, their rows alone read from the memory-mapped shard; the result's
        tensors hold those pages one after another (bookmark keys and page queries under the trained scorer; none
        under the training-free one, whose summaries the cache computes again from the keys)."""
        entry = self._entry(doc_id)
        if any(not 0 <= p < entry["pages"] for p in pages):
            raise RetroLMError(f"document {doc_id!r} has {entry['pages']} pages; asked for {pages}.")
        P, layers = self._model().config.page_size, self.model.base_model.config.num_hidden_layers
        with safe_open(self._shard_path(doc_id, entry), framework="pt") as shard:
            def rows(name: str, token_axis: int) -> torch.Tensor:
                tensor = shard.get_slice(name)
                cut = (lambda a, b: tensor[:, a:b]) if token_axis else (lambda a, b: tensor[a:b])
                return torch.cat([cut(p * P, (p + 1) * P) for p in pages], dim=token_axis)

            def per_page(name: str) -> torch.Tensor | None:
                return shard.get_tensor(name)[torch.tensor(pages)] if name in shard.keys() else None

            return StoredDocument(doc_id, rows("token_ids", 0), [rows(f"keys.{i}", 1) for i in range(layers)],
                                  [rows(f"values.{i}", 1) for i in range(layers)], per_page("page_starts"),
                                  per_page("bookmark_keys"), per_page("page_queries"), None)

    def page_token_ids(self, doc_id: str, page: int) -> torch.Tensor:
        """[page_size] token ids of one page alone (what a citation shows), no K/V read."""
        entry = self._entry(doc_id)
        if not 0 <= page < entry["pages"]:
            raise RetroLMError(f"document {doc_id!r} has {entry['pages']} pages; asked for page {page}.")
        P = self._model().config.page_size
        with safe_open(self._shard_path(doc_id, entry), framework="pt") as shard:
            return shard.get_slice("token_ids")[page * P:(page + 1) * P]

    def token_ids(self, doc_id: str) -> torch.Tensor:
        """[pages * page_size] one document's stored token ids alone (padded to whole pages), no K/V read."""
        with safe_open(self._shard_path(doc_id), framework="pt") as shard:
            return shard.get_tensor("token_ids")

    def bookmark_keys(self, doc_id: str) -> torch.Tensor:
        """[pages, heads, dim]: one document's bookmark keys alone (what the trained scorer's
        cross-document index needs)."""
        with safe_open(self._shard_path(doc_id), framework="pt") as shard:
            if "bookmark_keys" not in shard.keys():
                raise RetroLMError(f"page store {self.path} was built with the training-free scorer, which keeps no "
                                   "bookmark keys: search it with page_summaries (store_search.SummaryIndex).")
            return shard.get_tensor("bookmark_keys")

    def page_summaries(self, doc_id: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer (centre, radius) [pages, kv_heads, head_dim]: one document's training-free page
        summaries alone (what that scorer's cross-document search needs)."""
        layers = self._model().base_model.config.num_hidden_layers
        with safe_open(self._shard_path(doc_id), framework="pt") as shard:
            if "center.0" not in shard.keys():
                raise RetroLMError(f"page store {self.path} was built with the trained scorer, which keeps bookmark "
                                   "keys, not page summaries: search it with bookmark_keys (store_search.StoreIndex).")
            return _summaries(shard, layers)

    def _entry(self, doc_id: str) -> dict:
        entry = self.manifest["documents"].get(doc_id)
        if entry is None:
            raise RetroLMError(f"document {doc_id!r} is not in page store {self.path}.")
        return entry

    def _shard_path(self, doc_id: str, entry: dict | None = None) -> str:
        path = os.path.join(self.path, PAGES_DIR, (entry or self._entry(doc_id))["file"])
        if not os.path.isfile(path):
            raise RetroLMError(f"{path} (document {doc_id!r}) is missing: the store is damaged; add the document "
                               "again.")
        return path

    def _model(self):
        if self.model is None:
            raise RetroLMError("this page store was opened without a model: open it with the model that built it.")
        return self.model

    def read(self, doc_id: str) -> StoredDocument:
        path = self._shard_path(doc_id)
        layers = self._model().base_model.config.num_hidden_layers
        with safe_open(path, framework="pt") as shard:
            names = set(shard.keys())
            get = shard.get_tensor
            summaries = _summaries(shard, layers) if "center.0" in names else None
            return StoredDocument(doc_id, get("token_ids"), [get(f"keys.{i}") for i in range(layers)],
                                  [get(f"values.{i}") for i in range(layers)], get("page_starts"),
                                  *((get("bookmark_keys"), get("page_queries")) if "bookmark_keys" in names
                                    else (None, None)), summaries)

    # ------------------------------------------------------------------ changes
    @torch.no_grad()
    def add(self, documents: dict[str, str], progress: bool = True) -> None:
        """Encode and store `documents` (doc id -> text); a stored id gets the new text's pages.

        The manifest changes once, after every document is encoded: an interrupted add leaves the store as it was.
        Shards are named by document id and text, so adding the same documents again after an interruption reuses
        the shards it finished instead of encoding them again."""
        model = self._model()
        tokenizer, page = model.tokenizer, model.config.page_size
        ids = {doc_id: tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
               for doc_id, text in documents.items()}
        padding = padding_id(tokenizer)
        short = [f"{doc_id!r} ({t.shape[1]} tokens)" for doc_id, t in ids.items() if t.shape[1] < page]
        if short:  # before any encoding: a refused add writes nothing
            raise RetroLMError(f"under one page ({page} tokens): {', '.join(short)}; a page store retrieves whole "
                               "pages: join short documents or lower page_size. Nothing was added.")
        entries = {}
        for doc_id, text in tqdm(documents.items(), desc="encoding documents", unit="doc", disable=not progress):
            name = hashlib.sha256(f"{doc_id}\0{text}".encode()).hexdigest()[:32] + ".safetensors"
            path = os.path.join(self.path, PAGES_DIR, name)
            if not os.path.isfile(path):  # written whole or not at all (temporary file, then rename)
                document = model._check(padded_to_pages(ids[doc_id], page, padding))
                cache, _ = model.encode(document, model.new_cache(document.shape[1], resident=True),
                                        logits_to_keep=1, progress=False)  # whole and resident: a shard has every page
                write_safetensors_atomic(path, _shard(cache))
            tokens = ids[doc_id].shape[1]
            entries[doc_id] = {"file": name, "tokens": tokens, "pages": -(-tokens // page)}
        replaced = {self.manifest["documents"][d]["file"] for d in entries if d in self.manifest["documents"]}
        self.manifest["documents"].update(entries)
        write_json_atomic(os.path.join(self.path, MANIFEST), self.manifest)
        self._remove_unnamed(replaced)

    def delete(self, doc_ids: list[str]) -> None:
        """Remove documents: the manifest first (atomic), then their shards."""
        missing = [d for d in doc_ids if d not in self.manifest["documents"]]
        if missing:
            raise RetroLMError(f"not in page store {self.path}: {', '.join(map(repr, missing))}; nothing was deleted.")
        files = {self.manifest["documents"].pop(d)["file"] for d in doc_ids}
        write_json_atomic(os.path.join(self.path, MANIFEST), self.manifest)
        self._remove_unnamed(files)

    def _remove_unnamed(self, files: set[str]) -> None:
        """Delete those of `files` no document of the manifest names any more."""
        for name in files - {entry["file"] for entry in self.manifest["documents"].values()}:
            os.remove(os.path.join(self.path, PAGES_DIR, name))


def padding_id(tokenizer) -> int:
    """The token that pads a document to whole pages: the last token of the tokenizer's "\n" (a line break, which
    ends a document's text as blank lines would)."""
    ids = tokenizer("\n", add_special_tokens=False).input_ids
    if not ids:
        raise RetroLMError("the tokenizer encodes \"\\n\" as no token, and a page store pads documents to whole pages "
                           "with it; use a tokenizer that encodes line breaks.")
    return ids[-1]


def padded_to_pages(ids: torch.Tensor, page_size: int, padding: int) -> torch.Tensor:
    """[1, T] ids followed by `padding` up to a whole number of pages."""
    missing = -ids.shape[1] % page_size
    return torch.cat([ids, ids.new_full((1, missing), padding)], dim=1)


def _summaries(shard, layers: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(shard.get_tensor(f"center.{i}"), shard.get_tensor(f"radius.{i}")) for i in range(layers)]


def _shard(cache) -> dict[str, torch.Tensor]:
    """The tensors of one encoded document's shard (see the module docstring)."""
    tokens, pages = cache.num_tokens, cache.num_complete_pages
    shard = {"token_ids": cache.token_ids[:tokens],
             "page_starts": cache.page_starts[: -(-tokens // cache.page_size)]}
    for i, layer in enumerate(cache.layers):
        shard[f"keys.{i}"], shard[f"values.{i}"] = layer.keys[0, :, :tokens], layer.values[0, :, :tokens]
        if layer.summaries.center is not None:  # the training-free scorer summarises each complete page
            shard[f"center.{i}"] = layer.summaries.center[: layer.summaries.pages]
            shard[f"radius.{i}"] = layer.summaries.radius[: layer.summaries.pages]
    if not any(name.startswith("center.") for name in shard):
        shard["bookmark_keys"], shard["page_queries"] = cache.bookmark_keys[:pages], cache.page_queries[:pages]
    return shard
