"""The demo: facts hidden far beyond the model's window, found by page retrieval, against full attention.

    retrolm demo            # the embedded default model, 32x its 1024-token window, on the CPU

Each fact is a RULER-style needle ("One of the special magic numbers for KEY is: VALUE.") hidden at its own
depth in a haystack of filler sentences 32 times the model's trained window; each question is asked over its
own haystack. Prints the answer, the pages retrieved for it (and whether the needle's page is among them),
and the time; then runs the same input through the plain model with full attention, in a separate process
each, for time and peak memory.
"""
from __future__ import annotations

import multiprocessing
import random
import resource
import time
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from .compat import cache_argument
from .filler import ESSAY_SHAPES
from .model import RetroLM, default_model_path
from .prompt import describe_pages

NOUNS = ("river", "stone", "lantern", "harbor", "meadow", "copper", "window", "orchard", "signal", "garden", "winter",
         "market", "thunder", "compass", "violet", "bridge", "canyon", "ember", "falcon", "marble", "ledger", "basket",
         "engine", "pocket", "ladder", "candle", "forest", "mirror", "saddle", "tunnel")
ADJECTIVES = ("quiet", "amber", "brisk", "hollow", "gentle", "crimson", "rapid", "frozen", "silent", "golden")
PROMPT = ("A special magic number is hidden within the following text. Make sure to memorize it. I will quiz you "
          "about the number afterwards.\n{context}\nWhat is the special magic number for {key} mentioned in the "
          "provided text? The special magic number for {key} mentioned in the provided text is")


@dataclass
class Fact:
    key: str
    value: str
    depth: float  # where the needle sits in the haystack, as a fraction of it

    @property
    def needle(self) -> str:
        return f"One of the special magic numbers for {self.key} is: {self.value}."


def haystack_prompt(tokenizer, fact: Fact, target_tokens: int, seed: int) -> tuple[torch.Tensor, int]:
    """Prompt ids [1, T] of about `target_tokens` tokens with `fact` hidden at its depth, and the needle's token."""
    rng = random.Random(seed)
    sentences, size = [], 0
    while size < target_tokens:
        sentences.append(rng.choice(ESSAY_SHAPES).format(**{k: rng.choice(NOUNS) for k in "abcd"}))
        size += len(tokenizer(sentences[-1] + " ", add_special_tokens=False).input_ids)
    sentences.insert(int(len(sentences) * fact.depth), fact.needle)
    context = " ".join(sentences)
    text = PROMPT.format(context=context, key=fact.key)
    ids = tokenizer(text, return_tensors="pt").input_ids
    needle_token = len(tokenizer(text[: text.index(fact.needle)]).input_ids)
    return ids, needle_token


def make_facts(count: int, seed: int) -> list[Fact]:
    rng = random.Random(seed)
    keys = rng.sample([f"{a}-{n}" for a in ADJECTIVES for n in NOUNS], count)
    return [Fact(key, str(rng.randint(10 ** 6, 10 ** 7 - 1)), (i + 1) / (count + 1)) for i, key in enumerate(keys)]


def _peak_rss_mib() -> float:
    """Peak resident memory of this process (MiB) since the last `_reset_peak_rss`."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # no /proc: peak since start (KiB)


def _reset_peak_rss() -> float:
    """Restart the peak count at the current resident size (Linux: clear_refs 5), so that loading the model's
    transient copies do not count; returns the resident size (MiB) it starts from."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2 ** 20


def _answer_text(tokenizer, ids: torch.Tensor) -> str:
    """The generated text up to its first sentence end (the model may run on after answering)."""
    text = tokenizer.decode(ids, skip_special_tokens=True).strip()
    return text.split(".")[0].strip() if "." in text else text


@torch.no_grad()
def _measure(kind: str, model_path: str | None, ids: torch.Tensor, max_new_tokens: int, queue) -> None:
    """In a fresh process: answer with RetroLM or with full attention; report time, peak memory and KV bytes."""
    model = RetroLM.from_pretrained(model_path)
    loaded_rss = _reset_peak_rss()
    started = time.perf_counter()
    if kind == "retrolm":
        out = model.generate(input_ids=ids, max_new_tokens=max_new_tokens, do_sample=False)
        kv_bytes = model.last_cache.memory_bytes()
    else:  # the plain model, full causal attention over the whole input, KV in a DynamicCache
        cache, chunk = DynamicCache(), model.config.prefill_chunk_pages * model.config.page_size
        pass_cache = {cache_argument(model.base_model): cache}
        for start in range(0, ids.shape[1] - 1, chunk):  # chunked prefill: no T x T score matrix at once
            model.base_model(input_ids=ids[:, start:min(start + chunk, ids.shape[1] - 1)], use_cache=True,
                             logits_to_keep=1, **pass_cache)
        out = model.base_model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                        max_new_tokens=max_new_tokens, do_sample=False,
                                        pad_token_id=model.tokenizer.pad_token_id, **pass_cache)
        kv_bytes = sum(2 * layer.keys.numel() * layer.keys.element_size() for layer in cache.layers)
    queue.put({"seconds": time.perf_counter() - started, "peak_rss_mib": _peak_rss_mib(),
               "rss_over_loaded_mib": _peak_rss_mib() - loaded_rss, "kv_mib": kv_bytes / 2 ** 20,
               "answer": _answer_text(model.tokenizer, out[0, ids.shape[1]:])})


