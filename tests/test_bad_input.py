"""Bad input of every documented kind gives one `RetroLMError` naming the value or file and the fix (docs/errors.md).

Each case is run as a user would hit it; a library traceback (TypeError, KeyError, SafetensorError, ...) fails.
"""
import json
import os
import shutil

import numpy as np
import pytest
import torch

from retrolm import RetroLM, RetroLMError
from retrolm.cli import main


@pytest.fixture(scope="module")
def model(tiny_dirs):
    return RetroLM.from_pretrained(tiny_dirs["llama"], page_size=8, top_k=2, init_retriever=True)


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("ckpt") / "c")
    model.save_pretrained(path)
    return path


@pytest.fixture
def checkpoint(saved, tmp_path):
    """A fresh copy of a saved checkpoint that a test may damage."""
    return shutil.copytree(saved, str(tmp_path / "c"))


# ------------------------------------------------------------------ options
@pytest.mark.parametrize("knobs, match", [
    ({"retriever": {"num_layer": 2}}, r"unknown retriever option\(s\) \['num_layer'\]"),
    ({"retriever": {"num_layers": 0}}, "retriever.num_layers must be an integer >= 1, got 0"),
    ({"retriever": {"num_layers": -1}}, "retriever.num_layers must be an integer >= 1, got -1"),
    ({"retriever": {"hidden_size": -8}}, "retriever.hidden_size must be an integer >= 1"),
    ({"retriever": {"score_dim": 0}}, "retriever.score_dim must be an integer >= 1"),
    ({"retriever": {"hidden_size": 100, "num_heads": 3}}, "must be num_heads .* times an even head width"),
    ({"retriever": {"num_layers": 2.5}}, "retriever.num_layers must be an integer"),
    ({"retriever": None}, "retriever must be a dict of retriever options .*got NoneType"),
    ({"retriever": "big"}, "retriever must be a dict of retriever options .*got str"),
    ({"page_size": True}, "page_size must be an integer >= 1, got True"),
    ({"page_size": 0}, "page_size must be an integer >= 1"),
    ({"top_k": -1}, "top_k must be an integer >= 0"),
    ({"neighbor_pages": -1}, "neighbor_pages must be an integer >= 0, got -1"),
    ({"neighbor_pages": 1.5}, "neighbor_pages must be an integer >= 0"),
    ({"neighbor_direction": "after"}, r"neighbor_direction must be one of \('next', 'previous', 'both'\)"),
    ({"refresh_on": 10}, "refresh_on must be a string of trigger characters .*got int 10"),
    ({"refresh_on": ["\n"]}, "refresh_on must be a string of trigger characters"),
    ({"bookmark_token": ""}, "bookmark_token must be a non-empty string"),
    ({"offload_kv": "yes"}, "offload_kv must be true or false"),
    ({"position_mode": "nope"}, "position_mode must be one of"),
    ({"pagesize": 4}, "unknown RetroLM option"),
    ({"device": "cuda"} if not torch.cuda.is_available() else {"device": "cuda:99"}, "CUDA"),
    ({"device": "gpu0"}, "is not a device name"),
    ({"dtype": "bogus"}, "dtype 'bogus' is unknown"),
    ({"dtype": torch.int64}, "dtype must be a floating-point torch dtype"),
    ({"attention_backend": "triton"} if not torch.cuda.is_available() else {"attention_backend": "cuda"},
     "attention_backend"),
])
def test_bad_options(tiny_dirs, knobs, match):
    with pytest.raises(RetroLMError, match=match):
        RetroLM.from_pretrained(tiny_dirs["llama"], **knobs)


def test_model_name_of_the_wrong_type():
    with pytest.raises(RetroLMError, match="takes a hub name or a directory, got int"):
        RetroLM.from_pretrained(42)


