"""Build the default model from nothing: corpus, base LM pretraining, stage 1, (stage 2,) export to assets/.

    python train/build_default_model.py                  # on one GPU: about 10 minutes on an H100
    python train/build_default_model.py --smoke --work /tmp/dm --out /tmp/dm/model   # minutes on a CPU
    python train/build_default_model.py --post-train     # with stage 2 (LoRA post-training), the ablation

The shipped model is base + stage-1 retriever: stage 2 lowered RULER at 1x and did not raise it at 16x / 64x on
this model in every recipe measured (assets/retrolm-byte-llama/README.md), so it runs only with --post-train.

Every phase writes its output atomically and is skipped when that output exists, so an interrupted build
resumes where it stopped. Configs: configs/default_model/ (pretrain.json, train_retriever.json,
post_train.json) and configs/ds_zero2.json. Outputs, besides the model: <work>/build_results.json (the
numbers of every phase) and <work>/stage1/retriever.safetensors (the retriever before post-training, for
the quality proof's ablations).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # runs from a checkout without `pip install -e .` too

import torch  # noqa: E402

from retrolm.config import RetroLMConfig  # noqa: E402
from retrolm.errors import RetroLMError, exit_code  # noqa: E402
from retrolm.model import RetroLM  # noqa: E402
from retrolm.tiny import byte_tokenizer  # noqa: E402
from retrolm.training.config import load_train_config  # noqa: E402
from retrolm.training.data import prepare_packed_data  # noqa: E402
from retrolm.training.pretrain import load_pretrain_config, pretrain  # noqa: E402
from train.corpus import write_documents  # noqa: E402
from train.drills import PARTIAL, REJOINED, SHAPES, DrillStyle  # noqa: E402

CONFIGS = os.path.join(ROOT, "configs", "default_model")
# phases --stop-after can end a build at ("documents" is both document phases, before their packing)
PHASES = ("documents", "pretrain", "stage1", "stage2")
DEFAULT_OUT = os.path.join(ROOT, "assets", "retrolm-byte-llama")
# Inference-only settings of the exported model (training never reads them): a retrieved page brings its
# successor, so a needle cut by a page boundary is read whole (the demo's third question; docs/decisions.md)
EXPORT_KNOBS = {"neighbor_pages": 1, "neighbor_direction": "next", "lexical_weight": 10.0,
                "lexical_near_miss_margin": 0.7, "lexical_hops": 4, "lexical_hop_span": 32,
                "lexical_hop_stops": ".!?\n", "lexical_echo_tokens": 64}
STAGE_SEED = 10_000_000  # long documents draw from seeds disjoint from the pretraining documents'

# (pretraining documents, long documents, long-document length) and config overrides: full run and smoke test
SIZES = {
    "full": dict(pretrain_docs=96_000, long_docs=2_400, long_len=8192, pretrain=[], stage=[]),
    "smoke": dict(pretrain_docs=256, long_docs=24, long_len=1024,
                  pretrain=["max_steps=20", "batch_size=8", "warmup_steps=2", "eval_sequences=8",
                            'model={"vocab_size": 320, "hidden_size": 64, "intermediate_size": 128, '
                            '"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, '
                            '"head_dim": 16, "max_position_embeddings": 256, "bos_token_id": 256, '
                            '"eos_token_id": 257, "pad_token_id": 258, "tie_word_embeddings": true}',
                            "max_position=1024"],
                  stage=["max_steps=4", "warmup_steps=1", "eval_sequences=2", "needle_eval_samples=0",
                         'retrolm={"page_size": 64, "top_k": 2, "sink_pages": 1, "local_pages": 1, '
                         '"retriever": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, '
                         '"intermediate_size": 64, "score_dim": 16}}']),
}


def _phase(name: str, output: str, results: dict, work) -> None:
    """Run `work()` unless `output` exists; record its seconds."""
    if os.path.exists(output):
        print(f"[{name}] {output} exists: skipped")
        return
    print(f"[{name}] ...", flush=True)
    started = time.perf_counter()
    value = work()
    results.setdefault("seconds", {})[name] = round(time.perf_counter() - started, 1)
    if isinstance(value, dict):
        results[name] = value


def _stage(script: str, config: str, overrides: list[str]) -> dict:
    sets = sum((["--set", o] for o in overrides), [])
    subprocess.run([sys.executable, os.path.join(ROOT, "train", script), "--config", os.path.join(CONFIGS, config),
                    "--deepspeed", os.path.join(ROOT, "configs", "ds_zero2.json")] + sets, check=True, cwd=ROOT)
    output_dir = next(o.split("=", 1)[1] for o in overrides if o.startswith("output_dir="))
    with open(os.path.join(output_dir, "train_results.json")) as f:
        return json.load(f)


def _export(checkpoint: str, out: str) -> dict:
    """The final checkpoint (stage 1's, or stage 2's with --post-train) made self-contained (base weights in
    bf16) at `out`."""
    model = RetroLM.from_pretrained(checkpoint, dtype=torch.bfloat16, **EXPORT_KNOBS)
    model.retriever.float()  # small; scores are computed in float32 anyway
    model.save_pretrained(out, save_base_model=True)
    sizes = {}
    for directory, _, files in os.walk(out):
        for name in files:
            path = os.path.join(directory, name)
            sizes[os.path.relpath(path, out)] = os.path.getsize(path)
    return {"files": sizes, "total_mb": round(sum(sizes.values()) / 1e6, 2)}


def _share(text: str) -> float:
    try:
        share = float(text)
    except ValueError:
        share = -1.0
    if not 0.0 <= share <= 1.0:
        raise argparse.ArgumentTypeError(f"a share must be a number in [0, 1]; got {text!r}")
    return share


def _drill_shapes(text: str) -> tuple[str, ...]:
    try:
        return DrillStyle(shapes=tuple(s.strip() for s in text.split(",") if s.strip())).shapes
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", default=os.path.join(ROOT, "work", "default-model"), help="intermediate outputs")
    parser.add_argument("--out", default=DEFAULT_OUT, help="where the finished model goes")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the pipeline end to end on a CPU")
    parser.add_argument("--workers", type=int, default=None, help="processes generating documents")
    # All default to 0, the recipe of the shipped model; docs/status.md has what the other settings gave.
    parser.add_argument("--fact-fraction", type=_share, default=0.0,
                        help="share of tasks and dense texts in varied formats (train/facts.py) rather than RULER's "
                             "templates; 1.0 keeps every evaluated template out of training")
    parser.add_argument("--short-fraction", type=_share, default=0.0,
                        help="share of long (stage 1 and 2) documents made of window-sized documents in a row")
    parser.add_argument("--drill-fraction", type=_share, default=0.0,
                        help="share of pretraining documents that are recall drills (train/drills.py): values to copy "
                             "in phrasings invented per document, so the base learns to copy in any format")
    parser.add_argument("--stage-drill-fraction", type=_share, default=0.0,
                        help="share of long (stage 1 and 2) documents that are recall drills: needles in invented "
                             "phrasings for the retriever to find")
    parser.add_argument("--drill-shapes", type=_drill_shapes, default=SHAPES, metavar="SHAPE,...",
                        help=f"the statement shapes drills may take (default all: {','.join(SHAPES)}); plain alone "
                             "is the one-shape drills of the first drill runs")
    parser.add_argument("--drill-rejoined", type=_share, default=REJOINED, metavar="F",
                        help=f"share of drill answers that restate the relation with another joining word "
                             f"(default {REJOINED}, the first drill runs' mix)")
    parser.add_argument("--drill-partial", type=_share, default=PARTIAL, metavar="F",
                        help="share of those rejoined answers that keep only the relation's last words (\"Its lantern "
                             "is\" for \"pebble lantern under a\"; default 0, the runs before 2026-12-05)")
    parser.add_argument("--split-windows", type=_share, default=0.0, metavar="F",
                        help="share of pretraining windows holding two documents instead of one, so a document's "
                             "end is not always at the window's end (train/corpus.py window_lengths)")
    parser.add_argument("--cut-dense-end", action="store_true",
                        help="cut dense recall texts to length at their end, so no question outlives its needle "
                             "(the shipped corpus cuts at the front)")
    for phase, config in (("pretrain", "pretrain.json"), ("stage1", "train_retriever.json"),
                          ("stage2", "post_train.json")):
        parser.add_argument(f"--{phase}-set", action="append", default=[], metavar="KEY=VALUE",
                            help=f"override a key of configs/default_model/{config} (repeatable), e.g. max_steps=6000")
    parser.add_argument("--stop-after", choices=PHASES, default=None,
                        help="end the build after this phase (a later run goes on from there), e.g. pretrain to "
                             "give pretraining a device call of its own")
    parser.add_argument("--base", default=None,
                        help="an already pretrained base LM directory: skip the pretraining corpus and pretraining")
    parser.add_argument("--stage1", default=None,
                        help="an already trained stage-1 checkpoint (a RetroLM directory with its retriever, no "
                             "adapter): skip stage 1")
    parser.add_argument("--post-train", action="store_true",
                        help="run stage 2 (LoRA post-training) and export its model; without it the export is "
                             "stage 1's model (base + retriever), as shipped")
    parser.add_argument("--stage2-replay", type=float, default=None, metavar="F",
                        help="share of stage 2's steps spent on the pretraining windows (replay_fraction), which "
                             "keeps the base's short-input behaviour; default 0.5 (the best measured), 0 turns "
                             "replay off")
    args = parser.parse_args(argv)
    stage2_options = [name for name, given in (("--stage2-set", args.stage2_set),
                                               ("--stage2-replay", args.stage2_replay is not None),
                                               ("--stop-after stage2", args.stop_after == "stage2")) if given]
    if stage2_options and not args.post_train:
        raise RetroLMError(f"{', '.join(stage2_options)} configure(s) stage 2, which runs only with --post-train: "
                           "add --post-train, or drop them")
    if args.stage2_replay is None:
        args.stage2_replay = 0.5
    size = SIZES["smoke" if args.smoke else "full"]
    work = os.path.abspath(args.work)
    paths = {k: os.path.join(work, k) for k in ("pretrain.jsonl", "long.jsonl", "pretrain-data", "long-data",
                                                  "base", "stage1", "stage2")}
    results_path = os.path.join(work, "build_results.json")
    results = {}
    if os.path.isfile(results_path):
        with open(results_path) as f:
            results = json.load(f)
    results["corpus"] = {"fact_fraction": args.fact_fraction, "short_fraction": args.short_fraction,
                         "cut_dense_end": args.cut_dense_end, "drill_fraction": args.drill_fraction,
                         "stage_drill_fraction": args.stage_drill_fraction,
                         "drill_shapes": list(args.drill_shapes), "drill_rejoined": args.drill_rejoined,
                         "drill_partial": args.drill_partial, "split_windows": args.split_windows}
    results["overrides"] = {"pretrain": args.pretrain_set, "stage1": args.stage1_set, "stage2": args.stage2_set}
    results["post_train"] = args.post_train
    results["stage2_replay"] = args.stage2_replay if args.post_train else None
    if args.base:
        paths["base"] = results["base"] = os.path.abspath(args.base)
    if args.stage1:
        paths["stage1"] = results["stage1_checkpoint"] = os.path.abspath(args.stage1)
    # the export phase is skipped when its output exists: an output of the other stage must not pass for this one
    final = paths["stage2"] if args.post_train else paths["stage1"]
    if os.path.exists(os.path.join(args.out, "retrolm_config.json")) and results.get("exported_from", final) != final:
        raise RetroLMError(f"{args.out} holds the export of {results['exported_from']}, not of {final} "
                           "(--post-train chooses the stage exported): delete it, or pass another --out")
    replaying = args.post_train and args.stage2_replay > 0
    needs_pretraining_windows = not args.base or replaying  # pretraining, or stage 2's replay
    # every phase's config is read (and checked) before any work; the page size is stage 1's
    pretrain_config = load_pretrain_config(os.path.join(CONFIGS, "pretrain.json"), size["pretrain"] + [
        f"data={paths['pretrain-data']}", f"output_dir={paths['base']}"] + args.pretrain_set)
    common = [f"data={paths['long-data']}"] + size["stage"]
    stage1_sets = [f"model={paths['base']}", f"output_dir={paths['stage1']}"] + common + args.stage1_set
    page = load_train_config(os.path.join(CONFIGS, "train_retriever.json"), "retriever",
                             stage1_sets).retrolm_config().page_size
    stage2_sets = [o for o in common if not o.startswith("retrolm=")]  # stage 2 keeps stage 1's RetroLM config
    if replaying:
        stage2_sets += [f"replay_data={paths['pretrain-data']}", f"replay_fraction={args.stage2_replay}"]
    stage2_sets = [f"model={paths['stage1']}", f"output_dir={paths['stage2']}"] + stage2_sets + args.stage2_set
    load_train_config(os.path.join(CONFIGS, "post_train.json"), "post_train", stage2_sets)  # bad values fail now
    if args.stage1:
        page = RetroLMConfig.load(paths["stage1"]).page_size  # also fails early when it is no RetroLM checkpoint
    window = pretrain_config.model["max_position_embeddings"]
    tokenizer = byte_tokenizer()
    drill_style = DrillStyle(args.drill_shapes, args.drill_rejoined, args.drill_partial)

    os.makedirs(work, exist_ok=True)  # after every check: a refused build leaves nothing behind

    def save_results():
        with open(results_path + ".tmp", "w") as f:
            json.dump(results, f, indent=2)
        os.replace(results_path + ".tmp", results_path)

    def stopping_after(phase: str) -> bool:
        save_results()
        if args.stop_after == phase:
            print(f"stopped after {phase} (--stop-after): run again without it to go on")
        return args.stop_after == phase

    if needs_pretraining_windows:
        _phase("documents", paths["pretrain.jsonl"], results, lambda: write_documents(
            paths["pretrain.jsonl"], size["pretrain_docs"], window - 2, seed=0, text_fraction=0.25,
            min_task_tokens=window // 3, workers=args.workers, fact_fraction=args.fact_fraction,
            drill_fraction=args.drill_fraction, drill_style=drill_style, split_fraction=args.split_windows))
    _phase("long_documents", paths["long.jsonl"], results, lambda: write_documents(
        paths["long.jsonl"], size["long_docs"], size["long_len"] - 2, seed=STAGE_SEED, text_fraction=0.0,
        min_task_tokens=size["long_len"] // 2, dense_fraction=0.5, workers=args.workers,
        fact_fraction=args.fact_fraction, short_fraction=args.short_fraction, short_length=window - 2,
        cut_end=args.cut_dense_end, drill_fraction=args.stage_drill_fraction, drill_style=drill_style))
    if stopping_after("documents"):
        return 0
    if needs_pretraining_windows:
        _phase("pretrain_data", paths["pretrain-data"], results, lambda: prepare_packed_data(
            paths["pretrain.jsonl"], tokenizer, paths["pretrain-data"], window, page, held_out=64))
    _phase("long_data", paths["long-data"], results, lambda: prepare_packed_data(
        paths["long.jsonl"], tokenizer, paths["long-data"], size["long_len"], page, held_out=16))
    save_results()
    _phase("pretrain", paths["base"], results, lambda: pretrain(pretrain_config))  # skipped when --base exists
    if stopping_after("pretrain"):
        return 0
    if args.stage1:
        print(f"[stage1] {paths['stage1']} given (--stage1): skipped")
    else:
        _phase("stage1", os.path.join(paths["stage1"], "train_results.json"), results, lambda: _stage(
            "train_retriever.py", "train_retriever.json", stage1_sets))
    if stopping_after("stage1"):
        return 0
    if args.post_train:
        _phase("stage2", os.path.join(paths["stage2"], "train_results.json"), results, lambda: _stage(
            "post_train.py", "post_train.json", stage2_sets))
        if stopping_after("stage2"):
            return 0
    _phase("export", os.path.join(args.out, "retrolm_config.json"), results, lambda: _export(final, args.out))
    results["exported_from"] = final
    save_results()
    print(f"default model: {args.out}\nbuild results: {results_path}")
    return 0


if __name__ == "__main__":
    sys.exit(exit_code(main))
