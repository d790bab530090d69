"""What a saved IVF index (retrolm/saved_index.py) saves a new process: the store's IVF index trained from its shards
against read back from the file the store holds, on an existing store (a fresh PageStore per measurement, as each
`retrolm ask` opens one).

    python bench/saved_index.py --store STORE [--scorer attention] --out bench/results/collection --name NAME

Per index source: seconds until the index is ready (`collection.store_index`, reading the shards or the file), the
file's size, and whether the loaded index finds the same pages for a few questions as the trained one (every list
probed, so the comparison is exact). The store is left with its saved index removed again unless --keep.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.common import write_result_files  # noqa: E402
from retrolm.collection import save_store_index, search_pages, store_index  # noqa: E402
from retrolm.model import RetroLM  # noqa: E402
from retrolm.page_store import PageStore  # noqa: E402
from retrolm.saved_index import saved_index_path  # noqa: E402

QUESTIONS = ("What is the pass code for the amber orchard locker?", "Which tracking label does the shipment carry?",
             "What is the special magic number for quiet-harbor mentioned in the provided text?")


def ready(model, path: str):
    """(index, seconds) for the store at `path` opened afresh: the IVF index, trained or read."""
    store = PageStore.open(path, model)
    started = time.perf_counter()
    index, _ = store_index(store, "ivf")
    return index, time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", required=True)
    parser.add_argument("--model", default=None)
    parser.add_argument("--scorer", default=None, choices=("trained", "attention"))
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "collection"))
    parser.add_argument("--name", default="saved_index")
    parser.add_argument("--keep", action="store_true", help="leave the saved index in the store")
    args = parser.parse_args(argv)
    model = RetroLM.from_pretrained(args.model, **({} if args.scorer is None else {"scorer": args.scorer}))
    path = saved_index_path(PageStore.open(args.store, model), ("ivf", None))
    if os.path.exists(path):
        os.remove(path)
    trained, train_s = ready(model, args.store)
    started = time.perf_counter()
    save_store_index(PageStore.open(args.store, model), "ivf")
    save_s = time.perf_counter() - started
    loaded, load_s = ready(model, args.store)
    nlist = trained.index.nlist
    same = [search_pages(model, trained, ids, 15, nlist) == search_pages(model, loaded, ids, 15, nlist)
            for ids in (model.tokenizer(q, return_tensors="pt", add_special_tokens=False).input_ids[0]
                        for q in QUESTIONS)]
    size_mb = os.path.getsize(path) / 2 ** 20
    if not args.keep:
        os.remove(path)
    summary = [{"index": "trained from the shards", "seconds_to_ready": round(train_s, 2)},
               {"index": "read from the saved file", "seconds_to_ready": round(load_s, 2)}]
    record = {"args": vars(args), "pages": len(trained), "nlist": nlist, "save_s": round(save_s, 2),
              "file_mb": round(size_mb, 1), "same_pages": same}
    notes = (f"{len(trained)} pages, {nlist} lists; saving took {save_s:.2f} s, the file holds {size_mb:.1f} MB; "
             f"the loaded index finds the same 15 pages as the trained one (every list probed) for "
             f"{sum(same)} of {len(same)} questions.")
    print(write_result_files(args.out, args.name, record, summary,
                             f"A saved IVF index against training it ({args.store}, {model.config.scorer} scorer)",
                             notes))
    print(notes)
    if not all(same):
        sys.exit("the loaded index found other pages than the trained one")


if __name__ == "__main__":
    main()
