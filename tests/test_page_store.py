"""The page store (retrolm/page_store.py, `retrolm index`): what it writes is what encoding computed, it refuses
another model or config, and an interrupted or refused change leaves it as it was."""
import json
import os
import random

import pytest
import torch

from retrolm import page_store
from retrolm.cli import main as cli
from retrolm.demo import NOUNS
from retrolm.errors import RetroLMError
from retrolm.filler import ESSAY_SHAPES
from retrolm.model import RetroLM
from retrolm.page_store import PageStore


def _texts() -> dict[str, str]:
    """Three ASCII texts (one character = one token for the default model) of 1,500, 1,300 and 1,100 characters."""
    rng = random.Random(0)
    essay = " ".join(rng.choice(ESSAY_SHAPES).format(**{k: rng.choice(NOUNS) for k in "abcd"}) for _ in range(80))
    return {"head": essay[:1500], "tail": essay[-1300:], "middle": essay[2000:3100]}


@pytest.fixture(scope="module", params=["trained", "attention"])
def model(request):
    return RetroLM.from_pretrained(scorer=request.param)


def test_shards_hold_what_encoding_computed(tmp_path, model):
    """Each document padded to whole pages (its last partial page retrievable too), then encoded: the shard holds
    that encoding's tokens, K/V, page starts and per-page keys or summaries."""
    store = PageStore.open(str(tmp_path / "store"), model, create=True)
    texts = _texts()
    store.add(texts, progress=False)
    page = model.config.page_size
    newline = model.tokenizer("\n", add_special_tokens=False).input_ids[-1]
    for doc_id, text in texts.items():
        ids = model.tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
        tokens, pages = ids.shape[1], -(-ids.shape[1] // page)
        assert tokens % page, "the texts end inside a page"
        padded = torch.cat([ids, torch.full((1, pages * page - tokens), newline)], dim=1)
        cache, _ = model.encode(padded, logits_to_keep=1, progress=False)
        doc = store.read(doc_id)
        assert store.documents()[doc_id] == {"file": store.documents()[doc_id]["file"], "tokens": tokens,
                                             "pages": pages}
        assert torch.equal(doc.token_ids, padded[0])
        for p in range(pages):  # one page's text alone, as `retrolm ask` cites it
            assert torch.equal(store.page_token_ids(doc_id, p), padded[0, p * page:(p + 1) * page])
        with pytest.raises(RetroLMError, match="pages; asked for page"):
            store.page_token_ids(doc_id, pages)
        for i, layer in enumerate(cache.layers):
            assert torch.equal(doc.keys[i], layer.keys[0, :, :pages * page])
            assert torch.equal(doc.values[i], layer.values[0, :, :pages * page])
        assert torch.equal(doc.page_starts, cache.page_starts[:pages])
        if model.config.scorer == "trained":
            assert doc.summaries is None and torch.equal(doc.bookmark_keys, cache.bookmark_keys[:pages])
            assert torch.equal(doc.page_queries, cache.page_queries[:pages])
        else:
            assert doc.bookmark_keys is None and doc.page_queries is None and len(doc.summaries) == len(cache.layers)
            center, radius = doc.summaries[2]
            assert torch.equal(center, cache.layers[2].summaries.center[:pages])
            assert torch.equal(radius, cache.layers[2].summaries.radius[:pages])
    reopened = PageStore.open(str(tmp_path / "store"), model)
    assert reopened.documents() == store.documents()


def test_another_model_or_config_is_refused(tmp_path, model):
    path = str(tmp_path / "store")
    PageStore.open(path, model, create=True).add({"doc": _texts()["head"]}, progress=False)
    scorer = model.config.scorer
    other_knobs = RetroLM.from_pretrained(scorer=scorer, top_k=model.config.top_k + 1)
    with pytest.raises(RetroLMError, match=r"another model or config: top_k \(13 in the store, 14 now\)"):
        PageStore.open(path, other_knobs)
    other_weights = RetroLM.from_pretrained(scorer=scorer)
    with torch.no_grad():
        for parameter in other_weights.base_model.parameters():
            parameter.mul_(1.05)
    with pytest.raises(RetroLMError,
                       match=r"another model or config: model weights \(base and adapter, as loaded\) differ"):
        PageStore.open(path, other_weights)
    assert PageStore.open(path, RetroLM.from_pretrained(scorer=scorer, refresh_interval=4)).documents(), \
        "a decode-only knob does not change the pages"


def test_an_interrupted_add_leaves_the_store_as_it_was_and_is_resumed(tmp_path, model, monkeypatch):
    path = str(tmp_path / "store")
    store = PageStore.open(path, model, create=True)
    texts = _texts()
    store.add({"head": texts["head"]}, progress=False)
    before = open(os.path.join(path, "manifest.json")).read()
    writes = []
    real_write = page_store.write_safetensors_atomic

    def crash_on_third(target, tensors):
        if len(writes) == 2:
            raise KeyboardInterrupt
        writes.append(target)
        real_write(target, tensors)

    monkeypatch.setattr(page_store, "write_safetensors_atomic", crash_on_third)
    changed = {"head": texts["middle"], "tail": texts["tail"], "new": texts["head"]}
    with pytest.raises(KeyboardInterrupt):
        store.add(changed, progress=False)
    assert open(os.path.join(path, "manifest.json")).read() == before, "the manifest is untouched"
    assert PageStore.open(path, model).documents()["head"]["tokens"] == len(texts["head"])
    monkeypatch.setattr(page_store, "write_safetensors_atomic", real_write)
    encoded = []
    real_encode = model.encode
    monkeypatch.setattr(model, "encode",
                        lambda ids, *args, **kw: encoded.append(ids.shape[1]) or real_encode(ids, *args, **kw))
    store = PageStore.open(path, model)
    store.add(changed, progress=False)
    assert encoded == [-(-len(texts["head"]) // 64) * 64], "the two finished shards are reused, the third is encoded"
    assert sorted(store.documents()) == ["head", "new", "tail"]
    assert store.documents()["head"]["tokens"] == len(texts["middle"]), "the new text replaced it"
    assert model.tokenizer.decode(store.read("head").token_ids[:len(texts["middle"])]) == texts["middle"]
    named = {entry["file"] for entry in store.documents().values()}
    assert set(os.listdir(os.path.join(path, "pages"))) == named, "the replaced shard is gone"


def test_bad_changes_are_refused_whole(tmp_path, model):
    path = str(tmp_path / "store")
    store = PageStore.open(path, model, create=True)
    store.add({"doc": _texts()["head"]}, progress=False)
    with pytest.raises(RetroLMError, match=r"under one page \(64 tokens\): 'short' \(21 tokens\).*Nothing was added"):
        store.add({"other": _texts()["tail"], "short": "twenty tokens at most"}, progress=False)
    with pytest.raises(RetroLMError, match="not in page store .*'gone'; nothing was deleted"):
        store.delete(["doc", "gone"])
    assert list(PageStore.open(path, model).documents()) == ["doc"]
    assert len(os.listdir(os.path.join(path, "pages"))) == 1, "nothing was encoded for the refused add"
    with pytest.raises(RetroLMError, match="not a page store"):
        PageStore.open(str(tmp_path / "nothing"), model)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(RetroLMError, match="holds other files"):
        PageStore.open(str(tmp_path / "busy"), model, create=True)
    manifest = json.load(open(os.path.join(path, "manifest.json")))
    manifest["format_version"] = 99
    json.dump(manifest, open(os.path.join(path, "manifest.json"), "w"))
    with pytest.raises(RetroLMError, match="format version 99"):
        PageStore.open(path, model)


def test_index_command_builds_lists_and_deletes(tmp_path, capsys, monkeypatch):
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    texts = _texts()
    (docs / "a.md").write_text(texts["head"])
    (docs / "sub" / "b.txt").write_text(texts["tail"])
    (docs / "image.png").write_bytes(b"\x89PNG")  # not a text suffix: skipped
    monkeypatch.chdir(tmp_path)
    store = str(tmp_path / "store")
    assert cli(["index", "build", "docs", "--out", store, "--device", "cpu"]) == 0
    assert "stored 2 documents (2800 tokens)" in capsys.readouterr().out
    assert cli(["index", "list", "--store", store]) == 0
    listing = capsys.readouterr().out
    assert "1500 tokens      24 pages  docs/a.md" in listing and "docs/sub/b.txt" in listing
    assert cli(["index", "delete", "--store", store, "docs/a.md"]) == 0
    assert "1 left" in capsys.readouterr().out
    assert cli(["index", "build", "docs/missing.txt", "--out", store, "--device", "cpu"]) == 2
    assert "neither a file nor a directory" in capsys.readouterr().err
    assert cli(["index", "list", "--store", str(tmp_path)]) == 2
