"""Training data: local sources through `datasets`, the packing rule, the held-out split, atomic writes, errors."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from retrolm import RetroLMError
from retrolm.tiny import byte_tokenizer
from retrolm.training import data as data_module
from retrolm.training.data import (PackedSequences, check_fits_pages, load_documents, pack_documents,
                                   prepare_packed_data)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXTS = ["abcdefghij" * 3, "klmnopqrst" * 4, "uvwxyz" * 5]  # 30 + 40 + 30 bytes = tokens; 106 with bos/eos


@pytest.fixture(scope="module")
def tokenizer():
    return byte_tokenizer()


def _jsonl(path, texts=TEXTS, field="text"):
    with open(path, "w") as f:
        for t in texts:
            f.write(json.dumps({field: t, "id": 1}) + "\n")
    return str(path)


def _expected(tokenizer, texts=TEXTS, seq_len=16):
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    return pack_documents(ids, seq_len, tokenizer.eos_token_id, tokenizer.bos_token_id)  # [sequences, seq_len]


# ---------------------------------------------------------------------------------------------- packing
def test_pack_documents_places_bos_eos_spans_documents_and_drops_the_partial_window():
    packed = pack_documents([[1, 2, 3], [4, 5], [6, 7, 8, 9]], seq_len=4, eos_id=0, bos_id=9)
    # stream: 9 1 2 3 0 | 9 4 5 0 | 9 6 7 8 9 0 -> 15 tokens -> 3 rows, the last 3 tokens dropped
    assert packed.tolist() == [[9, 1, 2, 3], [0, 9, 4, 5], [0, 9, 6, 7]]
    assert packed.dtype == np.int32 and packed.shape == (3, 4)
    # one long document continues across consecutive rows; no bos when None
    assert pack_documents([list(range(1, 10))], seq_len=3, eos_id=0).tolist() == [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert pack_documents([[1, 2], [3]], seq_len=2, eos_id=None).tolist() == [[1, 2]]
    assert pack_documents([[1, 2]], seq_len=8, eos_id=0, bos_id=9).shape == (0, 8)
    assert pack_documents([], seq_len=8, eos_id=0).shape == (0, 8)


def test_check_fits_pages():
    check_fits_pages(256, 128)
    for seq_len in (0, 100, -128):
        with pytest.raises(RetroLMError, match="pass --seq-len as a multiple of page_size=128"):
            check_fits_pages(seq_len, 128)


# ---------------------------------------------------------------------------------------------- sources
def _write_source(tmp_path, kind):
    if kind == "jsonl":
        return _jsonl(tmp_path / "docs.jsonl")
    if kind in ("txt-dir", "txt-glob"):
        (tmp_path / "txt").mkdir()
        for i, t in enumerate(TEXTS):
            (tmp_path / "txt" / f"{i}.txt").write_text(t)
        return str(tmp_path / "txt") if kind == "txt-dir" else str(tmp_path / "txt" / "*.txt")
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = str(tmp_path / "docs.parquet")
    pq.write_table(pa.table({"text": TEXTS}), source)
    return source


@pytest.mark.parametrize("kind", ["jsonl", "txt-dir", "txt-glob", "parquet"])
def test_sources_pack_in_order_with_the_last_sequences_held_out(tmp_path, kind, tokenizer):
    source = _write_source(tmp_path, kind)
    out = str(tmp_path / "out")
    meta = prepare_packed_data(source, tokenizer, out, seq_len=16, page_size=8, held_out=2, progress=False)
    expected = _expected(tokenizer)  # 106 tokens -> 6 sequences, the last 10 tokens dropped
    assert expected.shape == (6, 16)
    train, held = PackedSequences(out), PackedSequences(out, "held_out")
    assert np.array_equal(np.load(os.path.join(out, "train.npy")), expected[:4])
    assert np.array_equal(np.load(os.path.join(out, "held_out.npy")), expected[4:]), "held-out = the last rows"
    assert (len(train), len(held), train.seq_len, train.page_size) == (4, 2, 16, 8)
    for i in range(4):
        assert train[i].dtype == torch.int64 and torch.equal(train[i], torch.from_numpy(expected[i]).long())
    assert torch.equal(held[-1], torch.from_numpy(expected[5]).long())
    assert train[0][0].item() == tokenizer.bos_token_id
    assert meta == train.meta == held.meta
    assert meta == json.load(open(os.path.join(out, "meta.json")))
    assert {k: meta[k] for k in ("seq_len", "page_size", "num_train", "num_held_out", "num_documents",
                                 "num_tokens", "vocab_size", "eos_id", "bos_id", "source", "text_field")} == dict(
        seq_len=16, page_size=8, num_train=4, num_held_out=2, num_documents=3, num_tokens=100,
        vocab_size=len(tokenizer), eos_id=tokenizer.eos_token_id, bos_id=tokenizer.bos_token_id, source=source,
        text_field="text")
    assert "tokenizer" in meta
    assert sorted(os.listdir(out)) == ["held_out.npy", "meta.json", "train.npy"]


def test_empty_held_out_loads_with_length_zero_and_options(tmp_path, tokenizer):
    source = _jsonl(tmp_path / "d.jsonl", TEXTS + [None, "x"], field="body")
    out = str(tmp_path / "out")
    meta = prepare_packed_data(source, tokenizer, out, seq_len=16, page_size=8, text_field="body",
                               max_documents=4, min_doc_tokens=31, progress=False)
    # max_documents keeps TEXTS + [None]; min_doc_tokens=31 then drops the two 30-token documents and the null
    assert (meta["num_documents"], meta["num_dropped_documents"], meta["num_tokens"]) == (1, 3, 40)
    assert np.array_equal(PackedSequences(out).array, _expected(tokenizer, TEXTS[1:2]))
    held = PackedSequences(out, "held_out")
    assert len(held) == 0 and held.seq_len == 16


def test_load_documents_keeps_the_first_documents(tmp_path):
    documents = load_documents(_jsonl(tmp_path / "d.jsonl"), max_documents=2)
    assert documents["text"] == TEXTS[:2]


# ---------------------------------------------------------------------------------------------- atomic writes
def test_failed_write_leaves_no_out_dir_and_no_temp_dir(tmp_path, tokenizer, monkeypatch):
    source = _jsonl(tmp_path / "d.jsonl")
    before = sorted(os.listdir(tmp_path))
    real_save, calls = np.save, []

    def save_then_fail(path, array):  # the disk fills up after train.npy
        calls.append(path)
        if len(calls) == 2:
            raise OSError("No space left on device")
        real_save(path, array)

    monkeypatch.setattr(data_module.np, "save", save_then_fail)
    with pytest.raises(OSError, match="No space"):
        prepare_packed_data(source, tokenizer, str(tmp_path / "out"), 16, 8, progress=False)
    assert sorted(os.listdir(tmp_path)) == before


def test_existing_out_dir_survives_a_failed_prepare_and_is_replaced_by_a_complete_one(tmp_path, tokenizer,
                                                                                       monkeypatch):
    out = str(tmp_path / "out")
    prepare_packed_data(_jsonl(tmp_path / "a.jsonl"), tokenizer, out, seq_len=16, page_size=8, progress=False)
    old = np.load(os.path.join(out, "train.npy"))
    before = sorted(os.listdir(tmp_path))

    with pytest.raises(RetroLMError, match="one training sequence needs 16"):  # fails after tokenizing
        prepare_packed_data(_jsonl(tmp_path / "b.jsonl", ["tiny"]), tokenizer, out, 16, 8, progress=False)
    monkeypatch.setattr(data_module.json, "dump", lambda *a, **k: (_ for _ in ()).throw(OSError("disk")))
    with pytest.raises(OSError, match="disk"):  # fails while writing
        prepare_packed_data(_jsonl(tmp_path / "a.jsonl"), tokenizer, out, 32, 8, progress=False)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == sorted(before + ["b.jsonl"]), "no temp dir left"
    assert np.array_equal(PackedSequences(out).array, old) and PackedSequences(out).seq_len == 16

    prepare_packed_data(_jsonl(tmp_path / "a.jsonl"), tokenizer, out, seq_len=32, page_size=8, progress=False)
    assert PackedSequences(out).seq_len == 32 and len(PackedSequences(out)) == 3
    assert sorted(os.listdir(tmp_path)) == sorted(before + ["b.jsonl"]), "the old directory is gone"


def test_refuses_to_replace_a_directory_that_is_not_prepared_data(tmp_path, tokenizer):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(RetroLMError, match="not prepared data"):
        prepare_packed_data(_jsonl(tmp_path / "d.jsonl"), tokenizer, str(tmp_path / "mine"), 16, 8, progress=False)
    assert os.listdir(tmp_path / "mine") == ["notes.txt"]


# ---------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("kwargs,match", [
    (dict(seq_len=20, page_size=8), "a sequence must hold whole pages: pass --seq-len as a multiple of page_size=8"),
    (dict(seq_len=0, page_size=8), "whole pages"),
    (dict(seq_len=16, page_size=8, held_out=-1), "held_out must be >= 0"),
    (dict(seq_len=128, page_size=8), r"gives 106 tokens .*one training sequence needs 128"),
    (dict(seq_len=16, page_size=8, held_out=6), "held_out=6 leaves no training sequence: .* only 6 sequences"),
    (dict(seq_len=16, page_size=8, text_field="body"), r"no column 'body'; columns: \['text', 'id'\]"),
    (dict(seq_len=16, page_size=8, max_documents=0), "max_documents must be >= 1"),
])
def test_prepare_errors_leave_nothing_behind(tmp_path, tokenizer, kwargs, match):
    source = _jsonl(tmp_path / "d.jsonl")
    with pytest.raises(RetroLMError, match=match):
        prepare_packed_data(source, tokenizer, str(tmp_path / "out"), progress=False, **kwargs)
    assert os.listdir(tmp_path) == ["d.jsonl"]


def _mixed(tmp_path):
    _jsonl(tmp_path / "a.jsonl")
    (tmp_path / "b.txt").write_text("x")
    return str(tmp_path)


@pytest.mark.parametrize("make_source,match", [
    (lambda p: str(p / "nope.jsonl"), "no data files at"),
    (lambda p: str(p / "missing" / "*.jsonl"), "no data files at"),
    (_mixed, r"holds files of types \['.jsonl', '.txt'\]"),
    (lambda p: (p / "d.csv").write_text("text\na\n") and str(p / "d.csv"), "pass files of exactly one of"),
    (lambda p: (p / "e.jsonl").write_text("") or str(p / "e.jsonl"), "holds no documents"),
    (lambda p: (p / "b.jsonl").write_text('{"text": "a"}\n{bad\n') and str(p / "b.jsonl"), "cannot read documents"),
])
def test_source_errors(tmp_path, make_source, match):
    with pytest.raises(RetroLMError, match=match):
        load_documents(make_source(tmp_path))


@pytest.mark.parametrize("name", ["someone/no-such-dataset", "no_such_dataset:config"])
def test_unreachable_hub_says_to_pass_local_files(name, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # fails at once, as with no network
    with pytest.raises(RetroLMError, match="pass local files"):
        load_documents(name)


def test_unprepared_directory_and_missing_split(tmp_path, tokenizer):
    with pytest.raises(RetroLMError, match=r"run python train/prepare_data.py --source .* --out DIR first"):
        PackedSequences(str(tmp_path / "nowhere"))
    with pytest.raises(RetroLMError, match="no meta.json"):
        PackedSequences(str(tmp_path))
    out = str(tmp_path / "out")
    prepare_packed_data(_jsonl(tmp_path / "d.jsonl"), tokenizer, out, 16, 8, progress=False)
    with pytest.raises(RetroLMError, match="no split 'validation'"):
        PackedSequences(out, "validation")


# ---------------------------------------------------------------------------------------------- the script
def test_prepare_script(tmp_path, tokenizer):
    tokenizer.save_pretrained(str(tmp_path / "tok"))
    source = _jsonl(tmp_path / "docs.jsonl")
    script = os.path.join(ROOT, "train", "prepare_data.py")
    common = [sys.executable, script, "--source", source, "--tokenizer", str(tmp_path / "tok"), "--page-size", "8",
              "--quiet"]
    ok = subprocess.run(common + ["--seq-len", "16", "--held-out", "1", "--out", str(tmp_path / "out")],
                        capture_output=True, text=True, cwd=ROOT)
    assert ok.returncode == 0, ok.stderr
    assert "5 train + 1 held-out sequences of 16 tokens, from 3 documents (100 tokens)" in ok.stdout
    assert sorted(os.listdir(tmp_path / "out")) == ["held_out.npy", "meta.json", "train.npy"]
    bad = subprocess.run(common + ["--seq-len", "10", "--out", str(tmp_path / "bad")], capture_output=True,
                         text=True, cwd=ROOT)
    assert bad.returncode != 0 and "whole pages" in bad.stderr and "Traceback" not in bad.stderr
    assert not os.path.exists(tmp_path / "bad")
