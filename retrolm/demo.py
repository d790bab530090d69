"""The demo: facts hidden in a haystack many times the model's window, answered by RetroLM.

Prints, per fact, the answer, the pages retrieved at the first decode step and whether the fact's page is
among them; then the same input through full attention for time and memory. Until the trained default
model ships, the demo builds a tiny random model locally, so its answers are noise; the pipeline, the
retrieval bookkeeping and the measurements are real.
"""
from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from .model import RetroLM
from .prompt import build_prompt_ids, describe_pages
from .tiny import build_tiny_model

WORDS = ("river", "stone", "lantern", "harbor", "meadow", "copper", "window", "orchard", "signal", "garden",
         "winter", "market", "thunder", "compass", "violet", "bridge", "canyon", "ember", "falcon", "marble")
NAMES = ("Alder", "Brina", "Corvin", "Dalia", "Emric", "Fenna", "Galen", "Hesper")


@dataclass
class Fact:
    name: str
    value: int
    char_start: int  # where the fact sentence starts in the haystack text

    @property
    def sentence(self) -> str:
        return f" The secret number of {self.name} is {self.value}."

    @property
    def question(self) -> str:
        return f"What is the secret number of {self.name}?"


def build_haystack(tokenizer, target_tokens: int, num_facts: int, seed: int) -> tuple[str, list[Fact]]:
    """Filler text of about `target_tokens` tokens with `num_facts` facts at evenly spread depths."""
    rng = random.Random(seed)
    sentences, tokens = [], 0
    while tokens < target_tokens:
        sentence = " " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 12))).capitalize() + "."
        sentences.append(sentence)
        tokens += len(tokenizer(sentence, add_special_tokens=False).input_ids)
    facts = [Fact(NAMES[i % len(NAMES)], rng.randint(1000, 9999), 0) for i in range(num_facts)]
    depths = [int(len(sentences) * (i + 0.5) / num_facts) for i in range(num_facts)]
    for fact, depth in sorted(zip(facts, depths), key=lambda pair: -pair[1]):
        sentences.insert(depth, fact.sentence)
    text = "".join(sentences)
    for fact in facts:
        fact.char_start = text.index(fact.sentence)
    return text, facts


def default_demo_model() -> str:
    """Directory of the demo's tiny random Llama model, built on first use (no network needed)."""
    home = os.environ.get("RETROLM_HOME", os.path.join(os.path.expanduser("~"), ".cache", "retrolm"))
    directory = os.path.join(home, "demo-tiny-llama")
    if not os.path.isfile(os.path.join(directory, "config.json")):
        print(f"building a tiny random Llama model in {directory} (random weights: answers will be noise)")
        build_tiny_model(directory, "llama", seed=0)
    return directory


def _full_attention(base_model, ids: torch.Tensor, max_new_tokens: int, chunk: int) -> dict:
    """Plain model, full attention, same input: chunked prefill into a DynamicCache, then greedy decode."""
    cache = DynamicCache()
    started = time.perf_counter()
    with torch.no_grad():
        for s in range(0, ids.shape[1] - 1, chunk):
            base_model(input_ids=ids[:, s : min(s + chunk, ids.shape[1] - 1)], past_key_values=cache, use_cache=True,
                       logits_to_keep=1)
        encoded = time.perf_counter()
        out = base_model.generate(input_ids=ids, past_key_values=cache, max_new_tokens=max_new_tokens,
                                  do_sample=False, attention_mask=torch.ones_like(ids), pad_token_id=0)
    return {"encode_s": encoded - started, "decode_s": time.perf_counter() - encoded,
            "new_tokens": out.shape[1] - ids.shape[1],
            "kv_bytes": sum(k.numel() * k.element_size() * 2 for k, _ in
                            ((layer.keys, layer.values) for layer in cache.layers))}


