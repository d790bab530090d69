"""Can the page retriever learn to tell same-shape facts apart by their key? A probe for issue 15.

    python bench/key_retriever.py --steps 1500 --batch 64 --device cuda --out bench/results/collection

The shipped retriever ranks every page holding a fact of RULER's shape ("One of the special magic numbers for KEY
is: N.") the same whatever KEY is asked (bench/results/collection/collection_store.md: needle-page recall 0 of 50
over 1,000 documents). The retriever reads only token embeddings of one page window (retrolm/retriever.py), so it
can be trained and measured without running the LLM.

Training (contrastive, a copy of the shipped retriever): each batch holds documents of essay filler with one fact
each under its own key drawn from training words (train/facts.py's list, without the evaluation's key words): most
keys three words from a small vocabulary drawn per batch, so that keys share words as the evaluation's do, the
rest one to three words or a number; each question's query (the last page window of bench/collection_store.py's
question and answer start) must score the page holding its key above every other page of the batch, the other
facts' pages included (cross-entropy over the batch's pages).

Evaluation: bench/collection_store.py's collection (keys of bench/collection_store.py's own words, never trained
on), every page's bookmark key and each question's query from the retriever alone; the retrieved pages are the
top sink + local + top_k seeds with their neighbours, as `RetroLM.answer` takes them. Reports needle-page recall
(every page of the needle retrieved) and the rank of the key's page, shipped against trained. Writes
key_retriever.json / .md under --out, and the trained retriever's weights with --save.
"""
from __future__ import annotations

import argparse
import copy
import os
import random
import sys
import time

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.collection_store import answer_template, collection, make_document, needle_pages, question  # noqa: E402
from bench.common import environment, markdown_table, write_json, write_text  # noqa: E402
from retrolm.collection import with_neighbors  # noqa: E402
from retrolm.demo import ADJECTIVES, NOUNS, Fact  # noqa: E402
from retrolm.model import RetroLM  # noqa: E402
from retrolm.pager import page_windows  # noqa: E402
from train.facts import _words  # noqa: E402

EVAL_WORDS = {w.lower() for w in ADJECTIVES + NOUNS}


def train_key(rng: random.Random, words: list[str], shared: tuple[list[str], list[str]]) -> str:
    """A training key: most share words with the batch's other keys (word-word-word from `shared`, a small vocabulary
    drawn per batch, as the evaluation's keys share theirs), so only the whole key tells two facts apart."""
    draw = rng.random()
    if draw < 0.1:
        return str(rng.randint(10 ** 5, 10 ** 8))
    if draw < 0.3:
        return "-".join(rng.choice(words).lower() for _ in range(rng.randint(1, 3)))
    first, rest = shared
    return f"{rng.choice(first)}-{rng.choice(rest)}-{rng.choice(rest)}"


def windows_of(ids: torch.Tensor, starts: list[int], page: int) -> tuple[torch.Tensor, torch.Tensor]:
    starts_t = torch.tensor(starts)
    return page_windows(ids, starts_t, (starts_t + page).clamp(max=ids.shape[0]), page)


def question_window(model, fact: Fact) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.tensor(model.tokenizer(answer_template(fact).replace("{question}", question(fact)),
                                       add_special_tokens=False).input_ids)
    P = model.config.page_size
    return windows_of(ids, [max(0, ids.shape[0] - P)], P)


def encode(model, retriever, windows: torch.Tensor, lengths: torch.Tensor, batch: int = 4096):
    """(queries, keys) [W, heads * dim] of page windows through `retriever` on the LLM's input embeddings."""
    embed = model.base_model.get_input_embeddings()
    queries, keys = [], []
    for start in range(0, windows.shape[0], batch):
        q, k = retriever(embed(windows[start:start + batch].to(model.device)),
                         lengths[start:start + batch].to(model.device))
        queries.append(q.flatten(1))
        keys.append(k.flatten(1))
    return torch.cat(queries), torch.cat(keys)


