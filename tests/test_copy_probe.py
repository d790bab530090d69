"""bench/copy_probe.py: how a base LM's answers to unseen needle formats are scored, and a run end to end."""
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from bench.copy_probe import main, sample, score
from retrolm.tiny import build_tiny_model
from retrolm.training.needle_recall import reference_topics


@pytest.mark.parametrize("answer, value, expected", [
    ("4333687.", "4333687", {"exact": True, "first char": True, "tail": False}),
    ("4333368.", "4333687", {"exact": False, "first char": True, "tail": False}),  # found, copied badly
    ("1079279.", "3079279", {"exact": False, "first char": False, "tail": True}),  # a wrong start, then the copy
    ("chandelier 5.", "obsidian 914", {"exact": False, "first char": False, "tail": False}),
    ("", "8803", {"exact": False, "first char": False, "tail": False}),
])
def test_score_splits_the_misses(answer, value, expected):
    assert score(answer, value) == expected


def test_probe_writes_a_row_per_base_and_size_and_refuses_a_prompt_over_the_window(tmp_path):
    base = build_tiny_model(str(tmp_path / "base"), max_position_embeddings=512)
    out = tmp_path / "out"
    assert main(["--bases", base, "--names", "tiny", "--sizes", "0,100", "--samples", "5", "--out", str(out)]) == 0
    results = json.loads((out / "copy_probe.json").read_text())["results"]["tiny"]
    assert sorted(results) == ["0", "100"]
    for cell in results.values():
        assert all(0 <= cell[k] <= 100 for k in ("exact", "first char", "tail"))
        assert len(cell["exact per format"]) == 5 and len(cell["examples"]) == 5
    assert (out / "copy_probe.md").read_text().count("| tiny |") == 2
    model, tokenizer = AutoModelForCausalLM.from_pretrained(base).eval(), AutoTokenizer.from_pretrained(base)
    for chars in (0, 100):  # the end-of-text column: the mean next-token probability after each prompt
        direct = 0.0
        for i in range(5):
            ids = tokenizer(sample("test", chars, 0, i, reference_topics())[1], return_tensors="pt").input_ids
            with torch.no_grad():
                direct += float(model(ids).logits[0, -1].softmax(-1)[tokenizer.eos_token_id]) / 5
        assert results[str(chars)]["end of text"] == pytest.approx(direct, abs=2e-3)
    for i in range(5):  # the value-start column: the value's first non-space token after the answer start and a space
        needle, text = sample("test", 100, 0, i, reference_topics())
        ids = tokenizer(text + " " + needle.value, return_tensors="pt").input_ids
        prompt_tokens = tokenizer(text, return_tensors="pt").input_ids.shape[1]
        first = prompt_tokens + 1  # the byte tokenizer: one token for the space, then the value's first character
        assert tokenizer.decode(ids[0, first]) == needle.value[0]
        with torch.no_grad():
            expected = float(model(ids[:, :first]).logits[0, -1].softmax(-1)[ids[0, first]])
        assert results["100"]["value start per format"][i] == pytest.approx(expected, abs=2e-3)
    with pytest.raises(SystemExit, match="over the 512-token window"):
        main(["--bases", base, "--sizes", "600", "--samples", "5", "--out", str(tmp_path / "long")])
    assert not (tmp_path / "long").exists(), "nothing written for a run that was refused"
    assert main(["--bases", base, "--needles", "validation", "--sizes", "0", "--samples", "3", "--out", str(out)]) == 0
    validation = json.loads((out / "copy_probe_validation.json").read_text())
    assert validation["needles"] == "validation" and len(validation["results"][base]["0"]["exact per format"]) == 3
    assert main(["--bases", base, "--needles", "sealed", "--sizes", "0", "--samples", "6", "--out", str(out)]) == 0
    sealed = json.loads((out / "copy_probe_sealed.json").read_text())
    assert sealed["needles"] == "sealed" and len(sealed["results"][base]["0"]["exact per format"]) == 6
    assert (out / "copy_probe_validation.json").exists(), "each set keeps its own result files"
