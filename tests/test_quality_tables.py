"""bench/merge_quality.py and the method choice of bench/default_model_quality.py: RULER grids measured in
separate runs become one table without hiding or overwriting a number."""
import json
import os

import pytest

from bench.default_model_quality import default_methods
from bench.merge_quality import main as merge_main
from bench.merge_quality import merge, parse_source
from retrolm import RetroLMError
from retrolm.errors import exit_code


def _grid(path, scores, num_samples=20, seed=42, window=1024, shortest=None):
    """A quality.json as bench/default_model_quality.py writes it, with one run per (method, task)."""
    runs = [{"method": m, "task": t, "scores": cells, "device": "cpu", "error": None}
            for m, tasks in scores.items() for t, cells in tasks.items()]
    record = {"lengths": sorted({int(n) for t in scores.values() for c in t.values() for n in c}),
              "num_samples": num_samples, "seed": seed, "scores": scores, "runs": runs, "window": window,
              "note": f"run {os.path.basename(path)}", "devices": {m: ["cpu"] for m in scores}}
    if shortest is not None:
        record["shortest"] = shortest
    with open(path, "w") as f:
        json.dump(record, f)
    return str(path)


def test_parse_source_selects_and_renames_methods():
    assert parse_source("a/quality.json") == ("a/quality.json", None)
    assert parse_source("q.json:retrolm=retrolm_post_trained,full") == (
        "q.json", {"retrolm": "retrolm_post_trained", "full": "full"})


def test_merge_takes_the_named_methods_renamed_and_fills_cells_from_several_runs(tmp_path):
    gpu = _grid(tmp_path / "gpu.json", {"retrolm": {"niah_single_1": {"1024": 100.0, "16384": 95.0}}},
                shortest={"niah_single_1": 300})
    post = _grid(tmp_path / "post.json", {"retrolm": {"niah_single_1": {"1024": 90.0, "16384": 80.0}},
                                          "retrolm_no_post_training": {"niah_single_1": {"1024": 100.0}}},
                 shortest={"niah_single_1": 300})
    post_4x = _grid(tmp_path / "post4.json", {"retrolm": {"niah_single_1": {"4096": 85.0}}},
                    shortest={"niah_single_1": 300})
    cpu = _grid(tmp_path / "cpu.json", {"full": {"vt": {"4096": 10.0}}, "rag": {"vt": {}}})  # no "shortest"
    record, window = merge([parse_source(gpu), parse_source(post + ":retrolm=retrolm_post_trained"),
                            parse_source(post_4x + ":retrolm=retrolm_post_trained"), parse_source(cpu + ":full")])
    assert window == 1024 and list(record["scores"]) == ["retrolm", "retrolm_post_trained", "full"]
    assert record["scores"]["retrolm_post_trained"]["niah_single_1"] == {"1024": 90.0, "16384": 80.0, "4096": 85.0}
    assert record["scores"]["retrolm"]["vt"] == {} and record["scores"]["full"]["vt"] == {"4096": 10.0}
    assert record["lengths"] == [1024, 4096, 16384]
    assert "retrolm_no_post_training" not in record["scores"], "an unnamed method of a listed source stays out"
    assert record["not_run"]["vt"] == [1024], "vt's shortest sample (computed, not in the old record) exceeds 1K"
    assert {r["method"] for r in record["runs"]} == {"retrolm", "retrolm_post_trained", "full"}
    assert [s["file"] for s in record["sources"]] == [gpu, post, post_4x, cpu]

    prefix = tmp_path / "out" / "quality"
    os.makedirs(prefix.parent)
    assert merge_main([str(prefix), gpu, post + ":retrolm=retrolm_post_trained", "--note", "two machines"]) == 0
    table = open(str(prefix) + ".md").read()
    assert "two machines" in table and "| niah_single_1 | retrolm_post_trained | 90 | 80 |" in table
    assert os.path.getsize(str(prefix) + ".png") > 0


def test_merge_refuses_a_cell_measured_twice_differently_and_runs_measured_differently(tmp_path):
    one = _grid(tmp_path / "one.json", {"retrolm": {"vt": {"4096": 20.0}}})
    other = _grid(tmp_path / "other.json", {"retrolm": {"vt": {"4096": 25.0}}})
    with pytest.raises(RetroLMError, match="retrolm vt at 4096: 20.0 in an earlier source, 25.0"):
        merge([parse_source(one), parse_source(other)])
    same = _grid(tmp_path / "same.json", {"retrolm": {"vt": {"4096": 20.0}}})
    assert merge([parse_source(one), parse_source(same)])[0]["scores"]["retrolm"]["vt"] == {"4096": 20.0}
    fewer = _grid(tmp_path / "fewer.json", {"full": {"vt": {"1024": 5.0}}}, num_samples=10)
    with pytest.raises(RetroLMError, match="differ in \\(samples, seed\\)"):
        merge([parse_source(one), parse_source(fewer)])
    with pytest.raises(RetroLMError, match="has no method rag; it has retrolm"):
        merge([parse_source(one + ":rag")])
    assert exit_code(lambda: merge_main([str(tmp_path / "x"), str(tmp_path / "missing.json")])) == 2


