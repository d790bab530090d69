"""The long-context methods compared by the benchmarks, behind one interface.

    method = build_method(MethodOptions(method="rag", model="path/or/hub-name"))
    text = method.generate(prompt, max_new_tokens=32, max_length=None)

- `retrolm`:   RetroLM (KV page retrieval) reads the whole prompt.
- `streaming`: RetroLM configured as StreamingLLM at page granularity: no retrieval (top_k=0), one sink
               page plus the most recent pages, positions re-packed. Needs no code of its own.
- `full`:      the plain model; the prompt is middle-truncated to the model's window.
- `rag`:       order-preserving chunk retrieval: the context is cut into chunks, chunks and the query are
               embedded, a faiss inner-product index (on GPU when faiss and CUDA allow) ranks them, the
               best chunks up to the budget are kept in document order, and the plain model answers.

`budget` is the number of context tokens a sparse method may attend: RetroLM's sink+local+top-k pages,
the streaming window, and the tokens rag retrieves, so the three are compared at equal cost.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import torch

from retrolm.errors import RetroLMError
from retrolm.index import InnerProductIndex, import_faiss

from .errors import EvalError
from .prompting import Prompt, middle_truncate

METHODS = ("retrolm", "full", "rag", "streaming")
LLM_EMBEDDER = "llm-input-embeddings"


@dataclass
class MethodOptions:
    """Everything that defines a method run; recorded in every scores file."""

    method: str
    model: str | None  # None: the embedded default model
    budget: int | None = None  # attended context tokens (retrolm / streaming / rag); default from RetroLM's config
    full_window: int | None = None  # `full`/`rag` window; default: the model's max_position_embeddings
    rag_embedder: str = "BAAI/bge-small-en-v1.5"  # HF encoder name or path, or "llm-input-embeddings"
    rag_chunk_tokens: int = 256
    chat_template: bool = False  # wrap prompts in the tokenizer's chat template (where the task allows)
    device: str | None = None
    dtype: str = "auto"
    retrolm: dict = field(default_factory=dict)  # RetroLMConfig overrides, e.g. {"top_k": 8}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class Method:
    """A model plus a way of fitting a long prompt into it. Subclasses set `name` and `_prompt_ids`."""

    name = ""

    def __init__(self, model, options: MethodOptions):
        self.retrolm = model  # the RetroLM wrapper (its tokenizer, config and base model)
        self.tokenizer = model.tokenizer
        self.options = options

    # ------------------------------------------------------------------ capacity
    def max_prompt_tokens(self, max_new_tokens: int) -> int | None:
        """The longest prompt this method accepts, or None if it shortens any prompt itself."""
        return None

    def check_max_length(self, max_length: int | None, max_new_tokens: int) -> int | None:
        """The truncation length to use for a task: `max_length`, or the method's own limit if unset.
        Raises EvalError when `max_length` asks for more context than the method can hold."""
        limit = self.max_prompt_tokens(max_new_tokens)
        if limit is None or max_length is None:
            return max_length if max_length is not None else limit
        if max_length > limit:
            raise EvalError(
                f"--max-length {max_length} is longer than method {self.name!r} can hold ({limit} prompt tokens "
                f"with {max_new_tokens} to generate); pass --max-length {limit} or less, or raise the capacity "
                "(--max-context-tokens for retrolm/streaming)."
            )
        return max_length

    @property
    def model_name(self) -> str:
        """The model as given, or the embedded default model's directory."""
        from retrolm.model import default_model_path

        return self.options.model or default_model_path()

    def describe(self) -> dict:
        """What to record about this method in the scores file."""
        return {"retrolm_config": self.retrolm.config.to_dict()}

    # ------------------------------------------------------------------ running
    @property
    def device(self) -> torch.device:
        return self.retrolm.device

    def encode(self, text: str, special: bool = True) -> list[int]:
        return self.tokenizer(text, add_special_tokens=special).input_ids

    def count_tokens(self, text: str) -> int:
        return len(self.encode(text))

    def _chat_overhead(self, prompt: Prompt) -> int:
        return len(self._wrap([], prompt)) if self._use_chat(prompt) else 0

    def _use_chat(self, prompt: Prompt) -> bool:
        return bool(self.options.chat_template and prompt.chat and getattr(self.tokenizer, "chat_template", None))

    def _wrap(self, ids: list[int], prompt: Prompt) -> list[int]:
        """Ids of the chat-formatted prompt (answer prefix after the assistant header) when the run and
        task ask for it; `ids` otherwise."""
        if not self._use_chat(prompt):
            return ids
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        chat = self.tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                  add_generation_prompt=True)
        return self.encode(chat + prompt.answer_prefix, special=False)

    def truncation(self, prompt: Prompt, max_new_tokens: int, max_length: int | None) -> int | None:
        """Tokens to middle-truncate the unwrapped prompt to: the benchmark's `max_length` (applied before
        chat wrapping, as LongBench's pred.py does), and never more than the method holds once wrapped."""
        limit = self.max_prompt_tokens(max_new_tokens)
        cuts = [c for c in (max_length, None if limit is None else limit - self._chat_overhead(prompt))
                if c is not None]
        return min(cuts) if cuts else None

    def prompt_ids(self, prompt: Prompt, max_new_tokens: int, max_length: int | None) -> list[int]:
        """The token ids this method feeds its model for `prompt` (truncated / retrieved / wrapped)."""
        ids = self.encode(prompt.body if self._use_chat(prompt) else prompt.text)
        cut = self.truncation(prompt, max_new_tokens, max_length)
        if cut is not None:
            ids = middle_truncate(ids, cut)
        return self._wrap(ids, prompt)

    @torch.no_grad()
    def generate(self, prompt: Prompt, max_new_tokens: int, max_length: int | None = None) -> str:
        """Greedy answer to `prompt`: at most `max_new_tokens` new tokens, decoded without special tokens."""
        ids = self.prompt_ids(prompt, max_new_tokens, max_length)
        limit = self.max_prompt_tokens(max_new_tokens)
        if limit is not None and len(ids) > limit:
            raise EvalError(
                f"the prompt has {len(ids)} tokens, more than method {self.name!r} can hold ({limit}); pass "
                f"--max-length {limit} (prompts are then truncated in the middle) or raise the method's capacity."
            )
        input_ids = torch.tensor([ids], dtype=torch.long, device=self.device)
        kwargs = dict(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
        eos = self.tokenizer.eos_token_id
        if prompt.stop_at_newline:  # LongBench samsum: stop at the first newline, but generate something
            newline = self.encode("\n", special=False)[-1]
            kwargs["eos_token_id"] = [t for t in (eos, newline) if t is not None]
            kwargs["min_new_tokens"] = 1
        kwargs["pad_token_id"] = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos
        out = self._run_model(input_ids, **kwargs)
        return self.tokenizer.decode(out[0, len(ids):], skip_special_tokens=True)

    def _run_model(self, input_ids: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.retrolm.base_model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                                **kwargs)


class RetroLMMethod(Method):
    """RetroLM reads the whole prompt; over `max_context_tokens` is an error, never a silent cut."""

    name = "retrolm"

    def max_prompt_tokens(self, max_new_tokens: int) -> int:
        return self.retrolm.config.max_context_tokens

    def _run_model(self, input_ids, **kwargs):
        return self.retrolm.generate(input_ids=input_ids, progress=False, **kwargs)


class StreamingMethod(RetroLMMethod):
    """StreamingLLM: RetroLM with top_k=0, one sink page and a recent window (set up by `build_method`)."""

    name = "streaming"


class FullMethod(Method):
    """The plain model on the prompt middle-truncated to its window (minus the tokens to generate)."""

    name = "full"

    def __init__(self, model, options: MethodOptions):
        super().__init__(model, options)
        self.window = options.full_window or model_window(model)

    def max_prompt_tokens(self, max_new_tokens: int) -> int:
        return self.window - max_new_tokens

    def check_max_length(self, max_length, max_new_tokens):
        return max_length  # `full` is defined as cutting the prompt to its window, so nothing is refused

    def describe(self) -> dict:
        return {**super().describe(), "window": self.window}


class RagMethod(Method):
    """Order-preserving RAG: best chunks by embedding similarity, up to the budget, in document order."""

    name = "rag"

    def __init__(self, model, options: MethodOptions, budget: int):
        super().__init__(model, options)
        self.window = options.full_window or model_window(model)
        self.budget = budget
        self.chunk_tokens = options.rag_chunk_tokens
        if self.chunk_tokens < 1:
            raise EvalError(f"--rag-chunk-tokens must be >= 1, got {self.chunk_tokens}.")
        self.embedder = make_embedder(model, options.rag_embedder)
        self.gpu_index = self.device.type == "cuda"  # exact search on the model's GPU, else faiss on the CPU
        if not self.gpu_index:
            try:  # before any embedding, so a missing faiss stops the run at once
                import_faiss()
            except RetroLMError as error:
                raise EvalError(f"method 'rag' ranks chunks with faiss on the CPU: {error}") from error
        self._index: InnerProductIndex | None = None

    def max_prompt_tokens(self, max_new_tokens: int) -> int:
        return self.window - max_new_tokens

    def check_max_length(self, max_length, max_new_tokens):
        return max_length  # rag fits any context by retrieval; only its fixed parts must fit (see prompt_ids)

    def describe(self) -> dict:
        return {**super().describe(), "window": self.window, "budget": self.budget,
                "chunk_tokens": self.chunk_tokens, "embedder": self.options.rag_embedder,
                "gpu_index": self.gpu_index}

    def prompt_ids(self, prompt, max_new_tokens, max_length):
        chat = self._use_chat(prompt)
        before = self.encode(prompt.before)
        after = self.encode(prompt.after if chat else prompt.after + prompt.answer_prefix, special=False)
        context = self.encode(prompt.context, special=False)
        fixed = len(before) + len(after) + self._chat_overhead(prompt)
        room = self.window - max_new_tokens - fixed
        if max_length is not None:  # the benchmark's truncation counts the prompt before chat wrapping
            room = min(room, max_length - len(before) - len(after))
        room = min(room, self.budget)
        if room < 1:
            raise EvalError(
                f"the prompt's instructions and question alone take {fixed} tokens, leaving no room for context "
                f"in method 'rag' (window {self.window}, {max_new_tokens} to generate, --max-length {max_length}); "
                "raise --full-window / --max-length or use a model with a longer window."
            )
        if len(context) > room:
            context = self.retrieve(context, prompt.query, room)
        return self._wrap(before + context + after, prompt)

    def retrieve(self, context: list[int], query: str, room: int) -> list[int]:
        """Ids of the best chunks of `context` for `query`, at most `room` tokens, in document order;
        non-adjacent chunks are separated by a blank line."""
        size = self.chunk_tokens
        chunks = [context[i:i + size] for i in range(0, len(context), size)]
        texts = [self.tokenizer.decode(c, skip_special_tokens=True) for c in chunks]
        vectors = self.embedder.encode(texts)  # [chunks, dim]
        index = self._empty_index(vectors.shape[1])
        index.add(vectors)
        _, order = index.search(self.embedder.encode([query]), len(chunks))  # [1, chunks], best first
        gap = self.encode("\n\n", special=False)
        chosen = best_chunks([len(c) for c in chunks], [int(j) for j in order[0] if j >= 0], room, len(gap))
        return join_chunks(chunks, chosen, gap)

    def _empty_index(self, dim: int) -> InnerProductIndex:
        """One index for the whole run, emptied per prompt."""
        if self._index is None or self._index.dim != dim:
            gpu = self.device.index if self.device.type == "cuda" and self.device.index is not None else 0
            self._index = InnerProductIndex(dim, use_gpu=self.gpu_index, device=gpu)  # the model's GPU
        self._index.reset()
        return self._index


def best_chunks(lengths: list[int], order: list[int], room: int, gap: int) -> list[int]:
    """Indices of the chunks taken best first along `order` while they fit in `room` tokens (each costs its length
    plus `gap`), in their original order."""
    chosen, used = [], 0
    for i in order:
        if used + lengths[i] + gap <= room:
            chosen.append(i)
            used += lengths[i] + gap
    return sorted(chosen)


def join_chunks(chunks: list[list[int]], chosen: list[int], gap: list[int]) -> list[int]:
    """The `chosen` chunks' token ids in order, `gap` between chunks that were not adjacent."""
    out: list[int] = []
    for k, i in enumerate(chosen):
        if k and i != chosen[k - 1] + 1:
            out += gap
        out += chunks[i]
    return out


# ----------------------------------------------------------------------------- embedders
class LLMInputEmbedder:
    """Mean of the LLM's own input embeddings over a text's tokens; offline, for tests and smoke runs."""

    def __init__(self, model):
        self.tokenizer = model.tokenizer
        self.table = model.base_model.get_input_embeddings().weight.detach()

    @torch.no_grad()
    def encode(self, texts: list[str]) -> np.ndarray:
        rows = []
        for text in texts:
            ids = self.tokenizer(text, add_special_tokens=False).input_ids or [self.tokenizer.eos_token_id]
            rows.append(self.table[torch.tensor(ids, device=self.table.device)].float().mean(0))
        return _unit(torch.stack(rows).cpu().numpy())  # [n, hidden]


class HFEmbedder:
    """A Hugging Face encoder (e.g. BAAI/bge-small-en-v1.5), mean-pooled over non-padding tokens."""

    def __init__(self, name: str, device, batch_size: int = 32):
        from transformers import AutoModel, AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(name)
            self.model = AutoModel.from_pretrained(name).to(device).eval()
        except OSError as error:
            raise EvalError(
                f"cannot load the rag embedding model {name!r} ({type(error).__name__}); pass a local encoder "
                f"directory or hub name with --rag-embedder, or --rag-embedder {LLM_EMBEDDER} to embed offline "
                "with the LLM's own input embeddings."
            ) from error
        self.batch_size = batch_size

    @torch.no_grad()
    def encode(self, texts: list[str]) -> np.ndarray:
        out = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(texts[start:start + self.batch_size], padding=True, truncation=True,
                                   max_length=512, return_tensors="pt").to(self.model.device)
            hidden = self.model(**batch).last_hidden_state  # [b, seq, dim]
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [b, seq, 1]
            out.append(((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).float().cpu().numpy())
        return _unit(np.concatenate(out))


def make_embedder(model, name: str):
    """The rag embedder `name` (a Hugging Face encoder name or path, or LLM_EMBEDDER), on the model's device."""
    return LLMInputEmbedder(model) if name == LLM_EMBEDDER else HFEmbedder(name, model.device)


def _unit(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.ascontiguousarray(vectors / np.maximum(norms, 1e-12), dtype=np.float32)


# ----------------------------------------------------------------------------- building
def model_window(model) -> int:
    """The base model's trained context window (max_position_embeddings)."""
    config = model.base_model.config
    window = getattr(config, "max_position_embeddings", None)
    if not window:
        raise EvalError("the model config has no max_position_embeddings; pass --full-window N.")
    return int(window)


def _dtype(name: str):
    if name == "auto":
        return "auto"
    if not hasattr(torch, name) or not isinstance(getattr(torch, name), torch.dtype):
        raise EvalError(f"unknown --dtype {name!r}; use auto, bfloat16, float16 or float32.")
    return getattr(torch, name)


def build_method(options: MethodOptions) -> Method:
    """Load the model and wrap it as the requested method. Unknown methods raise EvalError."""
    if options.method not in METHODS:
        raise EvalError(f"unknown method {options.method!r}; choose one of {', '.join(METHODS)}.")
    from retrolm import RetroLM, RetroLMConfig

    knobs = dict(options.retrolm)
    defaults = RetroLMConfig().replace(**{k: v for k, v in knobs.items() if k != "retriever"})
    page = defaults.page_size
    budget = options.budget or defaults.max_attended_pages * page
    if options.method == "retrolm" and options.budget:
        top_k = budget // page - defaults.sink_pages - defaults.local_pages
        if top_k < 0:
            raise EvalError(f"--budget {budget} is smaller than RetroLM's sink+local pages "
                            f"({defaults.sink_pages + defaults.local_pages} x {page} tokens); raise --budget.")
        knobs["top_k"] = top_k
    if options.method == "streaming":
        if budget < 2 * page:
            raise EvalError(f"--budget {budget} is under two pages ({2 * page} tokens): streaming needs a sink page "
                            "and at least one recent page; raise --budget.")
        knobs.update(top_k=0, sink_pages=1, local_pages=budget // page - 1, position_mode="contiguous")
    model = RetroLM.from_pretrained(options.model, device=options.device, dtype=_dtype(options.dtype), **knobs)
    if options.method == "retrolm":
        return RetroLMMethod(model, options)
    if options.method == "streaming":
        return StreamingMethod(model, options)
    if options.method == "full":
        return FullMethod(model, options)
    return RagMethod(model, options, budget)
