"""The ``generate`` section: the compiled sampler vs transformers' eager and XLA ``generate``, and ``PoemGenerator``.

The first call of each path (the compile a user waits for) is timed in a fresh process of its own.
"""
from __future__ import annotations

import json
import os
import time

from .machine import load_average, section_context
from .runner import run_child


def child_generate(a: dict) -> dict:
    """``generate.benchmark`` (compiled sampler vs eager / XLA ``model.generate``) and ``PoemGenerator``
    on an export, with and without a form."""
    import statistics

    import poetry_gpt  # noqa: F401
    from bench_generate import benchmark  # scripts/ is on sys.path: this file runs as a script
    from poetry_gpt.generate.generator import PoemGenerator

    b = a["benchmark"]
    report = {"benchmark": benchmark(b["n_layer"], b["n_embd"], b["n_head"], b["n_ctx"], b["vocab_size"],
                                     b["new_tokens"], b["top_k"], tuple(b["batches"]), b["repeats"],
                                     b["eager_repeats"])}

    gen = PoemGenerator(a["export"])
    budget, repeats, title = a["max_new_tokens"], a["repeats"], "春晓"
    forms = {}
    for form in (None, "五绝"):
        def timed(n, seed):
            start = time.perf_counter()
            samples = gen.generate(title=title, num_samples=n, batch_size=n, seed=seed, form=form,
                                   max_new_tokens=budget, top_k=10)
            return time.perf_counter() - start, samples

        timed(1, 0)  # compiles (its first-call time is measured in a fresh process: child_first_call)
        runs1 = [timed(1, 100 + r) for r in range(repeats)]
        timed(8, 0)
        runs8 = [timed(8, 200 + 8 * r) for r in range(repeats)]
        best1 = min(runs1, key=lambda r: r[0])
        best8 = min(runs8, key=lambda r: r[0])
        tokens1 = statistics.mean(s.tokens for _, ss in runs1 for s in ss)
        tokens8 = statistics.mean(s.tokens for _, ss in runs8 for s in ss)
        forms[form or "none"] = {
            "ms_per_poem_batch_1": round(1000 * best1[0], 1),
            "median_ms_per_poem_batch_1": round(1000 * statistics.median(r[0] for r in runs1), 1),
            "tokens_per_poem_batch_1": round(tokens1, 1),
            "ms_per_token_batch_1": round(1000 * statistics.median(r[0] / max(1, r[1][0].tokens) for r in runs1), 2),
            "poems_per_s_batch_8": round(8 / best8[0], 2), "tokens_per_poem_batch_8": round(tokens8, 1),
            "closed_fraction": round(statistics.mean(s.closed for _, ss in runs1 + runs8 for s in ss), 3),
        }
    eager = []
    for r in range(a["eager_repeats"]):
        start = time.perf_counter()
        samples = gen.generate_eager(title=title, num_samples=1, batch_size=1, seed=300 + r, max_new_tokens=budget,
                                     top_k=10)
        eager.append((time.perf_counter() - start, samples[0].tokens))
    eager_ms_per_token = statistics.median(1000 * s / max(1, n) for s, n in eager)
    free = forms["none"]
    report["poem_generator"] = {
        "export": a["export_note"], "title": title, "max_new_tokens": budget, "top_k": 10, "repeats": repeats,
        "forms": forms,
        "eager": {"ms_per_poem_batch_1": round(1000 * min(s for s, _ in eager), 1),
                  "tokens_per_poem_batch_1": round(statistics.mean(n for _, n in eager), 1),
                  "ms_per_token_batch_1": round(eager_ms_per_token, 2)},
        "speedup_per_token_batch_1_vs_eager": round(eager_ms_per_token / free["ms_per_token_batch_1"], 1),
        "programs_traced": dict(gen.sampler.traces),
    }
    return report


def child_first_call(a: dict) -> dict:
    """The first poem of a fresh process, as ``poetry-gpt generate --title 春晓 [--form F]`` writes it:
    load the export, then time one batch-1 ``generate`` call (it compiles the sampler's programs)."""
    os.environ.setdefault("USE_TF", "1")  # as poetry_gpt.cli
    import poetry_gpt  # noqa: F401
    from poetry_gpt.generate.generator import PoemGenerator

    start = time.perf_counter()
    gen = PoemGenerator(a["export"])
    loaded = time.perf_counter()
    samples = gen.generate(title="春晓", num_samples=1, batch_size=1, seed=0, form=a["form"],
                           max_new_tokens=a["max_new_tokens"], top_k=10)
    return {"form": a["form"] or "none", "load_seconds": round(loaded - start, 2),
            "first_call_seconds_batch_1": round(time.perf_counter() - loaded, 2), "tokens": samples[0].tokens,
            "compute_dtype": gen.sampler.net.dtype.name, "programs_traced": dict(gen.sampler.traces)}


