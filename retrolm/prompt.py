"""Turning a long context and a question into prompt ids, and describing retrieved pages to people."""
from __future__ import annotations

import torch


def build_prompt_ids(tokenizer, context: str, question: str) -> torch.Tensor:
    """[1, T] ids of "context + question": the chat template when the tokenizer has one, plain text otherwise.

    The question comes last so that it sits in the final page(s), where the decode-time retrieval query
    is taken from.
    """
    message = f"{context}\n\nAnswer the question using the text above.\nQuestion: {question}"
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": message}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)["input_ids"]
    else:
        ids = tokenizer(message + "\nAnswer:", return_tensors="pt", add_special_tokens=False).input_ids
    return ids


def describe_pages(tokenizer, token_ids: torch.Tensor, pages: list[int], page_size: int, width: int = 60) -> list[str]:
    """One line per page: index, token span and the start of its text."""
    lines = []
    for page in pages:
        span = token_ids[page * page_size : (page + 1) * page_size]
        text = tokenizer.decode(span, skip_special_tokens=True).replace("\n", " ")
        preview = text[:width] + ("..." if len(text) > width else "")
        lines.append(f"  page {page:>5}  tokens {page * page_size}-{page * page_size + len(span) - 1}: {preview}")
    return lines
