"""bench/collection_qa.py: `--facts one` takes each distractor's fact out whole, and a small run writes every
method's row with the store's per-question document counted in its cost."""
import json
import os

import pytest

from bench.collection_qa import main, without_fact
from bench.collection_store import TEXTS, collection, reference_text
from bench.saved_index import main as saved_index_main


@pytest.mark.parametrize("text", TEXTS)
def test_without_fact_takes_out_the_sentence_and_its_joining_space(text):
    docs, facts = collection(40, 1024, seed=2, text=text)
    for doc_id, text in docs.items():
        fact, offset = facts[doc_id]
        stripped = without_fact(text, fact, offset)
        assert "special magic number" not in stripped and len(stripped) == len(text) - len(fact.needle) - 1
        assert stripped in (text.replace(fact.needle + " ", "", 1), text.replace(" " + fact.needle, "", 1),
                            text.replace(fact.needle + "\n", "", 1))


def test_reference_documents_are_held_out_windows_with_the_needle_on_its_own_line():
    """`--text reference`: distinct ASCII windows of Python's language reference, none over the length, spread over
    the whole text, each with its needle as a line of its own; none of it is essay filler."""
    source = reference_text()
    for count in (40, 1000):  # 1,000 windows of 1,024 characters overlap: the text is 465K characters
        docs, facts = collection(count, 1024, seed=4, text="reference")
        assert len(set(docs.values())) == count
        for doc_id, text in docs.items():
            fact, offset = facts[doc_id]
            assert text.isascii() and len(text) <= 1024 and text[offset:].startswith(fact.needle + "\n")
            assert offset == 0 or text[offset - 1] == "\n"
            assert without_fact(text, fact, offset) in source + "\n\n" + source  # the last windows wrap
    first, last = (source.index(without_fact(docs[d], *facts[d])[:200]) for d in ("doc00000.txt", "doc00999.txt"))
    assert first < 1000 and last > len(source) - 3000, "the windows spread over the whole text"


def test_one_fact_run_writes_every_method_and_counts_the_added_document(tmp_path):
    main(["--docs", "3", "--questions", "2", "--doc-tokens", "400", "--facts", "one", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "collection_qa_3_one_lexical10_nearmiss0.7.json").read_text())  # the model's knobs
    rows = {row["method"]: row for row in result["summary"]}
    assert sorted(rows) == ["concat", "rag", "store"]
    for question in result["questions"]["store"]:
        assert question["encoded_tokens"] > 300, "the asked document is encoded for its question"
    for method, questions in result["questions"].items():
        assert len(questions) == 2 and all(q["value"] for q in questions), method
    assert "only that document holds a fact" in (tmp_path / "collection_qa_3_one_lexical10_nearmiss0.7.md").read_text()


def test_reference_text_run_names_its_files(tmp_path):
    main(["--docs", "2", "--questions", "1", "--doc-tokens", "300", "--facts", "one", "--text", "reference",
          "--methods", "store", "--lexical-weight", "0", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "collection_qa_2_one_reference.json").read_text())
    assert result["args"]["text"] == "reference" and len(result["questions"]["store"]) == 1
    assert result["args"]["lexical_weight"] == 0
    assert "documents of reference text" in (tmp_path / "collection_qa_2_one_reference.md").read_text()


def test_a_kept_store_is_reused_and_the_ivf_index_names_its_files(tmp_path):
    """`--store` keeps the store for a later run (its shards reused: nothing encoded again), and `--index ivf` answers
    through the approximate index of the training-free store, its files ending in _ivf."""
    run = ["--docs", "3", "--questions", "2", "--doc-tokens", "300", "--facts", "one", "--methods", "store",
           "--scorer", "attention", "--store", str(tmp_path / "store"), "--out", str(tmp_path)]
    main(run)
    shards = sorted(os.listdir(tmp_path / "store" / "pages"))
    main(run + ["--index", "ivf"])
    assert sorted(os.listdir(tmp_path / "store" / "pages")) == shards
    result = json.loads((tmp_path / "collection_qa_3_one_attention_ivf.json").read_text())
    assert result["args"]["index"] == "ivf" and len(result["questions"]["store"]) == 2
    assert "ivf store index" in (tmp_path / "collection_qa_3_one_attention_ivf.md").read_text()
    saved_index_main(["--store", str(tmp_path / "store"), "--scorer", "attention", "--out", str(tmp_path),
                      "--name", "saved"])
    saved = json.loads((tmp_path / "saved.json").read_text())
    assert saved["same_pages"] == [True] * 3 and saved["file_mb"] > 0
    assert [row["index"] for row in saved["summary"]] == ["trained from the shards", "read from the saved file"]
    assert not os.path.exists(tmp_path / "store" / "indexes" / "ivf-auto.safetensors"), "removed unless --keep"
