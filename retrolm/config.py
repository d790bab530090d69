"""`RetroLMConfig`: every knob of RetroLM in one typed, JSON round-tripping dataclass."""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field

from .errors import RetroLMError

CONFIG_NAME = "retrolm_config.json"
POSITION_MODES = ("contiguous", "original")
ATTENTION_BACKENDS = ("auto", "reference", "sdpa", "triton")


@dataclass
class RetrieverConfig:
    """Shape of the page retriever: a few fresh transformer layers over the LLM's (frozen) token embeddings."""

    hidden_size: int = 256
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 1024
    num_score_heads: int = 1  # bookmark query/key heads; page score = sum over heads of <q, k>
    score_dim: int = 128
    seed: int = 0  # a fresh retriever is initialised from this seed, so runs are reproducible


@dataclass
class RetroLMConfig:
    """All RetroLM knobs. Saved as `retrolm_config.json` next to the retriever weights."""

    page_size: int = 128
    top_k: int = 16  # retrieved pages per query page, on top of the always-kept sink and local pages
    sink_pages: int = 1  # first pages always attended (attention sink)
    local_pages: int = 1  # previous pages always attended (local continuity)
    position_mode: str = "contiguous"  # "contiguous": attended pages re-packed at positions 0..; "original"
    refresh_interval: int = 16  # decode: re-run retrieval every this many generated tokens (and at each new page)
    prefill_chunk_pages: int = 32  # pages encoded per LLM forward during prefill (memory vs speed)
    max_context_tokens: int = 1_048_576  # longer inputs are refused with an error naming this knob
    offload_kv: bool = False  # keep K/V pages in (pinned) CPU memory; copy in only the pages a forward attends to
    attention_backend: str = "auto"  # "auto": triton on CUDA decode, sdpa elsewhere; "reference": plain torch
    bookmark_token: str = "<retrolm_bookmark>"
    base_model_name_or_path: str = ""
    retriever: RetrieverConfig = field(default_factory=RetrieverConfig)

    def __post_init__(self) -> None:
        if isinstance(self.retriever, dict):
            self.retriever = RetrieverConfig(**self.retriever)
        self.validate()

    def validate(self) -> None:
        """Raise `RetroLMError` naming the fix for any out-of-range knob."""
        for name in ("page_size", "prefill_chunk_pages", "refresh_interval", "max_context_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise RetroLMError(f"{name} must be an integer >= 1, got {value!r}; pass e.g. {name}=128.")
        for name in ("top_k", "sink_pages", "local_pages"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise RetroLMError(f"{name} must be an integer >= 0, got {value!r}.")
        if self.position_mode not in POSITION_MODES:
            raise RetroLMError(f"position_mode must be one of {POSITION_MODES}, got {self.position_mode!r}.")
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise RetroLMError(
                f"attention_backend must be one of {ATTENTION_BACKENDS}, got {self.attention_backend!r}."
            )

    @property
    def max_attended_pages(self) -> int:
        """Upper bound on earlier pages one query page attends to (sink + local + retrieved)."""
        return self.sink_pages + self.local_pages + self.top_k

    def replace(self, **knobs) -> "RetroLMConfig":
        """A copy with `knobs` changed; unknown knob names raise `RetroLMError` listing the valid ones."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(knobs) - known)
        if unknown:
            raise RetroLMError(f"unknown RetroLM option(s) {unknown}; valid options: {sorted(known)}.")
        if isinstance(knobs.get("retriever"), dict):
            knobs["retriever"] = RetrieverConfig(**knobs["retriever"])
        return dataclasses.replace(self, **knobs)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "RetroLMConfig":
        return cls().replace(**data)

    def save(self, directory: str) -> None:
        path = os.path.join(directory, CONFIG_NAME)
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2, sort_keys=True)
            f.write("\n")

    @classmethod
    def load(cls, directory: str) -> "RetroLMConfig":
        path = os.path.join(directory, CONFIG_NAME)
        if not os.path.isfile(path):
            raise RetroLMError(f"{path} not found: {directory!r} is not a RetroLM checkpoint.")
        with open(path) as f:
            return cls.from_dict(json.load(f))
