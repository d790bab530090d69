"""Recall and speed of the approximate (IVF) page index against exact search, and the exact GPU index's speed
(issue 15: bookmark keys of every page in an index).

    python bench/index_recall.py                         # CPU: IVF recall@k and ms/query per nprobe
    python bench/index_recall.py --device cuda           # GPU host: exact GPU search ms/query at 1.56M and 10M keys

k is the default model's pages attended per question (sink + local + top_k = 15). On the CPU (retrolm/index.py's
`IVFInnerProductIndex` against `InnerProductIndex`, both faiss):
- real: the bookmark keys of a page store of --docs documents of --doc-chars characters built with the default
  model (bench/collection_store.py's collection), queried with each document's fact question as `RetroLM.answer`
  asks it (collection.question_query on the RULER answer template); --docs 0 skips it;
- synthetic: --keys vectors (1.56M: 100M tokens at 64-token pages) of the bookmark keys' width (128 for the default
  model), clustered: each is one of --clusters standard-normal centroids plus --noise times a standard-normal
  vector. --shape real (default) then gives them the real keys' mean and covariance (real keys are one large shared
  vector plus a small residual in few directions) and queries them with the real questions' queries; --shape
  isotropic keeps them as drawn and queries them with --queries fresh draws of the same mixture.
For each: build seconds (exact add; IVF train and add), recall@k of the IVF index at each --nprobe against exact
search, and search ms per query, one query per call as `RetroLM.answer` searches (median and mean). Writes
index_recall.json and .md under --out.

With --device cuda: the exact GPU index (torch matmul + top-k) over --gpu-keys random keys, ms per query one query
per call, warm, median of --repeats, each timed from the host array to the ids back on the host; its top-k is
checked against a float64 recomputation on the device first. Writes index_gpu_<name>.json and .md (name: --name,
default the GPU's name). Raises without CUDA.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.collection_store import collection  # noqa: E402
from bench.common import environment, markdown_table, write_json, write_text  # noqa: E402
from retrolm.collection import question_query  # noqa: E402
from retrolm.errors import RetroLMError  # noqa: E402
from retrolm.index import (TRAIN_POINTS_PER_LIST, InnerProductIndex, IVFInnerProductIndex, default_nlist,  # noqa: E402
                           recall)
from retrolm.model import RetroLM  # noqa: E402
from retrolm.page_store import PageStore  # noqa: E402


def _ints(text: str) -> list[int]:
    return [int(float(part)) for part in text.split(",")]


def clustered_keys(rng: np.random.Generator, centroids: np.ndarray, n: int, noise: float) -> np.ndarray:
    """[n, dim] float32: each row a random one of `centroids` [clusters, dim] plus `noise` times a standard normal."""
    out = centroids[rng.integers(0, centroids.shape[0], n)]  # [n, dim]
    out += noise * rng.standard_normal(out.shape, dtype=np.float32)
    return out


def per_query_ms(search, queries: np.ndarray) -> dict:
    """Median and mean ms of `search(one query [1, dim])`, one call per query, after one call of warm-up."""
    search(queries[:1])
    times = []
    for i in range(queries.shape[0]):
        started = time.perf_counter()
        search(queries[i:i + 1])
        times.append(1e3 * (time.perf_counter() - started))
    return {"ms_median": round(statistics.median(times), 3), "ms_mean": round(statistics.mean(times), 3)}


def measure(name: str, keys: np.ndarray, queries: np.ndarray, k: int, nprobes: list[int], exact_timed: int) -> dict:
    """Exact and IVF indexes over `keys` [n, dim]: build seconds, IVF recall@k and ms/query per nprobe."""
    n, dim = keys.shape
    print(f"{name}: {n} keys x {dim}, {queries.shape[0]} queries, k={k}", flush=True)
    exact, ivf = InnerProductIndex(dim, use_gpu=False), IVFInnerProductIndex(dim, use_gpu=False)
    started = time.perf_counter()
    exact.add(keys)
    exact_build = time.perf_counter() - started
    started = time.perf_counter()
    ivf.add(keys)  # trains the centroids on (a sample of) these keys, then files every key
    ivf_build = time.perf_counter() - started
    print(f"  built: exact {exact_build:.1f} s, ivf {ivf_build:.1f} s ({ivf.nlist} lists)", flush=True)
    _, truth = exact.search(queries, k)
    exact_speed = per_query_ms(lambda q: exact.search(q, k), queries[:exact_timed])
    rows = [{"set": name, "index": "exact", "nprobe": "", "recall_at_k": 1.0, **exact_speed}]
    for nprobe in nprobes:
        _, found = ivf.search(queries, k, nprobe=nprobe)
        row = {"set": name, "index": "ivf", "nprobe": nprobe, "recall_at_k": round(recall(found, truth), 4),
               **per_query_ms(lambda q: ivf.search(q, k, nprobe=nprobe), queries)}
        print(f"  nprobe {nprobe:>4}: recall@{k} {row['recall_at_k']:.4f}, {row['ms_median']:.3f} ms/query",
              flush=True)
        rows.append(row)
    return {"keys": n, "dim": dim, "queries": queries.shape[0], "nlist": ivf.nlist,
            "exact_build_s": round(exact_build, 2), "ivf_build_s": round(ivf_build, 2),
            "exact_timed_queries": min(exact_timed, queries.shape[0]), "rows": rows}


def real_keys(model, docs: int, chars: int, seed: int) -> tuple[np.ndarray, np.ndarray, float]:
    """(bookmark keys [pages, heads * dim], questions' queries [docs, heads * dim], store build seconds) of a page
    store of `docs` documents built with `model`, each document's question asked as bench/collection_store.py
    asks it."""
    texts, facts = collection(docs, chars, seed)
    path = tempfile.mkdtemp(prefix="retrolm-store-")
    try:
        store = PageStore.open(path, model, create=True)
        started = time.perf_counter()
        store.add(texts)
        build_s = time.perf_counter() - started
        keys = torch.cat([store.bookmark_keys(doc_id).flatten(1) for doc_id in store.documents()])
    finally:
        shutil.rmtree(path, ignore_errors=True)
    queries = []
    for doc_id in texts:
        key = facts[doc_id][0].key
        question = f"What is the special magic number for {key} mentioned in the provided text?"
        prompt = f"\n{question} The special magic number for {key} mentioned in the provided text is"
        ids = model.tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids[0]
        queries.append(question_query(model, ids).flatten())
    return keys.float().numpy(), torch.stack(queries).float().numpy(), build_s


def real_shaped(real: np.ndarray, clustered: np.ndarray, noise: float) -> np.ndarray:
    """`clustered` draws [n, dim] (unit-normal centroids plus `noise` normal noise) scaled to unit variance, then
    given the mean and covariance of the `real` keys [m, dim]: real bookmark keys are one large shared vector plus a
    small residual spread over few directions (85% of its variance in one, 99% in four, for the default model)."""
    mean = real.mean(0)  # [dim]
    variances, axes = np.linalg.eigh(np.cov(real - mean, rowvar=False, bias=True))  # [dim], [dim, dim]
    color = np.sqrt(variances.clip(min=0))[:, None] * axes.T  # [dim, dim]: unit draws -> the residual covariance
    return mean + (clustered / np.sqrt(1 + noise ** 2)) @ color


def run_cpu(args, model, k: int, dim: int) -> None:
    if args.shape == "real" and not args.docs:
        raise RetroLMError("--shape real takes the synthetic keys' shape from the real store's keys: pass --docs >= 1, "
                           "or --shape isotropic.")
    sets = {}
    if args.docs:
        keys, real_queries, build_s = real_keys(model, args.docs, args.doc_chars, args.seed)
        real_nprobes = sorted({min(p, default_nlist(len(keys))) for p in args.nprobe})  # at most every list
        sets["real"] = measure("real", keys, real_queries, k, real_nprobes, args.exact_queries)
        sets["real"].update(documents=args.docs, store_build_s=round(build_s, 1))
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    centroids = rng.standard_normal((args.clusters, dim), dtype=np.float32)  # [clusters, dim]
    synthetic = clustered_keys(rng, centroids, args.keys, args.noise)  # [keys, dim]
    if args.shape == "real":
        synthetic = real_shaped(keys, synthetic, args.noise).astype(np.float32)
        queries = real_queries
    else:
        queries = clustered_keys(rng, centroids, args.queries, args.noise)  # [queries, dim]
    print(f"synthetic keys drawn in {time.perf_counter() - started:.1f} s", flush=True)
    sets["synthetic"] = measure("synthetic", synthetic, queries, k, args.nprobe, args.exact_queries)
    sets["synthetic"].update(shape=args.shape, clusters=args.clusters, noise=args.noise)
    del synthetic
    write_json(os.path.join(args.out, "index_recall.json"),
               {"args": vars(args), "k": k, "train_points_per_list": TRAIN_POINTS_PER_LIST, "sets": sets,
                "environment": environment(), "threads": torch.get_num_threads(), "cpus": os.cpu_count()})
    columns = ["set", "index", "nprobe", "recall_at_k", "ms_median", "ms_mean"]
    rows = [row for s in sets.values() for row in s["rows"]]
    builds = "; ".join(f"{name}: {s['keys']} keys x {s['dim']}, {s['nlist']} lists, exact add {s['exact_build_s']} s, "
                       f"IVF train + add {s['ivf_build_s']} s" for name, s in sets.items())
    real = (f" real: the bookmark keys of a {args.docs}-document store ({args.doc_chars} characters each, built in "
            f"{sets['real']['store_build_s']} s) queried with each document's question." if "real" in sets else "")
    shape = ("scaled to the real keys' mean and covariance and queried with the real questions" if args.shape == "real"
             else "queries drawn the same way")
    write_text(os.path.join(args.out, "index_recall.md"),
               f"# IVF page index against exact search: recall@{k} and ms per query, CPU ({os.cpu_count()} cores)\n\n"
               f"{markdown_table(rows, columns)}\n"
               f"Recall@{k}: the fraction of the exact top-{k} pages the IVF index finds (k = sink + local + top_k of "
               f"the default model). ms: one query per call, as `RetroLM.answer` searches; exact timed on "
               f"{sets['synthetic']['exact_timed_queries']} queries.{real} synthetic: {args.keys} draws of "
               f"{args.clusters} standard-normal centroids plus {args.noise} x standard-normal noise, {shape}.\n\n"
               f"Builds: {builds}.\n")
    print(markdown_table(rows, columns))


def run_gpu(args, k: int, dim: int) -> None:
    if not torch.cuda.is_available():
        raise RetroLMError("--device cuda needs a CUDA GPU, and torch sees none; run the CPU part with --device cpu.")
    name = args.name or re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name().lower()).strip("-")
    rng = torch.Generator().manual_seed(args.seed)
    rows = []
    for n in args.gpu_keys:
        rows.append(time_gpu(n, dim, k, args.repeats, rng))
        print(rows[-1], flush=True)
        torch.cuda.empty_cache()
    write_json(os.path.join(args.out, f"index_gpu_{name}.json"),
               {"args": vars(args), "rows": rows, "environment": environment()})
    columns = ["keys", "dim", "k", "add_s", "ms_median", "ms_mean", "gpu_gib"]
    write_text(os.path.join(args.out, f"index_gpu_{name}.md"),
               f"# Exact GPU page index (torch matmul + top-k), {torch.cuda.get_device_name()}\n\n"
               f"{markdown_table(rows, columns)}\n"
               f"ms: one query per call, warm, over {args.repeats} calls, each from the query on the host to the "
               "scores and ids back on the host (float32, TF32 off).\n")
    print(markdown_table(rows, columns))


def time_gpu(n: int, dim: int, k: int, repeats: int, rng: torch.Generator) -> dict:
    """The exact GPU index over `n` random keys [n, dim]: add seconds, then ms per single-query search (checked
    against float64 first), warm, over `repeats` queries."""
    keys = torch.randn(n, dim, generator=rng)  # [n, dim] float32 on the host
    queries = torch.randn(repeats, dim, generator=rng).numpy()  # [repeats, dim]
    torch.cuda.reset_peak_memory_stats()
    index = InnerProductIndex(dim, use_gpu=True)
    started = time.perf_counter()
    index.add(keys)
    torch.cuda.synchronize()
    add_s = time.perf_counter() - started
    scores, ids = index.search(queries[:4], k)
    check_exact(keys, queries[:4], scores, ids)
    for _ in range(10):  # warm-up: kernels chosen, allocator primed
        index.search(queries[:1], k)
    timed = per_query_ms(lambda q: index.search(q, k), queries)
    return {"keys": n, "dim": dim, "k": k, "add_s": round(add_s, 3), **timed,
            "gpu_gib": round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)}


def check_exact(keys: torch.Tensor, queries: np.ndarray, scores: np.ndarray, ids: np.ndarray) -> None:
    """Raise unless `scores` [q, k] are the inner products of the host `keys` [n, dim] at `ids` [q, k] and the k-th
    best matches a float64 top-k (computed on the GPU, a chunk of keys at a time)."""
    q64 = torch.from_numpy(queries).to("cuda", torch.float64)  # [q, dim]
    best = torch.cat([(chunk.to("cuda", torch.float64) @ q64.T).T for chunk in keys.split(1 << 20)], dim=1)  # [q, n]
    kth = best.topk(ids.shape[1], dim=1).values[:, -1].cpu().numpy()
    found = (keys[torch.from_numpy(ids)].double() * q64.cpu()[:, None]).sum(-1).numpy()
    if not (np.allclose(found, scores, atol=1e-3) and np.allclose(scores[:, -1], kth, atol=1e-3)):
        raise RetroLMError("the GPU index's top-k differs from a float64 recomputation; not timing a wrong search.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--model", default=None, help="RetroLM checkpoint (default: the embedded default model)")
    parser.add_argument("--keys", type=int, default=1_560_000, help="synthetic keys (100M tokens at 64-token pages)")
    parser.add_argument("--dim", type=int, default=None, help="key width (default: the model's bookmark keys)")
    parser.add_argument("--shape", default="real", choices=["real", "isotropic"],
                        help="synthetic keys: clustered draws given the real keys' mean and covariance, queried "
                             "with the real questions (real), or the draws as they are, queried with more (isotropic)")
    parser.add_argument("--clusters", type=int, default=2000)
    parser.add_argument("--noise", type=float, default=0.5)
    parser.add_argument("--queries", type=int, default=200, help="synthetic queries with --shape isotropic")
    parser.add_argument("--exact-queries", type=int, default=30, help="queries timed on the exact CPU index")
    parser.add_argument("--nprobe", type=_ints, default=[1, 2, 4, 8, 16, 32, 64, 128])
    parser.add_argument("--docs", type=int, default=100, help="documents of the real-keys store (0: skip it)")
    parser.add_argument("--doc-chars", type=int, default=1024)
    parser.add_argument("--gpu-keys", type=_ints, default=[1_560_000, 10_000_000])
    parser.add_argument("--repeats", type=int, default=200, help="timed queries per size on the GPU")
    parser.add_argument("--name", default=None, help="result name with --device cuda (default: the GPU's name)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "collection"))
    args = parser.parse_args()
    model = RetroLM.from_pretrained(args.model, device="cpu")
    k = model.config.sink_pages + model.config.local_pages + model.config.top_k
    dim = args.dim or model.retriever.key_head.out_features  # bookmark keys: [heads, head dim] flattened
    if args.device == "cuda":
        run_gpu(args, k, dim)
    else:
        run_cpu(args, model, k, dim)


if __name__ == "__main__":
    main()