# ------------------------------------------------------------------ damaged checkpoints
CONFIG_DAMAGE = {
    "empty": (b"", "is empty"),
    "invalid": (b'{"page_size": 8,', "is not valid JSON"),
    "a list": (b"[1, 2]", r"must hold a JSON object \(\{...\}\), got list"),
    "null": (b"null", "must hold a JSON object .* got NoneType"),
    "non-UTF-8": ('{"bookmark_token": "caf\u00e9"}'.encode("latin-1"), "is not UTF-8 text"),
    "page_size true": (None, "page_size must be an integer >= 1, got True"),
    "retriever null": (None, "retriever must be a dict"),
}


@pytest.mark.parametrize("damage", sorted(CONFIG_DAMAGE))
def test_damaged_config_file(checkpoint, damage):
    content, match = CONFIG_DAMAGE[damage]
    path = os.path.join(checkpoint, "retrolm_config.json")
    if content is None:  # valid JSON with one bad value
        with open(path) as f:
            values = json.load(f)
        values.update({"page_size": True} if damage == "page_size true" else {"retriever": None})
        content = json.dumps(values).encode()
    with open(path, "wb") as f:
        f.write(content)
    with pytest.raises(RetroLMError, match=match) as error:
        RetroLM.from_pretrained(checkpoint)
    assert "retrolm_config.json" in str(error.value)


