"""`retrolm train-retriever`: one command from a plain model and a corpus to a checkpoint that loads with its
trained scorer, with a time estimate first; and pushing checkpoints to the hub (the hub client faked)."""
import json
import os

import datasets  # noqa: F401  imported before HfApi is faked: it binds HfApi at import, and would keep the fake
import pytest
import torch

from retrolm import RetroLM, RetroLMError
from retrolm.cli import main
from retrolm.training.recipe import load_recipe

TINY_RETROLM = {"page_size": 16, "top_k": 2, "sink_pages": 1, "local_pages": 1,
                "retriever": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64,
                              "score_dim": 16}}


def corpus(path, documents=24, words=160):
    generator = torch.Generator().manual_seed(0)
    vocabulary = ["page", "river", "lamp", "orbit", "seven", "quiet", "stone", "garden", "signal", "harbor"]
    with open(path, "w") as f:
        for _ in range(documents):
            picks = torch.randint(0, len(vocabulary), (words,), generator=generator).tolist()
            f.write(json.dumps({"text": " ".join(vocabulary[i] for i in picks)}) + "\n")
    return str(path)


class FakeHub:
    """Stands in for huggingface_hub.HfApi: records what would be uploaded."""
    uploads = []

    def create_repo(self, repo_id, private=False, exist_ok=False):
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, repo_id, folder_path, commit_message):
        FakeHub.uploads.append((repo_id, sorted(os.listdir(folder_path))))


def test_presets_load_and_unknown_ones_are_a_clear_error(tmp_path):
    for preset in ("8b", "small"):
        recipe, path = load_recipe(preset)
        assert recipe["train"]["max_steps"] > 0 and path.endswith(f"retriever_{preset}.json")
    with pytest.raises(RetroLMError, match="unknown preset 'huge'"):
        load_recipe("huge")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"train": {}, "prepare": {"seq_length": 8}}))
    with pytest.raises(RetroLMError, match="seq_length"):
        load_recipe(str(bad))


def test_one_command_trains_a_retriever_that_loads_with_its_trained_scorer(tiny_dirs, tmp_path, capsys,
                                                                            monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHub)
    FakeHub.uploads = []
    out = str(tmp_path / "run")
    argv = ["train-retriever", "--model", tiny_dirs["llama"], "--data", corpus(tmp_path / "docs.jsonl"),
            "--out", out, "--preset", "small", "--set", "seq_len=128", "--set", "held_out=2",
            "--set", "min_doc_tokens=0", "--set", "max_steps=2", "--set", "eval_steps=2", "--set", "eval_sequences=2",
            "--set", "needle_eval_samples=1", "--set", "needle_eval_tokens=[400]",
            "--set", "save_steps=1", "--set", "warmup_steps=1", "--set", "report_to=none",
            "--set", "retrolm=" + json.dumps(TINY_RETROLM), "--push-to-hub", "me/tiny-retriever"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "estimated training time:" in printed and "for 2 steps" in printed
    assert printed.index("estimated training time:") < printed.index("pushed to")
    model = RetroLM.from_pretrained(out)
    assert model.config.scorer == "trained" and model.retriever is not None
    results = json.load(open(os.path.join(out, "train_results.json")))
    assert results["stage"] == "retriever" and results["steps"] == 2 and results["eval_after"]
    assert [entry["step"] for entry in results["needle_recall"]] == [0, 2] and "validation needle recall" in printed
    assert results["kept"]["step"] in (0, 2)
    repo, files = FakeHub.uploads[0]
    assert repo == "me/tiny-retriever" and {"retrolm_config.json", "retriever.safetensors", "base"} <= set(files)

    assert main(argv[:-2]) == 0  # run again: data reused and training resumed, nothing redone
    again = capsys.readouterr().out
    assert "prepared data found, reused" in again and "resumed from" in again
    results = json.load(open(os.path.join(out, "train_results.json")))
    assert [entry["step"] for entry in results["needle_recall"]] == [0, 2]


def test_pushing_a_checkpoint_whose_base_is_a_local_directory_needs_its_weights(tiny_dirs, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHub)
    FakeHub.uploads = []
    model = RetroLM.from_pretrained(tiny_dirs["qwen2"], page_size=8, top_k=2)
    with pytest.raises(RetroLMError, match="save_base_model=True"):
        model.push_to_hub("me/x")
    assert FakeHub.uploads == []
    assert model.push_to_hub("me/x", save_base_model=True) == "https://huggingface.co/me/x"
    assert "base" in FakeHub.uploads[0][1] and "retriever.safetensors" not in FakeHub.uploads[0][1]