def _in_process(kind: str, model_path: str | None, ids: torch.Tensor, max_new_tokens: int) -> dict:
    context = multiprocessing.get_context("spawn")  # a fresh process: its peak memory is this run's alone
    queue = context.Queue()
    process = context.Process(target=_measure, args=(kind, model_path, ids, max_new_tokens, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


@torch.no_grad()
def run_demo(model_path: str | None = None, factor: int = 32, num_facts: int = 3, max_new_tokens: int = 12,
             seed: int = 0, compare: bool = True, window: int | None = None, **knobs) -> dict:
    """Run the demo; returns the measured numbers (also printed). window: default the model's trained window
    (its config's max_position_embeddings). knobs: `RetroLMConfig` overrides of the questions' runs (e.g.
    neighbor_pages=0), not of the comparison."""
    model = RetroLM.from_pretrained(model_path, **knobs)
    path = model_path or default_model_path()
    window = window or model.base_model.config.max_position_embeddings
    P = model.config.page_size
    print(f"model: {path}\ntrained window: {window} tokens; haystacks: {factor}x = {factor * window} tokens; RetroLM "
          f"page_size={P}, top_k={model.config.top_k}, sink={model.config.sink_pages}, "
          f"local={model.config.local_pages}, neighbor_pages={model.config.neighbor_pages} "
          f"({model.config.neighbor_direction})\n")
    results = []
    for i, fact in enumerate(make_facts(num_facts, seed)):
        ids, needle_token = haystack_prompt(model.tokenizer, fact, factor * window, seed * 1000 + i)
        needle_pages = {needle_token // P, (needle_token + len(fact.needle)) // P}
        started = time.perf_counter()
        out = model.generate(input_ids=ids, max_new_tokens=max_new_tokens, do_sample=False)
        seconds = time.perf_counter() - started
        answer = _answer_text(model.tokenizer, out[0, ids.shape[1]:])
        log = model.last_cache.retrievals()
        pages = log[0][1] if log else []
        found = needle_pages <= set(pages)
        results.append({"key": fact.key, "expected": fact.value, "answer": answer, "correct": fact.value in answer,
                        "depth": fact.depth, "needle_pages": sorted(needle_pages), "pages": pages,
                        "needle_page_retrieved": found, "prompt_tokens": ids.shape[1], "seconds": seconds})
        print(f"Q{i + 1}: the special magic number for {fact.key}? (hidden at {fact.depth:.0%} depth of "
              f"{ids.shape[1]} tokens)\nA: {answer!r}, expected {fact.value}: "
              f"{'correct' if results[-1]['correct'] else 'WRONG'}  ({seconds:.1f} s)")
        got = len(needle_pages & set(pages))
        print(f"pages retrieved for the answer ({len(pages)} of {ids.shape[1] // P + 1}); the needle is on page(s) "
              f"{sorted(needle_pages)}: {'retrieved' if found else f'{got} of {len(needle_pages)} retrieved'}")
        print("\n".join(describe_pages(model.tokenizer, ids[0], pages, P, width=60)) + "\n")
    summary = {"model": path, "window": window, "factor": factor, "facts": results,
               "correct": sum(r["correct"] for r in results)}
    print(f"answers correct: {summary['correct']}/{num_facts}; needles retrieved whole: "
          f"{sum(r['needle_page_retrieved'] for r in results)}/{num_facts}\n")
    if compare:
        print(f"same input ({ids.shape[1]} tokens, the last question) in separate processes: RetroLM, then the plain "
              "model with full attention (slow on a CPU: every token attends to every earlier one)...")
        retro = _in_process("retrolm", model_path, ids, max_new_tokens)
        full = _in_process("full", model_path, ids, max_new_tokens)
        summary["compare"] = {"prompt_tokens": ids.shape[1], "retrolm": retro, "full": full}
        print(f"{'':<34}{'RetroLM':>12}{'full attention':>16}")
        print(f"{'answer':<34}{retro['answer'][:11]!r:>12}{full['answer'][:13]!r:>16}")
        print(f"{'time, prefill + answer (s)':<34}{retro['seconds']:>12.1f}{full['seconds']:>16.1f}")
        print(f"{'peak memory over the model (MiB)':<34}{retro['rss_over_loaded_mib']:>12.0f}"
              f"{full['rss_over_loaded_mib']:>16.0f}")
        print(f"{'KV cache (MiB)':<34}{retro['kv_mib']:>12.1f}{full['kv_mib']:>16.1f}")
        print(f"(full attention reads {ids.shape[1]} tokens, {ids.shape[1] // window}x the {window}-token window the "
              "model was trained on; RetroLM attends to at most "
              f"{(model.config.max_attended_pages + 1) * P} per token. Both keep every page's K/V: RetroLM reads few "
              "of them; offload_kv=True moves the rest to host memory on a GPU.)")
    return summary