def run_demo(model_path: str | None = None, window: int = 512, factor: int = 32, num_facts: int = 3,
             max_new_tokens: int = 12, seed: int = 0, page_size: int = 64, top_k: int = 4) -> dict:
    """Run the demo; returns the measured numbers (also printed)."""
    model_path = model_path or default_demo_model()
    model = RetroLM.from_pretrained(model_path, page_size=page_size, top_k=top_k)
    tokenizer = model.tokenizer
    haystack, facts = build_haystack(tokenizer, window * factor, num_facts, seed)
    print(f"model: {model_path}\nhaystack: {factor}x a {window}-token window, {num_facts} facts hidden; "
          f"RetroLM page_size={page_size}, top_k={top_k}, sink={model.config.sink_pages}, "
          f"local={model.config.local_pages}, positions={model.config.position_mode}\n")
    results = []
    for fact in facts:
        ids = build_prompt_ids(tokenizer, haystack, fact.question)
        fact_token = len(tokenizer(haystack[: fact.char_start], add_special_tokens=False).input_ids)
        fact_page = (fact_token + 1) // page_size
        out = model.generate(input_ids=ids, max_new_tokens=max_new_tokens, do_sample=False, progress=True)
        answer = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()
        log = model.last_cache.selection_log
        pages = log[0][1] if log else []
        timings = model.last_timings
        found = fact_page in pages
        results.append({"question": fact.question, "expected": str(fact.value), "answer": answer,
                        "correct": str(fact.value) in answer, "fact_page": fact_page, "pages": pages,
                        "fact_page_retrieved": found, **timings})
        print(f"Q: {fact.question}\nA: {answer!r}  (expected {fact.value}: "
              f"{'correct' if results[-1]['correct'] else 'wrong'})")
        print(f"pages retrieved ({len(pages)} of {ids.shape[1] // page_size + 1}); fact is on page {fact_page}: "
              f"{'retrieved' if found else 'NOT retrieved'}")
        print("\n".join(describe_pages(tokenizer, ids[0], pages, page_size, width=50)))
        print(f"time: encode {timings['encode_s']:.2f} s, decode {1e3 * timings['decode_s'] / max(1, timings['new_tokens']):.1f} "
              f"ms/token over {timings['prompt_tokens']} prompt tokens\n")

    # compare on the last question: by then RetroLM's one-off start-up costs are behind it
    ids = build_prompt_ids(tokenizer, haystack, facts[-1].question)
    full = _full_attention(model.base_model, ids, max_new_tokens, chunk=model.config.prefill_chunk_pages * page_size)
    retro = results[-1]
    attended = len(retro["pages"]) + 1
    summary = {
        "prompt_tokens": ids.shape[1],
        "retrolm": {"encode_s": retro["encode_s"], "decode_ms_per_token": 1e3 * retro["decode_s"] / max(1, retro["new_tokens"]),
                    "keys_read_per_token": attended * page_size, "kv_bytes": model.last_cache.memory_bytes()},
        "full": {"encode_s": full["encode_s"], "decode_ms_per_token": 1e3 * full["decode_s"] / max(1, full["new_tokens"]),
                 "keys_read_per_token": ids.shape[1], "kv_bytes": full["kv_bytes"]},
        "facts_correct": sum(r["correct"] for r in results), "fact_pages_retrieved": sum(r["fact_page_retrieved"] for r in results),
        "facts": results,
    }
    r, f = summary["retrolm"], summary["full"]
    print(f"same input ({ids.shape[1]} tokens)          RetroLM     full attention")
    print(f"  encode (s)                      {r['encode_s']:>9.2f}  {f['encode_s']:>13.2f}")
    print(f"  decode (ms/token)               {r['decode_ms_per_token']:>9.1f}  {f['decode_ms_per_token']:>13.1f}")
    print(f"  keys attended per new token     {r['keys_read_per_token']:>9d}  {f['keys_read_per_token']:>13d}")
    print(f"  KV cache (MiB)                  {r['kv_bytes'] / 2**20:>9.1f}  {f['kv_bytes'] / 2**20:>13.1f}")
    print(f"answers correct: {summary['facts_correct']}/{num_facts}; fact pages retrieved: "
          f"{summary['fact_pages_retrieved']}/{num_facts}")
    return summary
