"""bench/collection_qa.py: `--facts one` takes each distractor's fact out whole, and a small run writes every
method's row with the store's per-question document counted in its cost."""
import json

from bench.collection_qa import main, without_fact
from bench.collection_store import collection


def test_without_fact_takes_out_the_sentence_and_its_joining_space():
    docs, facts = collection(40, 1024, seed=2)
    for doc_id, text in docs.items():
        fact, offset = facts[doc_id]
        stripped = without_fact(text, fact, offset)
        assert "special magic number" not in stripped and len(stripped) == len(text) - len(fact.needle) - 1
        assert stripped in (text.replace(fact.needle + " ", "", 1), text.replace(" " + fact.needle, "", 1))


def test_one_fact_run_writes_every_method_and_counts_the_added_document(tmp_path):
    main(["--docs", "3", "--questions", "2", "--doc-tokens", "400", "--facts", "one", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "collection_qa_3_one.json").read_text())
    rows = {row["method"]: row for row in result["summary"]}
    assert sorted(rows) == ["concat", "rag", "store"]
    for question in result["questions"]["store"]:
        assert question["encoded_tokens"] > 300, "the asked document is encoded for its question"
    for method, questions in result["questions"].items():
        assert len(questions) == 2 and all(q["value"] for q in questions), method
    assert "only that document holds a fact" in (tmp_path / "collection_qa_3_one.md").read_text()
