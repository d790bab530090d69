"""Reading and writing RetroLM's files safely: one clear error naming the file for anything unreadable, and
writes that never leave a half-written file behind (temporary sibling, then rename)."""
from __future__ import annotations

import codecs
import json
import os
import tempfile

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import RetroLMError


def read_json_object(path: str, what: str) -> dict:
    """The JSON object (dict) in `path`; `what` names the file's role in errors ("RetroLM config", ...)."""
    if not os.path.isfile(path):
        raise RetroLMError(f"{what} {path} not found.")
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise RetroLMError(f"{what} {path} is not UTF-8 text ({error.reason} at byte {error.start}); "
                           "restore the file or write it again as UTF-8 JSON.") from error
    if not text.strip():
        raise RetroLMError(f"{what} {path} is empty; restore the file or save the model again.")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise RetroLMError(f"{what} {path} is not valid JSON ({error.msg} at line {error.lineno}, column "
                           f"{error.colno}); fix or restore the file.") from error
    if not isinstance(value, dict):
        raise RetroLMError(f"{what} {path} must hold a JSON object ({{...}}), got {type(value).__name__}; "
                           "restore the file or save the model again.")
    return value


_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


def read_text(path: str, what: str) -> str:
    """The text of `path`: UTF-8, or UTF-8/16/32 marked by a byte-order mark. Binary files and text in other
    encodings (latin-1, ...) raise `RetroLMError` saying how to convert them, rather than being guessed."""
    if not os.path.isfile(path):
        raise RetroLMError(f"{what} {path!r} not found; pass an existing text file.")
    with open(path, "rb") as f:
        raw = f.read()
    encoding = next((name for bom, name in _BOMS if raw.startswith(bom)), "utf-8")
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as error:
        raise RetroLMError(f"{what} {path!r} is not {encoding.upper()} text (byte 0x{raw[error.start]:02x} at offset "
                           f"{error.start}); convert it first, e.g. iconv -f latin1 -t utf-8 IN > OUT.") from error
    if "\x00" in text:
        raise RetroLMError(f"{what} {path!r} looks binary (it holds NUL bytes); pass a plain text file.")
    return text


def write_json_atomic(path: str, value: dict) -> None:
    """Write `value` as indented JSON to `path` through a temporary sibling: the old file or the new, never half."""
    _write_atomic(path, lambda tmp: _dump_json(tmp, value))


def read_safetensors(path: str, device: str = "cpu") -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; a missing, empty, truncated or foreign file raises `RetroLMError`."""
    if not os.path.isfile(path):
        raise RetroLMError(f"{path} is missing: the checkpoint is incomplete; save it again.")
    if os.path.getsize(path) == 0:
        raise RetroLMError(f"{path} is empty (0 bytes): the checkpoint is damaged; save it again.")
    try:
        return load_file(path, device=device)
    except (SafetensorError, OSError, ValueError) as error:
        raise RetroLMError(f"{path} is not a readable safetensors file ({error}); the checkpoint is damaged or "
                           "truncated: save it again.") from error


def write_safetensors_atomic(path: str, tensors: dict[str, torch.Tensor],
                             metadata: dict[str, str] | None = None) -> None:
    """Save `tensors` (moved to CPU, made contiguous), and string `metadata`, to `path` through a temporary
    sibling."""
    state = {name: t.detach().contiguous().cpu() for name, t in tensors.items()}
    _write_atomic(path, lambda tmp: save_file(state, tmp, metadata=metadata))


def _dump_json(path: str, value: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def _write_atomic(path: str, write) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
