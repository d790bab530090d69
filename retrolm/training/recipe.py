"""One command to train a page retriever for any supported model: `retrolm train-retriever`.

    retrolm train-retriever --model meta-llama/Meta-Llama-3-8B --data emozilla/pg19 --out runs/llama3-retriever

Prepares the corpus (tokenized and packed into `OUT/data`, skipped when already there), writes the run's
training config (`OUT/train_config.json`), prints an estimate of the time once the first held-out evaluation
has measured the model's speed, trains stage 1 with the LLM frozen (resumable: run the same command again),
and leaves a RetroLM checkpoint in OUT that `RetroLM.from_pretrained(OUT)` loads with its trained scorer;
`--push-to-hub REPO` uploads it. A recipe (configs/recipes/retriever_<preset>.json) holds the data and
training settings: `8b` for a 7-8B model on one 80 GB GPU, `small` for small models and first tries.
"""
from __future__ import annotations

import os

from ..errors import RetroLMError
from ..files import read_json_object, write_json_atomic
from ..resources import shipped_candidates
from .config import parse_override

RECIPE_KEYS = {"description", "prepare", "deepspeed", "train"}
PREPARE_KEYS = {"seq_len", "held_out", "min_doc_tokens", "max_documents"}


def load_recipe(preset: str) -> tuple[dict, str]:
    """(recipe, path) of a preset name ("8b", "small") or a recipe JSON file."""
    if os.path.isfile(preset):
        path = preset
    else:
        candidates = shipped_candidates(os.path.join("configs", "recipes"), f"retriever_{preset}.json")
        path = next((c for c in candidates if os.path.isfile(c)), None)
        if path is None:
            raise RetroLMError(f"unknown preset {preset!r}: pass 8b, small, or a recipe JSON file "
                               "(see configs/recipes/).")
    recipe = read_json_object(path, "recipe")
    unknown = sorted(set(recipe) - RECIPE_KEYS) + sorted(set(recipe.get("prepare", {})) - PREPARE_KEYS)
    if unknown or not isinstance(recipe.get("train"), dict):
        raise RetroLMError(f"recipe {path}: unknown keys {unknown} or no 'train' section; "
                           f"valid: {sorted(RECIPE_KEYS)}, prepare: {sorted(PREPARE_KEYS)}.")
    return recipe, path


def train_retriever(model: str, data: str, out: str, preset: str = "8b", overrides: list[str] = (),
                    text_field: str = "text", split: str = "train", push_to_hub: str | None = None) -> dict | None:
    """Prepare `data`, train stage 1 of `model` into `out`, optionally push the checkpoint; returns the results."""
    from transformers import AutoTokenizer

    from .data import prepare_packed_data
    from .loop import run

    recipe, recipe_path = load_recipe(preset)
    train = dict(recipe["train"])
    for override in overrides:  # --set key=value, also for the data preparation ("seq_len=4096")
        key, value = parse_override(override)
        (recipe.setdefault("prepare", {}) if key in PREPARE_KEYS else train)[key] = value
    prepare = recipe.get("prepare", {})
    data_dir = os.path.join(out, "data")
    os.makedirs(out, exist_ok=True)
    if not os.path.isfile(os.path.join(data_dir, "meta.json")):
        try:
            tokenizer = AutoTokenizer.from_pretrained(model)
        except (OSError, ValueError) as error:
            raise RetroLMError(f"cannot load the tokenizer of {model!r} ({type(error).__name__}); pass a model "
                               "directory or a reachable hub name.") from error
        page_size = train.get("retrolm", {}).get("page_size", 128)
        meta = prepare_packed_data(data, tokenizer, data_dir, seq_len=prepare.get("seq_len", 8192),
                                   page_size=page_size, held_out=prepare.get("held_out", 16), text_field=text_field,
                                   split=split, max_documents=prepare.get("max_documents"),
                                   min_doc_tokens=prepare.get("min_doc_tokens", 0))
        print(f"{data_dir}: {meta['num_train']} training + {meta['num_held_out']} held-out sequences of "
              f"{meta['seq_len']} tokens from {meta['num_documents']} documents")
    else:
        print(f"{data_dir}: prepared data found, reused (delete it to prepare again)")
    train.update(model=model, data=data_dir, output_dir=out)
    config_path = os.path.join(out, "train_config.json")
    write_json_atomic(config_path, train)
    deepspeed = recipe.get("deepspeed", "ds_zero2.json")
    deepspeed_path = os.path.join(os.path.dirname(os.path.dirname(recipe_path)), deepspeed)
    if not os.path.isfile(deepspeed_path):
        raise RetroLMError(f"recipe {recipe_path} names DeepSpeed config {deepspeed!r}, not found at {deepspeed_path}.")
    results = run("retriever", config_path, deepspeed_path)
    if results is not None and push_to_hub:
        from ..model import RetroLM

        local_base = os.path.isdir(model)  # others cannot download a local directory: its weights go along
        url = RetroLM.from_pretrained(out).push_to_hub(push_to_hub, save_base_model=local_base)
        print(f"pushed to {url}" + (" (with the base model's weights: it is a local directory)" if local_base else ""))
    return results
