"""`RetroLMConfig`: every knob of RetroLM in one typed, JSON round-tripping dataclass."""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field

from .errors import RetroLMError
from .files import read_json_object, write_json_atomic

CONFIG_NAME = "retrolm_config.json"
POSITION_MODES = ("contiguous", "original")
ATTENTION_BACKENDS = ("auto", "reference", "sdpa", "triton")
SCORERS = ("auto", "attention", "trained")
NEIGHBOR_DIRECTIONS = ("next", "previous", "both")
DECODE_MODES = ("auto", "graph", "static", "eager")


def _check_int(owner: str, name: str, value, minimum: int) -> None:
    # bool is an int subclass in Python: `page_size: true` in a JSON file must not pass as 1
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise RetroLMError(f"{owner}{name} must be an integer >= {minimum}, got {value!r}.")


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

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            _check_int("retriever.", f.name, getattr(self, f.name), 0 if f.name == "seed" else 1)
        if self.hidden_size % self.num_heads or (self.hidden_size // self.num_heads) % 2:
            raise RetroLMError(f"retriever.hidden_size ({self.hidden_size}) must be num_heads ({self.num_heads}) "
                               "times an even head width (rotary positions); e.g. hidden_size=256, num_heads=4.")

    @classmethod
    def coerce(cls, value) -> "RetrieverConfig":
        """A `RetrieverConfig` from itself or a dict of its fields; anything else raises `RetroLMError`."""
        if isinstance(value, cls):
            return value
        if not isinstance(value, dict):
            raise RetroLMError(f"retriever must be a dict of retriever options (e.g. {{'num_layers': 2}}), got "
                               f"{type(value).__name__} {value!r}.")
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(value) - set(known))
        if unknown:
            raise RetroLMError(f"unknown retriever option(s) {unknown}; valid options: {known}.")
        return cls(**value)


