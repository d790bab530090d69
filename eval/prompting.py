"""Prompts as (before, context, after) parts, and the benchmarks' middle truncation.

Every benchmark template has exactly one `{context}` slot. Keeping the text around it separate lets
`rag` retrieve inside the context only, while the other methods see `before + context + after`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .errors import EvalError


@dataclass
class Prompt:
    """One filled-in benchmark prompt.

    before/after: the template text around the context, fields already filled in.
    query: what a retriever should match chunks against (the question; the instruction if none).
    answer_prefix: text the answer continues (RULER's " Answer:"); it follows `after` directly in a raw
        prompt and follows the assistant header in a chat prompt, as RULER's chat templates place it.
    stop_at_newline: generation ends at the first newline (LongBench's samsum rule).
    chat: wrap in the tokenizer's chat template when the run asks for it (LongBench skips some tasks).
    """

    before: str
    context: str
    after: str
    query: str
    answer_prefix: str = ""
    stop_at_newline: bool = False
    chat: bool = True
    extra: dict = field(default_factory=dict)

    @property
    def body(self) -> str:
        """What a chat template wraps as the user turn: the prompt without its answer prefix."""
        return self.before + self.context + self.after

    @property
    def text(self) -> str:
        """The whole raw (unwrapped) prompt."""
        return self.body + self.answer_prefix


def fill(template: str, **fields) -> str:
    """`template.format(**fields)` that tolerates braces belonging to the data, not the template."""
    out = template
    for key, value in fields.items():
        out = out.replace("{" + key + "}", str(value))
    return out


def build_prompt(template: str, context: str, query: str, **fields) -> Prompt:
    """Split `template` at its single `{context}` slot and fill the other fields on both sides."""
    if template.count("{context}") != 1:
        raise EvalError(f"a prompt template needs exactly one {{context}} slot, got: {template[:80]!r}...")
    before, after = template.split("{context}")
    return Prompt(before=fill(before, **fields), context=context, after=fill(after, **fields), query=query)


def middle_truncate(ids: list[int], max_length: int) -> list[int]:
    """Keep the first and last max_length // 2 tokens (LongBench / InfiniteBench: the ends hold the
    instructions and the question). Sequences within max_length are returned unchanged."""
    if len(ids) <= max_length:
        return list(ids)
    half = max_length // 2
    return list(ids[:half]) + (list(ids[-half:]) if half else [])