def training_batch(model, rng: random.Random, words: list[str], size: int, chars: tuple[int, int]):
    """Question windows [size], page windows of `size` documents, and the index of each question's key page."""
    P = model.config.page_size
    question_windows, page_windows_, targets = [], [], []
    pages_so_far = 0
    shared = ([w.lower() for w in rng.sample(words, 6)], [w.lower() for w in rng.sample(words, 12)])
    keys = set()
    while len(keys) < size:
        keys.add(train_key(rng, words, shared))
    for key in sorted(keys, key=lambda _: rng.random()):
        fact = Fact(key, str(rng.randint(10 ** 6, 10 ** 7 - 1)), 0.0)
        text, offset = make_document(rng, rng.randint(*chars), fact)
        ids = torch.tensor(model.tokenizer(text, add_special_tokens=False).input_ids)
        starts = list(range(0, ids.shape[0] - P + 1, P))
        key_end = offset + fact.needle.index(fact.key) + len(fact.key) - 1  # characters = tokens (byte model)
        targets.append(pages_so_far + min(key_end // P, len(starts) - 1))
        page_windows_.append(windows_of(ids, starts, P))
        question_windows.append(question_window(model, fact))
        pages_so_far += len(starts)
    cat = lambda parts: (torch.cat([w for w, _ in parts]), torch.cat([n for _, n in parts]))  # noqa: E731
    return cat(question_windows), cat(page_windows_), torch.tensor(targets)


def train(model, steps: int, batch: int, lr: float, seed: int, log_every: int = 100) -> tuple[torch.nn.Module, list]:
    retriever = copy.deepcopy(model.retriever).float().train()
    for p in model.base_model.parameters():
        p.requires_grad_(False)
    optimizer = torch.optim.AdamW(retriever.parameters(), lr=lr, weight_decay=0.0)
    rng = random.Random(seed)
    words = [w for w in _words() if w.lower() not in EVAL_WORDS]
    log = []
    for step in range(1, steps + 1):
        (qw, ql), (pw, pl), targets = training_batch(model, rng, words, batch, (300, 1100))
        queries, _ = encode(model, retriever, qw, ql)
        _, keys = encode(model, retriever, pw, pl)
        loss = F.cross_entropy(queries @ keys.T, targets.to(model.device))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % log_every == 0 or step == 1:
            log.append({"step": step, "loss": round(loss.item(), 4)})
            print(f"step {step}: loss {loss.item():.4f}", flush=True)
    return retriever.eval(), log


@torch.no_grad()
def evaluate(model, retriever, docs: dict[str, str], facts: dict, asked: list[str]) -> dict:
    P, config = model.config.page_size, model.config
    rows, windows = [], []
    for doc_id, text in docs.items():
        ids = torch.tensor(model.tokenizer(text, add_special_tokens=False).input_ids)
        starts = list(range(0, ids.shape[0] - P + 1, P))
        rows += [(doc_id, p) for p in range(len(starts))]
        windows.append(windows_of(ids, starts, P))
    _, keys = encode(model, retriever, torch.cat([w for w, _ in windows]), torch.cat([n for _, n in windows]))
    pages = {}
    for doc_id, _ in rows:
        pages[doc_id] = pages.get(doc_id, 0) + 1
    budget = config.sink_pages + config.local_pages + config.top_k
    recalled, ranks = 0, []
    for doc_id in asked:
        fact, offset = facts[doc_id]
        qw, ql = question_window(model, fact)
        query, _ = encode(model, retriever, qw, ql)
        scores = (keys @ query[0]).tolist()
        order = sorted(range(len(rows)), key=lambda i: -scores[i])
        seeds = [(*rows[i], scores[i]) for i in order[:budget]]
        attended = {(d, p) for d, p, _ in with_neighbors(seeds, config.neighbor_offsets, budget, pages)}
        recalled += needle_pages(doc_id, fact, offset, P) <= attended
        key_page = (doc_id, min((offset + fact.needle.index(fact.key) + len(fact.key) - 1) // P, pages[doc_id] - 1))
        ranks.append(next(r for r, i in enumerate(order) if rows[i] == key_page) + 1)
    ranks.sort()
    return {"needle_page_recall": round(100 * recalled / len(asked), 1),
            "key_page_top1": round(100 * sum(r == 1 for r in ranks) / len(ranks), 1),
            "key_page_rank_median": ranks[len(ranks) // 2], "pages": len(rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch", type=int, default=32, help="documents (and questions) per step")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--docs", type=int, default=1000)
    parser.add_argument("--questions", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--save", default=None, help="write the trained retriever's state dict here (safetensors)")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "collection"))
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    model = RetroLM.from_pretrained(args.model, device=args.device)
    docs, facts = collection(args.docs, 1024, args.seed)
    asked = random.Random(args.seed + 1).sample(sorted(docs), min(args.questions, len(docs)))
    shipped = evaluate(model, model.retriever, docs, facts, asked)
    print("shipped:", shipped, flush=True)
    started = time.perf_counter()
    retriever, log = train(model, args.steps, args.batch, args.lr, args.seed + 2)
    train_s = time.perf_counter() - started
    trained = evaluate(model, retriever, docs, facts, asked)
    print("trained:", trained, flush=True)
    if args.save:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in retriever.state_dict().items()}, args.save)
    table = markdown_table([{"retriever": "shipped", **shipped},
                            {"retriever": f"trained {args.steps} steps", **trained}],
                           ["retriever", "needle_page_recall", "key_page_top1", "key_page_rank_median", "pages"])
    write_json(os.path.join(args.out, "key_retriever.json"),
               {"args": vars(args), "shipped": shipped, "trained": trained, "train_s": round(train_s, 1),
                "log": log, "environment": environment(), "threads": torch.get_num_threads()})
    write_text(os.path.join(args.out, "key_retriever.md"),
               f"# Telling same-shape facts apart: page retriever alone, {len(asked)} questions over {args.docs} "
               f"documents ({args.device})\n\n{table}\n\nTrained: {args.steps} steps of {args.batch} documents, "
               f"lr {args.lr}, {train_s:.0f} s; keys of training words, none of the evaluation's words.\n")
    print(table)


if __name__ == "__main__":
    main()