def test_default_methods_measure_only_distinct_variants(tmp_path):
    from retrolm.config import RetroLMConfig

    shipped = tmp_path / "shipped"
    os.makedirs(shipped)
    RetroLMConfig(lexical_weight=10.0).save(str(shipped))
    methods = default_methods(str(shipped), None)
    assert "retrolm_no_lexical" in methods and "retrolm_lexical" not in methods, "retrolm has lexical scores"
    assert "retrolm_no_post_training" not in default_methods(str(shipped), None), "equals retrolm without adapter"
    assert "retrolm_post_trained" in default_methods(str(shipped), "post-trained/model")
    os.makedirs(shipped / "adapter")
    methods = default_methods(str(shipped), None)
    assert "retrolm_no_post_training" in methods and "retrolm_post_trained" not in methods
    assert "retrolm_near_miss" in methods and "retrolm_no_near_miss" not in methods, "no near misses judged"
    RetroLMConfig(lexical_weight=10.0, lexical_near_miss_margin=0.7).save(str(shipped))
    methods = default_methods(str(shipped), None)
    assert "retrolm_no_near_miss" in methods and "retrolm_near_miss" not in methods
    assert "retrolm_hops" in methods and "retrolm_no_hops" not in methods, "no hops followed"
    RetroLMConfig(lexical_weight=10.0, lexical_hops=4).save(str(shipped))
    assert "retrolm_no_hops" in default_methods(str(shipped), None)
    assert "retrolm_hops" not in default_methods(str(shipped), None)
    RetroLMConfig().save(str(shipped))
    methods = default_methods(str(shipped), None)
    assert "retrolm_lexical" in methods and "retrolm_no_lexical" not in methods
    assert "retrolm_near_miss" not in methods and "retrolm_no_near_miss" not in methods, "nothing to judge"
    assert "retrolm_hops" not in methods and "retrolm_no_hops" not in methods, "nothing to follow"
    assert "retrolm_no_echo" not in methods, "no echoes judged"
    RetroLMConfig(lexical_weight=10.0, lexical_near_miss_margin=0.7, lexical_echo_tokens=64).save(str(shipped))
    assert "retrolm_no_echo" in default_methods(str(shipped), None)


def test_page_granularity_fills_the_same_window_at_every_page_size():
    from bench.page_granularity import settings
    from retrolm.config import RetroLMConfig

    config = RetroLMConfig(sink_pages=1, local_pages=1, neighbor_pages=1)
    variants = dict(settings("128,64:0,32,64:1:both", 1024, config))
    assert variants == {
        "page128_top5_neighbors1": ["--page-size", "128", "--top-k", "5", "--neighbor-pages", "1",
                                    "--neighbor-direction", "next"],
        "page64_top13_neighbors0": ["--page-size", "64", "--top-k", "13", "--neighbor-pages", "0",
                                    "--neighbor-direction", "next"],
        "page32_top29_neighbors1": ["--page-size", "32", "--top-k", "29", "--neighbor-pages", "1",
                                    "--neighbor-direction", "next"],
        "page64_top13_neighbors1_both": ["--page-size", "64", "--top-k", "13", "--neighbor-pages", "1",
                                         "--neighbor-direction", "both"]}
    for page, options in ((128, variants["page128_top5_neighbors1"]), (32, variants["page32_top29_neighbors1"])):
        top_k = int(options[3])
        assert (config.sink_pages + config.local_pages + top_k + 1) * page == 1024, "sink + local + top-k + own page"
    for bad in ("100", "512", "0"):
        with pytest.raises(RetroLMError, match="must divide the 1024-token window"):
            settings(bad, 1024, config)


def test_scorer_quality_merge_adds_an_earlier_runs_other_methods_in_method_order(tmp_path):
    from bench.scorer_quality import METHODS, merged

    earlier = json.load(open(_grid(tmp_path / "earlier.json", {
        "rag": {"niah_single_1": {"4096": 80.0}}, "trained_retriever": {"niah_single_1": {"4096": 10.0}}})))
    this_run = {**json.load(open(_grid(tmp_path / "now.json", {
        "attention_scorer": {"niah_single_1": {"4096": 90.0}},
        "trained_retriever": {"niah_single_1": {"4096": 95.0}}}))), "lengths": earlier["lengths"]}
    record = merged(this_run, str(tmp_path / "earlier.json"))
    assert list(record["scores"]) == [m for m in METHODS if m in ("attention_scorer", "trained_retriever", "rag")]
    assert record["scores"]["trained_retriever"]["niah_single_1"] == {"4096": 95.0}, "this run's method wins"
    assert record["scores"]["rag"]["niah_single_1"] == {"4096": 80.0}
    assert {r["method"] for r in record["runs"]} == {"attention_scorer", "trained_retriever", "rag"}
    assert sum(r["method"] == "trained_retriever" for r in record["runs"]) == 1
    other = _grid(tmp_path / "other.json", {"rag": {"niah_single_1": {"4096": 80.0}}}, num_samples=5)
    with pytest.raises(RetroLMError, match="other lengths or sample counts"):
        merged(this_run, other)
