"""bench/copy_reader_ceiling.py: the copying reader's longest-match rule against a scan of every occurrence."""
import random

import pytest
import torch

from bench.copy_reader_ceiling import copied_token


def reference_copy(text, written, sources, min_match, max_match=64):
    """Every source position's match length by a direct scan; the next token of the longest, if unique."""
    best, following = 0, set()
    for p in sources:
        if p + 1 >= len(text):
            continue
        length = 0
        while (length < min(max_match, len(written)) and p - length >= 0
               and text[p - length] == written[len(written) - 1 - length]):
            length += 1
        if length > best:
            best, following = length, {text[p + 1]}
        elif length == best:
            following.add(text[p + 1])
    if best < min_match or len(following) != 1:
        return None
    return following.pop()


@pytest.mark.parametrize("case", range(60))
def test_copied_token_matches_a_scan_on_random_texts(case):
    rng = random.Random(case)
    vocab = rng.choice([2, 3, 5, 20])  # small vocabularies give long matches and ties
    text = [rng.randrange(vocab) for _ in range(rng.randint(1, 120))]
    if rng.random() < 0.5:  # the written sequence ends with a passage of the text, as an answer start would
        start = rng.randrange(len(text))
        written = [rng.randrange(vocab) for _ in range(rng.randint(0, 5))] + text[start : start + rng.randint(1, 30)]
    else:
        written = [rng.randrange(vocab) for _ in range(rng.randint(1, 40))]
    sources = sorted(rng.sample(range(len(text)), rng.randint(0, len(text))))
    min_match, max_match = rng.randint(1, 6), rng.choice([4, 16, 64])
    expected = reference_copy(text, written, sources, min_match, max_match)
    got = copied_token(torch.tensor(text), torch.tensor(written), torch.tensor(sources, dtype=torch.long),
                       min_match, max_match)
    assert got == expected


def test_copied_token_takes_the_value_after_a_restated_passage_and_not_after_a_short_one():
    text = torch.tensor([9, 1, 2, 3, 4, 7, 9, 5, 4, 8])
    everywhere = torch.arange(10)
    assert copied_token(text, torch.tensor([0, 2, 3, 4]), everywhere, min_match=3) == 7
    assert copied_token(text, torch.tensor([0, 2, 3, 4]), everywhere, min_match=4) is None  # only 3 repeat
    assert copied_token(text, torch.tensor([4]), everywhere, min_match=1) is None  # 4 -> 7 and 4 -> 8 disagree
    assert copied_token(text, torch.tensor([0, 2, 3, 4]), torch.tensor([8]), min_match=1) == 8  # sources only


def test_the_reader_copies_only_from_the_pages_a_step_attends(tiny_dirs):
    """A random tiny model, a value after a passage the answer start repeats: the reader writes the value when its
    page is attended, and leaves the model's tokens when that page is kept out (top_k=0: sink and local only)."""
    from bench.copy_reader_ceiling import CopyingReader
    from transformers import LogitsProcessorList

    from retrolm import RetroLM

    filler = "".join(random.Random(3).choice("abcdefgh ") for _ in range(200))
    text = filler[:60] + " the quay code is 73914." + filler[60:] + " Answer: the quay code is"
    for top_k, copies in ((40, True), (0, False)):
        model = RetroLM.from_pretrained(tiny_dirs["llama"], page_size=16, top_k=top_k, sink_pages=1, local_pages=1,
                                        init_retriever=True, decode_mode="eager")
        ids = model.tokenizer(text, return_tensors="pt").input_ids
        cache = model.new_cache(ids.shape[1] + 6)
        out = model.generate_after(cache, ids, 6, do_sample=False,
                                   logits_processor=LogitsProcessorList([CopyingReader(cache, min_match=8)]))
        answer = model.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        assert answer.startswith(" 73914") == copies, (top_k, answer)
