"""RetroLM checkpoints on disk: which base model a checkpoint belongs to, and saving into a directory.

A checkpoint directory holds `retrolm_config.json` (written last: its presence marks a complete checkpoint),
`retriever.safetensors`, the tokenizer, and optionally `adapter/` (LoRA) and `base/` (the base model's own
weights). The base model is named by an absolute local path, a hub id, or `base`, and identified by a
fingerprint of its weights, so a checkpoint never runs on a different base that happens to sit at the same
path. Saving writes only these entries and leaves every other file of the directory alone.
"""
from __future__ import annotations

import base64
import hashlib
import os
import shutil
import tempfile

import torch

from .config import CONFIG_NAME
from .errors import RetroLMError

RETRIEVER_WEIGHTS = "retriever.safetensors"
ADAPTER_DIR = "adapter"
BASE_DIR = "base"
FINGERPRINT_VERSION = "v1"
_SAMPLED_TENSORS = 128  # tensors sampled (evenly over the sorted names), 2 values each
_FP16_TINY = 2.0 ** -14  # below fp16's normal range: flushed to 0 so fp16 and bf16 loads sample alike


def weights_fingerprint(state: dict[str, torch.Tensor]) -> str | None:
    """A dtype-independent identity of a model's weights: names and shapes hashed, plus 256 sampled values
    rounded to bf16. Returns None when weights are not materialised here (meta or partitioned tensors)."""
    names = sorted(state)
    if not names or any(state[n].is_meta or state[n].numel() == 0 for n in names):
        return None
    layout = hashlib.sha256("\n".join(f"{n}:{tuple(state[n].shape)}" for n in names).encode()).hexdigest()[:16]
    picked = [names[int(i)] for i in torch.linspace(0, len(names) - 1, min(_SAMPLED_TENSORS, len(names)))]
    samples = []
    for name in picked:
        flat = state[name].detach().reshape(-1)
        samples.append(flat[torch.tensor([flat.numel() // 3, (2 * flat.numel()) // 3], device=flat.device)])
    values = torch.cat([s.float().cpu() for s in samples])
    values = torch.where(values.abs() < _FP16_TINY, torch.zeros_like(values), values).to(torch.bfloat16)
    encoded = base64.b64encode(values.view(torch.int16).numpy().tobytes()).decode()
    return f"{FINGERPRINT_VERSION}:{layout}:{encoded}"


def fingerprints_match(saved: str, loaded: str) -> bool:
    """Same layout, and every sampled value within one bf16 step (what loading in another dtype can change)."""
    saved_parts, loaded_parts = saved.split(":"), loaded.split(":")
    if len(saved_parts) != 3 or saved_parts[:2] != loaded_parts[:2]:
        return False
    a, b = (_ordered_bf16(part[2]) for part in (saved_parts, loaded_parts))
    return a.shape == b.shape and bool(((a - b).abs() <= 1).all())


def _ordered_bf16(encoded: str) -> torch.Tensor:
    """bf16 bit patterns mapped to integers that are consecutive for consecutive representable values."""
    bits = torch.frombuffer(bytearray(base64.b64decode(encoded)), dtype=torch.int16).to(torch.int32)
    return torch.where(bits < 0, -(bits & 0x7FFF), bits)


def record_base_path(name_or_path: str) -> str:
    """What a checkpoint records for a base model given as `name_or_path`: an existing local directory as an
    absolute path (valid from any working directory), anything else as the hub id it is."""
    return os.path.abspath(name_or_path) if os.path.isdir(name_or_path) else name_or_path


def resolve_base_path(recorded: str, checkpoint_dir: str, fingerprinted: bool) -> str:
    """Where to load the base model a checkpoint records; `RetroLMError` when that cannot be known safely."""
    if not recorded:
        raise RetroLMError(f"{os.path.join(checkpoint_dir, CONFIG_NAME)} names no base model; pass "
                           "base_model_name_or_path='<hub id or directory>' to from_pretrained.")
    if recorded == BASE_DIR:
        return os.path.join(checkpoint_dir, BASE_DIR)
    if os.path.isabs(recorded):
        if not os.path.isdir(recorded):
            raise RetroLMError(f"the checkpoint's base model directory {recorded} does not exist (moved or deleted); "
                               "pass base_model_name_or_path='<its new location or hub id>' to from_pretrained.")
        return recorded
    if os.path.exists(recorded) and not fingerprinted:
        # an older checkpoint recorded a relative path: which directory it meant depends on where it was saved
        raise RetroLMError(f"the checkpoint names its base model by the relative path {recorded!r} and carries no "
                           "fingerprint to verify it; pass base_model_name_or_path='<absolute path or hub id>' "
                           "to from_pretrained, then save the checkpoint again.")
    return recorded


def check_base_identity(expected: str, actual: str | None, base_path: str) -> None:
    """Refuse a base model whose weights are not the ones the checkpoint was saved with."""
    if not expected or actual is None:
        return
    if not fingerprints_match(expected, actual):
        raise RetroLMError(f"the base model loaded from {base_path!r} is not the one this checkpoint was saved with "
                           "(its weights differ); pass base_model_name_or_path='<the right model>' to "
                           "from_pretrained. If you are sure it is right, pass base_model_fingerprint=''.")


def save_into(directory: str, write_entries) -> None:
    """Write a checkpoint into `directory`: `write_entries(staging)` writes the entries into a fresh staging
    directory, which are then moved in, `retrolm_config.json` last.

    Other files in `directory` are never touched. Entries of an earlier checkpoint that this one lacks
    (`adapter/`, `base/`, retriever weights) are removed, since they would be loaded with it. A same-named directory
    RetroLM did not write is refused before anything changes.
    """
    directory = os.path.abspath(directory)
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise RetroLMError(f"cannot save into {directory}: it is a file; pass a directory path.")
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".retrolm-save-", dir=parent)  # a sibling: renames stay on one filesystem
    try:
        write_entries(staging)
        os.makedirs(directory, exist_ok=True)
        entries = sorted(os.listdir(staging), key=lambda name: name == CONFIG_NAME)
        was_checkpoint = os.path.isfile(os.path.join(directory, CONFIG_NAME))
        for name in entries:
            target = os.path.join(directory, name)
            if os.path.isdir(os.path.join(staging, name)) and os.path.exists(target) and not was_checkpoint:
                raise RetroLMError(f"{target} exists and was not written by RetroLM; save into another directory "
                                   "(RetroLM never deletes files it did not write).")
        if was_checkpoint:  # from here until the new config lands, the directory is not a checkpoint
            os.remove(os.path.join(directory, CONFIG_NAME))
            for stale in (ADAPTER_DIR, BASE_DIR, RETRIEVER_WEIGHTS):
                path = os.path.join(directory, stale)
                if stale not in entries and os.path.isdir(path):
                    shutil.rmtree(path)
                elif stale not in entries and os.path.isfile(path):
                    os.remove(path)
        for name in entries:
            _move_replacing(os.path.join(staging, name), os.path.join(directory, name), staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _move_replacing(source: str, target: str, scratch: str) -> None:
    if os.path.isdir(source) and os.path.isdir(target):
        retired = tempfile.mkdtemp(prefix=".old-", dir=scratch)
        os.replace(target, os.path.join(retired, "entry"))  # removed with the scratch directory
    os.replace(source, target)