def _path_stats(row: dict, name: str) -> dict:
    """Seconds per call and first-call seconds of one path (compiled, eager, hf_xla) of a
    ``generate.benchmark`` batch row (both its nested and its earlier flat layout)."""
    if isinstance(row.get(name), dict):
        return row[name]
    first = row.get(f"{name}_first_call_seconds", row.get("first_call_seconds") if name == "compiled" else None)
    return {"seconds": row[f"{name}_seconds"], "first_call_seconds": first}


def summarise_generation(bench: dict) -> dict:
    """Per-poem figures from ``generate.benchmark``'s report: ms a poem at batch 1, poems/s at batch 8."""
    rows = bench["batches"]
    summary = {"new_tokens": bench["new_tokens"]}
    if "1" in rows:
        row = rows["1"]
        compiled, eager, xla = (_path_stats(row, k) for k in ("compiled", "eager", "hf_xla"))
        summary.update({
            "batch_1_ms_per_poem_compiled": round(1000 * compiled["seconds"], 1),
            "batch_1_ms_per_poem_eager": round(1000 * eager["seconds"], 1),
            "batch_1_ms_per_poem_hf_xla": round(1000 * xla["seconds"], 1),
            "batch_1_speedup_vs_eager": round(eager["seconds"] / compiled["seconds"], 1),
            "first_call_seconds": compiled["first_call_seconds"],
            "hf_xla_first_call_seconds": xla["first_call_seconds"],
            "recompiled_for_other_opening": row.get("recompiled_for_other_opening")})
    if "8" in rows:
        row = rows["8"]
        compiled, eager, xla = (_path_stats(row, k) for k in ("compiled", "eager", "hf_xla"))
        summary.update({
            "batch_8_poems_per_s_compiled": round(8 / compiled["seconds"], 2),
            "batch_8_poems_per_s_eager": round(8 / eager["seconds"], 2),
            "batch_8_poems_per_s_hf_xla": round(8 / xla["seconds"], 2),
            "batch_8_speedup_vs_eager": round(eager["seconds"] / compiled["seconds"], 1),
            "batch_8_first_call_seconds": compiled["first_call_seconds"]})
    return summary


def section(bench) -> dict:
    load_before = load_average()
    s = bench.shape
    if bench.quick:
        model_args = {"n_layer": s["n_layer"], "n_embd": s["n_embd"], "n_head": s["n_head"], "n_ctx": s["n_ctx"],
                      "vocab_size": 500, "new_tokens": 16, "top_k": 10, "batches": [1, 8], "repeats": 1,
                      "eager_repeats": 1}
    else:
        model_args = {"n_layer": 6, "n_embd": 384, "n_head": 6, "n_ctx": 128, "vocab_size": 5300,
                      "new_tokens": 64, "top_k": 10, "batches": [1, 8], "repeats": 5, "eager_repeats": 2}
    export, note = bench.generation_export()
    budget = 32 if bench.quick else 64
    result = run_child("generate", {"benchmark": model_args, "export": export, "export_note": note,
                                    "max_new_tokens": budget, "repeats": 1 if bench.quick else 5,
                                    "eager_repeats": 1}, bench.work, bench.timeout)
    # a fresh process per form: a first call after other compiles in the same process would be faster
    first = {(form or "none"): run_child("first_call", {"export": export, "form": form, "max_new_tokens": budget},
                                         bench.work, bench.timeout, name=f"first_call-{form or 'none'}")
             for form in (None, "五绝")}
    result["poem_generator"]["first_call_fresh_process"] = first
    summary = summarise_generation(result["benchmark"])
    # the first poem a user waits for: the slowest first call of the compiled paths at batch 1
    summary["first_call_seconds_worst"] = max([summary.get("first_call_seconds") or 0.0]
                                              + [f["first_call_seconds_batch_1"] for f in first.values()])
    return {"what": "poem generation speed: compiled sampler (PoemGenerator) vs transformers' eager and XLA "
                    "model.generate",
            "summary": summary, "benchmark_model": "random-initialised, shape " + json.dumps(
                {k: model_args[k] for k in ("n_layer", "n_embd", "n_head", "n_ctx", "vocab_size")}),
            **result, **section_context(load_before, bench.command)}