@pytest.mark.parametrize("damage, match", [
    ("zero bytes", "is empty \\(0 bytes\\)"),
    ("truncated", "is not a readable safetensors file"),
    ("random bytes", "is not a readable safetensors file"),
    ("missing", "needs trained page retriever weights"),
])
def test_damaged_retriever_weights(checkpoint, damage, match):
    path = os.path.join(checkpoint, "retriever.safetensors")
    data = open(path, "rb").read()
    if damage == "missing":
        os.remove(path)
    else:
        content = {"zero bytes": b"", "truncated": data[: len(data) // 2],
                   "random bytes": np.random.default_rng(0).bytes(4096)}[damage]
        with open(path, "wb") as f:
            f.write(content)
    with pytest.raises(RetroLMError, match=match) as error:
        RetroLM.from_pretrained(checkpoint)
    assert "retriever.safetensors" in str(error.value) or damage == "missing"


def test_retriever_shape_not_matching_its_weights(checkpoint):
    with pytest.raises(RetroLMError, match="does not fit the retriever configured"):
        RetroLM.from_pretrained(checkpoint, retriever={"hidden_size": 32, "num_heads": 2})


def test_nan_retriever_weights_are_refused(model, tmp_path):
    broken = tmp_path / "nan"
    with torch.no_grad():
        saved = model.retriever.key_head.weight.clone()
        model.retriever.key_head.weight[0, 0] = float("nan")
        try:
            model.save_pretrained(str(broken))
        finally:
            model.retriever.key_head.weight.copy_(saved)
    with pytest.raises(RetroLMError, match="NaN or infinite values .*key_head"):
        RetroLM.from_pretrained(str(broken))


def test_damaged_base_weights(tiny_dirs, tmp_path):
    base = shutil.copytree(tiny_dirs["llama"], str(tmp_path / "base"))
    with open(os.path.join(base, "model.safetensors"), "wb") as f:
        f.write(b"\x00" * 100)
    with pytest.raises(RetroLMError, match="cannot load the weights of model"):
        RetroLM.from_pretrained(base)


# ------------------------------------------------------------------ token ids and generation arguments
@pytest.mark.parametrize("ids, match", [
    (torch.rand(1, 10), "must hold integer token ids .* got dtype torch.float32"),
    (torch.ones(1, 10, dtype=torch.int16), "got dtype torch.int16"),
    (torch.ones(1, 10, dtype=torch.uint8), "got dtype torch.uint8"),
    (torch.ones(1, 10, dtype=torch.bool), "got dtype torch.bool"),
    ([[1, 2, 3]], "must be a torch tensor of token ids .* got list"),
    (np.ones((1, 10), dtype=np.int64), "must be a torch tensor of token ids .* got ndarray"),
    (torch.ones(10, dtype=torch.long), "must be \\[batch, seq\\]"),
])
def test_bad_token_ids(model, ids, match):
    with pytest.raises(RetroLMError, match=match):
        model.generate(input_ids=ids, max_new_tokens=2)
    with pytest.raises(RetroLMError, match=match):
        model(input_ids=ids)


@pytest.mark.parametrize("value", [None, 0, -3, 2.5, True])
def test_bad_max_new_tokens(model, value):
    with pytest.raises(RetroLMError, match="max_new_tokens must be an integer >= 1"):
        model.generate(input_ids=torch.ones(1, 10, dtype=torch.long), max_new_tokens=value)


def test_int32_ids_are_token_ids(model):
    ids = torch.randint(0, 200, (1, 20))
    assert torch.equal(model.generate(input_ids=ids.int(), max_new_tokens=3, do_sample=False),
                       model.generate(input_ids=ids, max_new_tokens=3, do_sample=False))


# ------------------------------------------------------------------ the HF idiom
def test_generate_with_tokenizer_output_unpacked(model):
    """`model.generate(**tokenizer(text, return_tensors="pt"))` works, all-ones mask included."""
    batch = model.tokenizer("The key is 42. " * 6, return_tensors="pt")
    assert "attention_mask" in batch
    out = model.generate(**batch, max_new_tokens=4, do_sample=False)
    assert torch.equal(out, model.generate(input_ids=batch["input_ids"], max_new_tokens=4, do_sample=False))
    logits = model(**batch).logits
    assert logits.shape == (1, batch["input_ids"].shape[1], model.base_model.config.vocab_size)


def test_padding_in_the_mask_is_refused(model):
    batch = model.tokenizer("Some text here.", return_tensors="pt")
    batch["attention_mask"][0, :3] = 0
    with pytest.raises(RetroLMError, match="attention_mask has padding"):
        model.generate(**batch, max_new_tokens=2)
    with pytest.raises(RetroLMError, match="shaped like input_ids"):
        model.generate(input_ids=batch["input_ids"], attention_mask=torch.ones(1, 3, dtype=torch.long))


# ------------------------------------------------------------------ command line
@pytest.mark.parametrize("content, match", [
    (bytes(range(256)) * 4, "is not UTF-8 text"),
    ("Caf\u00e9 au lait. " .encode("latin-1") * 20, "is not UTF-8 text .* iconv"),
    (b"\x00\x01\x02binary\x00" * 10, "looks binary"),
])
def test_cli_refuses_undecodable_input_files(tiny_dirs, tmp_path, capsys, content, match):
    path = tmp_path / "doc.txt"
    path.write_bytes(content)
    code = main(["generate", "--model", tiny_dirs["llama"], "--input", str(path), "--question", "q", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert pytest.importorskip("re").search(match, err), err


def test_cli_reads_utf16_with_a_byte_order_mark(tiny_dirs, tmp_path, capsys):
    path = tmp_path / "doc.txt"
    path.write_bytes("The vault code is 4312. ".encode("utf-16") + "Filler. ".encode("utf-16-le") * 30)
    code = main(["generate", "--model", tiny_dirs["llama"], "--input", str(path), "--question", "code?",
                 "--max-new-tokens", "2", "--page-size", "16", "--device", "cpu"])
    assert code == 0 and "answer:" in capsys.readouterr().out


@pytest.mark.parametrize("value", ["0", "-1", "2.5", "many"])
def test_cli_refuses_bad_max_new_tokens(tiny_dirs, tmp_path, capsys, value):
    path = tmp_path / "doc.txt"
    path.write_text("hello " * 20)
    with pytest.raises(SystemExit) as stop:
        main(["generate", "--model", tiny_dirs["llama"], "--input", str(path), "--question", "q",
              "--max-new-tokens", value])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "expected an integer >= 1" in err and "Traceback" not in err
