"""Evaluation harness: LongBench, InfiniteBench and RULER runners with their official metrics.

    python -m eval.longbench --model PATH --method retrolm --tasks narrativeqa,qasper --out out/lb
    python -m eval.infinitebench --model PATH --method rag --tasks passkey --data-dir DIR --out out/ib
    python -m eval.ruler --model PATH --method streaming --lengths 4096,8192 --out out/ruler

Modules: `metrics` (official scores), `data` (hub or --data-dir loading), `prompting` (prompt parts and
middle truncation), `methods` (retrolm / full / rag / streaming behind one interface), `runner` (the
resumable loop and result files), `cli` (shared options), one module per benchmark, `ruler_tasks`
(RULER's synthetic generators).
"""
