"""The ``export`` section: ``poetry-gpt export`` (time, size, load) and the loaded SavedModel against ``PoemGenerator``."""
from __future__ import annotations

import time
from pathlib import Path

from .machine import load_average, section_context
from .runner import run_child


def child_export(a: dict) -> dict:
    """``poetry-gpt export`` of an export (timed), then the loaded SavedModel against ``PoemGenerator``:
    the same poems (prompts, options, seeds) at batch 1 and 8, timed in turns, best and median of the rounds."""
    import statistics

    import poetry_gpt  # noqa: F401
    from poetry_gpt.generate.generator import PoemGenerator
    from poetry_gpt.serve.saved_model import export_saved_model

    import tensorflow as tf

    out = Path(a["out"])
    info = export_saved_model(a["export"], out, batch_sizes="1,8")
    start = time.perf_counter()
    loaded = tf.saved_model.load(str(out))
    load_seconds = time.perf_counter() - start
    gen = PoemGenerator(a["export"])
    budget, title = a["max_new_tokens"], "春晓"
    rows = {}
    for form in ("", "五绝"):
        for n in (1, 8):
            opts = dict(top_k=10, max_new_tokens=budget if not form else 0)
            paths = {
                "poem_generator": lambda seed: [s.text for s in gen.generate(
                    title=title, num_samples=n, batch_size=n, seed=seed, form=form or None, top_k=10,
                    max_new_tokens=opts["max_new_tokens"] or None)],
                "saved_model": lambda seed: [t.decode() for t in loaded.generate(
                    prompt=[""] * n, title=title, seed=seed, form=form, **opts)["poem"].numpy().tolist()],
            }
            first, wall, same = {}, {k: [] for k in paths}, True
            for name, fn in paths.items():
                t0 = time.perf_counter()
                fn(0)
                first[name] = round(time.perf_counter() - t0, 2)
            for r in range(a["repeats"]):
                poems = {}
                for name, fn in (list(paths.items()) if r % 2 == 0 else list(paths.items())[::-1]):
                    t0 = time.perf_counter()
                    poems[name] = fn(100 + 8 * r)
                    wall[name].append(time.perf_counter() - t0)
                same &= poems["poem_generator"] == poems["saved_model"]
            row = {name: {"ms_per_poem": round(1000 * min(wall[name]) / n, 1),
                          "median_ms_per_poem": round(1000 * statistics.median(wall[name]) / n, 1),
                          "first_call_seconds": first[name]} for name in paths}
            row["ratio_saved_model_vs_generator"] = round(min(wall["saved_model"]) / min(wall["poem_generator"]), 3)
            row["median_ratio"] = round(statistics.median(wall["saved_model"]) / statistics.median(wall["poem_generator"]), 3)
            row["same_poems"] = same
            rows[f"{form or 'free'}_batch_{n}"] = row
    return {"export_seconds": info["seconds"], "saved_model_bytes": info["bytes"],
            "load_seconds": round(load_seconds, 2), "title": title, "max_new_tokens_free": budget, "top_k": 10,
            "repeats": a["repeats"], "runs": rows}


def section(bench) -> dict:
    load_before = load_average()
    export, note = bench.generation_export()
    result = run_child("export", {"export": export, "out": str(bench.work / "saved_model"),
                                  "max_new_tokens": 32 if bench.quick else 64,
                                  "repeats": 2 if bench.quick else 5}, bench.work, bench.timeout)
    ratios = [r["ratio_saved_model_vs_generator"] for r in result["runs"].values()]
    return {"what": "poetry-gpt export: export time, SavedModel size, load time, and ms per poem of the loaded "
                    "signature against PoemGenerator in the same process, in turns, alternating the order (same prompts and seeds)",
            "export": note, **result, "worst_ratio_vs_generator": max(ratios),
            "all_same_poems": all(r["same_poems"] for r in result["runs"].values()),
            **section_context(load_before, bench.command)}
