"""One RULER table from grids measured in separate runs (e.g. RetroLM's rows on a GPU, full attention and RAG
on a CPU): quality.json files from bench/default_model_quality.py, merged into <prefix>.json, .md and .png.

    python bench/merge_quality.py assets/quality run_gpu/quality.json run_cpu/quality.json:full,rag
    python bench/merge_quality.py OUT a.json b.json:retrolm=retrolm_post_trained

A source may name the methods it contributes (`FILE:m1,m2`), each optionally renamed (`m=new`); without a list
it contributes all of its methods. A cell measured by two sources must agree (same samples and seed), else the
merge is refused: the table never hides which run a number came from (each source is listed in the JSON).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.default_model_quality import shortest_length, write_results  # noqa: E402
from retrolm.errors import RetroLMError, exit_code  # noqa: E402


def parse_source(spec: str) -> tuple[str, dict[str, str] | None]:
    """'FILE[:m1,m2=new]' -> (FILE, {method: label} or None for every method)."""
    path, _, methods = spec.partition(":")
    if not methods:
        return path, None
    renames = {}
    for item in methods.split(","):
        method, _, label = item.partition("=")
        renames[method] = label or method
    return path, renames


def merge(sources: list[tuple[str, dict[str, str] | None]]) -> tuple[dict, int]:
    """The merged record (write_results' input) and the window, from (quality.json, renames) pairs."""
    records = []
    for path, renames in sources:
        if not os.path.isfile(path):
            raise RetroLMError(f"{path}: no such quality.json; pass files written by bench/default_model_quality.py")
        with open(path) as f:
            records.append((json.load(f), renames, path))
    return merge_records(records)


def merge_records(sources: list[tuple[dict, dict[str, str] | None, str]]) -> tuple[dict, int]:
    """merge() over records already loaded: (record, renames, where it came from) triples."""
    scores, runs, shortest, origins, settings, windows = {}, [], {}, [], set(), set()
    for record, renames, path in sources:
        settings.add((record["num_samples"], record["seed"]))
        windows.add(record["window"])
        missing = sorted(set(renames or {}) - set(record["scores"]))
        if missing:
            raise RetroLMError(f"{path} has no method {', '.join(missing)}; it has {', '.join(record['scores'])}")
        chosen = renames or {m: m for m in record["scores"]}
        for method, label in chosen.items():
            for task, cells in record["scores"][method].items():
                target = scores.setdefault(label, {}).setdefault(task, {})
                for length, value in cells.items():
                    if length in target and target[length] != value:
                        raise RetroLMError(f"{label} {task} at {length}: {target[length]} in an earlier source, "
                                           f"{value} in {path}; measure it once")
                    target[length] = value
        runs += [{**r, "method": chosen[r["method"]]} for r in record["runs"] if r["method"] in chosen]
        shortest.update(record.get("shortest", {}))  # older records lack it: computed below
        origins.append({"file": path, "methods": chosen, "note": record.get("note", ""),
                        "devices": {chosen[m]: d for m, d in record.get("devices", {}).items() if m in chosen},
                        "environment": record.get("environment")})
    if len(settings) > 1 or len(windows) > 1:
        raise RetroLMError(f"the sources differ in (samples, seed) {sorted(settings)} or window {sorted(windows)}: "
                           "merge only grids measured the same way")
    lengths = sorted({int(n) for tasks in scores.values() for cells in tasks.values() for n in cells})
    tasks = list(dict.fromkeys(t for table in scores.values() for t in table))
    scores = {m: {t: table.get(t, {}) for t in tasks} for m, table in scores.items()}
    shortest = {t: shortest.get(t) or shortest_length(t) for t in tasks}
    num_samples, seed = settings.pop()
    record = {"lengths": lengths, "num_samples": num_samples, "seed": seed, "scores": scores, "runs": runs,
              "shortest": shortest, "sources": origins,
              "not_run": {t: [n for n in lengths if n < shortest[t]] for t in tasks
                          if any(n < shortest[t] for n in lengths)}}
    return record, windows.pop()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("prefix", help="output path without extension: <prefix>.json, .md, .png")
    parser.add_argument("sources", nargs="+", help="quality.json[:method[=label],...]")
    parser.add_argument("--note", default="", help="a line for the table's header (where each row ran)")
    parser.add_argument("--highlight", default="retrolm", help="the method drawn thick in the plot")
    args = parser.parse_args(argv)
    record, window = merge([parse_source(s) for s in args.sources])
    write_results(record, window, args.prefix, args.note, list(record["scores"]), args.highlight)
    return 0


if __name__ == "__main__":
    sys.exit(exit_code(main))
