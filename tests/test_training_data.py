"""Training data: local sources through `datasets`, the packing rule, the held-out split, atomic writes, errors."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from retrolm import RetroLMError
from retrolm.tiny import byte_tokenizer
from retrolm.training.data import PackedSequences, pack_documents, prepare_packed_data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXTS = ["abcdefghij" * 3, "klmnopqrst" * 4, "uvwxyz" * 5]  # 30 + 40 + 30 characters = tokens


def _jsonl(path, texts=TEXTS, field="text"):
    with open(path, "w") as f:
        for t in texts:
            f.write(json.dumps({field: t, "id": 1}) + "\n")
    return str(path)


def test_pack_documents_concatenates_with_bos_eos_and_drops_the_partial_window():
    packed = pack_documents([[1, 2, 3], [4, 5], [6, 7, 8, 9]], seq_len=4, eos_id=0, bos_id=9)
    # stream: 9 1 2 3 0 | 9 4 5 0 | 9 6 7 8 9 0 -> 15 tokens -> 3 rows, 3 dropped
    assert packed.tolist() == [[9, 1, 2, 3], [0, 9, 4, 5], [0, 9, 6, 7]]
    assert packed.dtype == np.int32


@pytest.mark.parametrize("kind", ["jsonl", "txt", "parquet"])
def test_sources_pack_into_page_aligned_sequences(tmp_path, kind):
    tokenizer = byte_tokenizer()
    if kind == "jsonl":
        source = _jsonl(tmp_path / "docs.jsonl")
    elif kind == "txt":
        (tmp_path / "txt").mkdir()
        for i, t in enumerate(TEXTS):
            (tmp_path / "txt" / f"{i}.txt").write_text(t)
        source = str(tmp_path / "txt")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        source = str(tmp_path / "docs.parquet")
        pq.write_table(pa.table({"text": TEXTS}), source)
    meta = prepare_packed_data(source, tokenizer, str(tmp_path / "out"), seq_len=16, page_size=8, held_out=1,
                               progress=False)
    total = sum(len(t) + 2 for t in TEXTS)  # bos + eos per document
    assert meta["num_train"] + meta["num_held_out"] == total // 16 and meta["num_held_out"] == 1
    train, held = PackedSequences(str(tmp_path / "out")), PackedSequences(str(tmp_path / "out"), "held_out")
    assert (train.seq_len, train.page_size, len(held)) == (16, 8, 1)
    stream = np.concatenate([train.array.reshape(-1), held.array.reshape(-1)])
    decoded = tokenizer.decode(stream.tolist(), skip_special_tokens=True)
    assert decoded in "".join(TEXTS) and len(decoded) > 60, "documents are packed in order, held-out last"
    assert train[0].tolist()[0] == tokenizer.bos_token_id


def test_prepare_replaces_old_data_only_when_complete(tmp_path):
    tokenizer = byte_tokenizer()
    out = str(tmp_path / "out")
    prepare_packed_data(_jsonl(tmp_path / "a.jsonl"), tokenizer, out, seq_len=16, page_size=8, progress=False)
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(RetroLMError, match="needed"):
        prepare_packed_data(_jsonl(tmp_path / "b.jsonl", ["tiny"]), tokenizer, out, seq_len=16, page_size=8,
                            progress=False)
    assert sorted(os.listdir(tmp_path)) == sorted(before + ["b.jsonl"]), "no temp dir left, old data kept"
    assert len(PackedSequences(out)) == 6


@pytest.mark.parametrize("kwargs,match", [
    (dict(seq_len=20, page_size=8), "whole pages"),
    (dict(seq_len=16, page_size=8, held_out=6), "held-out"),
    (dict(seq_len=16, page_size=8, text_field="body"), "no column 'body'"),
])
def test_prepare_errors(tmp_path, kwargs, match):
    with pytest.raises(RetroLMError, match=match):
        prepare_packed_data(_jsonl(tmp_path / "d.jsonl"), byte_tokenizer(), str(tmp_path / "out"), progress=False,
                            **kwargs)
    assert not os.path.exists(tmp_path / "out")


def test_missing_source_and_unprepared_directory(tmp_path):
    with pytest.raises(RetroLMError, match="no data files"):
        prepare_packed_data(str(tmp_path / "nope.jsonl"), byte_tokenizer(), str(tmp_path / "out"), 16, 8)
    with pytest.raises(RetroLMError, match="prepare_data.py"):
        PackedSequences(str(tmp_path))


def test_prepare_script(tmp_path, tiny_dirs):
    source = _jsonl(tmp_path / "docs.jsonl")
    script = os.path.join(ROOT, "train", "prepare_data.py")
    ok = subprocess.run([sys.executable, script, "--source", source, "--tokenizer", tiny_dirs["llama"], "--seq-len",
                         "16", "--page-size", "8", "--held-out", "1", "--out", str(tmp_path / "out")],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "5 train + 1 held-out sequences of 16 tokens" in ok.stdout
    bad = subprocess.run([sys.executable, script, "--source", source, "--tokenizer", tiny_dirs["llama"], "--seq-len",
                          "10", "--page-size", "8", "--out", str(tmp_path / "bad")], capture_output=True, text=True)
    assert bad.returncode == 2 and "whole pages" in bad.stderr and "Traceback" not in bad.stderr