@dataclass
class RetroLMConfig:
    """All RetroLM knobs. Saved as `retrolm_config.json` next to the retriever weights."""

    page_size: int = 128
    # How pages are ranked: "trained" (the page retriever; needs its trained weights), "attention" (training-free,
    # from the LLM's own queries and keys, chosen per layer), "auto" (trained when the checkpoint carries
    # retriever weights, attention otherwise). A loaded model's config holds the resolved choice.
    scorer: str = "auto"
    scorer_query_tokens: int = 16  # attention scorer: queries of this many tokens score a page's candidates
    top_k: int = 16  # retrieved pages per query page, on top of the always-kept sink and local pages
    # Each retrieved page brings this many neighbours (a text that straddles a page boundary is then read whole),
    # inside the same top_k slots: best page, its neighbour(s), second page, its neighbour(s), ... until top_k
    # pages are taken. 0: plain top-k. neighbor_direction: "next" (successors), "previous" or "both".
    neighbor_pages: int = 0
    neighbor_direction: str = "next"
    # A page's score also adds lexical_weight x its lexical score (lexical.py: the idf of the distinct token n-grams
    # of `lexical_ngram` tokens that the page repeats from the `lexical_query_pages` x page_size tokens before the
    # query, ignoring n-grams held by more than `lexical_max_pages` earlier pages), to the trained retriever's score
    # or to the training-free scorer's share per query row (scorer.py). Finds facts in text unlike the retriever's
    # training text. 0: off.
    lexical_weight: float = 0.0
    lexical_ngram: int = 4
    lexical_max_pages: int = 64
    lexical_query_pages: int = 2
    # Near misses (lexical.py): a page that repeats only the query's common words (another key's fact of the same
    # shape) while a page near the best one holds a rarer match (the asked key) is ranked below every other page,
    # when its rarest match is more than this margin (in log-rarity: 0.7 is about half as rare) below the best's.
    # None: off. Needs lexical_weight > 0.
    lexical_near_miss_margin: float | None = None
    # Hops (lexical.py): the prompt's question also reaches, hop by hop, the pages linked to the pages holding its
    # key by n-grams held by at most two pages (a name set in one statement and used in the next: a chain of
    # variable assignments), this many hops deep; they score as if the question held those n-grams. 0: off. Needs
    # lexical_weight > 0.
    lexical_hops: int = 0
    # Tokens each side of a link whose n-grams a hop follows to the next link: a statement's length, which depends
    # on the tokenizer (a byte-level model's statement is ~30-60 tokens, a BPE model's ~10-20). None: a quarter page.
    lexical_hop_span: int | None = None
    # Characters that end a sentence (e.g. ".!?\n"): a hop looks for the next name only inside the sentence of the
    # link it follows, within lexical_hop_span, not in the text around the statement. "": the span alone bounds it.
    lexical_hop_stops: str = ""
    # Echoes (lexical.py): a page of the best lexical match that repeats this many consecutive tokens of the question
    # or more (a worked example asking the same of another value) while the question's key is held elsewhere is a
    # near miss. Set it above the longest stretch a fact repeats of a question about it (a byte-level model: 64;
    # a BPE model's tokens are ~4 bytes). None: off. Needs lexical_near_miss_margin.
    lexical_echo_tokens: int | None = None
    sink_pages: int = 1  # first pages always attended (attention sink)
    local_pages: int = 1  # previous pages always attended (local continuity)
    position_mode: str = "contiguous"  # "contiguous": attended pages re-packed at positions 0..; "original"
    refresh_interval: int = 16  # decode: re-run retrieval every this many generated tokens (and at each new page)
    # Decode: also re-run retrieval at the step that reads a token whose text holds one of these characters (the
    # end of a generated name, item or line), so multi-hop answers query with the hop just written. "": off.
    refresh_on: str = "\n,"
    prefill_chunk_pages: int = 32  # pages encoded per LLM forward during prefill (memory vs speed)
    max_context_tokens: int = 1_048_576  # longer inputs are refused with an error naming this knob
    # Keep every K/V page in (page-locked) host memory and only the pages in use on the GPU: a cache of
    # `offload_device_pages` page slots per layer, least recently used out first (offload.py); for inputs whose KV
    # does not fit on the GPU. A forward needing more slots than that raises (one prefill chunk needs up to
    # prefill_chunk_pages x (sink + local + top_k + 1) slots).
    offload_kv: bool = False
    offload_device_pages: int = 1024
    attention_backend: str = "auto"  # "auto": triton on CUDA (decode and prefill), sdpa elsewhere; "reference": torch
    # How generate decodes (device_decode.py): "graph" each step one CUDA graph replay, every decision on the device;
    # "eager" planned on the host per step (the reference); "static" the graph's step without capture (any device,
    # for tests); "auto": graph on CUDA where it applies (a prompt long enough for its fixed widths), eager otherwise.
    decode_mode: str = "auto"
    # Device decode steps ("graph", "static") run the model's decoder layers compiled by torch.compile, which fuses
    # their small kernels (layer_compile.py): a faster step after a one-time compile (seconds per process). Fused
    # kernels round differently from eager ones in the last bits. Refused where decoding would be eager.
    decode_compile: bool = False
    bookmark_token: str = "<retrolm_bookmark>"
    # An absolute local path or a hub id ("base": the checkpoint's own base/ directory), and a fingerprint of
    # its weights: a checkpoint refuses any other base model, wherever it is loaded from.
    base_model_name_or_path: str = ""
    base_model_fingerprint: str = ""
    retriever: RetrieverConfig = field(default_factory=RetrieverConfig)

    def __post_init__(self) -> None:
        self.retriever = RetrieverConfig.coerce(self.retriever)
        self.validate()

    def validate(self) -> None:
        """Raise `RetroLMError` naming the fix for any out-of-range knob."""
        for name in ("page_size", "prefill_chunk_pages", "refresh_interval", "max_context_tokens",
                     "scorer_query_tokens", "offload_device_pages", "lexical_ngram", "lexical_max_pages",
                     "lexical_query_pages"):
            _check_int("", name, getattr(self, name), 1)
        for name in ("top_k", "sink_pages", "local_pages", "neighbor_pages", "lexical_hops"):
            _check_int("", name, getattr(self, name), 0)
        weight = self.lexical_weight
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
            raise RetroLMError(f"lexical_weight must be a number >= 0 (0 turns lexical page scores off), got "
                               f"{weight!r}.")
        span = self.lexical_hop_span
        if span is not None:
            _check_int("", "lexical_hop_span", span, 1)
        if self.lexical_echo_tokens is not None:
            _check_int("", "lexical_echo_tokens", self.lexical_echo_tokens, 1)
        margin = self.lexical_near_miss_margin
        if margin is not None and (isinstance(margin, bool) or not isinstance(margin, (int, float))
                                   or not math.isfinite(margin) or margin < 0):
            raise RetroLMError(f"lexical_near_miss_margin must be a number >= 0, or null to turn near misses off; got "
                               f"{margin!r}.")
        if weight and self.lexical_ngram > self.page_size:
            raise RetroLMError(f"lexical_ngram ({self.lexical_ngram}) must fit in a page (page_size {self.page_size}); "
                               "lower it (4 is the default).")
        if self.position_mode not in POSITION_MODES:
            raise RetroLMError(f"position_mode must be one of {POSITION_MODES}, got {self.position_mode!r}.")
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise RetroLMError(
                f"attention_backend must be one of {ATTENTION_BACKENDS}, got {self.attention_backend!r}."
            )
        if self.decode_mode not in DECODE_MODES:
            raise RetroLMError(f"decode_mode must be one of {DECODE_MODES}, got {self.decode_mode!r}.")
        if self.neighbor_direction not in NEIGHBOR_DIRECTIONS:
            raise RetroLMError(f"neighbor_direction must be one of {NEIGHBOR_DIRECTIONS}, got "
                               f"{self.neighbor_direction!r}.")
        if not isinstance(self.refresh_on, str):
            raise RetroLMError(f"refresh_on must be a string of trigger characters (e.g. \" \\n,\"; \"\" turns it "
                               f"off), got {type(self.refresh_on).__name__} {self.refresh_on!r}.")
        if not isinstance(self.lexical_hop_stops, str):
            raise RetroLMError(f"lexical_hop_stops must be a string of sentence-end characters (e.g. \".!?\\n\"; \"\" "
                               f"for none), got {type(self.lexical_hop_stops).__name__} {self.lexical_hop_stops!r}.")
        if self.scorer not in SCORERS:
            raise RetroLMError(f"scorer must be one of {SCORERS}, got {self.scorer!r}.")
        if not isinstance(self.decode_compile, bool):
            raise RetroLMError(f"decode_compile must be true or false, got {self.decode_compile!r}.")
        if self.decode_compile and self.decode_mode == "eager":
            raise RetroLMError("decode_compile=True compiles the device decode step, and decode_mode='eager' has none; "
                               "use decode_mode='auto', 'graph' or 'static' with it.")
        if not isinstance(self.offload_kv, bool):
            raise RetroLMError(f"offload_kv must be true or false, got {self.offload_kv!r}.")
        if self.offload_kv and self.offload_device_pages < self.max_attended_pages + 1:
            raise RetroLMError(f"offload_device_pages ({self.offload_device_pages}) must hold a decode step's pages: "
                               f"sink + local + top_k + its own page = {self.max_attended_pages + 1}; raise it.")
        if not isinstance(self.bookmark_token, str) or not self.bookmark_token.strip():
            raise RetroLMError(f"bookmark_token must be a non-empty string, got {self.bookmark_token!r}; "
                               "leave it at its default '<retrolm_bookmark>'.")
        for name in ("base_model_name_or_path", "base_model_fingerprint"):
            if not isinstance(getattr(self, name), str):
                raise RetroLMError(f"{name} must be a string, got {getattr(self, name)!r}.")

    @property
    def max_attended_pages(self) -> int:
        """Upper bound on earlier pages one query page attends to (sink + local + retrieved)."""
        return self.sink_pages + self.local_pages + self.top_k

    @property
    def neighbor_offsets(self) -> tuple[int, ...]:
        """Page offsets each retrieved page brings along, in the order they take free slots: "next" 1, 2, ...;
        "previous" -1, -2, ...; "both" 1, -1, 2, -2, ..."""
        forward = range(1, self.neighbor_pages + 1)
        if self.neighbor_direction == "next":
            return tuple(forward)
        if self.neighbor_direction == "previous":
            return tuple(-d for d in forward)
        return tuple(d * sign for d in forward for sign in (1, -1))

    def replace(self, **knobs) -> "RetroLMConfig":
        """A copy with `knobs` changed; unknown knob names raise `RetroLMError` listing the valid ones."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(knobs) - known)
        if unknown:
            raise RetroLMError(f"unknown RetroLM option(s) {unknown}; valid options: {sorted(known)}.")
        if isinstance(knobs.get("retriever"), dict):  # options given are set on top of the current ones
            knobs["retriever"] = {**dataclasses.asdict(self.retriever), **knobs["retriever"]}
        if "retriever" in knobs:
            knobs["retriever"] = RetrieverConfig.coerce(knobs["retriever"])
        return dataclasses.replace(self, **knobs)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "RetroLMConfig":
        return cls().replace(**data)

    def save(self, directory: str) -> None:
        write_json_atomic(os.path.join(directory, CONFIG_NAME), self.to_dict())

    @classmethod
    def load(cls, directory: str) -> "RetroLMConfig":
        path = os.path.join(directory, CONFIG_NAME)
        if not os.path.isfile(path):
            raise RetroLMError(f"{path} not found: {directory!r} is not a RetroLM checkpoint.")
        data = read_json_object(path, "RetroLM config")
        try:
            return cls.from_dict(data)
        except RetroLMError as error:
            raise RetroLMError(f"{path}: {error} Fix the file, or pass the option to from_pretrained.") from error
