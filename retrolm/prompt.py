"""Turning a long context and a question into prompt ids, and describing retrieved pages to people."""
from __future__ import annotations

import torch

from .errors import RetroLMError

QUESTION = "\n\nAnswer the question using the text above.\nQuestion: {question}"  # after the context
PLAIN_ANSWER = "\nAnswer:"  # what starts the answer without a chat template
CONTEXT_MARK = "\x00context\x00"  # where the context goes in a rendered chat message (no text holds it)


def build_prompt_ids(tokenizer, context: str, question: str) -> torch.Tensor:
    """[1, T] ids of "context + question": the chat template when the tokenizer has one, plain text otherwise.

    The question comes last so that it sits in the final page(s), where the decode-time retrieval query
    is taken from.
    """
    message = context + QUESTION.replace("{question}", question)
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": message}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)["input_ids"]
    else:
        ids = tokenizer(message + PLAIN_ANSWER, return_tensors="pt", add_special_tokens=False).input_ids
    return ids


def text_after_context(tokenizer) -> str:
    """What follows a context that is already encoded (a page store's retrieved pages), "{question}" marking the
    question: with a chat template, the rest of the user message that `build_prompt_ids` starts with the context,
    then the template's start of the assistant's turn; without one, plain text ending in "Answer:".

    The chat template's text before the message (a BOS token, a system prompt, the user header) is not in it: the
    stored pages were encoded without it, so it cannot come before them."""
    if not getattr(tokenizer, "chat_template", None):
        return QUESTION + PLAIN_ANSWER
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": CONTEXT_MARK + QUESTION}],
                                             add_generation_prompt=True, tokenize=False)
    if rendered.count(CONTEXT_MARK) != 1 or rendered.count("{question}") != 1:
        raise RetroLMError("the tokenizer's chat template does not show a user message's text once as given; pass "
                           "the text after the retrieved pages as template= (\"{question}\" marking the question).")
    return rendered.split(CONTEXT_MARK)[1]


def describe_pages(tokenizer, token_ids: torch.Tensor, pages: list[int], page_size: int, width: int = 60) -> list[str]:
    """One line per page: index, token span and the start of its text."""
    lines = []
    for page in pages:
        span = token_ids[page * page_size : (page + 1) * page_size]
        text = tokenizer.decode(span, skip_special_tokens=True).replace("\n", " ")
        preview = text[:width] + ("..." if len(text) > width else "")
        lines.append(f"  page {page:>5}  tokens {page * page_size}-{page * page_size + len(span) - 1}: {preview}")
    return lines
