"""Which of a tokenizer's ids hold given characters: refresh triggers (`refresh_on`) and sentence ends
(`lexical_hop_stops`) are set as characters, which mean the same for every tokenizer, and used as id tables."""
from __future__ import annotations

import torch


def character_table(tokenizer, characters: str, vocab_size: int, device=None) -> torch.Tensor | None:
    """[V] bool table: True for the ids whose text holds one of `characters` (None when there are none).

    A token's text is read as it appears after another token (decoding it alone would drop the leading space
    some tokenizers mark, e.g. sentencepiece's "_word"). Special tokens hold none.
    """
    if not characters:
        return None
    size = max(vocab_size, len(tokenizer))
    anchor = tokenizer("a", add_special_tokens=False).input_ids[:1]
    prefix = tokenizer.decode(anchor)
    texts = tokenizer.batch_decode([anchor + [i] for i in range(size)], skip_special_tokens=True)
    special = set(tokenizer.all_special_ids)
    table = torch.zeros(size, dtype=torch.bool)
    for i, text in enumerate(texts):
        text = text[len(prefix):] if text.startswith(prefix) else text
        table[i] = i not in special and any(c in text for c in characters)
    return table.to(device)
